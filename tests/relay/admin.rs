//! The console's JSON API (`/api/…` on `admin.listen`) against a running relay and the fake OpenAI: who may use it
//! (token, loopback, forged browser requests), pixels added, changed and removed while the relay runs and kept
//! across restarts, a test event sent with `validate_only`, mapping drafts checked, previewed, saved without a
//! restart and rolled back, and dead letters replayed and purged on the running relay.

use std::time::Duration;

use reqwest::Method;
use secrecy::SecretString;
use serde_json::{json, Value};
use signal_engine::relay::{start, RelayHandle};

use crate::relay::fake_openai::FakeOpenAi;
use crate::relay::{config, data_dir, eventually, order, page, post, API_KEY, PIXEL, PIXEL_NAME};

const TOKEN: &str = "console-token-0123456789abcdef";

/// A relay whose console asks for [`TOKEN`].
async fn relay_with_token(dir: &std::path::Path, fake: &FakeOpenAi, extra: &str) -> RelayHandle {
    let mut config = config(dir, fake, extra);
    config.admin.token = Some(SecretString::from(TOKEN));
    start(config).await.unwrap_or_else(|e| panic!("the relay starts: {e}"))
}

/// One console request: method, path, JSON body (or none), extra headers, and the bearer token to present.
async fn call(
    relay: &RelayHandle,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
    token: Option<&str>,
) -> (u16, Value) {
    let admin = relay.admin_addr.expect("the console listens");
    let mut request = reqwest::Client::new().request(method, format!("http://{admin}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let response = request.send().await.expect("the console answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn api(relay: &RelayHandle, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    call(relay, method, path, body, &[], Some(TOKEN)).await
}

fn pixel<'v>(list: &'v Value, name: &str) -> &'v Value {
    list["integrations"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no integration {name} in {list:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_asks_for_its_token_and_never_shows_the_api_key() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("admin-token");
    let relay = relay_with_token(&dir, &fake, "").await;
    for (token, headers) in [(None, vec![]), (Some("wrong-token-0123456789"), vec![])] {
        let (status, body) = call(&relay, Method::GET, "/api/integrations", None, &headers, token).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "unauthorized");
    }
    let (status, body) =
        call(&relay, Method::GET, "/api/integrations", None, &[("authorization", &format!("Basic {TOKEN}"))], None)
            .await;
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, body) =
        call(&relay, Method::GET, "/api/integrations", None, &[("cookie", "engine_console=made-up")], None).await;
    assert_eq!(status, 401, "an unknown session is refused: {body}");

    let (status, list) = api(&relay, Method::GET, "/api/integrations", None).await;
    assert_eq!(status, 200, "{list}");
    let default = pixel(&list, PIXEL_NAME);
    assert_eq!(default["pixel_id"], PIXEL);
    assert_eq!(default["origin"], "file");
    assert_eq!(default["api_key"], json!({"set": true, "last4": &API_KEY[API_KEY.len() - 4..]}));
    assert_eq!(default["consent_category"], "marketing");
    assert_eq!(default["validate_only"], false);
    assert_eq!(default["mapping"]["version"], 0);
    assert_eq!(default["queue_depth"], 0);
    assert!(!list.to_string().contains(API_KEY), "the API key is never returned: {list}");
    let (status, _) = api(&relay, Method::GET, "/api/integrations/nope", None).await;
    assert_eq!(status, 404);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_this_machine_may_use_the_console_and_browsers_need_the_pages_token() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("admin-loopback");
    let relay = crate::relay::relay(&dir, &fake, "").await;
    let (status, list) = call(&relay, Method::GET, "/api/integrations", None, &[], None).await;
    assert_eq!(status, 200, "loopback without a token: {list}");
    // A page on another site that resolves its own name to 127.0.0.1 (DNS rebinding) sends its own Host.
    let (status, body) =
        call(&relay, Method::GET, "/api/integrations", None, &[("host", "evil.example:8089")], None).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{body}");
    let change = json!({"validate_only": true});
    let path = format!("/api/integrations/{PIXEL_NAME}");
    for headers in [
        vec![("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![("x-csrf-token", "guessed")],
    ] {
        let mut all = headers.clone();
        all.push(("origin", "https://evil.example"));
        let (status, body) = call(&relay, Method::PATCH, &path, Some(change.clone()), &all, None).await;
        assert_eq!((status, body["error"].as_str()), (403, Some("csrf")), "{all:?}: {body}");
    }
    let (_, after) = call(&relay, Method::GET, &path, None, &[], None).await;
    assert_eq!(after["validate_only"], false, "no forged change took effect");
    // A script on this machine (no Origin, no Sec-Fetch-*, no cookie) is not a browser acting for another site.
    let (status, body) = call(&relay, Method::PATCH, &path, Some(change), &[], None).await;
    assert_eq!((status, &body["validate_only"]), (200, &json!(true)), "{body}");
    relay.stop().await;
}

#[test]
fn a_console_on_a_public_address_needs_a_token() {
    let dir = data_dir("admin-public");
    let yaml = "listen: 127.0.0.1:0\ndata_dir: data\ndry_run: true\nadmin: {listen: '0.0.0.0:0'}\n";
    let error = signal_engine::relay::config::RelayConfig::parse("relay.yaml", yaml, &dir, &|_| None).unwrap_err();
    assert!(error.0.contains("admin.token_env") && error.0.contains("not a loopback address"), "{error}");
    let yaml = "listen: 127.0.0.1:0\ndata_dir: data\ndry_run: true\nadmin: {listen: '0.0.0.0:0', token_env: T}\n";
    let short = |_: &str| Some("short".to_string());
    let error = signal_engine::relay::config::RelayConfig::parse("relay.yaml", yaml, &dir, &short).unwrap_err();
    assert!(error.0.contains("shorter than 16"), "{error}");
    let long = |_: &str| Some(TOKEN.to_string());
    let config = signal_engine::relay::config::RelayConfig::parse("relay.yaml", yaml, &dir, &long).expect("valid");
    assert!(config.admin.token.is_some() && config.admin.listen.is_some());
    let off = "listen: 127.0.0.1:0\ndata_dir: data\ndry_run: true\nadmin: {enabled: false}\n";
    let config = signal_engine::relay::config::RelayConfig::parse("relay.yaml", off, &dir, &|_| None).expect("valid");
    assert!(config.admin.listen.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integration_added_in_the_console_tests_in_validate_only_delivers_and_survives_a_restart() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL, "px_new"]).await;
    let dir = data_dir("admin-add");
    let relay = relay_with_token(&dir, &fake, "").await;
    let new = json!({"name": "brand", "pixel_id": "px_new", "api_key": API_KEY, "endpoint": fake.url, "consent_category": "advertising"});
    for (broken, why) in [
        (json!({"pixel_id": "px_new", "api_key": API_KEY}), "`name`"),
        (json!({"name": "a b", "pixel_id": "px_new", "api_key": API_KEY}), "not a pixel name"),
        (json!({"name": "brand", "api_key": API_KEY}), "`pixel_id`"),
        (json!({"name": "brand", "pixel_id": "px_new"}), "`api_key`"),
        (json!({"name": "brand", "pixel_id": "px_new", "api_key": API_KEY, "endpoint": "ftp://x"}), "`endpoint`"),
        (json!({"name": "brand", "pixel_id": "px_new", "api_key": API_KEY, "colour": "red"}), "unknown field"),
    ] {
        let (status, body) = api(&relay, Method::POST, "/api/integrations", Some(broken)).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["message"].as_str().unwrap().contains(why), "{why}: {body}");
    }
    let (status, body) = api(&relay, Method::POST, "/api/integrations", Some(new.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["validate_only"], true, "a new integration starts in Validate Only");
    assert_eq!(body["origin"], "console");
    assert_eq!(body["consent_category"], "advertising");
    let (status, body) = api(&relay, Method::POST, "/api/integrations", Some(new)).await;
    assert_eq!(status, 409, "{body}");

    // The test event goes to OpenAI with validate_only, and OpenAI's answer comes back as it was.
    let (status, answer) = api(&relay, Method::POST, "/api/integrations/brand/test-event", None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response"]["status"], 202);
    assert_eq!(answer["response"]["body"], r#"{"received":1}"#);
    assert_eq!(answer["sent"]["event"]["type"], "order_created");
    let seen = fake.requests();
    let last = seen.last().expect("the fake saw the test event");
    assert!(last.validate_only && last.pid.as_deref() == Some("px_new"), "{last:?}");
    assert!(fake.accepted().is_empty(), "validate_only records nothing");
    let (status, answer) = api(
        &relay,
        Method::POST,
        "/api/integrations/brand/test-event",
        Some(json!({"event": {"type": "identify", "userId": "u1", "traits": {"email": "a@b.example"}}})),
    )
    .await;
    assert_eq!((status, answer["error"].as_str()), (422, Some("not_mapped")), "{answer}");
    assert!(!answer.to_string().contains("a@b.example"), "personal data stays masked: {answer}");

    // Switched out of Validate Only, it gets every event, as the file's pixel does.
    let (status, body) =
        api(&relay, Method::PATCH, "/api/integrations/brand", Some(json!({"validate_only": false}))).await;
    assert_eq!((status, &body["validate_only"]), (200, &json!(false)), "{body}");
    let (status, _) = post(&relay, "/v1/t", &order("m-console-1")).await;
    assert_eq!(status, 200);
    fake.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(fake.accepted_for("px_new").len(), 1);
    assert_eq!(fake.accepted_for(PIXEL).len(), 1);
    relay.stop().await;

    // After a restart the console's integration is back, with its key and settings, and still delivers.
    let relay = relay_with_token(&dir, &fake, "").await;
    let (_, list) = api(&relay, Method::GET, "/api/integrations", None).await;
    let brand = pixel(&list, "brand");
    assert_eq!((&brand["validate_only"], &brand["api_key"]["set"]), (&json!(false), &json!(true)), "{brand}");
    assert_eq!(brand["consent_category"], "advertising");
    let (status, _) = post(&relay, "/v1/t", &order("m-console-2")).await;
    assert_eq!(status, 200);
    fake.wait_for(4, Duration::from_secs(10)).await;
    assert_eq!(fake.accepted_for("px_new").len(), 2);

    // The file's pixel cannot be deleted here; the console's can once nothing is left for it.
    let (status, body) = api(&relay, Method::DELETE, &format!("/api/integrations/{PIXEL_NAME}"), None).await;
    assert_eq!(status, 409, "{body}");
    eventually("brand's queue is empty", Duration::from_secs(10), || async {
        let (_, body) = api(&relay, Method::GET, "/api/integrations/brand", None).await;
        body["queue_depth"] == 0
    })
    .await;
    let (status, body) = api(&relay, Method::DELETE, "/api/integrations/brand", None).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = post(&relay, "/v1/t", &order("m-console-3")).await;
    assert_eq!(status, 200);
    fake.wait_for(5, Duration::from_secs(10)).await;
    relay.stop().await;
    assert_eq!(fake.accepted_for("px_new").len(), 2, "a deleted integration gets nothing more");
    let relay = relay_with_token(&dir, &fake, "").await;
    let (_, list) = api(&relay, Method::GET, "/api/integrations", None).await;
    assert_eq!(list["integrations"].as_array().unwrap().len(), 1, "deleted for good: {list}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_pixel_takes_nothing_new_and_keeps_its_queue_until_enabled() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("admin-disable");
    let relay = relay_with_token(&dir, &fake, "").await;
    let path = format!("/api/integrations/{PIXEL_NAME}");
    let (status, body) = api(&relay, Method::PATCH, &path, Some(json!({"disabled": true}))).await;
    assert_eq!((status, &body["disabled"]), (200, &json!(true)), "{body}");
    let (status, answer) = post(&relay, "/v1/t", &order("m-off")).await;
    assert_eq!(status, 200, "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fake.accepted().is_empty(), "a disabled pixel sends nothing");
    let (status, body) = api(&relay, Method::PATCH, &path, Some(json!({"disabled": false}))).await;
    assert_eq!((status, &body["disabled"]), (200, &json!(false)), "{body}");
    let (status, _) = post(&relay, "/v1/t", &order("m-on")).await;
    assert_eq!(status, 200);
    let accepted = fake.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(accepted.len(), 1, "only the event sent while enabled: {accepted:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_is_checked_previewed_saved_without_a_restart_and_rolled_back() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("admin-mapping");
    let relay = relay_with_token(&dir, &fake, "").await;
    let base = format!("/api/integrations/{PIXEL_NAME}/mapping");
    let (status, mapping) = api(&relay, Method::GET, &base, None).await;
    assert_eq!(status, 200, "{mapping}");
    let original = mapping["source"].as_str().expect("the source").to_string();
    assert!(original.contains("\"Order Completed\"      -> order_created"), "the preset's text");
    assert_eq!(mapping["versions"].as_array().unwrap().len(), 1);

    // A draft with an error: the diagnostic names the rule's line and span, and saving it changes nothing.
    let broken = format!("{original}\nwhen order_created {{\n  order_id -> data.bogus\n}}\n");
    let (status, check) = api(&relay, Method::POST, &format!("{base}/check"), Some(json!({"source": broken}))).await;
    assert_eq!(status, 200, "{check}");
    assert!(check["errors"].as_u64().unwrap() >= 1, "{check}");
    let diagnostic =
        &check["diagnostics"].as_array().unwrap().iter().find(|d| d["severity"] == "error").unwrap().clone();
    let (from, to) = (diagnostic["start"].as_u64().unwrap() as usize, diagnostic["end"].as_u64().unwrap() as usize);
    let spanned = &broken[from..to];
    assert!(spanned.contains("nosuch") || spanned.contains("bogus"), "{diagnostic} spans {spanned:?}");
    let line = broken.lines().position(|l| l.contains("data.bogus")).unwrap() + 1;
    assert_eq!(diagnostic["line"], line, "{diagnostic}");
    let (status, refused) = api(&relay, Method::PUT, &base, Some(json!({"source": broken}))).await;
    assert_eq!((status, refused["error"].as_str()), (422, Some("mapping_errors")), "{refused}");
    assert!(refused["check"]["errors"].as_u64().unwrap() >= 1);

    // A good draft: previewed on a pasted event, then saved and in force for the next event.
    let changed =
        original.replace("currency                  -> data.currency | trim | uppercase", "\"EUR\" -> data.currency");
    let (status, preview) = api(
        &relay,
        Method::POST,
        &format!("{base}/preview"),
        Some(json!({"source": changed, "event": order("m-preview")})),
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["explanation"]["outcome"]["event"]["data"]["currency"], "EUR", "{preview}");
    assert!(!preview.to_string().contains("Jane@Example.com"), "personal data masked: {preview}");
    assert!(fake.requests().is_empty(), "a preview sends nothing");
    let (status, saved) = api(&relay, Method::PUT, &base, Some(json!({"source": changed}))).await;
    assert_eq!((status, &saved["version"]), (200, &json!(1)), "{saved}");
    let (status, _) = post(&relay, "/v1/t", &order("m-new-rule")).await;
    assert_eq!(status, 200);
    let accepted = fake.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(accepted[0]["data"]["currency"], "EUR", "the saved rule maps the next event: {}", accepted[0]);

    // The recent event, previewed with the mapping in force.
    let entries = crate::relay::debug_events(&relay).await;
    let seq = entries[0]["seq"].as_u64().unwrap();
    let (status, preview) = api(&relay, Method::POST, &format!("{base}/preview"), Some(json!({"recent": seq}))).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["explanation"]["outcome"]["event"]["data"]["currency"], "EUR");
    let email = crate::relay::sha256_hex("jane@example.com");
    assert_eq!(preview["explanation"]["outcome"]["event"]["user"]["email"], email, "the kept event maps as received");

    // Rollback to the preset: the next event is mapped by it again, and it all survives a restart.
    let (status, rolled) = api(&relay, Method::POST, &format!("{base}/rollback"), Some(json!({"version": 0}))).await;
    assert_eq!((status, &rolled["version"]), (200, &json!(0)), "{rolled}");
    let (status, _) = api(&relay, Method::POST, &format!("{base}/rollback"), Some(json!({"version": 9}))).await;
    assert_eq!(status, 404);
    let (status, _) = post(&relay, "/v1/t", &order("m-old-rule")).await;
    assert_eq!(status, 200);
    let accepted = fake.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(accepted[1]["data"]["currency"], "USD", "{}", accepted[1]);
    let (_, saved) = api(&relay, Method::PUT, &base, Some(json!({"source": changed}))).await;
    assert_eq!(saved["version"], 2);
    relay.stop().await;
    let relay = relay_with_token(&dir, &fake, "").await;
    let (_, mapping) = api(&relay, Method::GET, &base, None).await;
    assert_eq!(mapping["version"], 2, "{mapping}");
    assert_eq!(mapping["versions"].as_array().unwrap().len(), 3);
    let (status, _) = post(&relay, "/v1/t", &order("m-after-restart")).await;
    assert_eq!(status, 200);
    let accepted = fake.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(accepted[2]["data"]["currency"], "EUR");
    relay.stop().await;

    // Once relay.yaml changes the pixel, the file is the source of truth again.
    let mut config = config(&dir, &fake, "params: {default_region: GB}");
    config.admin.token = Some(SecretString::from(TOKEN));
    let relay = start(config).await.expect("starts");
    let (_, mapping) = api(&relay, Method::GET, &base, None).await;
    assert_eq!(mapping["version"], 0, "the file changed: its mapping applies: {mapping}");
    assert_eq!(mapping["versions"].as_array().unwrap().len(), 3, "the console's versions stay for a rollback");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_and_purged_on_the_running_relay() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("admin-dlq");
    let relay = relay_with_token(&dir, &fake, "").await;
    let (_, pre) = api(&relay, Method::GET, "/api/dead-letters", None).await;
    assert_eq!(pre["count"], 0);
    // The preset's event id is the message id.
    for n in 0..2 {
        fake.poison(&format!("m-dead-{n}"));
        let (status, _) = post(&relay, "/v1/p", &page(&format!("m-dead-{n}"))).await;
        assert_eq!(status, 200);
    }
    eventually("both are dead-lettered", Duration::from_secs(10), || async {
        api(&relay, Method::GET, "/api/dead-letters", None).await.1["count"] == 2
    })
    .await;
    let (_, letters) = api(&relay, Method::GET, &format!("/api/dead-letters?pixel={PIXEL_NAME}"), None).await;
    let first = &letters["dead_letters"][0];
    assert_eq!(first["reason"], "rejected");
    assert!(first["detail"].as_str().unwrap().contains("malformed"), "{first}");
    let seq = first["seq"].as_u64().unwrap();
    let (status, shown) = api(&relay, Method::GET, &format!("/api/dead-letters/{PIXEL_NAME}/{seq}"), None).await;
    assert_eq!((status, &shown["event"]["type"]), (200, &json!("page_viewed")), "{shown}");
    let (status, _) = api(&relay, Method::GET, &format!("/api/dead-letters/{PIXEL_NAME}/999999"), None).await;
    assert_eq!(status, 404);
    let (status, body) = api(&relay, Method::POST, "/api/dead-letters/replay", Some(json!({"colour": 1}))).await;
    assert_eq!(status, 400, "an unknown field: {body}");

    let replayed_id = first["id"].as_str().unwrap().to_string();
    fake.cure(&replayed_id);
    let (status, body) =
        api(&relay, Method::POST, "/api/dead-letters/replay", Some(json!({"pixel": PIXEL_NAME, "seqs": [seq]}))).await;
    assert_eq!((status, &body["replayed"]), (200, &json!(1)), "{body}");
    let accepted = fake.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(accepted[0]["id"], replayed_id.as_str(), "replayed and delivered without a restart");
    let (status, body) = api(&relay, Method::POST, "/api/dead-letters/purge", Some(json!({"pixel": PIXEL_NAME}))).await;
    assert_eq!((status, &body["purged"]), (200, &json!(1)), "{body}");
    let (_, after) = api(&relay, Method::GET, "/api/dead-letters", None).await;
    assert_eq!(after["count"], 0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_quality_of_what_was_delivered_is_served_and_exported() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("admin-quality");
    let relay = relay_with_token(&dir, &fake, "").await;
    // Twelve orders: every third without an email, every fourth opted out by its consent state; plus pages and an
    // identify, which is dropped.
    let mut orders = Vec::new();
    for n in 0..12 {
        let mut event = order(&format!("m-q-{n}"));
        // Each order its own visitor, so that identity memory does not lend one order another's email.
        event["anonymousId"] = json!(format!("visitor-{n}"));
        if n % 3 == 0 {
            event["context"]["traits"] = json!({});
        }
        event["context"]["consent"] = json!({"marketing": n % 4 != 0});
        orders.push(event);
    }
    let batch: Vec<Value> = orders
        .iter()
        .cloned()
        .chain((0..5).map(|n| page(&format!("m-qp-{n}"))))
        .chain([json!({"type": "identify", "userId": "u-1", "messageId": "m-qi", "traits": {"plan": "pro"}})])
        .collect();
    let (status, answer) = post(&relay, "/v1/batch", &json!({"batch": batch})).await;
    assert_eq!(status, 200, "{answer}");
    fake.wait_for(17, Duration::from_secs(10)).await;
    let expected_email = orders.iter().filter(|o| o["context"]["traits"]["email"].is_string()).count() as f64 / 12.0;
    let expected_opted_out =
        orders.iter().filter(|o| o["context"]["consent"]["marketing"] == false).count() as f64 / 12.0;
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    eventually("the delivered events are counted", Duration::from_secs(10), || async {
        api(&relay, Method::GET, "/api/quality?window=hour", None).await.1["pixels"][0]["report"]["mapped"] == 17
    })
    .await;
    let (status, body) = api(&relay, Method::GET, "/api/quality?window=hour", None).await;
    assert_eq!(status, 200, "{body}");
    let report = &body["pixels"][0]["report"];
    let order_type = report["types"].as_array().unwrap().iter().find(|t| t["event_type"] == "order_created").unwrap();
    assert_eq!(order_type["events"], 12);
    assert_eq!(order_type["signals"]["email"], round3(expected_email), "{order_type}");
    assert_eq!(order_type["signals"]["ip_address"], 1.0, "the relay adds the connection's address: {order_type}");
    assert_eq!(order_type["opted_out"], round3(expected_opted_out));
    assert_eq!(order_type["measures"]["order_id"], 1.0);
    assert!(order_type["age_p99_ms"].as_i64().unwrap() < 60_000, "{order_type}");
    assert!(order_type["advice"].to_string().contains("lack an email"), "{order_type}");
    assert_eq!(report["dropped"]["identify"], 1, "{report}");
    let (_, week) = api(&relay, Method::GET, &format!("/api/quality?pixel={PIXEL_NAME}&window=week"), None).await;
    assert_eq!(week["pixels"][0]["report"]["mapped"], 17);
    let (status, _) = api(&relay, Method::GET, "/api/quality?pixel=nope", None).await;
    assert_eq!(status, 404);
    let series = format!(
        "signal_relay_match_signal_share{{pixel=\"{PIXEL_NAME}\",window=\"hour\",event_type=\"order_created\",signal=\"email\"}}"
    );
    assert_eq!(crate::relay::metric(&relay, &series).await, round3(expected_email));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debugger_is_searched_by_id_and_the_editor_completes_from_the_schemas() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("admin-search");
    let relay = relay_with_token(&dir, &fake, "").await;
    let mut wanted = order("m-search-1");
    wanted["properties"]["order_id"] = json!("ORD-FIND-ME");
    wanted["anonymousId"] = json!("anon-find-me");
    for event in [wanted, order("m-search-2"), json!({"type": "identify", "messageId": "m-search-3", "userId": "u-9"})]
    {
        let (status, _) = post(&relay, "/v1/batch", &json!({"batch": [event]})).await;
        assert_eq!(status, 200);
    }
    let found = |query: &'static str| {
        let relay = &relay;
        async move {
            let (status, body) = api(relay, Method::GET, &format!("/api/events?{query}"), None).await;
            assert_eq!(status, 200, "{body}");
            let mut ids: Vec<String> = body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["message_id"].as_str().unwrap().to_string())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(found("q=ORD-FIND").await, ["m-search-1"], "by order id");
    assert_eq!(found("q=anon-find-me").await, ["m-search-1"], "by anonymous id");
    assert_eq!(found("q=m-search-2").await, ["m-search-2"], "by message id");
    assert_eq!(found("outcome=dropped").await, ["m-search-3"], "a dropped event shows its message id");
    assert_eq!(found("type=order_created").await, ["m-search-1", "m-search-2"], "by OpenAI event type");
    assert_eq!(found("type=Order%20Completed&q=m-search-2").await, ["m-search-2"], "by Signal event name");
    let (_, body) = api(&relay, Method::GET, "/api/events?q=m-search-1", None).await;
    let entry = &body["events"][0];
    assert!(entry["explanation"]["silent"].is_array(), "the silent rules come along: {entry}");
    assert!(!body.to_string().contains("Jane@Example.com"), "personal data masked: {body}");

    let (status, words) = api(&relay, Method::GET, &format!("/api/vocabulary?pixel={PIXEL_NAME}"), None).await;
    assert_eq!(status, 200, "{words}");
    let has = |list: &str, key: &str, value: &str| words[list].as_array().unwrap().iter().any(|w| w[key] == value);
    assert!(has("functions", "name", "sha256") && has("functions", "name", "minor_units"), "{words}");
    assert!(has("targets", "path", "data.currency") && has("targets", "path", "user.email"), "{words}");
    assert!(has("targets", "path", "data.contents[*]"), "arrays of objects as blocks");
    assert!(has("sources", "path", "context.page.url") && has("sources", "path", "traits.email"));
    let params: Vec<&str> = words["params"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(params.contains(&"consent_category") && params.contains(&"default_region"), "{params:?}");
    let (status, _) = api(&relay, Method::GET, "/api/vocabulary?pixel=nope", None).await;
    assert_eq!(status, 404);
    relay.stop().await;
}
