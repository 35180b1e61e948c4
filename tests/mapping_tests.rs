//! `engine test`, spawned as a user runs it: the shipped presets' test files pass, a failing test file shows a
//! field-by-field diff with each field's rule, an invalid test file is named with its line, and exit codes.

use std::process::Output;

fn engine_test(args: &[&str]) -> Output {
    let args: Vec<&str> = std::iter::once("test").chain(args.iter().copied()).collect();
    crate::support::engine(&args, "")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const FIXTURES: &str = "tests/fixtures/mapping_tests";

/// How many cases a test file holds, read independently of the runner.
fn case_count(path: &str) -> usize {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    let file: serde_json::Value = signal_engine::yaml::from_str(&text).unwrap();
    file["cases"].as_array().expect("a list of cases").len()
}

#[test]
fn the_shipped_presets_pass_their_tests() {
    // Without a path, `engine test` runs every test file under mappings/.
    let output = engine_test(&["--color", "never"]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    let default = case_count("mappings/openai_ads.test.yaml");
    let developer_docs = case_count("mappings/openai_ads_developer_docs.test.yaml");
    assert!(default >= 30 && developer_docs >= 10, "the presets' test files lost cases: {default}, {developer_docs}");
    assert!(out.contains(&format!("running {default} cases from mappings/openai_ads.test.yaml")), "{out}");
    assert!(out.contains(&format!("running {developer_docs} cases from mappings/openai_ads_developer_docs.test.yaml")));
    assert!(out.ends_with(&format!("\ntest result: ok. {} passed, 0 failed\n", default + developer_docs)), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
}

#[test]
fn the_preset_test_files_cover_every_route() {
    for (test_file, mapping) in [
        ("mappings/openai_ads.test.yaml", "mappings/openai_ads.map"),
        ("mappings/openai_ads_developer_docs.test.yaml", "mappings/openai_ads_developer_docs.map"),
    ] {
        let tests = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(test_file)).unwrap();
        let compiled = signal_engine::compile(
            mapping,
            &std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(mapping)).unwrap(),
            &signal_engine::files::FileLoader,
            &signal_engine::CompileOptions::default(),
        );
        let plan = compiled.plan.expect("the preset compiles");
        for route in plan.routes() {
            // `"Order Completed" -> order_created (contents)`: the test file expects the event type somewhere.
            let event_type = route.split("-> ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap();
            assert!(tests.contains(&format!("type: {event_type}")), "{test_file} has no case for {route}");
        }
    }
}

#[test]
fn a_passing_file_exits_0_with_the_summary() {
    let output = engine_test(&[&format!("{FIXTURES}/passing.test.yaml")]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("case identify, then a page view with the remembered email ... ok"), "{out}");
    assert!(out.ends_with("test result: ok. 2 passed, 0 failed\n"), "{out}");
}

#[test]
fn a_failing_file_exits_1_with_a_diff_naming_each_fields_rule() {
    let output = engine_test(&["--color", "never", &format!("{FIXTURES}/failing.test.yaml")]);
    assert_eq!(output.status.code(), Some(1));
    let out = stdout(&output);
    assert!(out.contains("data.amount: expected 1500, got 150000"), "{out}");
    assert!(out.contains("(rule tests/fixtures/mapping_tests/shop.map:20:3)"), "{out}");
    assert!(!out.contains("jane.doe@example.com"), "a raw email reached the output: {out}");
    insta::assert_snapshot!(out);
}

#[test]
fn an_invalid_test_file_is_named_with_its_line_and_the_unknown_key() {
    let output = engine_test(&["--color", "never", &format!("{FIXTURES}/invalid.test.yaml")]);
    assert_eq!(output.status.code(), Some(1));
    let out = stdout(&output);
    assert!(
        out.contains("tests/fixtures/mapping_tests/invalid.test.yaml:10:9: unknown field `expcet`, expected one of input, expect"),
        "{out}"
    );
    assert!(out.ends_with("test result: FAILED. 0 passed, 0 failed, 1 test file could not be run\n"), "{out}");
}

#[test]
fn a_directory_runs_every_test_file_below_it_and_filter_picks_cases() {
    let output = engine_test(&["--color", "never", "--filter", "dollars", FIXTURES]);
    assert_eq!(output.status.code(), Some(1), "invalid.test.yaml is in the directory too");
    let out = stdout(&output);
    assert!(out.contains("case an order in dollars passes ... ok"), "{out}");
    assert!(out.contains("case an order in dollars ... ok"), "{out}");
    assert!(!out.contains("yen"), "{out}");
    assert!(out.contains("2 passed, 0 failed, 5 filtered out, 1 test file could not be run"), "{out}");
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let plain = stdout(&engine_test(&[&format!("{FIXTURES}/passing.test.yaml")]));
    assert!(!plain.contains('\x1b'), "output to a pipe has no colour: {plain:?}");
    let coloured = stdout(&engine_test(&["--color", "always", &format!("{FIXTURES}/passing.test.yaml")]));
    assert!(coloured.contains("\x1b[32mok\x1b[0m"), "{coloured:?}");
}

#[test]
fn usage_and_io_errors_exit_2() {
    let missing = engine_test(&["no/such.test.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read no/such.test.yaml"));
    let empty = engine_test(&["src/functions"]);
    assert_eq!(empty.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no `*.test.yaml` files in src/functions"));
}

#[test]
fn the_readme_example_test_file_passes() {
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("```yaml\nmapping: openai_ads.map").expect("README shows a test file") + "```yaml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    // Named as if it sat in mappings/, where `mapping: openai_ads.map` resolves to the default preset.
    let name = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/readme.test.yaml");
    let report =
        signal_engine::mapping_cases::run_file(name, &readme[start..end], &signal_engine::files::FileLoader, None);
    assert!(report.ok(), "{:#?}", report);
    assert_eq!(report.passed(), 1);
}
