//! The ingestion decoder as one synchronous function over a request's parts, for the `ingest_decode` fuzz target:
//! headers (content type, authorization, forwarding), the content encoding inflated within a limit, the body
//! split into events and checked, each event enriched and mapped as the relay's writer maps it. Not part of the
//! supported API: it exists so that hostile requests can be tried without a socket.

use std::net::{IpAddr, Ipv4Addr};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::decode::{self, Shape, KINDS};
use super::enrich::{self, Facts};
use super::ingest;
use crate::run::{Context, Outcome};
use crate::Plan;

/// The routes' shapes, chosen by the first byte of a fuzz input.
const SHAPES: [Shape; 8] = [
    Shape::Batch,
    Shape::Single(None),
    Shape::Single(Some("track")),
    Shape::Single(Some("page")),
    Shape::Single(Some("identify")),
    Shape::Single(Some("group")),
    Shape::Single(Some("screen")),
    Shape::Single(Some("alias")),
];

/// The decoded request, for the fuzz target's own checks.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The authorization key the headers carry, when they are well formed.
    pub key: Option<String>,
    /// Events accepted and enriched, as the store would keep them.
    pub events: Vec<Value>,
    /// Events refused one by one, with their reason.
    pub refused: Vec<&'static str>,
    /// Why the whole request was refused, if it was.
    pub refused_whole: Option<String>,
    /// How each accepted event mapped under `plan`.
    pub outcomes: Vec<Outcome>,
}

/// Decodes a request the way the relay's ingestion does, with `limit` bytes allowed after decompression, and maps
/// each accepted event with `plan` at `now_ms`. `shape` picks one of the routes' shapes (modulo their number);
/// `headers` are `name: value` lines, of which those that are not valid HTTP are left out, as a server would
/// refuse them before the relay saw them.
pub fn decode_request(shape: u8, headers: &[u8], body: &[u8], limit: usize, plan: &Plan, now_ms: i64) -> Decoded {
    let mut map = HeaderMap::new();
    for line in headers.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        map.append(name, value);
    }
    let mut decoded = Decoded::default();
    if let Err(problem) = ingest::check_content_type(&map) {
        decoded.refused_whole = Some(problem.message);
        return decoded;
    }
    match ingest::authorization(&map) {
        Ok(key) => decoded.key = key,
        Err(problem) => {
            decoded.refused_whole = Some(problem.message);
            return decoded;
        }
    }
    let encoding = map.get("content-encoding").and_then(|v| v.to_str().ok());
    let inflated = match decode::inflate(body, encoding, limit) {
        Ok(inflated) => inflated,
        Err(error) => {
            decoded.refused_whole = Some(format!("{error:?}"));
            return decoded;
        }
    };
    assert!(inflated.len() <= limit, "inflated past the limit: {} > {limit}", inflated.len());
    let shape = SHAPES[usize::from(shape) % SHAPES.len()];
    let events = match decode::decode(&inflated, shape, limit) {
        Ok(events) => events,
        Err(error) => {
            decoded.refused_whole = Some(format!("{error:?}"));
            return decoded;
        }
    };
    let trusted = ["127.0.0.0/8".parse().expect("a network"), "::1/128".parse().expect("a network")];
    let (client_ip, forwarded) = enrich::client_ip(IpAddr::V4(Ipv4Addr::LOCALHOST), &map, &trusted);
    let user_agent = map.get("user-agent").and_then(|v| v.to_str().ok());
    let facts = Facts::new(now_ms, client_ip, forwarded, user_agent);
    // Reading the whole body into a tree must say the same of every event as reading events where they were sent.
    let text = decode::body_text(&inflated).expect("decoded, so text");
    let tree = decode::decode_tree(text, shape, limit).expect("decoded, so a tree too");
    assert_eq!(events.write_key, tree.write_key);
    assert_eq!(events.events.len(), tree.events.len());
    for (event, tree) in events.events.into_iter().zip(tree.events) {
        let received = match (event, tree) {
            (Ok(event), Ok(tree)) => {
                let (received, tree) = (enrich::enrich(event, &facts), enrich::enrich(tree, &facts));
                assert_eq!(
                    serde_json::from_str::<Value>(&received.text).expect("JSON"),
                    serde_json::from_str::<Value>(&tree.text).expect("JSON")
                );
                assert_eq!(received.consent, tree.consent);
                assert_eq!(received.visitors, enrich::visitors(&received.text));
                assert_eq!(tree.visitors, enrich::visitors(&tree.text));
                Ok(received)
            }
            (Err(error), Err(tree)) => {
                assert_eq!(error, tree);
                Err(error)
            }
            (event, tree) => panic!("{event:?} but {tree:?}"),
        };
        match received {
            Ok(received) => {
                let event: Value = serde_json::from_str(&received.text).expect("the relay writes JSON");
                let kind = event["type"].as_str().unwrap_or_default();
                assert!(KINDS.contains(&kind), "accepted an event of type {kind:?}");
                let mut context = Context::stateless(now_ms);
                decoded.outcomes.push(plan.apply_str(&received.text, &mut context));
                decoded.events.push(event);
            }
            Err(error) => decoded.refused.push(error.reason),
        }
    }
    decoded
}
