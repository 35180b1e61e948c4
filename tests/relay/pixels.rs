//! Several pixels in one relay: each maps every event with its own mapping and parameters, remembers identities
//! on its own, and gets its own requests.

use std::time::Duration;

use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pixel_gets_its_own_mapped_events() {
    let fake = FakeOpenAi::start(API_KEY, &["px_shop", "px_docs"]).await;
    let dir = data_dir("pixels");
    let docs_preset = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/openai_ads_developer_docs.map");
    let extra = format!(
        "integrations:\n\
         - {{name: shop, pixel_id: px_shop, api_key: {API_KEY}, endpoint: '{url}'}}\n\
         - {{name: docs, pixel_id: px_docs, api_key: {API_KEY}, endpoint: '{url}', mapping: '{docs_preset}', \
            consent_category: advertising}}\n",
        url = fake.url
    );
    let relay = relay(&dir, &fake, &extra).await;
    let (ts, _) = now();
    let identify = json!({
        "type": "identify", "messageId": "m-identify", "anonymousId": "visitor-9", "timestamp": ts,
        "traits": {"email": "Jane.Doe@Example.com", "phone": "+44 7700 900123", "address": {"country": "gb", "city": "London"}}
    });
    let order = json!({
        "type": "track", "event": "Order Completed", "messageId": "m-order", "anonymousId": "visitor-9", "timestamp": ts,
        "properties": {"order_id": "ORD-9", "revenue": 10, "currency": "JPY"},
        "context": {"page": {"url": "https://shop.example.com/thanks"}, "consent": {"marketing": true, "advertising": false}}
    });
    let (status, body) = post(&relay, "/v1/batch", &json!({"batch": [identify, order]})).await;
    assert_eq!(status, 200, "{body}");
    fake.wait_for(2, Duration::from_secs(10)).await;

    let shop = fake.accepted_for("px_shop");
    let docs = fake.accepted_for("px_docs");
    assert_eq!((ids(&shop), ids(&docs)), (vec!["m-order".to_string()], vec!["m-order".to_string()]));
    let jane = sha256_hex("jane.doe@example.com");
    assert_eq!(shop[0]["type"], "order_created");
    assert_eq!(shop[0]["data"]["amount"], 10, "JPY has no minor unit");
    assert_eq!(
        shop[0]["user"],
        json!({"external_id": "visitor-9", "email": jane, "phone_number": sha256_hex("+447700900123"),
               "ip_address": "127.0.0.1"}),
        "the default preset's user object, with the address of the connection the relay filled in"
    );
    assert_eq!(shop[0]["opt_out"], false, "consent category `marketing`");
    assert_eq!(docs[0]["type"], "order_created");
    assert_eq!(
        docs[0]["user"],
        json!({"external_id_sha256": sha256_hex("visitor-9"), "email_sha256": jane, "country": "GB", "city": "London",
               "ip_address": "127.0.0.1"}),
        "the developer-docs preset's user object"
    );
    assert_eq!(docs[0]["opt_out"], true, "this pixel's consent category is `advertising`");
    for request in fake.requests() {
        assert_eq!(request.status, 202, "{request:?}");
        assert!(matches!(request.pid.as_deref(), Some("px_shop" | "px_docs")));
    }
    for name in ["shop", "docs"] {
        let delivered = format!("signal_relay_events_delivered_total{{pixel=\"{name}\"}}");
        eventually("each pixel counts its delivery", Duration::from_secs(10), || async {
            metric(&relay, &delivered).await == 1.0
        })
        .await;
    }
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
