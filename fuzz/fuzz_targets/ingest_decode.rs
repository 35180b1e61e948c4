//! Arbitrary requests through the relay's ingestion decoder: headers, content encoding, body, batch splitting,
//! envelope checks, enrichment and mapping. Nothing panics, nothing inflates past the limit, every accepted event
//! has a known type, a visitor, an id and a time after enrichment, and the id derived for an event without one is
//! the same however often it is derived.
//!
//! Input layout: byte 0 picks the route's shape; byte 1 picks how the rest is sent (as is, or gzip / deflate
//! compressed here so that the fuzzer reaches the decoder behind the decompression); then header lines
//! (`name: value`) up to an empty line; then the body.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use signal_engine::relay::fuzzing::decode_request;
use signal_engine::Plan;

const NOW_MS: i64 = 1_795_176_000_000;
const LIMIT: usize = 64 * 1024;

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| signal_engine::presets::OPENAI_ADS.compile(&Default::default()).plan.expect("preset compiles"))
}

fuzz_target!(|data: &[u8]| {
    let [shape, sending, rest @ ..] = data else { return };
    let split = rest.windows(2).position(|w| w == b"\n\n").unwrap_or(rest.len());
    let mut headers = rest[..split].to_vec();
    let body = rest.get(split + 2..).unwrap_or_default();
    let body = match sending % 4 {
        1 => {
            headers.extend_from_slice(b"\ncontent-encoding: gzip");
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(body).expect("in memory");
            encoder.finish().expect("in memory")
        }
        2 => {
            headers.extend_from_slice(b"\ncontent-encoding: deflate");
            let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(body).expect("in memory");
            encoder.finish().expect("in memory")
        }
        _ => body.to_vec(),
    };
    let decoded = decode_request(*shape, &headers, &body, LIMIT, plan(), NOW_MS);
    for event in &decoded.events {
        let text = |name: &str| event.get(name).and_then(Value::as_str);
        assert!(text("messageId").is_some_and(|id| !id.trim().is_empty()), "no id after enrichment: {event}");
        assert!(event.get("timestamp").is_some_and(|t| !t.is_null()), "no time after enrichment: {event}");
        assert!(text("receivedAt").is_some(), "no receivedAt: {event}");
        let visitor = |name: &str| text(name).is_some_and(|id| !id.trim().is_empty());
        assert!(visitor("anonymousId") || visitor("userId"), "accepted without a visitor: {event}");
        assert!(event["context"]["ip"].is_string(), "no context.ip: {event}");
        // The stored form must read back as the same event.
        let stored = serde_json::to_string(event).expect("a Value serialises");
        let read: Value = serde_json::from_str(&stored).expect("the stored event reads back");
        assert_eq!(&read, event);
    }
    assert_eq!(decoded.outcomes.len(), decoded.events.len());
});
