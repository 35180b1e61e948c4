//! Runtime behaviour of hand-written mappings: what the engine does with events a mapping did not foresee.

use serde_json::{json, Value};
use signal_engine::run::{Outcome, RejectReason};
use signal_engine::source::MemoryLoader;
use signal_engine::{compile, CompileOptions, Context, Plan};

const NOW: i64 = 1_795_176_000_000; // 2026-11-20T12:00:00Z

fn plan(text: &str) -> Plan {
    let compiled = compile("test.map", text, &MemoryLoader::default(), &CompileOptions::default());
    let errors: Vec<_> = compiled.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    compiled.plan.expect("compiles")
}

const HEADER: &str = r#"
routes {
  "Order Completed" -> order_created
  track -> custom("other_event")
}
messageId -> id
timestamp -> timestamp_ms | to_unix_ms
"#;

fn event(extra: Value) -> Value {
    let mut event = json!({
        "type": "track", "event": "Order Completed", "messageId": "m-1", "anonymousId": "a-1",
        "timestamp": "2026-11-20T10:00:00Z", "properties": {}, "context": {"page": {"url": "https://x.example/p"}}
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut event, extra) {
        base.extend(extra);
    }
    event
}

#[test]
fn a_required_field_no_rule_writes_rejects_the_events_that_need_it() {
    // `action_source` is read from the event, so only the runtime can tell that `source_url` is needed.
    let plan = plan(&format!("{HEADER}\nproperties.channel -> action_source\n"));
    let web = plan.apply(&event(json!({"properties": {"channel": "web"}})), &mut Context::stateless(NOW));
    let Outcome::Rejected(rejected) = web else { panic!("{web:?}") };
    assert_eq!(rejected.reason, RejectReason::MissingRequiredField);
    assert_eq!(rejected.field.as_deref(), Some("source_url"));
    let offline = plan.apply(&event(json!({"properties": {"channel": "offline"}})), &mut Context::stateless(NOW));
    assert!(matches!(offline, Outcome::Mapped(_)), "{offline:?}");
}

#[test]
fn the_track_catch_all_takes_unnamed_and_unrouted_track_events() {
    let plan = plan(&format!("{HEADER}\n\"web\" -> action_source\ncontext.page.url -> source_url\n"));
    for name in [json!("Something Else"), Value::Null] {
        let mut input = event(json!({}));
        input["event"] = name;
        let outcome = plan.apply(&input, &mut Context::stateless(NOW));
        let Outcome::Mapped(mapped) = outcome else { panic!("{outcome:?}") };
        let output: Value = serde_json::from_str(&mapped.json).unwrap();
        assert_eq!(output["type"], "custom");
        assert_eq!(output["custom_event_name"], "other_event");
    }
}

#[test]
fn an_array_mapped_as_one_object_warns_instead_of_silently_producing_nothing() {
    let plan = plan(&format!(
        "{HEADER}\n\"web\" -> action_source\ncontext.page.url -> source_url\n\
         when order_created {{ products -> data.contents[*] {{ product_id -> id }} }}\n"
    ));
    let outcome =
        plan.apply(&event(json!({"properties": {"products": [{"product_id": "p"}]}})), &mut Context::stateless(NOW));
    let Outcome::Mapped(mapped) = outcome else { panic!("{outcome:?}") };
    assert!(mapped.warnings.iter().any(|w| w.message.contains("[*]")), "{:?}", mapped.warnings);
}

#[test]
fn later_rules_replace_earlier_values_only_when_they_produce_one() {
    let plan = plan(&format!(
        "{HEADER}\n\"web\" -> action_source\ncontext.page.url -> source_url\n\
         \"first\" -> user.external_id\nproperties.better -> user.external_id\n"
    ));
    let without = plan.apply(&event(json!({})), &mut Context::stateless(NOW));
    let with = plan.apply(&event(json!({"properties": {"better": "second"}})), &mut Context::stateless(NOW));
    let external_id = |outcome: Outcome| match outcome {
        Outcome::Mapped(m) => serde_json::from_str::<Value>(&m.json).unwrap()["user"]["external_id"].clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(external_id(without), "first");
    assert_eq!(external_id(with), "second");
}

#[test]
fn any_function_called_as_a_source_takes_its_input_as_the_first_argument() {
    let plan = plan(&format!(
        "{HEADER}\n\"web\" -> action_source\ncontext.page.url -> source_url\n\
         when order_created {{ concat(\"ORD-\", order_id) -> data.order_id }}\n\
         sha256(lowercase(properties.login)) -> user.external_id\n"
    ));
    let outcome =
        plan.apply(&event(json!({"properties": {"order_id": 42, "login": "ADA"}})), &mut Context::stateless(NOW));
    let Outcome::Mapped(mapped) = outcome else { panic!("{outcome:?}") };
    let output: Value = serde_json::from_str(&mapped.json).unwrap();
    assert_eq!(output["data"]["order_id"], "ORD-42");
    assert_eq!(output["user"]["external_id"], sha256_hex("ada"));
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn warnings_about_personal_data_never_quote_it() {
    let plan = plan(&format!(
        "{HEADER}\n\"web\" -> action_source\ncontext.page.url -> source_url\n\
         context.traits.email -> user.email | to_number | sha256\n\
         properties.note -> user.external_id | to_number | to_string\n"
    ));
    let mut input = event(json!({"properties": {"note": "not a number"}}));
    input["context"]["traits"] = json!({"email": "secret.person@example.com"});
    let Outcome::Mapped(mapped) = plan.apply(&input, &mut Context::stateless(NOW)) else { panic!() };
    let reports = serde_json::to_string(&mapped.warnings).unwrap();
    assert!(!reports.contains("secret.person"), "{reports}");
    assert!(reports.contains("to_number: the value could not be used (personal data, not shown)"), "{reports}");
    // Values that are not personal data are still quoted, which is what makes a warning useful.
    assert!(reports.contains("not a number"), "{reports}");
}

/// Identity memory through one store, as `engine run` streams: an identify teaches an email under a visitor's two
/// keys, an alias links an earlier anonymous id, and later events are filled from memory by whichever key they carry.
/// The keys of each event are written over the last event's (an event with two keys followed by one with one, and an
/// alias with four): a key left over from an earlier event must never find another visitor's memory.
#[test]
fn identity_memory_follows_identify_and_alias_and_nothing_leaks_between_events() {
    use signal_engine::identity::MemoryStore;
    let plan = crate::support::preset_plan(&signal_engine::presets::OPENAI_ADS);
    let mut memory = MemoryStore::default();
    let mut apply = |event: Value| plan.apply_str(&event.to_string(), &mut Context::with_identity(NOW, &mut memory));
    let email = |outcome: &Outcome| match outcome {
        Outcome::Mapped(mapped) => serde_json::from_str::<Value>(&mapped.json).unwrap()["user"]["email"].clone(),
        other => panic!("not mapped: {other:?}"),
    };
    let order = |ids: Value| {
        let mut order = json!({
            "type": "track", "event": "Order Completed", "messageId": "m", "timestamp": "2026-11-20T10:00:00Z",
            "properties": {"revenue": 10, "currency": "USD"}, "context": {"page": {"url": "https://x.example/p"}}
        });
        order.as_object_mut().unwrap().extend(ids.as_object().unwrap().clone());
        order
    };
    let identify = json!({
        "type": "identify", "userId": "u-1", "anonymousId": "a-1", "timestamp": "2026-11-20T09:00:00Z",
        "traits": {"email": "Jane@Example.com"}
    });
    assert!(matches!(apply(identify), Outcome::Dropped(_)));
    let hashed = Value::from(sha256_hex("jane@example.com"));
    assert_eq!(email(&apply(order(json!({"anonymousId": "a-1", "userId": "u-1"})))), hashed, "both keys");
    // One key, after an event with two: only `a-2`, which nothing was learned under.
    assert_eq!(email(&apply(order(json!({"anonymousId": "a-2"})))), Value::Null, "a key of the event before");
    assert_eq!(email(&apply(order(json!({"userId": "u-1"})))), hashed, "the user id alone");
    let alias = json!({"type": "alias", "previousId": "a-0", "userId": "u-1", "timestamp": "2026-11-20T09:30:00Z"});
    assert!(matches!(apply(alias), Outcome::Dropped(_)));
    assert_eq!(email(&apply(order(json!({"anonymousId": "a-0"})))), hashed, "linked by the alias");
    assert_eq!(email(&apply(order(json!({"anonymousId": "a-3"})))), Value::Null, "a key of the alias before");
}
