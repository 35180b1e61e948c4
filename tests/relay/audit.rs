//! The secrets audit: one full session of the `engine serve` binary at `ENGINE_LOG=trace` (the most every crate
//! logging through `tracing` writes; hyper logs only through an unstable cfg and reqwest through `log`, which the
//! relay does not forward, so neither writes anything): ingestion of events carrying emails and phone numbers through the
//! batch, browser and signed routes, refused keys and a forged signature, delivery, a 401 from OpenAI, a 400 that
//! bisection narrows to one event, its dead letter listed, shown and replayed with `engine dlq`, the debugger,
//! metrics and health. Then every byte the processes wrote (logs, every file under the data directory, every answer
//! and every tool's output) is searched for the API key, the ingestion key, the HMAC secret, the raw emails and the
//! raw phone numbers, in the forms they were sent and normalised: none may appear.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::relay::fake_openai::FakeOpenAi;
use crate::relay::process::{client, RelayProcess, KEY_ENV};
use crate::relay::{now_rfc3339, signed, API_KEY, HMAC_SECRET, INGESTION_KEY, PIXEL};
use crate::support::engine_in;

const EMAIL: &str = "Audit.Person@Example.com";
const PHONE: &str = "+44 7700 900461";

/// What must never be written anywhere, in every form a value takes on its way (as sent, trimmed and lowercased,
/// digits only, E.164).
fn forbidden() -> Vec<String> {
    vec![
        API_KEY.to_string(),
        INGESTION_KEY.to_string(),
        HMAC_SECRET.to_string(),
        EMAIL.to_lowercase(),
        "audit.person".to_string(),
        PHONE.to_string(),
        "+447700900461".to_string(),
        "447700900461".to_string(),
        "7700900461".to_string(),
        "7700 900461".to_string(),
    ]
}

fn assert_clean(place: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes).to_lowercase();
    for secret in forbidden() {
        assert!(!text.contains(&secret.to_lowercase()), "{secret:?} appears in {place}");
    }
}

fn write_config(dir: &Path, endpoint: &str) {
    let yaml = format!(
        "listen: 127.0.0.1:0\ndata_dir: data\npixel_id: {PIXEL}\napi_key_env: {KEY_ENV}\nendpoint: {endpoint}\n\
         debug: true\ningestion:\n  keys:\n    - name: site\n      key: {INGESTION_KEY}\n      hmac_secret: {HMAC_SECRET}\n\
         batch:\n  max_events: 100\n  linger_ms: 20\nshutdown_grace_ms: 500\n\
         retry:\n  initial_backoff_ms: 20\n  max_backoff_ms: 200\n  timeout_ms: 2000\n  auth_probe_ms: 100\n"
    );
    std::fs::write(dir.join("relay.yaml"), yaml).expect("config written");
}

fn with_pii(kind: &str, id: &str) -> Value {
    let mut event = json!({
        "type": kind, "messageId": id, "anonymousId": "anon-audit", "timestamp": now_rfc3339(),
        "context": {"page": {"url": "https://shop.example.com/thanks?oppref=click-1"},
                    "traits": {"email": EMAIL, "phone": PHONE}, "ip": "203.0.113.5"},
        "properties": {"order_id": id, "revenue": 42.0, "currency": "GBP"}
    });
    if kind == "track" {
        event["event"] = json!("Order Completed");
    }
    if kind == "identify" {
        event["traits"] = json!({"email": EMAIL, "phone": PHONE, "firstName": "Audit"});
    }
    event
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_session_at_trace_level_writes_no_secret_and_no_raw_personal_data() {
    let fake = FakeOpenAi::start("sk-not-yet-accepted", &[PIXEL]).await;
    fake.poison("audit-poison");
    let dir = crate::relay::data_dir("audit");
    write_config(&dir, &fake.url);
    let config = dir.join("relay.yaml");
    let trace = [("ENGINE_LOG", "trace")];
    let mut relay = RelayProcess::start(&config, &trace).await.expect("the relay starts");
    let http = client();
    let base = format!("http://{}", relay.addr);
    let mut answers: Vec<(String, Vec<u8>)> = Vec::new();

    // In through every kind of door, with personal data in traits and context.
    let batch = json!({"batch": [with_pii("identify", "audit-identify"), with_pii("track", "audit-order"),
                                 with_pii("track", "audit-poison"), with_pii("page", "audit-page")]});
    let response = http.post(format!("{base}/v1/batch")).bearer_auth(INGESTION_KEY).json(&batch).send().await.unwrap();
    assert_eq!(response.status(), 200);
    answers.push(("/v1/batch".into(), response.bytes().await.unwrap().to_vec()));
    let response = http
        .post(format!("{base}/v1/t"))
        .basic_auth(INGESTION_KEY, Some(""))
        .header("content-type", "text/plain")
        .body(with_pii("track", "audit-basic").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    answers.push(("/v1/t".into(), response.bytes().await.unwrap().to_vec()));
    let body = with_pii("track", "audit-signed").to_string().into_bytes();
    let unix = jiff::Timestamp::now().as_second();
    for (secret, expected) in [(HMAC_SECRET, 200), ("a-forged-secret", 401)] {
        let mut request = http.post(format!("{base}/v1/events")).bearer_auth(INGESTION_KEY).body(body.clone());
        for (name, value) in signed(&body, secret, unix) {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected);
        answers.push(("/v1/events".into(), response.bytes().await.unwrap().to_vec()));
    }
    for auth in [format!("Bearer {INGESTION_KEY}x"), format!("Basic {INGESTION_KEY}"), "Bearer ".to_string()] {
        let response = http
            .post(format!("{base}/v1/t"))
            .header("authorization", auth)
            .json(&with_pii("track", "audit-refused"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        answers.push(("a refused key".into(), response.bytes().await.unwrap().to_vec()));
    }

    // OpenAI refuses the key, then takes it; the poisoned event makes a batch fail and is narrowed down.
    relay.wait_for_log("OpenAI refused the API key", Duration::from_secs(20)).await;
    fake.set_api_key(API_KEY);
    fake.wait_for(4, Duration::from_secs(30)).await;
    relay.wait_for_log("OpenAI refused an event: dead-lettered", Duration::from_secs(30)).await;
    for path in ["/debug", "/debug/events?limit=500", "/debug/refused", "/metrics", "/healthz", "/readyz", "/livez"] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        answers.push((path.into(), response.bytes().await.unwrap().to_vec()));
    }
    relay.sigterm();
    assert_eq!(relay.exit(Duration::from_secs(10)).await.code(), Some(0));
    let mut logs = relay.logs();

    // The dead letter, as an operator handles it, then delivered by the next run.
    let listed = engine_in(&dir, &["dlq", "list", "--config", "relay.yaml"], "");
    let seq = String::from_utf8_lossy(&listed.stdout).split('\t').next().unwrap_or_default().trim().to_string();
    let shown = engine_in(&dir, &["dlq", "show", &seq, "--config", "relay.yaml"], "");
    assert_eq!(shown.status.code(), Some(0), "{}", String::from_utf8_lossy(&shown.stderr));
    let replayed = engine_in(&dir, &["dlq", "replay", "--config", "relay.yaml"], "");
    assert_eq!(replayed.status.code(), Some(0), "{}", String::from_utf8_lossy(&replayed.stderr));
    for (name, output) in [("dlq list", &listed), ("dlq show", &shown), ("dlq replay", &replayed)] {
        answers.push((format!("{name} stdout"), output.stdout.clone()));
        answers.push((format!("{name} stderr"), output.stderr.clone()));
    }
    let fixed = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    write_config(&dir, &fixed.url);
    let mut again = RelayProcess::start(&config, &trace).await.expect("the relay starts again");
    let replayed = fixed.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(replayed[0]["id"], "audit-poison");
    again.sigterm();
    assert_eq!(again.exit(Duration::from_secs(10)).await.code(), Some(0));
    logs.push_str(&again.logs());

    // The session did what it was meant to: trace logs from the HTTP stack, hashed personal data delivered.
    assert!(logs.contains("\"level\":\"TRACE\""), "trace logs were written");
    let delivered = fake.accepted();
    let order = delivered.iter().find(|e| e["id"] == "audit-order").expect("the order delivered");
    assert_eq!(order["user"]["email"].as_str().map(str::len), Some(64), "{order}");
    assert_eq!(order["user"]["phone_number"].as_str().map(str::len), Some(64), "{order}");

    assert_clean("the relay's logs", logs.as_bytes());
    for (place, bytes) in &answers {
        assert_clean(place, bytes);
    }
    for file in files(&dir) {
        if file.file_name().is_some_and(|name| name == "relay.yaml") {
            continue; // the configuration holds the ingestion key and HMAC secret by design
        }
        assert_clean(&file.display().to_string(), &std::fs::read(&file).expect("a file"));
    }
}
