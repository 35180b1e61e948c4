//! The console in a real browser (headless Chromium driven by `tests/sdk/console.mjs` with playwright-core): log in
//! with the token, add an integration in Validate Only and send a test event (the fake OpenAI sees
//! `validate_only`, the page shows its answer), break a rule in the mapping editor and see the diagnostic under the
//! right span, fix it with a completion, save, and see the next event mapped by the new rule without a restart; find
//! that event by its order id in the debugger and keep it open across refreshes; replay a dead letter; read match
//! quality for a stream whose shares this test computes itself; a forged change is refused; every page fits a
//! narrow screen. Screenshots land in `target/console-screenshots/`.

use std::process::{Command, Stdio};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Value};
use signal_engine::relay::start;

use crate::relay::fake_openai::FakeOpenAi;
use crate::relay::{config, data_dir, eventually, now_rfc3339, page, post, API_KEY, INGESTION_KEY, PIXEL};

const TOKEN: &str = "console-ui-token-0123456789";

/// Whether node, the harness's packages and Chromium are here; under CI their absence fails the test.
fn browser_ready() -> bool {
    let runs = |program: &str| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let harness = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/node_modules/playwright-core");
    let ready = runs("node") && runs("chromium") && harness.is_dir();
    assert!(
        ready || std::env::var_os("CI").is_none(),
        "CI is set but node, chromium or tests/sdk/node_modules is missing"
    );
    if !ready {
        eprintln!(
            "NOTICE: the console's browser test did not run: node, chromium or tests/sdk/node_modules is missing"
        );
    }
    ready
}

/// An order of its own visitor, with or without an email.
fn order_of(n: usize, email: bool) -> Value {
    let mut context = json!({"page": {"url": "https://shop.example.com/thanks"}, "consent": {"marketing": true}});
    if email {
        context["traits"] = json!({"email": format!("buyer{n}@example.com")});
    }
    json!({
        "type": "track", "event": "Order Completed", "messageId": format!("m-stream-{n}"),
        "anonymousId": format!("stream-visitor-{n}"), "timestamp": now_rfc3339(),
        "properties": {"order_id": format!("S-{n}"), "revenue": 10, "currency": "USD"},
        "context": context,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser() {
    if !browser_ready() {
        return;
    }
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL, "px_brand"]).await;
    fake.poison_once("m-ui-dead");
    let dir = data_dir("console-ui");
    let mut config = config(&dir, &fake, "");
    config.admin.token = Some(SecretString::from(TOKEN));
    let relay = start(config).await.expect("the relay starts");

    // A known stream: 7 orders of distinct visitors, those with an even number carrying an email.
    let stream: Vec<Value> = (0..7).map(|n| order_of(n, n % 2 == 0)).collect();
    let (status, answer) = post(&relay, "/v1/batch", &json!({"batch": stream})).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = post(&relay, "/v1/p", &page("m-ui-dead")).await;
    assert_eq!(status, 200);
    fake.wait_for(7, Duration::from_secs(10)).await;
    let store_has_dead_letter = || async {
        let admin = relay.admin_addr.unwrap();
        let body: Value = reqwest::Client::new()
            .get(format!("http://{admin}/api/dead-letters"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["count"] == 1
    };
    eventually("the poisoned page is dead-lettered", Duration::from_secs(10), store_has_dead_letter).await;

    let screenshots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    let args = vec![
        "tests/sdk/console.mjs".to_string(),
        "--console".into(),
        format!("http://{}", relay.admin_addr.expect("the console listens")),
        "--relay".into(),
        format!("http://{}", relay.addr),
        "--key".into(),
        INGESTION_KEY.into(),
        "--token".into(),
        TOKEN.into(),
        "--api-key".into(),
        API_KEY.into(),
        "--endpoint".into(),
        fake.url.clone(),
        "--order-id".into(),
        "UI-ORDER-77".into(),
        "--dead-id".into(),
        "m-ui-dead".into(),
        "--screenshots".into(),
        screenshots.display().to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node").args(&args).current_dir(env!("CARGO_MANIFEST_DIR")).stdin(Stdio::null()).output()
    })
    .await
    .unwrap()
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("one JSON line ({e}): {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(report["ok"], true, "{report:#}");
    let step = |name: &str| {
        report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no step {name}"))
    };

    let login = step("login");
    assert!(login["login_url"].as_str().unwrap().ends_with("/ui/login"), "{login}");
    let cookie = &login["session_cookie"];
    assert_eq!((&cookie["httpOnly"], &cookie["sameSite"]), (&json!(true), &json!("Strict")), "{cookie}");

    let add = step("add");
    assert_eq!(add["validate_only_default"], true, "{add}");
    assert_eq!(add["answer_status"], "202", "{add}");
    assert_eq!(add["test_answer"], r#"{"received":1}"#, "OpenAI's answer verbatim: {add}");
    let test_request =
        fake.requests().into_iter().find(|r| r.pid.as_deref() == Some("px_brand")).expect("the test event");
    assert!(test_request.validate_only, "{test_request:?}");
    assert!(!step("listed")["brand_row"].as_str().unwrap().contains(API_KEY), "the key is not shown");

    let editor = step("editor");
    let diagnostic = &editor["diagnostic"];
    assert_eq!(diagnostic["code"], "engine::check::unknown_target_field", "{diagnostic}");
    assert!(diagnostic["text"].as_str().unwrap().contains("did you mean `data.currency`"), "{diagnostic}");
    let typed_line = diagnostic["lines"].as_u64().unwrap() - 1;
    assert_eq!(diagnostic["line"], typed_line, "the diagnostic is on the typed rule's line: {diagnostic}");
    assert_eq!(diagnostic["spanned"], "data.curency", "{diagnostic}");
    assert_eq!(diagnostic["marked"], json!(["data.curency"]), "the editor highlights the span: {diagnostic}");
    assert!(editor["offered"].as_array().unwrap().contains(&json!("data.currency")), "{editor}");
    assert_eq!(editor["fixed_line"], "  \"EUR\" -> data.currency");
    assert_eq!(editor["preview_has_eur"], true);

    assert_eq!(step("order")["status"], 200);
    eventually("the order sent after the save is delivered", Duration::from_secs(10), || async {
        fake.accepted().iter().any(|e| e["id"] == "m-ui-order")
    })
    .await;
    let accepted = fake.accepted_for(PIXEL);
    let order = accepted.iter().find(|e| e["id"] == "m-ui-order").expect("the order after the save");
    assert_eq!(order["data"]["currency"], "EUR", "mapped by the saved rule, no restart: {order}");

    let debugger = step("debugger");
    let mut found: Vec<&str> = debugger["found"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    found.sort_unstable();
    assert_eq!(
        found,
        ["m-ui-order @ brand", "m-ui-order @ default"],
        "found by its order id, at each pixel: {debugger}"
    );
    assert_eq!(debugger["still_open"], true, "what was opened stays open across refreshes");
    assert_eq!(debugger["payload_has_eur"], true);
    assert!(debugger["silent_rules"].as_u64().unwrap() > 0, "the silent rules are shown: {debugger}");

    assert!(step("dead-letter")["message"].as_str().unwrap().contains("1 event"), "{report:#}");
    eventually("the replayed dead letter is delivered", Duration::from_secs(10), || async {
        fake.accepted().iter().any(|e| e["id"] == "m-ui-dead")
    })
    .await;

    // Shares computed here from what was sent: the stream's orders and the order sent from the page.
    let orders = 7 + 1;
    let with_email = (0..7).filter(|n| n % 2 == 0).count();
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let quality = step("quality");
    let order_row = quality["shares"].as_array().unwrap().iter().find(|r| r["event_type"] == "order_created").unwrap();
    assert_eq!(order_row["signals"]["email"], round3(with_email as f64 / orders as f64), "{quality}");
    assert_eq!(order_row["signals"]["external_id"], 1.0);
    assert_eq!(order_row["signals"]["ip_address"], 1.0, "the relay adds the connection's address");

    let csrf = step("csrf");
    assert_eq!((&csrf["status"], &csrf["body"]["error"]), (&json!(403), &json!("csrf")), "{csrf}");
    for (page, width) in step("narrow")["widths"].as_object().unwrap() {
        assert!(width.as_u64().unwrap() <= 390, "{page} is wider than a 390-pixel screen: {width}");
    }
    assert_eq!(report["console_errors"], json!([]), "{report:#}");
    relay.stop().await;
}
