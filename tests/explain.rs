//! `engine explain`: the provenance of every output field. Every preset fixture under `fixtures/events/` (each
//! route of the default preset, and the drops, rejections and identity cases) is explained and snapshotted as the
//! human tree and as JSON; over the whole example stream the explanation must agree with the runtime, account
//! for every field sent, and never show personal data unless asked.

use serde_json::{json, Value};
use signal_engine::explain::{explain, explain_value, Origin};
use signal_engine::identity::MemoryStore;
use signal_engine::presets;
use signal_engine::quality::Observation;
use signal_engine::run::Outcome;
use signal_engine::Context;

use crate::support::{millis, preset_plan as plan, PresetCase};

#[test]
fn explain_preset_fixtures() {
    insta::glob!("fixtures/events/*.json", |path| {
        let PresetCase { plan, now_ms: now, remembering, events, .. } = PresetCase::load(path);
        let mut memory = MemoryStore::default();
        let mut text = String::new();
        let mut records = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let mut context =
                if remembering { Context::with_identity(now, &mut memory) } else { Context::stateless(now) };
            let event = event.to_string();
            let explanation = explain(&plan, &event, &mut context);
            text.push_str(&format!("── event {}\n{}", index + 1, explanation.render_text(false)));
            records.push(explanation.to_json(false));
        }
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(format!("{name}.txt"), text);
        insta::assert_json_snapshot!(format!("{name}.json"), Value::Array(records));
    });
}

/// The leaves of an OpenAI event with their output paths: `data.amount`, `data.contents[0].id`.
fn leaves(value: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                leaves(child, &child_path, out);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                leaves(item, &format!("{path}[{index}]"), out);
            }
        }
        leaf => out.push((path.to_string(), leaf.clone())),
    }
}

/// Over the example stream, with identity memory: explain gives the runtime's own outcome and leaves memory as
/// the runtime does; every field sent is accounted for with the value sent; every rule-made field names its rule.
#[test]
fn explanations_agree_with_the_runtime_on_the_example_stream() {
    let plan = plan(&presets::OPENAI_ADS);
    let now = millis("2026-11-20T12:00:00Z");
    let stream = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/events.ndjson")).unwrap();
    let (mut explained_memory, mut applied_memory) = (MemoryStore::default(), MemoryStore::default());
    let mut mapped = 0;
    for line in stream.lines().filter(|l| !l.trim().is_empty()) {
        let explanation = explain(&plan, line, &mut Context::with_identity(now, &mut explained_memory));
        let applied = plan.apply_str(line, &mut Context::with_identity(now, &mut applied_memory));
        assert_eq!(explanation.outcome, applied, "explain and apply differ on {line}");
        let Outcome::Mapped(event) = &applied else { continue };
        mapped += 1;
        let mut sent = Vec::new();
        leaves(&serde_json::from_str(&event.json).unwrap(), "", &mut sent);
        for (field, value) in sent {
            let trace = explanation.field(&field).unwrap_or_else(|| panic!("`{field}` is not explained in {line}"));
            assert_eq!(trace.value, value, "`{field}` explained with another value than sent, in {line}");
            if let Origin::Rule(rule) = &trace.origin {
                assert_eq!(explanation.rule_for(&field), Some(rule.rule.as_str()));
            }
        }
    }
    assert!(mapped > 100, "the example stream maps most events, got {mapped}");
}

/// An explanation made owned (as the relay's debugger keeps one) outlives the event's text and says exactly what
/// the borrowing one said, as JSON, masked and not, and as text.
#[test]
fn an_owned_explanation_says_what_the_borrowed_one_said() {
    let plan = plan(&presets::OPENAI_ADS);
    let now = millis("2026-11-20T12:00:00Z");
    let stream = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/events.ndjson")).unwrap();
    let mut memory = MemoryStore::default();
    for line in stream.lines().filter(|l| !l.trim().is_empty()) {
        let event = line.to_string();
        let explanation = explain(&plan, &event, &mut Context::with_identity(now, &mut memory));
        let said = (explanation.to_json(true), explanation.to_json(false), explanation.render_text(true));
        let owned = explanation.into_owned();
        drop(event);
        assert_eq!((owned.to_json(true), owned.to_json(false), owned.render_text(true)), said, "{line}");
    }
}

#[test]
fn personal_values_are_masked_unless_asked_for() {
    let plan = plan(&presets::OPENAI_ADS);
    let now = millis("2026-11-20T12:00:00Z");
    let event = json!({
        "type": "track", "event": "Order Completed", "messageId": "m-1", "timestamp": "2026-11-20T11:00:00Z",
        "properties": {"revenue": "not a number", "currency": "USD"},
        "context": {"traits": {"email": "Jane.Doe@Example.com", "phone": "not a phone +44 7700"}}
    })
    .to_string();
    let explanation = explain(&plan, &event, &mut Context::stateless(now));
    for shown in [explanation.render_text(false), explanation.to_json(false).to_string()] {
        for secret in ["Jane.Doe@Example.com", "jane.doe@example.com", "7700"] {
            assert!(!shown.contains(secret), "{secret:?} shown without --show-pii:\n{shown}");
        }
        assert!(shown.contains("<personal: 20 characters>"), "masked values keep their size:\n{shown}");
    }
    let revealed = explanation.render_text(true);
    assert!(revealed.contains("Jane.Doe@Example.com") && revealed.contains("jane.doe@example.com"), "{revealed}");
}

#[test]
fn rule_for_names_the_rule_meant_to_produce_a_missing_field() {
    let plan = plan(&presets::OPENAI_ADS);
    let now = millis("2026-11-20T12:00:00Z");
    let event = json!({
        "type": "track", "event": "Order Completed", "messageId": "m-1", "timestamp": "2026-11-20T11:00:00Z",
        "properties": {"revenue": 10, "products": [{"product_id": "A", "price": 5}]}
    })
    .to_string();
    let explanation = explain(&plan, &event, &mut Context::stateless(now));
    let amount = explanation.silent.iter().find(|r| r.target == "data.amount").expect("data.amount is explained");
    assert_eq!(explanation.rule_for("data.amount"), Some(amount.rule.as_str()));
    assert!(amount.why.as_deref().unwrap_or_default().contains("currency"), "{:?}", amount.why);
    // An element field missing in one element names the element rule.
    let element_amount = explanation.rule_for("data.contents[0].amount").expect("the element rule is named");
    assert!(explanation.silent.iter().any(|r| r.rule == element_amount && r.target == "data.contents[*].amount"));
    assert_eq!(explanation.rule_for("type"), None, "the route sets the event type");
}

/// The generated dataset (`../shared/bench/gen_events.py`, the benchmarks' events), 20,000 events with identity memory:
/// the fast text reader (which takes objects apart and builds them only for the routes that read them whole) and
/// the parsed-tree reader (the relay's, which builds everything) give byte-identical outcomes, explain's outcome is the
/// runtime's on every event, and fast paths (remembered phone numbers) change nothing: the same stream applied a
/// second time, with every number now remembered, gives the same output. What the relay notes of each mapped
/// event's match quality while mapping it is what reading the event's text says. It needs `../shared` beside the checkout,
/// as the machines of this project (and their CI) have it; elsewhere it says so and passes.
#[test]
fn every_entry_point_agrees_on_the_generated_dataset() {
    let generator = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/bench/gen_events.py");
    if !std::path::Path::new(generator).exists() {
        assert!(std::env::var_os("CI").is_none(), "CI is set but {generator} is missing: CI runs beside ../shared");
        eprintln!("NOTICE: the dataset equivalence test did not run: {generator} is missing");
        return;
    }
    let output = std::process::Command::new("python3").args([generator, "20000", "7"]).output().expect("python3 runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stream = String::from_utf8(output.stdout).expect("UTF-8 events");
    let plan = plan(&presets::OPENAI_ADS);
    let now = millis("2026-11-20T12:00:00Z");
    let mut memories: [MemoryStore; 5] = Default::default();
    let mut first_pass = Vec::new();
    for line in stream.lines().filter(|l| !l.trim().is_empty()) {
        let [text_memory, tree_memory, explain_memory, explain_tree_memory, noting_memory] = &mut memories;
        let from_text = plan.apply_str(line, &mut Context::with_identity(now, text_memory));
        let (noting, observed) = plan.apply_str_noting_quality(line, &mut Context::with_identity(now, noting_memory));
        assert_eq!(noting, from_text, "noting match quality changes the outcome of {line}");
        if let Outcome::Mapped(mapped) = &noting {
            let observed = observed.expect("a mapped event's quality is noted");
            let read = Observation::of_text(&mapped.event_type, &mapped.json, true, Some(5));
            assert_eq!(Some(Observation::of_observed(&mapped.event_type, observed, true, Some(5))), read, "{line}");
        } else {
            assert_eq!(observed, None, "only a mapped event has a quality to note: {line}");
        }
        let tree: Value = serde_json::from_str(line).expect("a JSON event");
        let from_tree = plan.apply(&tree, &mut Context::with_identity(now, tree_memory));
        assert_eq!(from_text, from_tree, "the text and tree readers differ on {line}");
        let explained = explain(&plan, line, &mut Context::with_identity(now, explain_memory));
        assert_eq!(explained.outcome, from_text, "explain differs from apply on {line}");
        let explained_tree = explain_value(&plan, &tree, &mut Context::with_identity(now, explain_tree_memory));
        assert_eq!(explained_tree.outcome, from_text, "explain of a parsed event differs on {line}");
        first_pass.push(from_text);
    }
    assert!(first_pass.iter().filter(|o| matches!(o, Outcome::Mapped(_))).count() > 19_000);
    let mut again = MemoryStore::default();
    for (line, first) in stream.lines().filter(|l| !l.trim().is_empty()).zip(&first_pass) {
        let second = plan.apply_str(line, &mut Context::with_identity(now, &mut again));
        assert_eq!(&second, first, "a second pass (numbers remembered) differs on {line}");
    }
}

/// A block over one object (`properties -> data.contents[*]`, Product Viewed) reads the object's members where the
/// reader captured them when untraced, and the object built whole when explained: the two agree on raw texts whose
/// trees hide what the text says (a member or `properties` itself given twice, escapes) and on sources that are not
/// objects.
#[test]
fn a_block_over_one_object_reads_its_members_as_explain_reads_the_object() {
    let plan = plan(&presets::OPENAI_ADS);
    let now = millis("2026-11-20T12:00:00Z");
    let head = r#"{"type":"track","event":"Product Viewed","messageId":"m1","anonymousId":"a1","timestamp":"2026-11-20T11:00:00Z","context":{"page":{"url":"https://shop.example.com/p"}},"properties":"#;
    let cases = [
        (r#"{"product_id":"p1","product_id":"p2","price":1.5,"currency":"EUR","name":"N"}"#, Some("p2")),
        (r#"{"sku":"s\u00e9","price":2,"currency":"USD","quantity":3,"name":"x","name":"y"}"#, Some("sé")),
        (r#"{"product_id":"first"},"properties":{"sku":"second","currency":"USD"}"#, Some("second")),
        (r#"{"product_id":{"nested":1},"sku":"fallback"}"#, None),
        (r#"{}"#, None),
        (r#""text""#, None),
        (r#"[{"product_id":"in an array"}]"#, None),
        (r#"null"#, None),
        (r#"12"#, None),
    ];
    for (properties, id) in cases {
        let text = format!("{head}{properties}}}");
        let applied = plan.apply_str(&text, &mut Context::stateless(now));
        let explained = explain(&plan, &text, &mut Context::stateless(now));
        assert_eq!(explained.outcome, applied, "explain and apply differ on {text}");
        let tree: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(plan.apply(&tree, &mut Context::stateless(now)), applied, "the tree reader differs on {text}");
        if let Some(id) = id {
            let Outcome::Mapped(mapped) = &applied else { panic!("{text} is not mapped: {applied:?}") };
            let sent: Value = serde_json::from_str(&mapped.json).unwrap();
            assert_eq!(sent["data"]["contents"][0]["id"], json!(id), "{text}");
        }
    }
}
