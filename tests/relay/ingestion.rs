//! Ingestion refusals: unknown keys, malformed and ill-typed events, bodies over the limits and keys over their
//! rate limit, each answered with a status and a JSON error naming the problem; nothing refused is stored.

use std::time::Duration;

use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_a_json_error_naming_the_problem() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("refusals");
    let relay = relay(&dir, &fake, "").await;
    let good = page("good").to_string().into_bytes();
    let bearer = Auth::Bearer(INGESTION_KEY);

    for (auth, path) in [
        (Auth::Bearer("dk_unknown_key_0000"), "/v1/t"),
        (Auth::Basic("dk_unknown_key_0000"), "/v1/track"),
        (Auth::Basic("dk_unknown_key_0000"), "/v1/batch"),
        (Auth::None, "/v1/p"),
    ] {
        let answer = send(&relay, path, auth, good.clone(), &[]).await;
        assert_eq!(answer.status, 401, "{path}: {answer:?}");
        assert!(answer.error().contains("key"), "{answer:?}");
    }

    let cases = [
        ("/v1/t", br#"{"type": "track", "event": "#.to_vec(), "malformed JSON"),
        (
            "/v1/p",
            json!({"messageId": 42, "anonymousId": "a"}).to_string().into_bytes(),
            "`messageId` must be a string",
        ),
        (
            "/v1/p",
            json!({"messageId": "m", "anonymousId": "a", "properties": [1]}).to_string().into_bytes(),
            "`properties` must be an object, not an array",
        ),
        ("/v1/p", json!({"anonymousId": "a"}).to_string().into_bytes(), "`source_url` is required"),
        ("/v1/p", json!({"messageId": "m"}).to_string().into_bytes(), "needs `anonymousId` or `userId`"),
        ("/v1/t", json!({"messageId": "m", "anonymousId": "a"}).to_string().into_bytes(), "needs its `event` name"),
        (
            "/v1/t",
            json!({"type": "page", "messageId": "m", "anonymousId": "a"}).to_string().into_bytes(),
            "this endpoint takes \"track\" events",
        ),
        ("/v1/batch", json!({"events": []}).to_string().into_bytes(), "`batch` is missing"),
        ("/v1/batch", json!([page("a")]).to_string().into_bytes(), "must be an object"),
    ];
    for (path, body, expected) in cases {
        let answer = send(&relay, path, bearer, body, &[]).await;
        assert_eq!(answer.status, 400, "{path} {expected}: {answer:?}");
        assert!(answer.error().contains(expected), "{expected:?} in {answer:?}");
        assert_eq!(answer.body["success"], false);
    }

    // Size limits: 32 KB an event, 500 KB a batch.
    let mut big = page("big");
    big["properties"] = json!({"padding": "x".repeat(40 * 1024)});
    let answer = send(&relay, "/v1/p", bearer, big.to_string().into_bytes(), &[]).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.error().contains("more than the limit of 32768"), "{answer:?}");
    let mut large = page("large");
    large["properties"] = json!({"padding": "x".repeat(20 * 1024)});
    let batch = json!({"batch": vec![large.clone(); 30]}).to_string().into_bytes();
    assert!(batch.len() > 500 * 1024);
    let answer = send(&relay, "/v1/batch", bearer, batch, &[]).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.error().contains("more than the limit of 512000"), "{answer:?}");
    let mut huge = page("huge");
    huge["properties"] = json!({"padding": "x".repeat(600 * 1024)});
    let answer = send(&relay, "/v1/t", bearer, huge.to_string().into_bytes(), &[]).await;
    assert_eq!(answer.status, 413, "an event larger than a whole batch: {answer:?}");
    assert!(answer.error().contains("limit"), "{answer:?}");

    assert_eq!(metric(&relay, "signal_relay_events_received_total").await, 0.0, "nothing refused was stored");
    let answer = send(&relay, "/v1/p", bearer, good, &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    fake.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(ids(&fake.accepted()), ["good"]);
    let refused = metric(&relay, "signal_relay_requests_refused_total{reason=\"unauthorized\"}").await;
    assert_eq!(refused, 4.0, "refusals are counted by reason");
    let (status, text) = get(&relay, "/debug/refused").await;
    assert_eq!(status, 200);
    let listed: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(listed.iter().any(|r| r["reason"] == "too_large" && r["status"] == 413 && r["route"] == "/v1/p"), "{text}");
    assert!(listed.iter().any(|r| r["reason"] == "unauthorized" && r["route"] == "/v1/batch"), "{text}");
    assert!(!text.contains("padding") && !text.contains("xxxx"), "bodies are never listed");
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_limit_gets_429_with_retry_after() {
    const OTHER_KEY: &str = "dk_other_site_key";
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("rate-limit");
    let extra = format!("ingestion: {{rate_limit: 1, keys: [{{key: {INGESTION_KEY}}}, {{key: {OTHER_KEY}}}]}}");
    let relay = relay(&dir, &fake, &extra).await;
    // Requests are counted before their body is read: malformed bodies make a quick burst.
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(send(&relay, "/v1/p", Auth::Bearer(INGESTION_KEY), b"{".to_vec(), &[]).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(&statuses[..2], [400, 400], "a burst of twice the rate is allowed");
    let limited = answers.iter().find(|a| a.status == 429).unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    assert!(limited.error().contains("rate limit"), "{limited:?}");
    let wait = limited.retry_after.expect("Retry-After on a 429");
    assert!((1..=2).contains(&wait), "{wait} s");
    let other = send(&relay, "/v1/p", Auth::Bearer(OTHER_KEY), page("other").to_string().into_bytes(), &[]).await;
    assert_eq!(other.status, 200, "the limit is per key: {other:?}");
    eventually(
        "the limited key is let through again once Retry-After passed",
        Duration::from_secs(wait + 2),
        || async {
            let answer =
                send(&relay, "/v1/p", Auth::Bearer(INGESTION_KEY), page("again").to_string().into_bytes(), &[]).await;
            assert!(matches!(answer.status, 200 | 429), "{answer:?}");
            answer.status == 200
        },
    )
    .await;
    fake.wait_for(2, Duration::from_secs(10)).await;
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
