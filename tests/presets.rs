//! The shipped presets: every route and the edges users hit, one case per fixture file under
//! `fixtures/events/`, snapshotted; the seed's example checked field for field; both presets check clean.

use serde_json::{json, Value};
use signal_engine::identity::MemoryStore;
use signal_engine::presets;
use signal_engine::run::Outcome;
use signal_engine::{CompileOptions, Context};

use crate::support::{millis, preset_plan as plan, PresetCase};

/// The outcome as a JSON value for snapshots: the mapped event itself, or the drop or rejection record.
fn outcome_json(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Mapped(mapped) => {
            let mut record = json!({ "mapped": serde_json::from_str::<Value>(&mapped.json).expect("output is JSON") });
            if !mapped.warnings.is_empty() {
                record["warnings"] = serde_json::to_value(&mapped.warnings).expect("serialisable");
            }
            record
        }
        Outcome::Dropped(dropped) => json!({ "dropped": dropped }),
        Outcome::Rejected(rejected) => json!({ "rejected": rejected }),
        other => panic!("an outcome this test does not know: {other:?}"),
    }
}

#[test]
fn preset_cases() {
    insta::glob!("fixtures/events/*.json", |path| {
        let PresetCase { about, plan, now_ms: now, remembering, events } = PresetCase::load(path);
        let mut memory = MemoryStore::default();
        let outcomes: Vec<Value> = events
            .iter()
            .map(|event| {
                if remembering {
                    return outcome_json(&plan.apply(event, &mut Context::with_identity(now, &mut memory)));
                }
                // Both entry points must agree: parsed events and raw JSON text.
                let from_value = plan.apply(event, &mut Context::stateless(now));
                let text = event.to_string();
                let from_text = plan.apply_str(&text, &mut Context::stateless(now));
                assert_eq!(from_value, from_text, "apply and apply_str differ on {text}");
                outcome_json(&from_value)
            })
            .collect();
        insta::assert_json_snapshot!(json!({ "about": about, "outcomes": outcomes }));
    });
}

/// The seed's "Order Completed" example must produce the seed's payload, with `data.amount` in minor units.
#[test]
fn seed_order_completed_example() {
    let event = json!({
        "type": "track",
        "event": "Order Completed",
        "messageId": "evt_abc123def456",
        "anonymousId": "anon_98f2...",
        "timestamp": "2024-06-06T08:00:00.000Z",
        "properties": {
            "order_id": "ORD-001",
            "revenue": 129.99,
            "currency": "USD",
            "products": [
                { "product_id": "SKU-A", "product_name": "Widget", "quantity": 2 },
                { "product_id": "SKU-B", "product_name": "Gadget", "quantity": 1 }
            ]
        },
        "context": {
            "ip": "203.0.113.50",
            "userAgent": "Mozilla/5.0 ...",
            "page": { "url": "https://example.com/checkout/confirmation?step=done#receipt" },
            "consent": { "marketing": true },
            "traits": { "email": "jane.doe@example.com" }
        }
    });
    let expected_email = sha256_hex("jane.doe@example.com");
    let expected = json!({
        "id": "evt_abc123def456",
        "type": "order_created",
        "timestamp_ms": 1717660800000_i64,
        "action_source": "web",
        "source_url": "https://example.com/checkout/confirmation",
        "opt_out": false,
        "user": {
            "email": expected_email,
            "external_id": "anon_98f2...",
            "ip_address": "203.0.113.50",
            "user_agent": "Mozilla/5.0 ..."
        },
        "data": {
            "type": "contents",
            "amount": 12999,
            "currency": "USD",
            "order_id": "ORD-001",
            "contents": [
                { "id": "SKU-A", "name": "Widget", "quantity": 2 },
                { "id": "SKU-B", "name": "Gadget", "quantity": 1 }
            ]
        }
    });
    let plan = plan(&presets::OPENAI_ADS);
    let outcome = plan.apply(&event, &mut Context::stateless(millis("2024-06-06T09:00:00Z")));
    let Outcome::Mapped(mapped) = outcome else { panic!("the seed example must map, got {outcome:?}") };
    assert!(mapped.warnings.is_empty(), "{:?}", mapped.warnings);
    assert_eq!(serde_json::from_str::<Value>(&mapped.json).unwrap(), expected);
    // The seed's field order, too.
    let keys_in_order = [
        "\"id\"",
        "\"type\"",
        "\"timestamp_ms\"",
        "\"action_source\"",
        "\"source_url\"",
        "\"opt_out\"",
        "\"user\"",
        "\"email\"",
        "\"external_id\"",
        "\"ip_address\"",
        "\"user_agent\"",
        "\"data\"",
        "\"amount\"",
        "\"currency\"",
        "\"order_id\"",
        "\"contents\":[",
    ];
    let positions: Vec<usize> = keys_in_order.iter().map(|k| mapped.json.find(k).expect("key present")).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "field order differs from the seed: {}", mapped.json);
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn reference_test_vector_for_email_hashing() {
    assert_eq!(sha256_hex("user@example.com"), "b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514");
    let plan = plan(&presets::OPENAI_ADS);
    let event = json!({
        "type": "page", "messageId": "m", "anonymousId": "a", "timestamp": "2026-11-20T11:00:00Z",
        "context": { "page": { "url": "https://example.com/" }, "traits": { "email": " USER@EXAMPLE.COM " } }
    });
    let Outcome::Mapped(mapped) = plan.apply(&event, &mut Context::stateless(millis("2026-11-20T12:00:00Z"))) else {
        panic!("page maps")
    };
    let output: Value = serde_json::from_str(&mapped.json).unwrap();
    assert_eq!(output["user"]["email"], "b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514");
}

/// The whole bundled example stream: nothing rejected, no raw personal data in any output.
#[test]
fn bundled_example_stream_maps_without_leaking_personal_data() {
    let plan = plan(&presets::OPENAI_ADS);
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/events.ndjson")).unwrap();
    let now = millis("2026-11-20T12:00:00Z");
    let mut memory = MemoryStore::default();
    let (mut mapped, mut dropped) = (0, 0);
    for line in text.lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        let raw_email = event["context"]["traits"]["email"].as_str().map(|e| e.trim().to_lowercase());
        match plan.apply_str(line, &mut Context::with_identity(now, &mut memory)) {
            Outcome::Mapped(m) => {
                mapped += 1;
                assert!(!m.json.contains('@'), "an email left unhashed: {}", m.json);
                if let Some(email) = raw_email {
                    assert!(!m.json.to_lowercase().contains(&email));
                }
                let output: Value = serde_json::from_str(&m.json).unwrap();
                for amount in [&output["data"]["amount"]]
                    .into_iter()
                    .chain(output["data"]["contents"].as_array().into_iter().flatten().map(|item| &item["amount"]))
                {
                    assert!(amount.is_null() || amount.is_i64(), "amounts are integers: {}", m.json);
                }
            }
            Outcome::Dropped(_) => dropped += 1,
            Outcome::Rejected(r) => panic!("rejected: {r:?} for {line}"),
            other => panic!("an outcome this test does not know: {other:?}"),
        }
    }
    assert!(mapped > 150, "mapped {mapped}");
    assert!(dropped > 0, "Button Clicked events are unmapped");
}

#[test]
fn both_presets_check_clean() {
    for preset in presets::ALL {
        let compiled = preset.compile(&CompileOptions::default());
        assert!(compiled.diagnostics.is_empty(), "{}: {:?}", preset.name, compiled.diagnostics);
        assert_eq!(compiled.plan.unwrap().routes().count(), 9);
    }
}
