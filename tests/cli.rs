//! The `engine` binary, spawned as a user runs it: exit codes, streams, reports.

use serde_json::Value;

use crate::support::{engine, engine_in, engine_with_env, text};

const NOW: &str = "2026-11-20T12:00:00Z";

fn order(message_id: &str) -> String {
    format!(
        r#"{{"type":"track","event":"Order Completed","messageId":"{message_id}","anonymousId":"anon_1","timestamp":"2026-11-19T10:00:00Z","properties":{{"order_id":"O-1","revenue":129.99,"currency":"USD"}},"context":{{"page":{{"url":"https://shop.example.com/thanks?x=1"}}}}}}"#
    )
}

#[test]
fn check_passes_on_every_shipped_mapping() {
    let mappings: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "map"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(mappings.len() >= 2);
    let mut args = vec!["check"];
    args.extend(mappings.iter().map(String::as_str));
    let output = engine(&args, "");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    assert!(text(&output.stdout).contains("0 errors, 0 warnings"), "{}", text(&output.stdout));
}

#[test]
fn check_takes_directories_and_expands_them_to_their_mapping_files() {
    let output = engine(&["check", "mappings"], "");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    assert!(text(&output.stdout).contains("engine check: 2 files, 0 errors, 0 warnings"), "{}", text(&output.stdout));
}

#[test]
fn check_exit_codes_and_json_format() {
    let dir = std::env::temp_dir().join(format!("engine-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.map");
    std::fs::write(&broken, "routes { page -> page_veiwed }\nmessageId -> id | sha265\n").unwrap();
    let broken = broken.to_string_lossy().into_owned();

    let human = engine(&["check", &broken], "");
    assert_eq!(human.status.code(), Some(1));
    let out = text(&human.stdout);
    assert!(out.contains("engine::check::unknown_event_type") && out.contains("did you mean `page_viewed`?"), "{out}");
    assert!(out.contains("engine::check::unknown_function") && out.contains("did you mean `sha256`?"), "{out}");

    let json = engine(&["check", "--format", "json", &broken], "");
    assert_eq!(json.status.code(), Some(1));
    let diagnostics: Value = serde_json::from_slice(&json.stdout).expect("JSON output");
    let codes: Vec<&str> = diagnostics.as_array().unwrap().iter().map(|d| d["code"].as_str().unwrap()).collect();
    assert!(codes.contains(&"engine::check::unknown_event_type"), "{codes:?}");
    assert_eq!(diagnostics[0]["line"], 1);

    let missing = engine(&["check", "no/such/file.map"], "");
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("cannot read no/such/file.map"));

    let usage = engine(&["check", "--format", "yaml"], "");
    assert_eq!(usage.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_maps_a_stream_and_reports_every_event_it_does_not_send() {
    let input = [
        order("m-1"),
        "this is not json".to_string(),
        String::new(),
        r#"{"type":"track","event":"Button Clicked","messageId":"m-2","anonymousId":"a","timestamp":"2026-11-19T10:00:00Z"}"#.to_string(),
        r#"{"type":"page","messageId":"m-3","anonymousId":"a","timestamp":"2020-01-01T00:00:00Z","context":{"page":{"url":"https://x.example/"}}}"#.to_string(),
    ]
    .join("\n");
    let output = engine(&["run", "--now", NOW], &input);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let events: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], "m-1");
    assert_eq!(events[0]["data"]["amount"], 12999);
    assert_eq!(events[0]["source_url"], "https://shop.example.com/thanks");
    let stderr = text(&output.stderr);
    let records: Vec<Value> = stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let by_line =
        |n: u64| records.iter().find(|r| r["line"] == n).unwrap_or_else(|| panic!("no record for line {n}: {stderr}"));
    assert_eq!(by_line(2)["outcome"], "malformed");
    assert_eq!(by_line(4)["reason"], "unmapped");
    assert_eq!(by_line(5)["reason"], "timestamp_out_of_window");
    assert_eq!(by_line(5)["field"], "timestamp_ms");
    assert!(
        stderr.contains("engine run: 4 events: 1 mapped, 1 dropped (1 unmapped, 0 identify), 1 rejected, 1 malformed"),
        "{stderr}"
    );
}

#[test]
fn run_batches_at_most_a_thousand_events_per_request_body() {
    let input: Vec<String> = (0..1001).map(|i| order(&format!("m-{i}"))).collect();
    let output = engine(&["run", "--now", NOW, "--batch"], &input.join("\n"));
    assert_eq!(output.status.code(), Some(0));
    let bodies: Vec<Value> = text(&output.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["events"].as_array().unwrap().len(), 1000);
    assert_eq!(bodies[1]["events"].as_array().unwrap().len(), 1);
    assert_eq!(bodies[1]["events"][0]["id"], "m-1000");
}

#[test]
fn run_writes_reports_to_a_file_and_remembers_identity_unless_stateless() {
    let identify = r#"{"type":"identify","messageId":"i","anonymousId":"anon_1","timestamp":"2026-11-19T09:00:00Z","traits":{"email":"a@b.example"}}"#;
    let input = format!("{identify}\n{}\n", order("m-1"));
    let dir = std::env::temp_dir().join(format!("engine-rejects-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rejects = dir.join("rejects.ndjson");
    let rejects_arg = rejects.to_string_lossy().into_owned();

    let remembering = engine(&["run", "--now", NOW, "--rejects", &rejects_arg], &input);
    let event: Value = serde_json::from_str(text(&remembering.stdout).trim()).unwrap();
    assert!(event["user"]["email"].as_str().is_some_and(|h| h.len() == 64), "{event}");
    let reports = std::fs::read_to_string(&rejects).unwrap();
    assert!(reports.contains(r#""reason":"identify""#), "{reports}");

    let stateless = engine(&["run", "--now", NOW, "--stateless"], &input);
    let event: Value = serde_json::from_str(text(&stateless.stdout).trim()).unwrap();
    assert!(event["user"].get("email").is_none(), "{event}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_with_a_broken_mapping_or_bad_arguments_fails_clearly() {
    let dir = std::env::temp_dir().join(format!("engine-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.map");
    std::fs::write(&broken, "traits.email -> user.email\n").unwrap();
    let output = engine(&["run", "--map", &broken.to_string_lossy()], "");
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("engine::check::raw_pii"), "{}", text(&output.stderr));

    let params = dir.join("params.yaml");
    std::fs::write(&params, "consent_category: advertising\n").unwrap();
    let consent = r#"{"type":"page","messageId":"p","anonymousId":"a","timestamp":"2026-11-19T10:00:00Z","context":{"page":{"url":"https://x.example/"},"consent":{"advertising":true,"marketing":false}}}"#;
    let output = engine(&["run", "--now", NOW, "--params", &params.to_string_lossy()], consent);
    let event: Value = serde_json::from_str(text(&output.stdout).trim()).unwrap();
    assert_eq!(event["opt_out"], false, "the advertising category was granted");

    let bad_now = engine(&["run", "--now", "yesterday"], "");
    assert_eq!(bad_now.status.code(), Some(2));
    assert!(text(&bad_now.stderr).contains("--now"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn explain_reads_a_stream_with_identity_memory_and_writes_trees_or_json() {
    let identify = r#"{"type":"identify","anonymousId":"anon_1","timestamp":"2026-11-19T09:00:00Z","traits":{"email":"Jane@Example.com"}}"#;
    // A pretty-printed document followed by a one-line one: both are events.
    let pretty = serde_json::to_string_pretty(&serde_json::from_str::<Value>(identify).unwrap()).unwrap();
    let stdin = format!("{pretty}\n{}\n", order("m-1"));
    let output = engine(&["explain", "--now", NOW], &stdin);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let shown = text(&output.stdout);
    assert!(shown.contains("event 1\ndropped (identify)"), "{shown}");
    assert!(shown.contains("event 2\nmapped: order_created"), "{shown}");
    assert!(shown.contains("user.email = \"") && shown.contains("← identity memory"), "{shown}");
    assert!(shown.contains("data.amount = 12999  ← mappings/openai_ads.map:"), "{shown}");
    assert!(!shown.contains("Jane@Example.com"), "personal data is masked by default: {shown}");

    let output = engine(&["explain", "--now", NOW, "--format", "json", "--show-pii"], &stdin);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let records: Vec<Value> = text(&output.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["outcome"]["outcome"], "mapped");
    assert_eq!(records[1]["event"], 2);
    assert!(text(&output.stdout).contains("Jane@Example.com"), "--show-pii shows personal values");

    let stateless = engine(&["explain", "--now", NOW, "--stateless"], &stdin);
    assert!(!text(&stateless.stdout).contains("← identity memory"), "{}", text(&stateless.stdout));
}

/// The command writes each explanation straight out from the event's own text; what it writes is the library's
/// explanation of that event, masked unless asked not to, numbered in stream order across documents and arrays.
#[test]
fn explain_json_is_the_librarys_explanation_of_each_event_in_order() {
    let identify = r#"{"type":"identify","anonymousId":"anon_1","timestamp":"2026-11-19T09:00:00Z","traits":{"email":"Jane@Example.com","phone":"+1 (415) 555-0100"}}"#;
    let unrouted = r#"{"type":"track","event":"Button Clicked","anonymousId":"anon_1"}"#;
    let stale = order("stale").replace("2026-11-19T10:00:00Z", "2020-01-01T00:00:00Z");
    let pretty = serde_json::to_string_pretty(&serde_json::from_str::<Value>(identify).unwrap()).unwrap();
    let stdin = format!("{pretty}\n[{}, {unrouted}]\n{stale}\n", order("m-1"));
    let events = [identify.to_string(), order("m-1"), unrouted.to_string(), stale];
    for show_pii in [false, true] {
        let mut args = vec!["explain", "--now", NOW, "--format", "json"];
        args.extend(show_pii.then_some("--show-pii"));
        let output = engine(&args, &stdin);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        let written: Vec<Value> = text(&output.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();

        let plan = crate::support::preset_plan(&signal_engine::presets::OPENAI_ADS);
        let mut memory = signal_engine::identity::MemoryStore::default();
        let now = NOW.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        let expected: Vec<Value> = events
            .iter()
            .enumerate()
            .map(|(index, event)| {
                let mut context = signal_engine::Context::with_identity(now, &mut memory);
                let mut explained = signal_engine::explain::explain(&plan, event, &mut context).to_json(show_pii);
                explained["event"] = (index + 1).into();
                explained
            })
            .collect();
        assert_eq!(written, expected, "show_pii: {show_pii}");
        assert_eq!(text(&output.stdout).contains("Jane@Example.com"), show_pii);
    }
    let outcomes: Vec<&str> = ["dropped", "mapped", "dropped", "rejected"].to_vec();
    let output = engine(&["explain", "--now", NOW, "--format", "json"], &stdin);
    let written: Vec<Value> = text(&output.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(written.iter().map(|e| e["outcome"]["outcome"].as_str().unwrap()).collect::<Vec<_>>(), outcomes);

    // Every input is checked before anything is explained: a broken document later on writes nothing.
    let broken = engine(&["explain", "--now", NOW, "--format", "json"], &format!("{}\n{{\"type\": ", order("m-2")));
    assert_eq!(broken.status.code(), Some(2));
    assert!(broken.stdout.is_empty(), "{}", text(&broken.stdout));
}

#[test]
fn explain_exit_codes() {
    let malformed = engine(&["explain"], "{\"type\": ");
    assert_eq!(malformed.status.code(), Some(2));
    assert!(text(&malformed.stderr).contains("stdin is not JSON"), "{}", text(&malformed.stderr));
    let empty = engine(&["explain"], "  \n");
    assert_eq!(empty.status.code(), Some(2));
    let dir = std::env::temp_dir().join(format!("engine-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.map");
    std::fs::write(&broken, "routes { page -> page_viewed }\nmessageId -> id | sha257\n").unwrap();
    let output = engine(&["explain", "--map", broken.to_str().unwrap()], &order("m-1"));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("unknown_function"), "{}", text(&output.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Raw text with repeated keys: `engine run` (its selective reader) and `engine explain` (which also reads the
/// text) both take the last occurrence of a key, as the relay's parsed events do, so one event maps one way.
#[test]
fn a_repeated_key_means_its_last_occurrence_in_run_and_explain() {
    let event = r#"{"type":"track","event":"Order Completed","messageId":"dup-1","anonymousId":"a","timestamp":"2026-11-19T10:00:00Z","properties":{"order_id":"O-1","revenue":1,"currency":"USD"},"properties":{"order_id":"O-2","revenue":2,"currency":"EUR"},"context":{"page":{"url":"https://shop.example.com/"}}}"#;
    let run = engine(&["run", "--stateless", "--now", NOW], event);
    let mapped: Value = serde_json::from_str(text(&run.stdout).trim()).expect("one mapped event");
    assert_eq!(mapped["data"]["order_id"], "O-2", "{mapped}");
    assert_eq!((mapped["data"]["amount"].as_i64(), mapped["data"]["currency"].as_str()), (Some(200), Some("EUR")));
    let explained = engine(&["explain", "--stateless", "--now", NOW, "--format", "json"], event);
    let explanation: Value = serde_json::from_str(&text(&explained.stdout)).expect("JSON");
    let explanation = if explanation.is_array() { explanation[0].clone() } else { explanation };
    assert_eq!(explanation["outcome"]["event"], mapped, "explain's outcome is run's");
    let amount = explanation["fields"].as_array().unwrap().iter().find(|f| f["field"] == "data.amount").unwrap();
    assert_eq!(amount["origin"]["steps"][0]["value"], 2, "the traced value is the last one too: {amount}");
}

#[test]
fn run_shows_the_mappings_warnings_once_and_maps_anyway() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("warned.map");
    std::fs::write(
        &mapping,
        "target openai_ads\nroutes {\n  page -> page_viewed (contents)\n}\nmessageId -> id\n\"web\" -> action_source\n\
         to_unix_ms(timestamp) -> timestamp_ms\ncontext.page.url -> source_url\ncontext.ip -> user.external_id\n\
         anonymousId -> user.external_id\n",
    )
    .unwrap();
    let mapping = mapping.to_string_lossy().into_owned();
    let events = [
        r#"{"type":"page","messageId":"m1","anonymousId":"a","timestamp":"2026-11-20T11:00:00Z","context":{"page":{"url":"https://x.example/"}}}"#,
        r#"{"type":"page","messageId":"m2","anonymousId":"b","timestamp":"2026-11-20T11:00:00Z","context":{"page":{"url":"https://x.example/"}}}"#,
    ]
    .join("\n");
    let output = engine(&["run", "--map", &mapping, "--now", NOW], &events);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).lines().count(), 2, "both events are mapped");
    let stderr = text(&output.stderr);
    assert_eq!(stderr.matches("is written by two rules").count(), 1, "the warning is shown once: {stderr}");
    assert!(stderr.contains("engine run: the mapping has warnings (above); mapping anyway"), "{stderr}");

    // The embedded preset has no warnings: a run says nothing before its summary.
    let clean = engine(&["run", "--now", NOW], &order("m3"));
    assert!(text(&clean.stderr).starts_with("engine run: 1 events"), "{}", text(&clean.stderr));
}

#[test]
fn run_and_explain_read_files_in_order_and_dash_for_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.ndjson");
    let broken = dir.path().join("broken.ndjson");
    std::fs::write(&first, format!("{}\n", order("from-file"))).unwrap();
    std::fs::write(&broken, "{\"type\":\"page\"}\n{broken\n").unwrap();
    let (first, broken) = (first.to_string_lossy().into_owned(), broken.to_string_lossy().into_owned());

    let output = engine(&["run", "--stateless", "--now", NOW, &first, "-", &broken], &order("from-stdin"));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let ids: Vec<String> = text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["from-file", "from-stdin"], "files and stdin in the order given");
    // Reports name the file and the line in it.
    let stderr = text(&output.stderr);
    let malformed = stderr.lines().find(|l| l.contains("\"malformed\"")).expect("the broken line is reported");
    let record: Value = serde_json::from_str(malformed).unwrap();
    assert_eq!((record["file"].as_str(), record["line"].as_u64()), (Some(broken.as_str()), Some(2)), "{malformed}");
    assert!(stderr.contains("engine run: 4 events"), "{stderr}");

    let missing = engine(&["run", "no/such/events.ndjson"], "");
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("cannot read no/such/events.ndjson"), "{}", text(&missing.stderr));

    let explained = engine(&["explain", "--format", "json", "--now", NOW, &first, "-"], &order("explained"));
    assert_eq!(explained.status.code(), Some(0), "{}", text(&explained.stderr));
    assert_eq!(text(&explained.stdout).lines().count(), 2, "one explanation per event of both inputs");
}

#[test]
fn check_and_fmt_default_to_the_mappings_directory() {
    let checked = engine(&["check"], "");
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked.stdout));
    assert!(text(&checked.stdout).contains("engine check: 2 files"), "{}", text(&checked.stdout));
    let formatted = engine(&["fmt", "--check"], "");
    assert_eq!(formatted.status.code(), Some(0), "{}", text(&formatted.stderr));

    let elsewhere = tempfile::tempdir().unwrap();
    let lost = engine_in(elsewhere.path(), &["check"], "");
    assert_eq!(lost.status.code(), Some(2));
    assert!(text(&lost.stderr).contains("no `mappings/` directory"), "{}", text(&lost.stderr));
}

#[test]
fn colour_follows_the_flag_then_the_environments_conventions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.map"), "routes { page -> page_veiwed }\n").unwrap();
    std::fs::write(dir.path().join("unclosed.map"), "routes { page -> page_viewed\n").unwrap();
    const ESCAPE: &str = "\u{1b}[";
    let coloured = |args: &[&str], vars: &[(&str, &str)]| {
        let output = engine_with_env(dir.path(), args, "", vars);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
        let all = text(&output.stdout) + &text(&output.stderr);
        assert!(all.contains("broken.map") || all.contains("unclosed.map"), "{all}");
        all.contains(ESCAPE)
    };
    let check = ["check", "broken.map"];
    assert!(!coloured(&check, &[]), "a pipe is not coloured");
    assert!(coloured(&check, &[("CLICOLOR_FORCE", "1")]), "CLICOLOR_FORCE colours even a pipe");
    assert!(!coloured(&check, &[("CLICOLOR_FORCE", "0")]));
    assert!(!coloured(&check, &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]), "NO_COLOR wins over CLICOLOR_FORCE");
    assert!(coloured(&check, &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "")]), "an empty NO_COLOR does not count");
    assert!(coloured(&["check", "--color", "always", "broken.map"], &[("NO_COLOR", "1")]), "the flag wins");
    assert!(!coloured(&["check", "--color", "never", "broken.map"], &[("CLICOLOR_FORCE", "1")]));
    // Every command takes the flag, before or after its name, and follows the same rules.
    assert!(coloured(&["--color", "always", "fmt", "unclosed.map"], &[]), "fmt reports syntax errors in colour");
    assert!(!coloured(&["fmt", "unclosed.map"], &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]));
    assert!(coloured(&["run", "--map", "broken.map", "--color", "always"], &[]), "run shows the errors in colour");
}

#[test]
fn version_names_the_commit_and_every_command_documents_examples_and_exit_codes() {
    let version = text(&engine(&["--version"], "").stdout);
    assert!(version.starts_with("engine 0.1.0 (commit "), "{version}");
    assert!(!version.contains("(commit )"), "{version}");
    for command in ["check", "run", "explain", "test", "fmt", "functions", "serve", "dlq", "send", "completions"] {
        let help = engine(&[command, "--help"], "");
        assert_eq!(help.status.code(), Some(0), "{command}");
        let help = text(&help.stdout);
        assert!(help.contains("Examples:\n  engine "), "`engine {command} --help` shows examples:\n{help}");
        assert!(help.contains("Exit codes: 0 "), "`engine {command} --help` names its exit codes:\n{help}");
    }
    let completions = engine(&["completions", "bash"], "");
    assert_eq!(completions.status.code(), Some(0));
    assert!(text(&completions.stdout).contains("complete -F _engine"), "a bash completion script");
    let zsh = text(&engine(&["completions", "zsh"], "").stdout);
    assert!(zsh.starts_with("#compdef engine"), "{}", &zsh[..zsh.len().min(80)]);
    let man = text(&engine(&["man"], "").stdout);
    assert!(man.contains(".TH engine 1") && man.contains("completions"), "a roff page naming the commands");
}
