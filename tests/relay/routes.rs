//! End to end: events in through every Signal and Segment ingestion route, the preset's payloads out.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;

/// sha256 of `jane.doe@example.com`, `+447700900123` and `user@example.com`, as in mappings/openai_ads.test.yaml.
const JANE_EMAIL: &str = "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d";
const JANE_PHONE: &str = "a8acc3a90a7b4e4dc65e93db9240ed26523050ef754d63b75b5161de76781436";
const USER_EMAIL: &str = "b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514";

/// Taken: queued for delivery, or dropped on purpose (identify, unmapped), which the answer says.
async fn accepted_ok(relay: &RelayHandle, path: &str, auth: Auth<'_>, body: &Value) -> Value {
    let answer = send(relay, path, auth, body.to_string().into_bytes(), &[]).await;
    assert_eq!((answer.status, &answer.body["success"]), (200, &json!(true)), "{path}: {answer:?}");
    assert!(answer.body.get("refused").is_none(), "{path}: {answer:?}");
    answer.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ingestion_route_delivers_the_presets_payload() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("routes");
    let relay = relay(&dir, &fake, "").await;
    let bearer = Auth::Bearer(INGESTION_KEY);
    let basic = Auth::Basic(INGESTION_KEY);
    let (ts, ms) = now();
    let consent = json!({"marketing": true});

    // Signal browser routes: the type comes from the path. The landing page carries the ad click id; identify
    // teaches the visitor's email and phone; the order, on a page without either, gets both from identity memory.
    let landing = json!({
        "messageId": "r-page", "anonymousId": "visitor-1", "timestamp": ts,
        "context": {
            "page": {"url": "https://shop.example.com/landing?oppref=clk_42&utm_source=chatgpt#top"},
            "ip": "203.0.113.42", "userAgent": "Mozilla/5.0 (test)", "consent": consent
        }
    });
    accepted_ok(&relay, "/v1/p", bearer, &landing).await;
    let identify = json!({
        "messageId": "r-identify", "anonymousId": "visitor-1", "timestamp": ts,
        "traits": {"email": "  Jane.Doe@Example.COM ", "phone": "+44 7700 900123"}
    });
    let answer = accepted_ok(&relay, "/v1/i", bearer, &identify).await;
    assert_eq!(answer, json!({"success": true, "dropped": [{"index": 0, "reason": "identify"}]}), "identify says so");
    let order = json!({
        "event": "Order Completed", "messageId": "r-order", "anonymousId": "visitor-1", "timestamp": ts,
        "properties": {
            "order_id": "ORD-1234", "revenue": 129.99, "currency": "usd",
            "products": [{"product_id": "SKU-001", "product_name": "Wireless Headphones", "price": 79.99, "quantity": 1}]
        },
        "context": {"page": {"url": "https://shop.example.com/checkout/complete?step=3"}, "consent": consent}
    });
    assert_eq!(accepted_ok(&relay, "/v1/t", bearer, &order).await, json!({"success": true}));
    let group = json!({"messageId": "r-group", "anonymousId": "visitor-1", "groupId": "acme", "timestamp": ts});
    accepted_ok(&relay, "/v1/g", bearer, &group).await;

    // Signal batch, Bearer.
    let batch = json!({"batch": [
        {"type": "track", "event": "Product Viewed", "messageId": "r-viewed", "anonymousId": "visitor-3", "timestamp": ts,
         "properties": {"product_id": "SKU-9", "name": "Trail Runner", "price": 129.99, "currency": "usd"},
         "context": {"page": {"url": "https://shop.example.com/p/sku-9"}}},
        {"type": "track", "event": "Signed Up", "messageId": "r-signup", "userId": "user-3", "timestamp": ts,
         "context": {"page": {"url": "https://shop.example.com/welcome"}}}
    ]});
    accepted_ok(&relay, "/v1/batch", bearer, &batch).await;

    // Signed server-side events: a valid signature is taken; a forged one and a replayed old one are not.
    let added = json!({
        "type": "track", "event": "Product Added", "messageId": "r-added", "anonymousId": "visitor-4", "timestamp": ts,
        "properties": {"product_id": "SKU-7", "price": 59.5, "quantity": 2, "value": 119, "currency": "EUR"},
        "context": {"page": {"url": "https://shop.example.com/p/sku-7"}}
    });
    let body = added.to_string().into_bytes();
    let unix = ms / 1000;
    let answer = send(&relay, "/v1/events", bearer, body.clone(), &signed(&body, HMAC_SECRET, unix)).await;
    assert_eq!((answer.status, &answer.body), (200, &json!({"success": true})));
    let forged = json!({"type": "track", "event": "Order Completed", "messageId": "r-forged", "anonymousId": "x",
                        "timestamp": ts, "properties": {"revenue": 1000, "currency": "USD"}});
    let forged = forged.to_string().into_bytes();
    let answer = send(&relay, "/v1/events", bearer, forged.clone(), &signed(&forged, "a-guessed-secret", unix)).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.error().contains("signature does not match"), "{answer:?}");
    let mut replayed = added.clone();
    replayed["messageId"] = json!("r-replayed");
    let replayed = replayed.to_string().into_bytes();
    let answer =
        send(&relay, "/v1/events", bearer, replayed.clone(), &signed(&replayed, HMAC_SECRET, unix - 3600)).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.error().contains("replay window"), "{answer:?}");
    let answer = send(&relay, "/v1/events", bearer, body.clone(), &[]).await;
    assert_eq!(answer.status, 401, "an unsigned request: {answer:?}");

    // Segment-compatible routes with HTTP Basic auth; Segment's SDKs send `originalTimestamp`.
    let checkout = json!({
        "event": "Checkout Started", "messageId": "s-checkout", "anonymousId": "visitor-5", "originalTimestamp": ts,
        "properties": {"value": 104.99, "currency": "USD", "products": [
            {"product_id": "SKU-001", "price": 79.99, "quantity": 1}, {"sku": "SKU-002", "price": "12.50", "quantity": 2}
        ]},
        "context": {"page": {"url": "https://shop.example.com/checkout"}}
    });
    accepted_ok(&relay, "/v1/track", basic, &checkout).await;
    let pricing = json!({"messageId": "s-page", "anonymousId": "visitor-5", "name": "Pricing", "timestamp": ts,
                         "properties": {"url": "https://shop.example.com/pricing?plan=pro"}});
    accepted_ok(&relay, "/v1/page", basic, &pricing).await;
    let identify = json!({"messageId": "s-identify", "userId": "user-5", "anonymousId": "visitor-5", "timestamp": ts,
                          "traits": {"email": "User@Example.com"}});
    accepted_ok(&relay, "/v1/identify", basic, &identify).await;
    let trial = json!({"batch": [{"type": "track", "event": "Trial Started", "messageId": "s-trial",
                                  "anonymousId": "visitor-5", "timestamp": ts,
                                  "properties": {"plan_id": "pro", "value": 0, "currency": "USD"},
                                  "context": {"page": {"url": "https://shop.example.com/trial"}}}]});
    accepted_ok(&relay, "/v1/batch", basic, &trial).await;

    let expected = ["r-page", "r-order", "r-viewed", "r-signup", "r-added", "s-checkout", "s-page", "s-trial"];
    let accepted = fake.wait_for(expected.len(), Duration::from_secs(10)).await;
    let by_id: HashMap<String, Value> = ids(&accepted).into_iter().zip(accepted.iter().cloned()).collect();
    let mut delivered: Vec<&str> = by_id.keys().map(String::as_str).collect();
    delivered.sort_unstable();
    let mut wanted = expected.to_vec();
    wanted.sort_unstable();
    assert_eq!(delivered, wanted, "identify and group produce no conversion; refused requests deliver nothing");

    assert_eq!(
        by_id["r-page"],
        json!({
            "id": "r-page", "type": "page_viewed", "timestamp_ms": ms, "action_source": "web",
            "source_url": "https://shop.example.com/landing", "opt_out": false, "oppref": "clk_42",
            "user": {"external_id": "visitor-1", "ip_address": "203.0.113.42", "user_agent": "Mozilla/5.0 (test)"},
            "data": {"type": "contents"}
        })
    );
    let order = &by_id["r-order"];
    assert_eq!(order["type"], "order_created");
    assert_eq!(order["timestamp_ms"], ms);
    assert_eq!(order["source_url"], "https://shop.example.com/checkout/complete");
    assert_eq!(order["oppref"], "clk_42", "the landing page's click id, from identity memory");
    assert_eq!(order["user"]["email"], JANE_EMAIL, "identify's email, normalised and hashed, from identity memory");
    assert_eq!(order["user"]["phone_number"], JANE_PHONE, "identify's phone in E.164, hashed");
    assert_eq!(order["user"]["external_id"], "visitor-1");
    assert_eq!(
        order["data"],
        json!({"type": "contents", "amount": 12999, "currency": "USD", "order_id": "ORD-1234",
               "contents": [{"id": "SKU-001", "name": "Wireless Headphones", "quantity": 1, "amount": 7999}]})
    );
    assert_eq!(by_id["r-viewed"]["type"], "contents_viewed");
    assert_eq!(
        by_id["r-viewed"]["data"],
        json!({"type": "contents", "currency": "USD", "contents": [{"id": "SKU-9", "name": "Trail Runner", "amount": 12999}]})
    );
    assert_eq!(by_id["r-viewed"]["opt_out"], true, "no consent given: the event says so");
    assert_eq!(by_id["r-signup"]["type"], "registration_completed");
    assert_eq!(by_id["r-signup"]["data"], json!({"type": "customer_action"}));
    assert_eq!(by_id["r-added"]["type"], "items_added");
    assert_eq!(by_id["r-added"]["data"]["amount"], 11900);
    assert_eq!(by_id["r-added"]["data"]["currency"], "EUR");
    let checkout = &by_id["s-checkout"];
    assert_eq!(checkout["type"], "checkout_started");
    assert_eq!(checkout["timestamp_ms"], ms, "from originalTimestamp");
    assert_eq!(checkout["data"]["amount"], 10499);
    assert_eq!(
        checkout["data"]["contents"],
        json!([{"id": "SKU-001", "quantity": 1, "amount": 7999}, {"id": "SKU-002", "quantity": 2, "amount": 1250}])
    );
    assert_eq!(by_id["s-page"]["type"], "page_viewed");
    assert_eq!(by_id["s-page"]["source_url"], "https://shop.example.com/pricing");
    let trial = &by_id["s-trial"];
    assert_eq!(trial["type"], "trial_started");
    assert_eq!(trial["user"]["email"], USER_EMAIL, "Segment identify's email reached the later trial");
    assert_eq!(trial["data"], json!({"type": "plan_enrollment", "amount": 0, "currency": "USD", "plan_id": "pro"}));

    let requests = fake.requests();
    assert!(requests.iter().all(|r| r.pid.as_deref() == Some(PIXEL) && !r.validate_only), "{requests:?}");

    // The debugger tells what became of the events that were not sent, and what OpenAI answered for the rest.
    let entries = debug_events(&relay).await;
    let entry = |id: &str| {
        entries
            .iter()
            .find(|e| e["input"]["messageId"] == id)
            .unwrap_or_else(|| panic!("{id} in the debugger: {entries:#?}"))
            .clone()
    };
    let group = entry("r-group");
    assert_eq!(
        (&group["outcome"], &group["reason"], &group["state"]),
        (&json!("dropped"), &json!("unmapped"), &json!("dropped"))
    );
    assert_eq!(
        (&entry("r-identify")["outcome"], &entry("r-identify")["reason"]),
        (&json!("dropped"), &json!("identify"))
    );
    let outcome = |outcome: &str, reason: &str| {
        format!("signal_relay_events_total{{pixel=\"{PIXEL_NAME}\",outcome=\"{outcome}\",reason=\"{reason}\"}}")
    };
    assert_eq!(metric(&relay, &outcome("dropped", "unmapped")).await, 1.0);
    assert_eq!(metric(&relay, &outcome("dropped", "identify")).await, 2.0);
    assert_eq!(metric(&relay, &outcome("mapped", "")).await, 8.0);
    eventually("the order shows as delivered in the debugger", Duration::from_secs(5), || async {
        let entries = debug_events(&relay).await;
        entries.iter().any(|e| e["event_id"] == "r-order" && e["state"] == "delivered")
    })
    .await;
    let order_entry = debug_events(&relay).await.into_iter().find(|e| e["event_id"] == "r-order").expect("the order");
    assert_eq!(order_entry["attempts"][0]["status"], 202);
    assert_eq!(order_entry["explanation"]["outcome"]["event"]["data"]["amount"], 12999);
    assert_eq!(metric(&relay, "signal_relay_events_received_total").await, 11.0, "refused requests are not counted");
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
