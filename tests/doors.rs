//! Hostile input at the doors that are files and streams, table-driven: `engine run`'s event lines, the relay's
//! configuration file, mapping files, mapping test files. Each case gets its documented exit code and a message
//! naming what is wrong and where; none panics (exit 101) or hangs, and in a stream the good events around a bad
//! line are still mapped. The language server's frames are tried in tests/lsp.rs, the relay's HTTP doors in
//! tests/relay/hostile.rs.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::text;

/// Runs `engine ARGS` in `dir` with `stdin` as bytes; fails if it runs longer than a minute.
fn engine_bytes(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .current_dir(dir)
        .env_remove("NO_COLOR")
        .env("ENGINE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine binary starts");
    let mut input = child.stdin.take().expect("stdin");
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("a status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("engine {args:?} still runs after a minute");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = writer.join();
    child.wait_with_output().expect("the output")
}

/// YAML whose aliases would expand to 10^12 strings.
fn alias_bomb() -> String {
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..12 {
        bomb.push_str(&format!("a{level}: &a{level} [{}]\n", vec![format!("*a{}", level - 1); 10].join(", ")));
    }
    bomb
}

const GOOD: &str = r#"{"type":"page","messageId":"m-good","anonymousId":"a","timestamp":"2026-11-20T11:00:00Z","context":{"page":{"url":"https://shop.example.com/"}}}"#;

#[test]
fn every_hostile_event_line_is_named_and_the_good_lines_around_it_still_map() {
    let dir = tempfile::tempdir().expect("a directory");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let huge = format!(r#"{{"type":"page","messageId":"m","anonymousId":"a","name":"{}"}}"#, "x".repeat(5 << 20));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bytes that are not UTF-8", b"{\"type\":\"page\",\"name\":\"\xff\xfe\"}".to_vec(), "not UTF-8"),
        ("100,000 levels of arrays", deep.into_bytes(), "must be a JSON object"),
        // An unread member is skipped, however deep (serde_json's own skipping has no depth limit either): the
        // event is judged on what the mapping reads, and has no `type`.
        ("100,000 levels of objects", deep_object.into_bytes(), "no route for an event without `type`"),
        ("JSON cut short", b"{\"type\":\"page\",".to_vec(), "invalid JSON"),
        ("NaN", b"{\"type\":\"page\",\"anonymousId\":NaN}".to_vec(), "invalid JSON"),
        ("1e400", b"{\"type\":\"track\",\"properties\":{\"revenue\":1e400}}".to_vec(), "invalid JSON"),
        ("a raw NUL in a string", b"{\"type\":\"page\",\"name\":\"a\x00b\"}".to_vec(), "invalid JSON"),
        ("an array instead of an event", b"[1,2,3]".to_vec(), "must be a JSON object"),
        ("a bare string", b"\"page\"".to_vec(), "must be a JSON object"),
        ("a 5 MiB event", huge.into_bytes(), "\"outcome\""),
        ("a lone carriage return", b"\r".to_vec(), ""),
    ];
    for (name, line, message) in cases {
        let mut stdin = format!("{GOOD}\n").into_bytes();
        stdin.extend_from_slice(&line);
        stdin.extend_from_slice(format!("\n{GOOD}\n").as_bytes());
        let output = engine_bytes(
            dir.path(),
            &["run", "--stateless", "--now", "2026-11-20T12:00:00Z", "--color", "never"],
            &stdin,
        );
        assert_eq!(output.status.code(), Some(0), "{name}: {}", text(&output.stderr));
        assert_eq!(text(&output.stdout).lines().count(), 2, "{name}: both good events map: {}", text(&output.stderr));
        let report = text(&output.stderr);
        assert!(report.contains(message), "{name}: expected {message:?} in {}", &report[..report.len().min(2000)]);
        if !message.is_empty() && message != "\"outcome\"" {
            assert!(report.contains("\"line\":2"), "{name}: the bad line is named by number: {report}");
        }
    }
}

#[test]
fn hostile_configuration_files_are_refused_with_the_file_and_line_before_anything_starts() {
    let dir = tempfile::tempdir().expect("a directory");
    let bomb = alias_bomb();
    let deep = format!("pixel_id: {}x{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bytes that are not UTF-8", b"pixel_id: \xff\xfe\n".to_vec(), "relay.yaml"),
        ("an alias bomb", bomb.into_bytes(), "relay.yaml"),
        ("100,000 levels of nesting", deep.into_bytes(), "relay.yaml"),
        (
            "a misspelled setting",
            b"pixel_id: p\napi_key: k\npixle: 1\n".to_vec(),
            "relay.yaml:3:1: unknown field `pixle`",
        ),
        ("a number where text belongs", b"pixel_id: p\napi_key: k\nlisten: 8080\n".to_vec(), "relay.yaml"),
        ("a setting given twice", b"pixel_id: p\npixel_id: q\napi_key: k\n".to_vec(), "relay.yaml:2"),
        ("a tab for indentation", b"pixel_id: p\nbatch:\n\tmax_events: 5\n".to_vec(), "relay.yaml"),
        ("a document that is a list", b"- pixel_id: p\n".to_vec(), "relay.yaml"),
        ("an empty file", b"".to_vec(), "relay.yaml"),
        (
            "a batch size of 10^30",
            b"pixel_id: p\napi_key: k\nbatch: {max_events: 1000000000000000000000000000000}\n".to_vec(),
            "relay.yaml",
        ),
    ];
    for (name, file, message) in cases {
        std::fs::write(dir.path().join("relay.yaml"), &file).expect("written");
        let output = engine_bytes(dir.path(), &["serve", "--config", "relay.yaml"], b"");
        assert_eq!(output.status.code(), Some(2), "{name}: {}", text(&output.stderr));
        let report = text(&output.stderr);
        assert!(report.contains(message), "{name}: expected {message:?} in {report}");
        assert!(report.lines().count() <= 3, "{name}: one clear message, not a dump: {report}");
    }
}

#[test]
fn hostile_mapping_files_get_diagnostics_never_a_crash() {
    let dir = tempfile::tempdir().expect("a directory");
    let nested_calls = format!("{}messageId{} -> id\n", "to_string(".repeat(20_000), ")".repeat(20_000));
    let nested_blocks = format!("{}\n", "products[*] -> data.contents[*] {".repeat(20_000));
    let closed_blocks = format!("{}{}\n", "products[*] -> data.contents[*] {\n".repeat(20_000), "}\n".repeat(20_000));
    let many_rules: String = (0..50_000).map(|i| format!("p{i} -> data.order_id\n")).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bytes that are not UTF-8", b"messageId -> id \xff\n".to_vec(), "UTF-8"),
        ("a NUL byte", b"messageId -> id\x00\n".to_vec(), "syntax"),
        ("20,000 nested calls", nested_calls.into_bytes(), "nested too deeply"),
        ("20,000 unclosed blocks (one line of 640,000 characters)", nested_blocks.into_bytes(), "nested too deeply"),
        // A release build's frames are small enough for the parser to take these, and a later stage overflowed.
        ("20,000 nested blocks, all closed", closed_blocks.into_bytes(), "nested too deeply"),
        ("50,000 rules", many_rules.into_bytes(), "m.map"),
        ("an unterminated string", b"\"web -> action_source\n".to_vec(), "syntax"),
        ("a number too large", b"1e999999 -> data.amount\n".to_vec(), "invalid_number"),
        ("an index too large", b"products[99999999999999999999] -> data.order_id\n".to_vec(), "invalid_number"),
        ("a control character", b"messageId -> id \x1b[31m\n".to_vec(), "syntax"),
        (
            "a byte order mark mid-file",
            "messageId -> id\n\u{feff}timestamp -> timestamp_ms\n".as_bytes().to_vec(),
            "syntax",
        ),
    ];
    for (name, file, message) in cases {
        std::fs::write(dir.path().join("m.map"), &file).expect("written");
        let output = engine_bytes(dir.path(), &["check", "m.map", "--color", "never"], b"");
        assert!(
            matches!(output.status.code(), Some(0..=2)),
            "{name}: exit {:?}: {}",
            output.status.code(),
            text(&output.stderr)
        );
        let report = format!("{}{}", text(&output.stdout), text(&output.stderr));
        assert!(report.contains(message), "{name}: expected {message:?} in {}", &report[..report.len().min(3000)]);
    }
}

#[test]
fn hostile_mapping_test_files_are_refused_with_their_line() {
    let dir = tempfile::tempdir().expect("a directory");
    std::fs::write(dir.path().join("m.map"), "routes {\n  page -> page_viewed\n}\nmessageId -> id\n").expect("written");
    let bomb = alias_bomb();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("an alias bomb", bomb.into_bytes(), "m.test.yaml"),
        ("a case without events", b"cases:\n  - name: a\n".to_vec(), "m.test.yaml:2"),
        ("an unknown key", b"cases:\n  - name: a\n    events: []\n    evnets: []\n".to_vec(), "m.test.yaml:4"),
        ("a time in words", b"now: yesterday\ncases:\n  - name: a\n    events: []\n".to_vec(), "m.test.yaml:1"),
        (
            "an input that is a list",
            b"cases:\n  - name: a\n    events:\n      - input: [1]\n        expect: {dropped: unmapped}\n".to_vec(),
            "m.test.yaml",
        ),
        ("no cases", b"now: 2026-11-20T12:00:00Z\n".to_vec(), "m.test.yaml"),
    ];
    // A file that is not text cannot be read at all: an I/O error, exit 2, naming the file.
    std::fs::write(dir.path().join("m.test.yaml"), b"now: 2026-11-20T12:00:00Z\ncases: \xff\n").expect("written");
    let output = engine_bytes(dir.path(), &["test", "m.test.yaml", "--color", "never"], b"");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("m.test.yaml") && text(&output.stderr).contains("UTF-8"));
    for (name, file, message) in cases {
        std::fs::write(dir.path().join("m.test.yaml"), &file).expect("written");
        let output = engine_bytes(dir.path(), &["test", "m.test.yaml", "--color", "never"], b"");
        assert_eq!(output.status.code(), Some(1), "{name}: {}{}", text(&output.stdout), text(&output.stderr));
        let report = format!("{}{}", text(&output.stdout), text(&output.stderr));
        assert!(report.contains(message), "{name}: expected {message:?} in {report}");
    }
}
