//! The relay against the fake OpenAI, in process: events in through every ingestion route and the right payloads
//! out, ingestion refusals, delivery under OpenAI's failures, durability across stops and the disk cap, several
//! pixels, and secrets kept out of everything the relay writes or shows. Timings are short in the configuration
//! and every wait polls with a deadline.

mod admin;
mod audit;
mod browser;
mod clients;
mod console;
mod crash;
mod delivery;
mod dlq;
mod docs;
mod durability;
pub mod fake_openai;
mod fleet;
mod hostile;
mod ingestion;
mod pg;
mod pixels;
pub mod process;
mod routes;
mod sdk;
mod secrets;
mod storage;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use signal_engine::relay::config::RelayConfig;
use signal_engine::relay::store::{RedbStore, Store};
use signal_engine::relay::{start, RelayHandle};

use fake_openai::FakeOpenAi;

pub const API_KEY: &str = "sk-test-0123456789";
pub const PIXEL: &str = "px_test";
pub const INGESTION_KEY: &str = "dk_test_ingestion_key";
pub const HMAC_SECRET: &str = "the-signing-secret";
/// The name a single top-level pixel gets, which labels its metrics and queue.
pub const PIXEL_NAME: &str = "default";

/// A fresh data directory under the system temp dir.
pub fn data_dir(test: &str) -> TestDir {
    TestDir(tempfile::Builder::new().prefix(&format!("engine-relay-{test}-")).tempdir().expect("a temporary directory"))
}

/// A test's own temporary directory, removed when the test ends, whether it passes or fails.
pub struct TestDir(tempfile::TempDir);

impl std::ops::Deref for TestDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

/// A relay configuration delivering to `fake`, written into `dir` (its store in `dir/data`). `extra` is YAML merged
/// over the defaults: a mapping merges key by key (`retry: {timeout_ms: 300}` keeps the other retry settings), any
/// other value replaces; `integrations` replaces the default top-level pixel.
pub fn config(dir: &Path, fake: &FakeOpenAi, extra: &str) -> RelayConfig {
    let mut yaml = json!({
        "listen": "127.0.0.1:0",
        "data_dir": "data",
        "pixel_id": PIXEL,
        "api_key": API_KEY,
        "endpoint": fake.url,
        "ingestion": {"keys": [{"name": "site", "key": INGESTION_KEY, "hmac_secret": HMAC_SECRET}]},
        "batch": {"linger_ms": 50},
        "shutdown_grace_ms": 300,
        "retry": {"initial_backoff_ms": 20, "max_backoff_ms": 200, "timeout_ms": 2000, "auth_probe_ms": 100},
    });
    let extra: Value = if extra.trim().is_empty() {
        json!({})
    } else {
        signal_engine::yaml::from_str(extra).unwrap_or_else(|e| panic!("extra YAML {extra:?}: {e}"))
    };
    if extra.get("integrations").is_some() {
        for field in ["pixel_id", "api_key", "endpoint"] {
            yaml.as_object_mut().expect("an object").remove(field);
        }
    }
    merge(&mut yaml, extra);
    let path = dir.join("relay.yaml");
    // JSON is YAML: the file is what `engine serve --config` would read.
    std::fs::write(&path, serde_json::to_string_pretty(&yaml).expect("JSON")).expect("config written");
    let mut config = RelayConfig::load(&path, &|_| None).unwrap_or_else(|e| panic!("config: {e}"));
    // `ENGINE_TEST_STORE=postgres` runs the suite on a PostgreSQL database of its own per test.
    if let Some(url) = pg::suite_database(dir) {
        let lease = std::time::Duration::from_secs(10);
        config.store = signal_engine::relay::config::StoreKind::Postgres { url: url.into(), pool_size: 4, lease };
    }
    config
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                match base.get_mut(&key) {
                    Some(slot) if slot.is_object() && value.is_object() => merge(slot, value),
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, extra) => *base = extra,
    }
}

/// Starts a relay with [`config`].
pub async fn relay(dir: &Path, fake: &FakeOpenAi, extra: &str) -> RelayHandle {
    start(config(dir, fake, extra)).await.unwrap_or_else(|e| panic!("the relay starts: {e}"))
}

/// Now to the millisecond, as the RFC 3339 text an event carries and as the `timestamp_ms` it maps to.
pub fn now() -> (String, i64) {
    let ms = jiff::Timestamp::now().as_millisecond();
    (jiff::Timestamp::from_millisecond(ms).expect("a timestamp").to_string(), ms)
}

/// Now, as an RFC 3339 timestamp inside OpenAI's window.
pub fn now_rfc3339() -> String {
    now().0
}

pub fn order(message_id: &str) -> Value {
    json!({
        "type": "track", "event": "Order Completed", "messageId": message_id, "anonymousId": "anon-1",
        "timestamp": now_rfc3339(),
        "properties": {"order_id": "O-1", "revenue": 129.99, "currency": "USD"},
        "context": {"page": {"url": "https://shop.example.com/thanks?x=1"}, "traits": {"email": " Jane@Example.com "}}
    })
}

/// A small page view: it maps to `page_viewed`.
pub fn page(message_id: &str) -> Value {
    json!({
        "type": "page", "messageId": message_id, "anonymousId": "anon-page", "timestamp": now_rfc3339(),
        "context": {"page": {"url": "https://shop.example.com/"}}
    })
}

/// How a request authenticates at ingestion.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    Bearer(&'a str),
    /// Segment's way: the write key as user name, an empty password.
    Basic(&'a str),
    None,
}

/// The relay's answer to an ingestion request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    /// The JSON body, or `Value::String` of a body that is not JSON.
    pub body: Value,
}

impl Answer {
    /// The `error` of a refusal.
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_else(|| panic!("no JSON `error` in {self:?}"))
    }
}

/// POSTs `body` to the relay with `auth` and any `headers`.
pub async fn send(
    relay: &RelayHandle,
    path: &str,
    auth: Auth<'_>,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> Answer {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}{path}", relay.addr))
        .header("content-type", "application/json")
        .body(body);
    request = match auth {
        Auth::Bearer(key) => request.bearer_auth(key),
        Auth::Basic(key) => request.header(
            "authorization",
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))),
        ),
        Auth::None => request,
    };
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("the relay answers");
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| {
        v.to_str().ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("Retry-After in seconds: {v:?}"))
    });
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, retry_after, body }
}

/// POSTs JSON with the ingestion key as Bearer token.
pub async fn post(relay: &RelayHandle, path: &str, body: &Value) -> (u16, Value) {
    let answer = send(relay, path, Auth::Bearer(INGESTION_KEY), body.to_string().into_bytes(), &[]).await;
    (answer.status, answer.body)
}

/// Headers of a `/v1/events` request signed with `secret` at `timestamp` (unix seconds).
pub fn signed(body: &[u8], secret: &str, timestamp: i64) -> Vec<(&'static str, String)> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let signature: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    vec![("x-signal-timestamp", timestamp.to_string()), ("x-signal-signature", format!("sha256={signature}"))]
}

pub async fn get(relay: &RelayHandle, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{}{path}", relay.addr)).await.expect("the relay answers");
    (response.status().as_u16(), response.text().await.expect("a body"))
}

/// The value of one series in `/metrics`, e.g. `signal_relay_pixel_paused{pixel="default"}`; 0 when absent.
pub async fn metric(relay: &RelayHandle, series: &str) -> f64 {
    let (status, text) = get(relay, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("a number"))
        })
        .unwrap_or(0.0)
}

/// The debugger's latest entries.
pub async fn debug_events(relay: &RelayHandle) -> Vec<Value> {
    let (status, text) = get(relay, "/debug/events?limit=500").await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("JSON entries")
}

/// Polls `check` until it holds, failing with `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The store of a stopped relay: its redb file, or its database when the suite runs on PostgreSQL.
pub fn open_store(dir: &Path) -> Box<dyn Store> {
    if let Some(url) = pg::suite_database(dir) {
        let store = signal_engine::relay::postgres::PostgresStore::open(&url, 2, std::time::Duration::from_secs(10));
        return Box::new(store.unwrap_or_else(|e| panic!("the database opens: {e}")));
    }
    Box::new(
        RedbStore::open(&dir.join("data")).unwrap_or_else(|e| panic!("the store opens after the relay stopped: {e}")),
    )
}

/// The `id`s of events, in order.
pub fn ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["id"].as_str().expect("an id").to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_reaches_openai_mapped_with_its_email_hashed() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("order");
    let relay = relay(&dir, &fake, "").await;
    let (status, body) = post(&relay, "/v1/t", &order("m-1")).await;
    assert_eq!((status, body), (200, json!({"success": true})));
    let accepted = fake.wait_for(1, Duration::from_secs(10)).await;
    let event = &accepted[0];
    assert_eq!(event["id"], "m-1");
    assert_eq!(event["type"], "order_created");
    assert_eq!(event["data"]["amount"], 12999);
    assert_eq!(event["user"]["email"], sha256_hex("jane@example.com"));
    assert_eq!(
        event["user"]["email"], "8c87b489ce35cf2e2f39f80e282cb2e804932a56a213983eeeb428407d43b52d",
        "sha256 of jane@example.com"
    );
    assert_eq!(fake.requests()[0].pid.as_deref(), Some(PIXEL));
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
