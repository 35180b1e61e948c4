//! `engine functions` and `docs/functions.md`: the reference is generated from the function declarations, and
//! the committed file must be exactly what they generate.

use std::process::Output;

use serde_json::Value;
use signal_engine::ast::FileId;
use signal_engine::{functions, syntax};

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/functions.md");

fn engine(args: &[&str]) -> Output {
    crate::support::engine(args, "")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

/// Fails when a declaration changed and docs/functions.md was not regenerated. `UPDATE_DOCS=1 cargo test`
/// rewrites the file instead.
#[test]
fn docs_functions_md_is_generated_from_the_declarations() {
    let generated = functions::reference_markdown();
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(REFERENCE, &generated).expect("docs/functions.md is writable");
        return;
    }
    let committed = std::fs::read_to_string(REFERENCE).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| committed.lines().count().min(generated.lines().count()) + 1, |index| index + 1);
        panic!(
            "docs/functions.md differs from the function declarations (first at line {line}); regenerate it with\n\
             \n    cargo run -- functions --format markdown > docs/functions.md\n\n\
             (or UPDATE_DOCS=1 cargo test) and commit the result"
        );
    }
}

#[test]
fn markdown_format_prints_exactly_the_reference() {
    let output = engine(&["functions", "--format", "markdown"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stdout(&output), functions::reference_markdown());
}

#[test]
fn the_listing_shows_every_function_with_its_examples() {
    let output = engine(&["functions"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let listing = stdout(&output);
    for function in functions::all() {
        assert!(listing.contains(&format!("{}\n  {}\n", function.signature(), function.summary)), "{}", function.name);
    }
    assert!(listing.contains("129.99 | multiply(100) → 12999\n"), "{listing}");
    assert!(listing.contains("\"+44 7700 900123\" | e164(\"US\") → \"+447700900123\"\n"), "{listing}");
    assert!(
        listing.contains("\"call me\" | e164(\"US\") → nothing (warning: e164: not a phone number)\n"),
        "{listing}"
    );
    assert!(listing.contains("(missing) | not → nothing\n"), "{listing}");
    assert!(listing
        .ends_with("20 functions. `engine functions NAME` shows one in full; docs/functions.md is the reference.\n"));
}

#[test]
fn a_name_shows_one_function_in_full() {
    let output = engine(&["functions", "normalize_email"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(text.starts_with("normalize_email() : string -> string\n\n"), "{text}");
    assert!(text.contains("Personal data: kept."), "{text}");
    assert!(text.contains("dots and `+tags`"), "{text}");
    assert!(
        text.contains(
            "\"not an email\" | normalize_email → nothing (warning: normalize_email: not an email address (no @))"
        ),
        "{text}"
    );
    assert!(!text.contains("multiply"), "{text}");

    let markdown = stdout(&engine(&["functions", "sha256", "--format", "markdown"]));
    assert_eq!(markdown, functions::find("sha256").unwrap().markdown());
    assert!(markdown.contains("**Personal data:** removed."), "{markdown}");
}

#[test]
fn an_unknown_name_is_a_usage_error_with_a_suggestion() {
    let output = engine(&["functions", "sha265"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown function `sha265`; did you mean `sha256`?"), "{stderr}");

    let far = engine(&["functions", "frobnicate"]);
    assert_eq!(far.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&far.stderr);
    assert!(stderr.contains("unknown function `frobnicate`; `engine functions` lists them all"), "{stderr}");

    let format = engine(&["functions", "--format", "html"]);
    assert_eq!(format.status.code(), Some(2));
}

#[test]
fn json_describes_every_declaration() {
    let output = engine(&["functions", "--format", "json"]);
    assert_eq!(output.status.code(), Some(0));
    let all: Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    let all = all.as_array().expect("an array");
    assert_eq!(all.len(), functions::all().len());
    for (json, function) in all.iter().zip(functions::all()) {
        assert_eq!(json["name"], function.name);
        assert_eq!(json["signature"], function.signature());
        assert_eq!(json["summary"], function.summary);
        assert!(json["doc"].as_str().is_some_and(|doc| !doc.is_empty()), "{}", function.name);
        assert_eq!(json["examples"].as_array().map(Vec::len), Some(function.examples.len()), "{}", function.name);
        assert_eq!(json["params"].as_array().map(Vec::len), Some(function.params.len()), "{}", function.name);
    }
    let minor_units = all.iter().find(|f| f["name"] == "minor_units").unwrap();
    assert_eq!(minor_units["input"], "string or number");
    assert_eq!(minor_units["output"], "integer");
    assert_eq!(minor_units["pii"], "keeps");
    assert_eq!(minor_units["category"], "numeric");
    assert_eq!(minor_units["params"][0]["name"], "currency");
    assert_eq!(minor_units["examples"][0]["input"], 129.99);
    assert_eq!(minor_units["examples"][0]["args"][0], "USD");
    assert_eq!(minor_units["examples"][0]["output"], 12999);

    let one: Value = serde_json::from_slice(&engine(&["functions", "consent", "--format", "json"]).stdout).unwrap();
    assert_eq!(one["source_input"], "context.consent");
    assert_eq!(one["pii"], "keeps");
}

/// The calls the docs show are mapping syntax a user can copy: each parses as a pipe call of its function with
/// its example's arguments (JSON `null` reads as a path, which is missing, as a null source is).
#[test]
fn example_calls_are_mapping_syntax() {
    for function in functions::reference_json().as_array().unwrap() {
        for example in function["examples"].as_array().unwrap() {
            let call = example["call"].as_str().unwrap();
            let parsed = syntax::parse_call(FileId(0), call).unwrap_or_else(|e| panic!("{call}: {e:?}"));
            assert_eq!(parsed.name.name, function["name"].as_str().unwrap(), "{call}");
            assert_eq!(parsed.args.len(), example["args"].as_array().unwrap().len(), "{call}");
        }
    }
}
