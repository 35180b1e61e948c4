//! The relay against the fake OpenAI: events in through the ingestion routes, the right payloads out.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use signal_engine::relay::config::RelayConfig;
use signal_engine::relay::{start, RelayHandle};

use crate::fake_openai::FakeOpenAi;

pub const API_KEY: &str = "sk-test-0123456789";
pub const PIXEL: &str = "px_test";
pub const INGESTION_KEY: &str = "dk_test_ingestion_key";

/// A fresh data directory under the system temp dir.
pub fn data_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("engine-relay-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

/// A relay configuration delivering to `fake`, with `extra` YAML appended, written into `dir`.
pub fn config(dir: &std::path::Path, fake: &FakeOpenAi, extra: &str) -> RelayConfig {
    let yaml = format!(
        "listen: 127.0.0.1:0\ndata_dir: data\npixel_id: {PIXEL}\napi_key: {API_KEY}\nendpoint: {}\n\
         ingestion:\n  keys:\n    - name: site\n      key: {INGESTION_KEY}\n      hmac_secret: the-signing-secret\n\
         batch:\n  linger_ms: 50\nretry:\n  initial_backoff_ms: 20\n  max_backoff_ms: 200\n  timeout_ms: 2000\n  auth_probe_ms: 100\n{extra}",
        fake.url
    );
    let path = dir.join("relay.yaml");
    std::fs::write(&path, yaml).expect("config written");
    RelayConfig::load(&path, &|_| None).unwrap_or_else(|e| panic!("config: {e}"))
}

/// Now, as an RFC 3339 timestamp inside OpenAI's window.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

pub fn order(message_id: &str) -> Value {
    json!({
        "type": "track", "event": "Order Completed", "messageId": message_id, "anonymousId": "anon-1",
        "timestamp": now_rfc3339(),
        "properties": {"order_id": "O-1", "revenue": 129.99, "currency": "USD"},
        "context": {"page": {"url": "https://shop.example.com/thanks?x=1"}, "traits": {"email": " Jane@Example.com "}}
    })
}

pub async fn post(relay: &RelayHandle, path: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}{path}", relay.addr))
        .bearer_auth(INGESTION_KEY)
        .json(body)
        .send()
        .await
        .expect("the relay answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_reaches_openai_mapped_with_its_email_hashed() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("order");
    let relay = start(config(&dir, &fake, "")).await.expect("the relay starts");
    let (status, body) = post(&relay, "/v1/t", &order("m-1")).await;
    assert_eq!((status, body), (200, json!({"success": true})));
    let accepted = fake.wait_for(1, Duration::from_secs(10)).await;
    let event = &accepted[0];
    assert_eq!(event["id"], "m-1");
    assert_eq!(event["type"], "order_created");
    assert_eq!(event["data"]["amount"], 12999);
    assert_eq!(
        event["user"]["email"], "8c87b489ce35cf2e2f39f80e282cb2e804932a56a213983eeeb428407d43b52d",
        "sha256 of jane@example.com"
    );
    assert_eq!(fake.requests()[0].pid.as_deref(), Some(PIXEL));
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
