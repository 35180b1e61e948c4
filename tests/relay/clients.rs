//! The relay as real clients reach it: every route, content type and key location; CORS per key; what the relay
//! adds to events (IP, User-Agent, clock-skew correction, ids); compressed bodies; partial batches; alias; slow
//! clients cut off while others are served; TLS; and the shape of every answer.

use std::io::Write as _;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const ORIGIN: &str = "http://shop.example.test:8080";
const BROWSER_KEY: &str = "wk_browser_public";

/// Keys for the tests below: a server key, and a browser key allowed on the shop and any subdomain of cdn.test.
fn keys() -> String {
    format!(
        "ingestion: {{keys: [{{name: server, key: {INGESTION_KEY}, hmac_secret: {HMAC_SECRET}}}, \
         {{name: web, key: {BROWSER_KEY}, browser: true, allowed_origins: [\"{ORIGIN}\", \"https://*.cdn.test\"]}}]}}"
    )
}

/// A raw POST with exactly these headers.
async fn raw(relay: &RelayHandle, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().post(format!("http://{}{path}", relay.addr)).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("the relay answers")
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn basic(key: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{key}:")))
}

fn track(id: &str) -> Value {
    json!({
        "type": "track", "event": "Order Completed", "messageId": id, "anonymousId": "anon-c", "timestamp": now_rfc3339(),
        "properties": {"order_id": id, "revenue": 10, "currency": "USD"},
        "context": {"page": {"url": "https://shop.example.com/thanks"}}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_content_type_and_key_location_is_taken() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("clients-routes");
    let relay = relay(&dir, &fake, &keys()).await;
    let basic_key = basic(INGESTION_KEY);
    let bearer_key = format!("bEaReR {INGESTION_KEY}");
    let shouted_key = basic_key.replacen("Basic", "BASIC", 1);
    let mut expected = Vec::new();
    // (route, body, headers): the type comes from the route or the body, the key from any place clients put it.
    let single_routes = ["/v1/t", "/v1/track"];
    for (n, route) in single_routes.iter().enumerate() {
        for (m, (content_type, auth)) in [
            ("application/json", Some(basic_key.as_str())),
            ("text/plain;charset=UTF-8", None),
            ("", Some(bearer_key.as_str())),
            ("application/json; charset=utf-8", Some(shouted_key.as_str())),
            // What `curl -d` sends unless told otherwise.
            ("application/x-www-form-urlencoded", Some(basic_key.as_str())),
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("route-{n}-{m}");
            let mut event = track(&id);
            if auth.is_none() {
                event["writeKey"] = json!(INGESTION_KEY);
            }
            let mut headers = Vec::new();
            if !content_type.is_empty() {
                headers.push(("content-type", content_type));
            }
            if let Some(auth) = auth {
                headers.push(("authorization", auth));
            }
            let (status, body) = json_of(raw(&relay, route, event.to_string().into_bytes(), &headers).await).await;
            assert_eq!((status, &body), (200, &json!({"success": true})), "{route} {content_type}");
            expected.push(id);
        }
    }
    // Segment's routes for the other types, and the browser SDK's short ones: taken (and dropped on purpose when the
    // preset has no route for them).
    for (route, event, reason) in [
        ("/v1/screen", json!({"anonymousId": "a", "name": "Home"}), "unmapped"),
        ("/v1/s", json!({"anonymousId": "a", "name": "Home"}), "unmapped"),
        ("/v1/group", json!({"anonymousId": "a", "groupId": "g"}), "unmapped"),
        ("/v1/alias", json!({"userId": "u", "previousId": "a"}), "alias"),
        ("/v1/a", json!({"userId": "u", "previousId": "a"}), "alias"),
        ("/v1/i", json!({"anonymousId": "a", "traits": {"plan": "pro"}}), "identify"),
    ] {
        let (status, body) =
            json_of(raw(&relay, route, event.to_string().into_bytes(), &[("authorization", &basic_key)]).await).await;
        assert_eq!((status, &body["dropped"][0]["reason"]), (200, &json!(reason)), "{route}: {body}");
    }
    // Batches: Segment's /v1/batch and /v1/import, analytics-next's /v1/b with the key in the body.
    for (n, route) in ["/v1/batch", "/v1/import", "/v1/b"].iter().enumerate() {
        let id = format!("batch-{n}");
        let body = json!({"writeKey": INGESTION_KEY, "sentAt": now_rfc3339(), "batch": [track(&id)]});
        let (status, answer) =
            json_of(raw(&relay, route, body.to_string().into_bytes(), &[("content-type", "text/plain")]).await).await;
        assert_eq!((status, &answer), (200, &json!({"success": true})), "{route}");
        expected.push(id);
    }
    // The browser SDK's telemetry is acknowledged and discarded.
    let (status, _) = json_of(raw(&relay, "/v1/m", br#"{"series":[]}"#.to_vec(), &[]).await).await;
    assert_eq!(status, 200);
    // Refusals name what is wrong, in the same JSON shape as every answer.
    let page = page("p").to_string().into_bytes();
    for (route, headers, status, reason) in [
        ("/v1/p", vec![], 401, "unauthorized"),
        ("/v1/p", vec![("authorization", "Token abc")], 401, "unauthorized"),
        ("/v1/p", vec![("authorization", "Basic !!!")], 401, "unauthorized"),
        (
            "/v1/p",
            vec![("authorization", basic_key.as_str()), ("content-type", "application/xml")],
            415,
            "unsupported_content_type",
        ),
        ("/v1/p", vec![("authorization", basic_key.as_str()), ("content-encoding", "br")], 415, "unsupported_encoding"),
    ] {
        let (got, body) = json_of(raw(&relay, route, page.clone(), &headers).await).await;
        assert_eq!(
            (got, &body["reason"], &body["success"]),
            (status, &json!(reason), &json!(false)),
            "{headers:?}: {body}"
        );
    }
    // A header that is present but not ASCII is named as such.
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/p", relay.addr))
        .header("authorization", reqwest::header::HeaderValue::from_bytes("Basic ñ".as_bytes()).unwrap())
        .body(page.clone())
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("not ASCII"), "{body}");
    for (header, status) in [("origin", 400), ("content-type", 415)] {
        let response = reqwest::Client::new()
            .post(format!("http://{}/v1/p", relay.addr))
            .header("authorization", &basic_key)
            .header(header, reqwest::header::HeaderValue::from_bytes("tést".as_bytes()).unwrap())
            .body(page.clone())
            .send()
            .await
            .unwrap();
        let (got, body) = json_of(response).await;
        assert_eq!(got, status, "{header}: {body}");
        assert!(body["error"].as_str().unwrap().contains("is not ASCII"), "{header}: {body}");
    }
    // Unknown routes and methods answer JSON too, and every answer says nosniff.
    let response = reqwest::Client::new().get(format!("http://{}/v1/t", relay.addr)).send().await.unwrap();
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    let (status, body) = json_of(response).await;
    assert_eq!((status, &body["reason"]), (405, &json!("method_not_allowed")), "{body}");
    let response = raw(&relay, "/healthz", Vec::new(), &[]).await;
    assert_eq!(response.headers()["allow"], "GET");
    let (status, body) = json_of(response).await;
    assert_eq!((status, &body["reason"]), (405, &json!("method_not_allowed")), "{body}");
    let (status, body) = json_of(raw(&relay, "/v2/nowhere", page.clone(), &[]).await).await;
    assert_eq!((status, &body["reason"]), (404, &json!("not_found")), "{body}");

    let accepted = fake.wait_for(expected.len(), Duration::from_secs(10)).await;
    let mut got = ids(&accepted);
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    let (_, debugger) = get(&relay, "/debug/events?limit=500").await;
    assert!(debugger.contains("route-0-1") && !debugger.contains(INGESTION_KEY), "a key in the body is never kept");
    let (status, text) = get(&relay, "/livez").await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = get(&relay, "/readyz").await;
    assert_eq!(status, 200, "{text}");
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_are_held_to_their_keys_origins() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("clients-cors");
    let relay = relay(&dir, &fake, &keys()).await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, format!("http://{}/v1/t", relay.addr))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    for origin in [ORIGIN, "https://static.cdn.test"] {
        let response = preflight(origin).await.unwrap();
        assert_eq!(response.status(), 204, "{origin}");
        let headers = response.headers();
        assert_eq!(headers["access-control-allow-origin"], origin);
        let allowed = headers["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
        assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
        assert!(headers["access-control-allow-methods"].to_str().unwrap().contains("POST"));
        assert!(headers.contains_key("access-control-max-age"));
        assert_eq!(headers["vary"], "Origin");
    }
    for origin in ["https://evil.test", "https://cdn.test", "http://shop.example.test:8081"] {
        let (status, body) = json_of(preflight(origin).await.unwrap()).await;
        assert_eq!((status, &body["reason"]), (403, &json!("origin_not_allowed")), "{origin}: {body}");
    }

    // sendBeacon-style: text/plain, the key in the body, no preflight. From the shop it is taken with CORS headers.
    let mut event = track("cors-ok");
    event["writeKey"] = json!(BROWSER_KEY);
    let response =
        raw(&relay, "/v1/t", event.to_string().into_bytes(), &[("content-type", "text/plain"), ("origin", ORIGIN)])
            .await;
    assert_eq!(response.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(json_of(response).await, (200, json!({"success": true})));
    // From another origin, with the same key: refused and not stored.
    let mut other = track("cors-evil");
    other["writeKey"] = json!(BROWSER_KEY);
    let response = raw(
        &relay,
        "/v1/t",
        other.to_string().into_bytes(),
        &[("content-type", "text/plain"), ("origin", "https://evil.test")],
    )
    .await;
    assert!(!response.headers().contains_key("access-control-allow-origin"));
    let (status, body) = json_of(response).await;
    assert_eq!((status, &body["reason"]), (403, &json!("origin_not_allowed")), "{body}");
    // A browser key without an Origin (a script pretending to be a server) is refused; so is its use on the signed
    // server route; and a server key is not usable from a page.
    let mut bare = track("cors-bare");
    bare["writeKey"] = json!(BROWSER_KEY);
    let (status, body) = json_of(raw(&relay, "/v1/t", bare.to_string().into_bytes(), &[]).await).await;
    assert_eq!((status, &body["reason"]), (403, &json!("origin_not_allowed")), "{body}");
    let server = track("cors-server-key").to_string().into_bytes();
    let (status, body) =
        json_of(raw(&relay, "/v1/t", server, &[("authorization", &basic(INGESTION_KEY)), ("origin", ORIGIN)]).await)
            .await;
    assert_eq!((status, &body["reason"]), (403, &json!("origin_not_allowed")), "{body}");
    let signed_body = track("cors-signed").to_string().into_bytes();
    let unix = now().1 / 1000;
    let mut headers: Vec<(&str, String)> = signed(&signed_body, HMAC_SECRET, unix);
    headers.push(("origin", ORIGIN.to_string()));
    let answer = send(&relay, "/v1/events", Auth::Basic(BROWSER_KEY), signed_body, &headers).await;
    assert_eq!((answer.status, &answer.body["reason"]), (403, &json!("browser_key")), "{answer:?}");

    fake.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ids(&fake.accepted()), ["cors-ok"], "nothing refused was stored");
    let refused = metric(&relay, "signal_relay_requests_refused_total{reason=\"origin_not_allowed\"}").await;
    assert_eq!(refused, 6.0, "3 preflights and 3 requests");
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_adds_address_agent_and_time_as_a_collector_does() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("clients-enrich");
    // Loopback is a trusted proxy for the second relay only.
    let plain = relay(&dir, &fake, "").await;
    let proxied_dir = data_dir("clients-enrich-proxied");
    let proxied = relay(&proxied_dir, &fake, "ingestion: {trusted_proxies: [127.0.0.0/8, \"::1\"]}").await;
    let (_, now_ms) = now();
    let sent_behind = jiff::Timestamp::from_millisecond(now_ms - 3_600_000).unwrap();
    let happened = jiff::Timestamp::from_millisecond(now_ms - 3_660_000).unwrap();
    // A browser whose clock is an hour behind: the event happened a minute before it was sent.
    let skewed = json!({
        "type": "page", "messageId": "e-skew", "anonymousId": "v", "timestamp": format!("{happened:.3}"),
        "sentAt": format!("{sent_behind:.3}"), "context": {"page": {"url": "https://shop.example.com/"}}
    });
    let headers = [("x-forwarded-for", "198.51.100.23".to_string()), ("user-agent", "TestBrowser/1.0".to_string())];
    let answer = send(&plain, "/v1/p", Auth::Bearer(INGESTION_KEY), skewed.to_string().into_bytes(), &headers).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // No time and no id: the time of receipt, and an id from the content that a retry reproduces.
    let timeless =
        json!({"type": "page", "anonymousId": "v", "context": {"page": {"url": "https://shop.example.com/a"}}});
    for _ in 0..2 {
        let answer = send(&plain, "/v1/p", Auth::Bearer(INGESTION_KEY), timeless.to_string().into_bytes(), &[]).await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let forwarded = json!({"type": "page", "messageId": "e-proxied", "anonymousId": "v",
                           "context": {"page": {"url": "https://shop.example.com/b"}}});
    let answer =
        send(&proxied, "/v1/p", Auth::Bearer(INGESTION_KEY), forwarded.to_string().into_bytes(), &headers).await;
    assert_eq!(answer.status, 200, "{answer:?}");

    // The retry carries the same derived id, so OpenAI keeps one of the two.
    let accepted = fake.wait_for(3, Duration::from_secs(10)).await;
    eventually("OpenAI saw the retry as a duplicate", Duration::from_secs(10), || async { fake.duplicates() == 1 })
        .await;
    let by_id =
        |id: &str| accepted.iter().find(|e| e["id"] == id).unwrap_or_else(|| panic!("{id}: {accepted:?}")).clone();
    let skew = by_id("e-skew");
    assert_eq!(skew["user"]["ip_address"], "127.0.0.1", "a stranger's X-Forwarded-For is ignored");
    assert_eq!(skew["user"]["user_agent"], "TestBrowser/1.0");
    let corrected = skew["timestamp_ms"].as_i64().unwrap();
    assert!(
        (corrected - (now_ms - 60_000)).abs() < 5_000,
        "a minute ago by the relay's clock: {corrected} vs {now_ms}"
    );
    let derived: Vec<&Value> = accepted.iter().filter(|e| e["id"].as_str().unwrap().starts_with("derived-")).collect();
    assert_eq!(derived.len(), 1, "the same content, the same id: {accepted:?}");
    assert!((derived[0]["timestamp_ms"].as_i64().unwrap() - now_ms).abs() < 10_000);
    assert_eq!(by_id("e-proxied")["user"]["ip_address"], "198.51.100.23", "a trusted proxy's header is believed");

    // The debugger shows what came from the relay.
    let entries = debug_events(&plain).await;
    let entry = entries.iter().find(|e| e["event_id"] == "e-skew").expect("the skewed page in the debugger");
    assert_eq!(entry["input"]["_relay"]["context.ip"], "the connection's address");
    assert!(entry["input"]["_relay"]["timestamp"].as_str().unwrap().contains("corrected for the client's clock"));
    let fields = entry["explanation"]["fields"].as_array().unwrap();
    let ip = fields.iter().find(|f| f["field"] == "user.ip_address").expect("ip_address explained");
    assert_eq!(ip["origin"]["steps"][0]["set_by_relay"], "the connection's address", "{ip}");
    plain.stop().await;
    proxied.stop().await;
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&proxied_dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_keeps_its_good_events_and_lists_the_refused_ones() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("clients-partial");
    let relay = relay(&dir, &fake, "").await;
    let eight_days_ago = jiff::Timestamp::from_millisecond(now().1 - 8 * 86_400_000).unwrap();
    let mut old = track("p-old");
    old["timestamp"] = json!(format!("{eight_days_ago:.3}"));
    let mut vague = track("p-vague");
    vague["timestamp"] = json!("yesterday at noon");
    let mut long = track("p-long");
    long["messageId"] = json!("x".repeat(10_000));
    let mut huge = track("p-huge");
    huge["properties"]["padding"] = json!("y".repeat(40 * 1024));
    let batch = json!({"batch": [
        track("p-0"), {"type": "track", "messageId": "p-noname", "anonymousId": "a"}, old, track("p-3"), vague, long,
        huge, {"type": "identify", "messageId": "p-id", "userId": "u", "traits": {"email": "a@b.c"}}
    ]});
    let answer = send(&relay, "/v1/batch", Auth::Bearer(INGESTION_KEY), batch.to_string().into_bytes(), &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let refused: Vec<(u64, String)> = answer.body["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["reason"].as_str().unwrap().to_string()))
        .collect();
    let expected = [
        (1, "invalid_event"),
        (4, "invalid_timestamp"),
        (6, "too_large"),
        (2, "mapping_rejected"),
        (5, "mapping_rejected"),
    ];
    let expected: Vec<(u64, String)> = expected.iter().map(|(i, r)| (*i, r.to_string())).collect();
    assert_eq!(refused, expected, "{answer:?}");
    let errors = answer.body["refused"].to_string();
    assert!(errors.contains("`event` name") && errors.contains("yesterday at noon"), "{errors}");
    assert!(errors.contains("timestamp_out_of_window"), "the mapping's reason is given: {errors}");
    assert_eq!(answer.body["dropped"], json!([{"index": 7, "reason": "identify"}]));
    let accepted = fake.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(ids(&accepted), ["p-0", "p-3"]);
    // One event alone that the mapping rejects is refused with 400 naming the field, never acknowledged.
    let mut stale = track("p-stale");
    stale["timestamp"] = json!(format!("{eight_days_ago:.3}"));
    let alone = send(&relay, "/v1/t", Auth::Bearer(INGESTION_KEY), stale.to_string().into_bytes(), &[]).await;
    assert_eq!(
        (alone.status, &alone.body["reason"], &alone.body["field"]),
        (400, &json!("mapping_rejected"), &json!("timestamp_ms"))
    );
    assert_eq!(metric(&relay, "signal_relay_ingestion_refused_total{reason=\"mapping_rejected\"}").await, 3.0);
    assert_eq!(metric(&relay, "signal_relay_ingestion_refused_total{reason=\"invalid_timestamp\"}").await, 1.0);
    let (_, text) = get(&relay, "/debug/refused").await;
    let listed: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(listed.iter().filter(|r| r["route"] == "/v1/batch").count(), 5, "{text}");
    let entries = debug_events(&relay).await;
    assert!(
        entries.iter().any(|e| e["input"]["messageId"] == "p-old" && e["outcome"] == "rejected"),
        "shown on /debug"
    );
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_are_taken_and_bombs_refused_early() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("clients-gzip");
    let relay = relay(&dir, &fake, "").await;
    let key = basic(INGESTION_KEY);
    let batch = json!({"batch": [track("z-1"), track("z-2")]}).to_string();
    let response =
        raw(&relay, "/v1/batch", gzip(batch.as_bytes()), &[("authorization", &key), ("content-encoding", "gzip")])
            .await;
    assert_eq!(json_of(response).await, (200, json!({"success": true})));
    let mut deflate = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    deflate.write_all(track("z-3").to_string().as_bytes()).unwrap();
    let response =
        raw(&relay, "/v1/t", deflate.finish().unwrap(), &[("authorization", &key), ("content-encoding", "deflate")])
            .await;
    assert_eq!(json_of(response).await, (200, json!({"success": true})));
    // 50 MB of spaces in a 50 KB gzip: refused at the limit, promptly.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(b"{\"batch\": [").unwrap();
    for _ in 0..50 {
        bomb.write_all(&vec![b' '; 1 << 20]).unwrap();
    }
    let bomb = bomb.finish().unwrap();
    let started = Instant::now();
    let (status, body) =
        json_of(raw(&relay, "/v1/batch", bomb, &[("authorization", &key), ("content-encoding", "gzip")]).await).await;
    assert_eq!((status, &body["reason"]), (413, &json!("too_large")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let (status, body) = json_of(
        raw(&relay, "/v1/t", b"not gzip".to_vec(), &[("authorization", &key), ("content-encoding", "gzip")]).await,
    )
    .await;
    assert_eq!((status, &body["reason"]), (400, &json!("malformed")), "{body}");
    let accepted = fake.wait_for(3, Duration::from_secs(10)).await;
    let mut got = ids(&accepted);
    got.sort();
    assert_eq!(got, ["z-1", "z-2", "z-3"]);
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_carries_what_one_id_learned_to_conversions_under_another() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("clients-alias");
    let relay = relay(&dir, &fake, "").await;
    let identify = json!({"userId": "customer-7", "messageId": "al-1", "timestamp": now_rfc3339(),
                          "traits": {"email": "Jane.Doe@Example.com"}});
    assert_eq!(post(&relay, "/v1/identify", &identify).await.0, 200);
    let alias = json!({"userId": "customer-7", "previousId": "anon-on-phone", "messageId": "al-2"});
    let (status, body) = post(&relay, "/v1/alias", &alias).await;
    assert_eq!((status, &body["dropped"][0]["reason"]), (200, &json!("alias")), "{body}");
    let mut order = track("al-order");
    order["anonymousId"] = json!("anon-on-phone");
    assert_eq!(post(&relay, "/v1/t", &order).await.0, 200);
    let accepted = fake.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(accepted[0]["user"]["email"], sha256_hex("jane.doe@example.com"), "{}", accepted[0]);
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_others_are_served_and_stop_is_on_time() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("clients-slow");
    let extra = "http: {header_timeout_ms: 600, body_timeout_ms: 600, idle_timeout_ms: 800}\nshutdown_grace_ms: 500";
    let relay = relay(&dir, &fake, extra).await;
    let addr = relay.addr;
    // One client sends its headers a byte every 100 ms, forever; another its body the same way.
    let slow_headers = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        for byte in b"POST /v1/t HTTP/1.1\r\nHost: x\r\nX-Padding: ".iter().chain(std::iter::repeat(&b'a')) {
            if stream.write_all(&[*byte]).await.is_err() || started.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
        started.elapsed()
    });
    let slow_body = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/t HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {INGESTION_KEY}\r\nContent-Length: 1000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let reader = async {
            let mut buffer = [0u8; 4096];
            loop {
                tokio::select! {
                    read = stream.read(&mut buffer) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => answer.extend_from_slice(&buffer[..n]),
                    },
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if stream.write_all(b"{").await.is_err() { break; }
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
        (started.elapsed(), String::from_utf8_lossy(&answer).to_string())
    });
    // Meanwhile, good traffic flows.
    for n in 0..5 {
        let answer = send(
            &relay,
            "/v1/t",
            Auth::Bearer(INGESTION_KEY),
            track(&format!("fast-{n}")).to_string().into_bytes(),
            &[],
        )
        .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let headers_cut = slow_headers.await.unwrap();
    assert!(headers_cut < Duration::from_secs(3), "a client dribbling headers is cut off: {headers_cut:?}");
    let (body_cut, answer) = slow_body.await.unwrap();
    assert!(body_cut < Duration::from_secs(3), "a client dribbling a body is cut off: {body_cut:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // An idle connection is closed.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buffer)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    fake.wait_for(5, Duration::from_secs(10)).await;

    // A stop while a client dribbles ends within the grace period.
    let dribbler = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        for _ in 0..100 {
            if stream.write_all(b"P").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    relay.stop().await;
    assert!(started.elapsed() < Duration::from_secs(2), "stop took {:?}", started.elapsed());
    dribbler.abort();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_https_with_the_configured_certificate() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("clients-tls");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let relay = relay(&dir, &fake, "tls: {cert: cert.pem, key: key.pem}").await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let response = client
        .post(format!("https://localhost:{}/v1/t", relay.addr.port()))
        .bearer_auth(INGESTION_KEY)
        .body(track("tls-1").to_string())
        .send()
        .await
        .expect("an HTTPS answer");
    assert_eq!(response.status(), 200);
    let plain = reqwest::Client::new()
        .post(format!("http://localhost:{}/v1/t", relay.addr.port()))
        .body(track("tls-2").to_string())
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200, "plain HTTP is not served on a TLS listener");
    assert_eq!(ids(&fake.wait_for(1, Duration::from_secs(10)).await), ["tls-1"]);
    relay.stop().await;
    // A certificate that cannot be read stops the start with a message naming the field and file.
    let broken = config(&dir, &fake, "tls: {cert: missing.pem, key: key.pem}");
    let error = start(broken).await.err().expect("refused");
    assert!(error.0.contains("`tls.cert`") && error.0.contains("missing.pem"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_send_replays_a_recording_into_a_relay() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("clients-send");
    let relay = relay(&dir, &fake, "").await;
    // A recording from ten days ago, beyond OpenAI's window unless rebased; one line is broken, one event refused.
    let old = |minutes: i64| {
        let at = jiff::Timestamp::from_millisecond(now().1 - 10 * 86_400_000 + minutes * 60_000).unwrap();
        format!("{at:.3}")
    };
    let mut lines = Vec::new();
    for n in 0..250 {
        let mut event = track(&format!("send-{n}"));
        event["timestamp"] = json!(old(n));
        lines.push(event.to_string());
    }
    lines.push("{not json".to_string());
    lines.push(json!({"type": "track", "anonymousId": "a", "messageId": "send-bad"}).to_string());
    std::fs::write(dir.join("events.ndjson"), lines.join("\n")).unwrap();
    let url = format!("http://{}", relay.addr);
    let args = ["send", "events.ndjson", "--to", &url, "--key", INGESTION_KEY, "--rebase-time", "--gzip"];
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let run_dir = dir.to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::support::engine_in(&run_dir, &args, "")
    })
    .await
    .unwrap();
    let stderr = crate::support::text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "a refused event and a malformed line: {stderr}");
    assert!(stderr.contains("line 251: malformed JSON"), "{stderr}");
    assert!(stderr.contains("event send-bad refused: a track event needs its `event` name"), "{stderr}");
    assert!(stderr.contains("251 events sent: 250 taken"), "{stderr}");
    let accepted = fake.wait_for(250, Duration::from_secs(20)).await;
    let newest = accepted.iter().map(|e| e["timestamp_ms"].as_i64().unwrap()).max().unwrap();
    assert!((newest - now().1).abs() < 60_000, "the newest event is now");
    let requests = fake.requests();
    assert!(requests.iter().all(|r| r.status == 202), "{requests:?}");
    // An unreachable relay: retried, then exit 2.
    let output = tokio::task::spawn_blocking(move || {
        crate::support::engine(&["send", "-", "--to", "http://127.0.0.1:9", "--attempts", "2"], &track("x").to_string())
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", crate::support::text(&output.stderr));
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_a_client_waits_for_a_free_place() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("clients-limit");
    let relay = relay(&dir, &fake, "http: {max_connections: 1, idle_timeout_ms: 700}").await;
    // One silent connection takes the only place until the idle timeout closes it.
    let mut hog = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let answer =
        send(&relay, "/v1/t", Auth::Bearer(INGESTION_KEY), track("limited").to_string().into_bytes(), &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "served only once the idle connection was closed: {waited:?}");
    let mut buffer = [0u8; 8];
    assert!(matches!(hog.read(&mut buffer).await, Ok(0) | Err(_)), "the idle connection was closed");
    fake.wait_for(1, Duration::from_secs(10)).await;
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_many_bad_events_is_answered_in_full_but_cannot_flood_the_debugger() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("clients-flood");
    let relay = relay(&dir, &fake, "").await;
    let mut events: Vec<Value> =
        (0..500).map(|n| json!({"type": "track", "messageId": format!("bad-{n}"), "anonymousId": "a"})).collect();
    events.push(track("flood-good"));
    let body = json!({"batch": events}).to_string().into_bytes();
    let answer = send(&relay, "/v1/batch", Auth::Bearer(INGESTION_KEY), body, &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["refused"].as_array().map(Vec::len), Some(500), "every refused event is in the answer");
    let (_, text) = get(&relay, "/debug/refused?limit=500").await;
    let listed: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(listed.len(), 20, "the debugger lists the first 20");
    assert_eq!(metric(&relay, "signal_relay_ingestion_refused_total{reason=\"invalid_event\"}").await, 500.0);
    assert_eq!(ids(&fake.wait_for(1, Duration::from_secs(10)).await), ["flood-good"]);
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
