//! Delivery under OpenAI's failures: a poisoned event isolated by bisection, a bad key pausing the pixel until it
//! works, 429 with Retry-After, 5xx and timeouts retried with the same ids, events expiring while OpenAI is away,
//! and `validate_only`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::relay::fake_openai::Scripted;

const SECONDS: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poisoned_event_among_1000_is_dead_lettered_and_the_rest_delivered() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    fake.poison("p-0617");
    let dir = data_dir("poison");
    let relay = relay(&dir, &fake, "").await;
    let events: Vec<_> = (0..1000).map(|i| page(&format!("p-{i:04}"))).collect();
    let (status, body) = post(&relay, "/v1/batch", &json!({"batch": events})).await;
    assert_eq!(status, 200, "{body}");
    let accepted = fake.wait_for(999, SECONDS).await;
    let dead = format!("signal_relay_events_dead_lettered_total{{pixel=\"{PIXEL_NAME}\",reason=\"rejected\"}}");
    eventually("the poisoned event is dead-lettered", SECONDS, || async { metric(&relay, &dead).await == 1.0 }).await;
    let delivered: BTreeSet<String> = ids(&accepted).into_iter().collect();
    assert_eq!(delivered.len(), 999);
    assert!(!delivered.contains("p-0617"));
    let requests = fake.requests();
    assert!(requests.len() <= 25, "{} requests", requests.len());
    assert!(requests.iter().all(|r| r.events <= 1000));
    assert_eq!(fake.duplicates(), 0, "bisection sends no accepted event twice");
    let delivered_metric = format!("signal_relay_events_delivered_total{{pixel=\"{PIXEL_NAME}\"}}");
    assert_eq!(metric(&relay, &delivered_metric).await, 999.0);
    relay.stop().await;

    let store = open_store(&dir);
    let letters = store.dead_letters(None).expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].pending.id.as_str(), letters[0].reason.as_str()), ("p-0617", "rejected"));
    assert!(letters[0].detail.contains("HTTP 400") && letters[0].detail.contains("malformed"), "{}", letters[0].detail);
    assert_eq!(store.depth(PIXEL_NAME).expect("depth"), 0, "nothing left queued");
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_pauses_the_pixel_until_it_works_and_loses_nothing() {
    let fake = FakeOpenAi::start("sk-the-rotated-key", &[PIXEL]).await;
    let dir = data_dir("auth");
    let relay = relay(&dir, &fake, "").await;
    let sent: Vec<String> = (0..5).map(|i| format!("a-{i}")).collect();
    for id in &sent {
        assert_eq!(post(&relay, "/v1/t", &order(id)).await.0, 200);
    }
    let paused = format!("signal_relay_pixel_paused{{pixel=\"{PIXEL_NAME}\"}}");
    eventually("the pixel shows as paused", SECONDS, || async {
        let (status, health) = get(&relay, "/healthz").await;
        status == 503 && metric(&relay, &paused).await == 1.0 && health.contains(PIXEL_NAME)
    })
    .await;
    let (_, health) = get(&relay, "/healthz").await;
    let health: serde_json::Value = serde_json::from_str(&health).expect("JSON health");
    assert_eq!(health["paused_pixels"], json!([PIXEL_NAME]));
    // It keeps probing while paused; the events stay queued.
    eventually("a second probe", SECONDS, || async { fake.requests().len() >= 2 }).await;
    assert!(fake.requests().iter().all(|r| r.status == 401));
    assert!(fake.accepted().is_empty());
    let depth = format!("signal_relay_queue_depth{{pixel=\"{PIXEL_NAME}\"}}");
    assert_eq!(metric(&relay, &depth).await, 5.0);

    fake.set_api_key(API_KEY);
    let accepted = fake.wait_for(5, SECONDS).await;
    assert_eq!(ids(&accepted), sent, "every event, in order");
    eventually("the pixel resumes by itself", SECONDS, || async {
        get(&relay, "/healthz").await.0 == 200 && metric(&relay, &paused).await == 0.0
    })
    .await;
    assert_eq!(metric(&relay, &depth).await, 0.0);
    relay.stop().await;
    let store = open_store(&dir);
    assert!(store.dead_letters(None).expect("dead letters").is_empty(), "an auth error never dead-letters");
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_a_day_waits_no_longer_than_the_backoff_ceiling() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    fake.script([Scripted::Status(429, Some(86_400))]);
    let dir = data_dir("retry-after-day");
    let relay = relay(&dir, &fake, "retry: {max_backoff_ms: 300}").await;
    assert_eq!(post(&relay, "/v1/t", &order("t-day")).await.0, 200);
    fake.wait_for(1, SECONDS).await;
    let requests = fake.requests();
    let waited = requests[1].at - requests[0].at;
    assert!(waited < Duration::from_secs(2), "waited {waited:?}: Retry-After is capped at retry.max_backoff_ms");
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_goes_out_before_retry_after_expires() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    fake.script([Scripted::Status(429, Some(1))]);
    let dir = data_dir("retry-after");
    // Retry-After is honoured up to retry.max_backoff_ms, which the other tests keep short.
    let relay = relay(&dir, &fake, "retry: {max_backoff_ms: 5000}").await;
    assert_eq!(post(&relay, "/v1/t", &order("t-1")).await.0, 200);
    fake.wait_for(1, SECONDS).await;
    let requests = fake.requests();
    assert_eq!(requests.iter().map(|r| r.status).collect::<Vec<_>>(), [429, 202]);
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}, before Retry-After: 1 expired");
    assert_eq!(requests[1].ids, requests[0].ids);
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_timeouts_are_retried_with_the_same_ids() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    fake.script([
        Scripted::Status(500, None),
        Scripted::Status(503, None),
        Scripted::Hang,
        // OpenAI takes the events but answers after the relay gave up: the retry repeats them with the same ids.
        Scripted::Slow(Duration::from_millis(600)),
    ]);
    let dir = data_dir("retries");
    let relay = relay(&dir, &fake, "retry: {timeout_ms: 300}").await;
    let batch = json!({"batch": [order("e-1"), order("e-2"), order("e-3")]});
    assert_eq!(post(&relay, "/v1/batch", &batch).await.0, 200);
    let accepted = fake.wait_for(3, SECONDS).await;
    assert_eq!(ids(&accepted), ["e-1", "e-2", "e-3"]);
    eventually("the retry after the slow answer", SECONDS, || async { fake.requests().len() >= 5 }).await;
    let requests = fake.requests();
    assert_eq!(requests.iter().take(3).map(|r| r.status).collect::<Vec<_>>(), [500, 503, 0]);
    assert_eq!(requests[3].status, 202, "the slow one, answered after the relay's timeout");
    for request in &requests {
        assert_eq!(request.ids, ["e-1", "e-2", "e-3"], "every attempt carries the same ids");
    }
    let retried = |why: &str| format!("signal_relay_requests_retried_total{{pixel=\"{PIXEL_NAME}\",reason=\"{why}\"}}");
    assert_eq!(metric(&relay, &retried("HTTP 500")).await, 1.0);
    assert_eq!(metric(&relay, &retried("HTTP 503")).await, 1.0);
    assert_eq!(metric(&relay, &retried("timeout")).await, 2.0);
    // The slow request was taken before the relay gave up on it: the retry repeats the same three ids, which
    // OpenAI's deduplication absorbs.
    eventually("the retry after the slow answer", SECONDS, || async { fake.duplicates() == 3 }).await;
    assert_eq!(fake.accepted().len(), 3);
    relay.stop().await;
    let store = open_store(&dir);
    assert!(store.dead_letters(None).expect("dead letters").is_empty());
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_expires_while_openai_is_away_is_dead_lettered_not_sent() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    // The first attempt is put off for 3 s; by then the event is older than OpenAI's 7 days.
    fake.script([Scripted::Status(503, Some(3))]);
    let dir = data_dir("expiry");
    let relay = relay(&dir, &fake, "retry: {max_backoff_ms: 5000}").await;
    let week_ms = 7 * 24 * 3_600_000;
    let almost_a_week_ago = jiff::Timestamp::now().as_millisecond() - week_ms + 2_000;
    let mut old = order("x-old");
    old["timestamp"] = json!(jiff::Timestamp::from_millisecond(almost_a_week_ago).expect("a timestamp").to_string());
    assert_eq!(post(&relay, "/v1/t", &old).await.0, 200, "still inside the window at ingestion");
    let expired = format!("signal_relay_events_dead_lettered_total{{pixel=\"{PIXEL_NAME}\",reason=\"expired\"}}");
    eventually("the event is dead-lettered as expired", SECONDS, || async { metric(&relay, &expired).await == 1.0 })
        .await;
    assert_eq!(post(&relay, "/v1/t", &order("x-new")).await.0, 200);
    fake.wait_for(1, SECONDS).await;
    assert_eq!(ids(&fake.accepted()), ["x-new"]);
    let requests = fake.requests();
    let carried_old = requests.iter().filter(|r| r.ids.iter().any(|id| id == "x-old")).count();
    assert_eq!(carried_old, 1, "only the attempt before it expired carried it: {requests:?}");
    let entries = debug_events(&relay).await;
    let entry = entries.iter().find(|e| e["event_id"] == "x-old").expect("the old event in the debugger");
    assert_eq!(entry["state"], "dead_lettered");
    relay.stop().await;
    let store = open_store(&dir);
    let letters = store.dead_letters(Some(PIXEL_NAME)).expect("dead letters");
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].pending.id.as_str(), letters[0].reason.as_str()), ("x-old", "expired"));
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_only_is_sent_in_the_body() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("validate-only");
    let relay = relay(&dir, &fake, "validate_only: true").await;
    assert_eq!(post(&relay, "/v1/t", &order("v-1")).await.0, 200);
    eventually("OpenAI validated the event", SECONDS, || async { fake.requests().iter().any(|r| r.status == 202) })
        .await;
    let requests = fake.requests();
    assert!(requests.iter().all(|r| r.validate_only), "{requests:?}");
    assert!(fake.accepted().is_empty(), "OpenAI records nothing it only validated");
    let delivered = format!("signal_relay_events_delivered_total{{pixel=\"{PIXEL_NAME}\"}}");
    eventually("the validated event leaves the queue", SECONDS, || async { metric(&relay, &delivered).await == 1.0 })
        .await;
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_hold_at_most_max_events_and_a_lone_event_waits_for_the_linger() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("batching");
    let relay = relay(&dir, &fake, "batch: {max_events: 10, linger_ms: 300}").await;
    let events: Vec<_> = (0..25).map(|i| page(&format!("b-{i:02}"))).collect();
    let sent = std::time::Instant::now();
    assert_eq!(post(&relay, "/v1/batch", &json!({"batch": events})).await.0, 200);
    let accepted = fake.wait_for(25, SECONDS).await;
    assert_eq!(ids(&accepted), (0..25).map(|i| format!("b-{i:02}")).collect::<Vec<_>>(), "in order");
    let sizes: Vec<usize> = fake.requests().iter().map(|r| r.events).collect();
    assert_eq!(sizes, [10, 10, 5], "full batches go at once, the rest after the linger");
    let last = fake.requests()[2].at - sent;
    assert!(last >= Duration::from_millis(250), "the partial batch went after {last:?}, before the 300 ms linger");
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
