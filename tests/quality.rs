//! `engine quality` against an oracle of its own: the shares it reports for the example stream are recomputed here
//! from `engine run`'s output for the same stream, field by field.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::support::{engine_in, text};

const NOW: &str = "2026-11-20T12:00:00Z";

fn present(value: &Value) -> bool {
    !value.is_null() && value.as_str() != Some("")
}

#[test]
fn the_reported_shares_are_those_of_the_mapped_events() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let events = std::fs::read_to_string(root.join("examples/events.ndjson")).expect("the example stream");
    let run = engine_in(root, &["run", "--now", NOW], &events);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let quality = engine_in(root, &["quality", "--now", NOW, "--format", "json"], &events);
    assert_eq!(quality.status.code(), Some(0), "{}", text(&quality.stderr));
    let report: Value = serde_json::from_slice(&quality.stdout).expect("a JSON report");

    // The oracle: per event type, how many mapped events carry each field.
    let signals: [(&str, &str); 6] = [
        ("oppref", "/oppref"),
        ("email", "/user/email"),
        ("phone", "/user/phone_number"),
        ("external_id", "/user/external_id"),
        ("ip_address", "/user/ip_address"),
        ("user_agent", "/user/user_agent"),
    ];
    let mut counts: BTreeMap<String, (u64, BTreeMap<&str, u64>, u64)> = BTreeMap::new();
    for line in text(&run.stdout).lines() {
        let event: Value = serde_json::from_str(line).expect("a mapped event");
        let entry = counts.entry(event["type"].as_str().expect("a type").to_string()).or_default();
        entry.0 += 1;
        for (name, pointer) in signals {
            *entry.1.entry(name).or_default() += u64::from(event.pointer(pointer).is_some_and(present));
        }
        entry.2 += u64::from(event["opt_out"] == Value::Bool(true));
    }
    let types = report["types"].as_array().expect("types");
    assert_eq!(types.len(), counts.len(), "one entry per event type");
    let mut mapped = 0;
    for entry in types {
        let name = entry["event_type"].as_str().expect("a name");
        let (events, carried, opted_out) = &counts[name];
        mapped += events;
        assert_eq!(entry["events"], *events, "{name}");
        for (signal, count) in carried {
            let expected = (*count as f64 / *events as f64 * 1000.0).round() / 1000.0;
            assert_eq!(entry["signals"][signal].as_f64(), Some(expected), "{name} {signal}");
        }
        let expected = (*opted_out as f64 / *events as f64 * 1000.0).round() / 1000.0;
        assert_eq!(entry["opted_out"].as_f64(), Some(expected), "{name} opted out");
        let score = entry["score"].as_f64().expect("a score");
        assert!((0.0..=10.0).contains(&score), "{name}: {score}");
    }
    assert_eq!(report["mapped"], mapped);

    // The same report for a person and as Markdown.
    let human = engine_in(root, &["quality", "--now", NOW], &events);
    assert!(text(&human.stdout).starts_with("Match quality: "), "{}", text(&human.stdout));
    assert!(text(&human.stdout).contains("advice: "), "{}", text(&human.stdout));
    let markdown = engine_in(root, &["quality", "--now", NOW, "--format", "markdown"], &events);
    let markdown = text(&markdown.stdout);
    assert!(markdown.starts_with("# Match quality: ") && markdown.contains("| event type | events | score |"));
}
