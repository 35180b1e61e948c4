//! Hostile input at the relay's doors, table-driven: each case is raw bytes on a TCP connection (so that lengths
//! can lie, bodies can be chunked or cut, headers can be a thousand or not ASCII) and the status it must get, a
//! specific 4xx or a documented 200. Between every two cases a good order is sent; while the cases run, 300 idle
//! connections are held open and one client sends its headers a byte at a time. At the end OpenAI (the fake) has
//! every good event and every case documented as taken exactly once, and nothing else; /debug shows script from an
//! event escaped.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// One request as bytes: `Host`, `Connection: close` and the body's `Content-Length` are added unless `raw`.
fn request(method: &str, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: relay\r\nconnection: close\r\n").into_bytes();
    let mut has_length = false;
    for (name, value) in headers {
        has_length |= name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !has_length && !body.is_empty() {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn bearer() -> (&'static str, &'static [u8]) {
    ("authorization", b"Bearer dk_test_ingestion_key")
}

fn json_type() -> (&'static str, &'static [u8]) {
    ("content-type", b"application/json")
}

/// A POST with the right key and JSON type.
fn post_bytes(path: &str, body: &[u8]) -> Vec<u8> {
    request("POST", path, &[bearer(), json_type()], body)
}

/// Sends `bytes` (then half-closes when `close_write`) and reads the status of the first answer; `None` when the
/// connection closed without one.
async fn status_of(addr: SocketAddr, bytes: &[u8], close_write: bool) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.expect("the relay accepts");
    // A server may answer and close before a huge request is written: the answer still counts.
    let _ = stream.write_all(bytes).await;
    if close_write {
        let _ = stream.shutdown().await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&chunk[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer within 20 s: the relay hangs on {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
    );
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ").and_then(|rest| rest.get(..3)).and_then(|code| code.parse().ok())
}

fn event(id: &str) -> Value {
    json!({
        "type": "track", "event": "Order Completed", "messageId": id, "anonymousId": "anon-hostile",
        "timestamp": now_rfc3339(), "properties": {"order_id": id, "revenue": 5.0, "currency": "USD"},
        "context": {"page": {"url": "https://shop.example.com/thanks"}}
    })
}

fn with(id: &str, field: &str, value: Value) -> Vec<u8> {
    let mut event = event(id);
    event[field] = value;
    event.to_string().into_bytes()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("in memory");
    encoder.finish().expect("in memory")
}

/// A signed `/v1/events` request for `body`, signed with `secret` at `unix` seconds.
fn signed_request(body: &[u8], secret: &str, unix: i64) -> Vec<u8> {
    let headers = signed(body, secret, unix);
    let values: Vec<(&str, Vec<u8>)> = headers.iter().map(|(n, v)| (*n, v.clone().into_bytes())).collect();
    let mut all: Vec<(&str, &[u8])> = vec![bearer(), json_type()];
    all.extend(values.iter().map(|(n, v)| (*n, v.as_slice())));
    request("POST", "/v1/events", &all, body)
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    close_write: bool,
    expected: u16,
    /// The id a case documented as taken (200) delivers.
    delivers: Option<&'static str>,
}

fn case(name: &str, bytes: Vec<u8>, expected: u16) -> Case {
    Case { name: name.to_string(), bytes, close_write: false, expected, delivers: None }
}

/// Every ingestion route, each given a body that is not JSON: 400 everywhere (the signed route too: its key may be
/// `writeKey` in the body, so the body is read before the signature is checked), except the browser SDK's
/// telemetry route, which discards what it gets (200).
fn every_route() -> Vec<Case> {
    let routes = [
        "/v1/t",
        "/v1/p",
        "/v1/i",
        "/v1/g",
        "/v1/s",
        "/v1/a",
        "/v1/track",
        "/v1/page",
        "/v1/identify",
        "/v1/screen",
        "/v1/group",
        "/v1/alias",
        "/v1/batch",
        "/v1/b",
        "/v1/import",
        "/beacon/v1/batch",
        "/v1/events",
        "/v1/m",
    ];
    routes
        .iter()
        .map(|route| {
            let expected = match *route {
                "/v1/m" => 200,
                _ => 400,
            };
            case(&format!("{route}: a body that is not JSON"), post_bytes(route, b"{not json"), expected)
        })
        .collect()
}

/// A wrong type in every envelope field the relay checks: 400, naming the field.
fn every_envelope_field() -> Vec<Case> {
    let wrong: [(&str, Value); 12] = [
        ("type", json!(["track"])),
        ("event", json!(42)),
        ("messageId", json!({"id": 1})),
        ("anonymousId", json!(true)),
        ("userId", json!([1])),
        ("timestamp", json!(true)),
        ("originalTimestamp", json!({"at": 1})),
        ("sentAt", json!([2026])),
        ("properties", json!("revenue=5")),
        ("context", json!(7)),
        ("traits", json!("email")),
        ("integrations", json!(false)),
    ];
    wrong
        .into_iter()
        .map(|(field, value)| {
            case(
                &format!("`{field}` of the wrong type ({value})"),
                post_bytes("/v1/track", &with("w", field, value)),
                400,
            )
        })
        .collect()
}

fn cases() -> Vec<Case> {
    let now = jiff::Timestamp::now().as_second();
    let deep_arrays = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_objects = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    let big_event = with("big", "properties", json!({"blob": "x".repeat(40 * 1024)}));
    let big_batch = json!({"batch": (0..2000).map(|i| event(&format!("b-{i}"))).collect::<Vec<_>>()}).to_string();
    let order_text = event("many").to_string();
    let huge_batch = format!("{{\"batch\": [{}]}}", vec![order_text.as_str(); 100_000].join(","));
    let empty_batch = format!("{{\"batch\": [{}]}}", vec!["{}"; 100_000].join(","));
    let bomb = gzip(&vec![b' '; 64 * 1024 * 1024]);
    let signed_body = event("signed-once").to_string().into_bytes();
    let chunked_body = event("chunked-ok").to_string();
    let chunked = format!("{:x}\r\n{chunked_body}\r\n0\r\n\r\n", chunked_body.len());
    let duplicate_keys = event("dup-ok").to_string().replacen("{", "{\"messageId\":\"dup-first\",", 1);
    let script = with(
        "script-ok",
        "properties",
        json!({"order_id": "<script>alert('x')</script>", "revenue": 1.0, "currency": "USD"}),
    );
    let thousand_headers: Vec<(String, Vec<u8>)> = (0..1000).map(|i| (format!("x-h{i}"), b"v".to_vec())).collect();
    let mut thousand: Vec<(&str, &[u8])> = vec![bearer(), json_type()];
    thousand.extend(thousand_headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    let long_header = vec![b'a'; 100 * 1024];
    let cases = vec![
        case("malformed JSON", post_bytes("/v1/t", b"{\"type\":\"track\","), 400),
        case(
            "JSON cut short",
            post_bytes("/v1/t", b"{\"type\":\"track\",\"event\":\"Order Completed\",\"anonymousId\":\"a\""),
            400,
        ),
        case(
            "a body that is not UTF-8",
            post_bytes("/v1/t", b"{\"type\":\"track\",\"event\":\"\xff\xfe\",\"anonymousId\":\"a\"}"),
            400,
        ),
        case("100,000 levels of arrays", post_bytes("/v1/batch", deep_arrays.as_bytes()), 400),
        case("50,000 levels of objects", post_bytes("/v1/batch", deep_objects.as_bytes()), 400),
        Case {
            name: "Content-Length longer than the body".to_string(),
            bytes: request(
                "POST",
                "/v1/t",
                &[bearer(), json_type(), ("content-length", b"500")],
                b"{\"type\":\"track\"}",
            ),
            close_write: true,
            expected: 400,
            delivers: None,
        },
        case(
            "Content-Length shorter than the body",
            request(
                "POST",
                "/v1/t",
                &[bearer(), json_type(), ("content-length", b"5")],
                &event("short").to_string().into_bytes(),
            ),
            400,
        ),
        case("no body at all", request("POST", "/v1/t", &[bearer(), json_type()], b""), 400),
        Case {
            name: "a chunked body".to_string(),
            bytes: request(
                "POST",
                "/v1/t",
                &[bearer(), json_type(), ("transfer-encoding", b"chunked")],
                chunked.as_bytes(),
            ),
            close_write: false,
            expected: 200,
            delivers: Some("chunked-ok"),
        },
        case(
            "a chunk size that is not hex",
            request(
                "POST",
                "/v1/t",
                &[bearer(), json_type(), ("transfer-encoding", b"chunked")],
                b"zz\r\n{}\r\n0\r\n\r\n",
            ),
            400,
        ),
        case("an event over max_event_bytes", post_bytes("/v1/t", &big_event), 413),
        case("a batch over max_batch_bytes", post_bytes("/v1/batch", big_batch.as_bytes()), 413),
        case("100,000 orders in a batch", post_bytes("/v1/batch", huge_batch.as_bytes()), 413),
        case(
            "100,000 empty events in a batch (each refused by its index)",
            post_bytes("/v1/batch", empty_batch.as_bytes()),
            200,
        ),
        case(
            "a gzip bomb",
            request("POST", "/v1/batch", &[bearer(), json_type(), ("content-encoding", b"gzip")], &bomb),
            413,
        ),
        case(
            "gzip that is not gzip",
            request("POST", "/v1/t", &[bearer(), json_type(), ("content-encoding", b"gzip")], b"not gzip"),
            400,
        ),
        case(
            "an unknown Content-Encoding",
            request("POST", "/v1/t", &[bearer(), json_type(), ("content-encoding", b"br")], b"{}"),
            415,
        ),
        case(
            "an XML body",
            request("POST", "/v1/t", &[bearer(), ("content-type", b"application/xml")], b"<event/>"),
            415,
        ),
        Case {
            name: "a repeated key (the last one counts, as in every JSON reader the relay uses)".to_string(),
            bytes: post_bytes("/v1/t", duplicate_keys.as_bytes()),
            close_write: false,
            expected: 200,
            delivers: Some("dup-ok"),
        },
        case(
            "NaN",
            post_bytes(
                "/v1/t",
                b"{\"type\":\"track\",\"event\":\"E\",\"anonymousId\":\"a\",\"properties\":{\"revenue\":NaN}}",
            ),
            400,
        ),
        case(
            "1e400",
            post_bytes(
                "/v1/t",
                b"{\"type\":\"track\",\"event\":\"E\",\"anonymousId\":\"a\",\"properties\":{\"revenue\":1e400}}",
            ),
            400,
        ),
        case("`type` is a number", post_bytes("/v1/t", &with("t", "type", json!(5))), 400),
        case("`anonymousId` is an object", post_bytes("/v1/t", &with("o", "anonymousId", json!({"id": 1}))), 400),
        case("`properties` is a string", post_bytes("/v1/t", &with("p", "properties", json!("revenue=5"))), 400),
        case("`context` is an array", post_bytes("/v1/t", &with("c", "context", json!([1, 2]))), 400),
        case("a time in words", post_bytes("/v1/t", &with("w", "timestamp", json!("yesterday at noon"))), 400),
        case("the year 99999", post_bytes("/v1/t", &with("y", "timestamp", json!("+99999-01-01T00:00:00Z"))), 400),
        case(
            "a time of -10^18 ms",
            post_bytes("/v1/t", &with("n", "timestamp", json!(-1_000_000_000_000_000_000i64))),
            400,
        ),
        case(
            "a 10,000-character messageId",
            post_bytes("/v1/t", &with(&"i".repeat(10_000), "messageId", json!("i".repeat(10_000)))),
            400,
        ),
        case(
            "Basic credentials that are not base64",
            request(
                "POST",
                "/v1/t",
                &[("authorization", b"Basic !!!"), json_type()],
                &event("k1").to_string().into_bytes(),
            ),
            401,
        ),
        case(
            "an empty Bearer token",
            request(
                "POST",
                "/v1/t",
                &[("authorization", b"Bearer "), json_type()],
                &event("k2").to_string().into_bytes(),
            ),
            401,
        ),
        case(
            "an unknown key",
            request(
                "POST",
                "/v1/t",
                &[("authorization", b"Bearer dk_not_ours_at_all"), json_type()],
                &event("k3").to_string().into_bytes(),
            ),
            401,
        ),
        case(
            "a key that is not ASCII",
            request(
                "POST",
                "/v1/t",
                &[("authorization", b"Bearer \xff\xfe"), json_type()],
                &event("k4").to_string().into_bytes(),
            ),
            401,
        ),
        case(
            "an unknown scheme",
            request(
                "POST",
                "/v1/t",
                &[("authorization", b"Digest x"), json_type()],
                &event("k5").to_string().into_bytes(),
            ),
            401,
        ),
        case("a signature of the wrong secret", signed_request(&signed_body, "not-the-secret", now), 401),
        case("a signature an hour old", signed_request(&signed_body, HMAC_SECRET, now - 3600), 401),
        case("a signed route without a signature", post_bytes("/v1/events", &signed_body), 401),
        Case {
            name: "a signed request".to_string(),
            bytes: signed_request(&signed_body, HMAC_SECRET, now),
            close_write: false,
            expected: 200,
            delivers: Some("signed-once"),
        },
        case(
            "the same signed request replayed (answered, not stored again)",
            signed_request(&signed_body, HMAC_SECRET, now),
            200,
        ),
        case("an unknown route", post_bytes("/v2/anything", b"{}"), 404),
        case("a GET on an ingestion route", request("GET", "/v1/batch", &[bearer()], b""), 405),
        case("a thousand headers", request("POST", "/v1/t", &thousand, b"{}"), 431),
        case(
            "a header of 100 KiB",
            request("POST", "/v1/t", &[bearer(), json_type(), ("x-long", &long_header)], b"{}"),
            431,
        ),
        case("not HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(), 400),
        Case {
            name: "script in an event's fields".to_string(),
            bytes: post_bytes("/v1/t", &script),
            close_write: false,
            expected: 200,
            delivers: Some("script-ok"),
        },
    ];
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_request_gets_its_4xx_and_the_good_events_between_them_are_delivered_once() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("hostile");
    let relay = relay(&dir, &fake, "http: {header_timeout_ms: 2000}\ndebug: true").await;
    let addr = relay.addr;

    // Hundreds of idle connections and one client sending its headers a byte at a time, all along.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(addr).await.expect("an idle connection"));
    }
    let slow = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.expect("the slow client connects");
        for byte in b"POST /v1/t HTTP/1.1\r\nhost: relay\r\nauthorization: Bearer dk_test_ingestion_key\r\n" {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).to_string()
    });

    let mut expected_delivered = BTreeSet::new();
    let mut wrong = Vec::new();
    let mut cases = cases();
    cases.extend(every_route());
    cases.extend(every_envelope_field());
    assert!(cases.len() >= 35, "{} kinds", cases.len());
    for (i, case) in cases.iter().enumerate() {
        let status = status_of(addr, &case.bytes, case.close_write).await;
        if status != Some(case.expected) {
            wrong.push(format!("{}: expected {}, got {status:?}", case.name, case.expected));
        }
        expected_delivered.extend(case.delivers.map(str::to_string));
        let good = format!("good-{i}");
        let (status, body) = post(&relay, "/v1/t", &event(&good)).await;
        assert_eq!(status, 200, "a good event after {:?}: {body}", case.name);
        expected_delivered.insert(good);
    }
    assert!(wrong.is_empty(), "{} cases answered wrongly:\n{}", wrong.len(), wrong.join("\n"));

    let slow_answer = slow.await.expect("the slow client");
    assert!(slow_answer.is_empty() || slow_answer.starts_with("HTTP/1.1 408"), "the slow client got {slow_answer:?}");
    drop(idle);

    fake.wait_for(expected_delivered.len(), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered: BTreeSet<String> = ids(&fake.accepted()).into_iter().collect();
    assert_eq!(delivered, expected_delivered, "exactly the good events and the cases documented as taken");
    assert_eq!(fake.duplicates(), 0, "nothing delivered twice");

    let (_, page) = get(&relay, "/debug").await;
    let (_, events) = get(&relay, "/debug/events?limit=500").await;
    assert!(!page.contains("<script>alert"), "script from an event reached the debugger page unescaped");
    assert!(events.contains("script-ok"), "the scripted event is on the debugger");
    relay.stop().await;
}
