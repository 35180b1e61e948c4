//! Nothing acknowledged is lost: at the disk cap ingestion answers 503 with Retry-After and what was taken is still
//! delivered; a relay stopped while OpenAI is down keeps its queue, and the next relay on the same data directory
//! delivers it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::relay::fake_openai::Scripted;

const SECONDS: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_disk_cap_ingestion_answers_503_and_loses_nothing() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    fake.outage(Some(503));
    let dir = data_dir("disk-cap");
    let relay = relay(&dir, &fake, "disk_cap: 2000").await;
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..50 {
        let id = format!("cap-{i}");
        let answer = send(&relay, "/v1/t", Auth::Bearer(INGESTION_KEY), order(&id).to_string().into_bytes(), &[]).await;
        match answer.status {
            200 => acknowledged.push(id),
            503 => {
                refused = Some((id, answer));
                break;
            }
            other => panic!("{other}: {answer:?}"),
        }
    }
    let (refused_id, answer) = refused.expect("the cap is reached within 50 orders");
    assert!(!acknowledged.is_empty(), "some orders fit under the cap");
    assert!(answer.error().contains("disk cap"), "{answer:?}");
    assert!(answer.retry_after.is_some_and(|s| s >= 1), "Retry-After on a 503: {answer:?}");
    let (_, health) = get(&relay, "/healthz").await;
    let health: serde_json::Value = serde_json::from_str(&health).expect("JSON health");
    assert!(health["stored_bytes"].as_u64().expect("stored bytes") >= 2000, "{health}");
    assert_eq!(metric(&relay, "signal_relay_ingestion_refused_total{reason=\"disk_cap\"}").await, 1.0);

    fake.outage(None);
    let accepted = fake.wait_for(acknowledged.len(), SECONDS).await;
    let delivered: BTreeSet<String> = ids(&accepted).into_iter().collect();
    assert_eq!(delivered, acknowledged.iter().cloned().collect(), "every acknowledged order, and only those");
    assert!(!delivered.contains(&refused_id));
    eventually("ingestion takes events again once the queue drained", SECONDS, || async {
        post(&relay, "/v1/t", &order("cap-after")).await.0 == 200
    })
    .await;
    fake.wait_for(acknowledged.len() + 1, SECONDS).await;
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_relay_keeps_its_queue_and_identity_memory_and_the_next_one_delivers() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    fake.outage(Some(503));
    let dir = data_dir("restart");
    let first = relay(&dir, &fake, "").await;
    let sent: Vec<String> = (0..20).map(|i| format!("q-{i:02}")).collect();
    for id in &sent {
        assert_eq!(post(&first, "/v1/t", &order(id)).await.0, 200);
    }
    let identify = json!({"type": "identify", "messageId": "q-identify", "anonymousId": "visitor-r",
                          "timestamp": now_rfc3339(), "traits": {"email": "Returning@Example.com"}});
    assert_eq!(post(&first, "/v1/i", &identify).await.0, 200);
    eventually("delivery is being retried", SECONDS, || async { fake.requests().len() >= 2 }).await;
    let addr = first.addr;
    let stopping = Instant::now();
    tokio::time::timeout(SECONDS, first.stop()).await.expect("the relay stops promptly");
    assert!(stopping.elapsed() < Duration::from_secs(5), "stopped in {:?}", stopping.elapsed());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "a stopped relay accepts no connection");
    assert!(fake.accepted().is_empty());
    {
        let store = open_store(&dir);
        let queued: Vec<String> = store.peek(PIXEL_NAME, 1000).expect("queue").into_iter().map(|(_, p)| p.id).collect();
        assert_eq!(queued, sent, "the whole queue is on disk");
    }

    fake.outage(None);
    let second = relay(&dir, &fake, "").await;
    let accepted = fake.wait_for(sent.len(), SECONDS).await;
    assert_eq!(ids(&accepted), sent, "delivered in order by the next relay");
    // What the first relay learned from identify is on disk too.
    let mut later = order("q-later");
    later["anonymousId"] = json!("visitor-r");
    later["context"]["traits"] = json!({});
    assert_eq!(post(&second, "/v1/t", &later).await.0, 200);
    let accepted = fake.wait_for(sent.len() + 1, SECONDS).await;
    let later = accepted.last().expect("the later order");
    assert_eq!(
        (&later["id"], &later["user"]["email"]),
        (&json!("q-later"), &json!(sha256_hex("returning@example.com")))
    );
    second.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_does_not_wait_for_a_request_openai_never_answers() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    fake.script([Scripted::Hang]);
    let dir = data_dir("stop-hang");
    let first = relay(&dir, &fake, "retry: {timeout_ms: 20000}").await;
    assert_eq!(post(&first, "/v1/t", &order("h-1")).await.0, 200);
    eventually("the request hangs at OpenAI", SECONDS, || async { !fake.requests().is_empty() }).await;
    let stopping = Instant::now();
    tokio::time::timeout(SECONDS, first.stop()).await.expect("the relay stops");
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "stopped in {:?}: the in-flight request is abandoned, its events stay queued",
        stopping.elapsed()
    );
    let second = relay(&dir, &fake, "").await;
    let accepted = fake.wait_for(1, SECONDS).await;
    assert_eq!(ids(&accepted), ["h-1"]);
    second.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_each_acknowledged_and_delivered_once() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("concurrent");
    let relay = std::sync::Arc::new(relay(&dir, &fake, "").await);
    let requests: Vec<_> = (0..200)
        .map(|i| {
            let relay = relay.clone();
            tokio::spawn(async move { post(&relay, "/v1/t", &order(&format!("c-{i:03}"))).await.0 })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.expect("the request task"), 200);
    }
    let accepted = fake.wait_for(200, SECONDS).await;
    let delivered: BTreeSet<String> = ids(&accepted).into_iter().collect();
    assert_eq!(delivered, (0..200).map(|i| format!("c-{i:03}")).collect());
    assert_eq!(fake.duplicates(), 0);
    let relay = std::sync::Arc::into_inner(relay).expect("no other handle");
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_drains_the_queue_within_the_grace_period() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("drain");
    // A batch would wait a minute to fill up; a stop sends what is there at once.
    let relay = relay(&dir, &fake, "batch: {linger_ms: 60000}\nshutdown_grace_ms: 5000").await;
    for id in ["d-1", "d-2", "d-3"] {
        assert_eq!(post(&relay, "/v1/t", &order(id)).await.0, 200);
    }
    assert!(fake.requests().is_empty(), "the batch lingers");
    let stopping = Instant::now();
    tokio::time::timeout(SECONDS, relay.stop()).await.expect("the relay stops");
    assert!(stopping.elapsed() < Duration::from_secs(5), "drained in {:?}", stopping.elapsed());
    let mut delivered = ids(&fake.accepted());
    delivered.sort();
    assert_eq!(delivered, ["d-1", "d-2", "d-3"], "delivered before stop returned");
    let store = RedbStore::open(&dir.join("data")).expect("the store is closed once stop returns");
    assert_eq!(store.depth(PIXEL_NAME).unwrap(), 0);
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
}
