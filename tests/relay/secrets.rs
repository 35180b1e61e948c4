//! Secrets and personal data stay in: the OpenAI API key, the ingestion key and the signing secret never appear
//! in the relay's logs, its debugger, metrics or health, nor in the store's file; raw emails never reach the
//! store or the debugger.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::json;

use super::*;

/// Everything every relay in this test binary logs from the first call on, at debug level.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init()
            .expect("no other global subscriber in the test binary");
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_free_of_secrets(place: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes).to_lowercase();
    for secret in [API_KEY, INGESTION_KEY, HMAC_SECRET, "jane@example.com"] {
        assert!(!text.contains(&secret.to_lowercase()), "{secret:?} appears in {place}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_raw_personal_data_appear_nowhere() {
    let logs = captured_logs();
    // OpenAI refuses the key at first: the refusal is logged and shown, the key is not.
    let fake = FakeOpenAi::start("sk-not-yet", &[PIXEL]).await;
    let dir = data_dir("secrets");
    let relay = relay(&dir, &fake, "").await;
    assert_eq!(post(&relay, "/v1/t", &order("k-1")).await.0, 200);
    let signed_order = order("k-2").to_string().into_bytes();
    let unix = jiff::Timestamp::now().as_second();
    let answer = send(
        &relay,
        "/v1/events",
        Auth::Bearer(INGESTION_KEY),
        signed_order.clone(),
        &signed(&signed_order, HMAC_SECRET, unix),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let forged = signed(&signed_order, "wrong", unix);
    let answer = send(&relay, "/v1/events", Auth::Bearer(INGESTION_KEY), signed_order, &forged).await;
    assert_free_of_secrets("a refused request's answer", answer.body.to_string().as_bytes());
    let answer = send(&relay, "/v1/t", Auth::Bearer("dk_almost_the_key"), b"{}".to_vec(), &[]).await;
    assert_free_of_secrets("an unknown key's answer", answer.body.to_string().as_bytes());
    eventually("the pixel pauses on the refused key", Duration::from_secs(10), || async {
        get(&relay, "/healthz").await.0 == 503
    })
    .await;
    fake.set_api_key(API_KEY);
    fake.wait_for(2, Duration::from_secs(10)).await;

    eventually("the debugger shows both deliveries", Duration::from_secs(10), || async {
        debug_events(&relay).await.iter().filter(|e| e["state"] == "delivered").count() == 2
    })
    .await;
    let entries = debug_events(&relay).await;
    let order = entries.iter().find(|e| e["event_id"] == "k-1").expect("the order in the debugger");
    assert!(order["attempts"].as_array().expect("attempts").iter().any(|a| a["status"] == 401), "{order:#}");
    assert_eq!(order["input"]["context"]["traits"]["email"], json!("<personal: 18 characters>"));
    for path in ["/debug/events?limit=500", "/debug", "/metrics", "/healthz"] {
        let (_, body) = get(&relay, path).await;
        assert_free_of_secrets(path, body.as_bytes());
    }
    relay.stop().await;

    // Everything the store holds: its file, or every row of its tables when the suite runs on PostgreSQL.
    let stored = match crate::relay::pg::suite_database(&dir) {
        Some(url) => crate::relay::pg::shared().expect("the suite's server").dump(&url).into_bytes(),
        None => std::fs::read(dir.join("data").join(RedbStore::FILE)).expect("the store's file"),
    };
    assert!(
        String::from_utf8_lossy(&stored).contains(&sha256_hex("jane@example.com")),
        "the store holds the mapped events (the check below reads the right file)"
    );
    assert_free_of_secrets("the store's file", &stored);
    let logs = logs.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let text = String::from_utf8_lossy(&logs);
    assert!(text.contains("relay listening") && text.contains("OpenAI refused the API key"), "{text}");
    assert_free_of_secrets("the logs", &logs);
    std::fs::remove_dir_all(&dir).ok();
}
