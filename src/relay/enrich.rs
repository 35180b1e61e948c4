//! What a collector adds to the events it receives, as Segment's API does: `receivedAt`; the visitor's IP address
//! (from the connection, or from `X-Forwarded-For` / `Forwarded` only when the connection comes from a trusted
//! proxy) and User-Agent when the event lacks them; the event's time corrected for the client's clock skew
//! (`timestamp + (receivedAt − sentAt)`, the original kept as `originalTimestamp`), or the time of receipt when the
//! event has none; and a `messageId` derived from the content when the event has none. Each addition is recorded
//! under the event's `_relay` object (`{"context.ip": "the connection's address"}`), which `engine explain` and the
//! debugger show beside the values. An event still in the text it was sent as gets these additions written after
//! its own members, where the later member wins, rather than being taken apart and written again.

use std::borrow::Cow;
use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::decode::{Envelope, Incoming, Raw, Sent};
use crate::explain::RELAY_NOTES;
use crate::functions::write_json_string;
use crate::input::Member;

/// An event as the relay keeps and maps it.
#[derive(Debug)]
pub(super) struct Received {
    /// Its JSON text: as sent, with what the relay adds.
    pub text: String,
    /// Whether it carries a consent object (`context.consent`).
    pub consent: bool,
    /// The visitors it names, keyed as identity memory keys them (`anon:…`, `user:…`): the writer reads them ahead
    /// for the whole group, and need not look for them in the text.
    pub visitors: Vec<String>,
}

/// What the relay knows about a request beyond its body.
pub(super) struct Facts<'a> {
    pub received_ms: i64,
    /// `received_ms` as the RFC 3339 text `receivedAt` is written as, once for the request's events.
    pub received: String,
    /// The visitor's address, as [`client_ip`] decided, as text.
    pub client_ip: String,
    /// Whether `client_ip` came from a trusted proxy's header rather than the connection.
    pub forwarded: bool,
    pub user_agent: Option<&'a str>,
}

impl<'a> Facts<'a> {
    pub fn new(received_ms: i64, client_ip: IpAddr, forwarded: bool, user_agent: Option<&'a str>) -> Facts<'a> {
        Facts { received_ms, received: rfc3339(received_ms), client_ip: client_ip.to_string(), forwarded, user_agent }
    }
}

/// The visitor's address: the connection's peer, unless the peer is a trusted proxy, in which case the forwarding
/// headers are followed from the nearest hop back past every trusted proxy. A header from anyone else is ignored,
/// since any client can write one. Returns the address and whether a header supplied it.
pub(super) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> (IpAddr, bool) {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    if !is_trusted(&peer) {
        return (peer, false);
    }
    let mut hops = forwarded_for(headers);
    if hops.is_empty() {
        hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(parse_ip)
            .collect();
    }
    // Nearest hop last: walk back while the hop is one of ours.
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    (client, client != peer)
}

/// The `for=` addresses of RFC 7239 `Forwarded` headers, in order.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then(|| parse_ip(value.trim().trim_matches('"')))?
            })
        })
        .collect()
}

/// `203.0.113.7`, `203.0.113.7:1234`, `2001:db8::1`, `[2001:db8::1]:1234`.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(inner) = text.strip_prefix('[') {
        return inner.split_once(']').and_then(|(ip, _)| ip.parse().ok()).map(canonical);
    }
    text.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok()).map(canonical)
}

/// An IPv4 address reached over an IPv6 socket (`::ffff:203.0.113.7`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Adds what the relay knows to a checked event and notes each addition.
pub(super) fn enrich(event: Incoming<'_>, facts: &Facts<'_>) -> Received {
    match event {
        Incoming::Tree(mut fields) => {
            let (changes, consent, visitors) = {
                let envelope = Envelope::of_tree(&fields);
                let changes = amendments(&envelope, facts, || content_id(&fields));
                let changes = Changes {
                    members: changes.members.iter().map(|(key, new)| (*key, new.value())).collect(),
                    context: changes.context.iter().map(|(key, new)| (*key, new.value())).collect(),
                };
                (changes, envelope.consent.is_some_and(Raw::is_filled_object), envelope.visitors())
            };
            for (key, value) in changes.members {
                fields.insert(key.to_string(), value);
            }
            if let Some(Value::Object(context)) = fields.get_mut("context") {
                for (key, value) in changes.context {
                    context.insert(key.to_string(), value);
                }
            }
            Received { text: Value::Object(fields).to_string(), consent, visitors }
        }
        Incoming::Sent(Sent { text, members, envelope, context }) => {
            let changes = amendments(&envelope, facts, String::new);
            Received {
                text: amended(text, &members, &changes, context),
                consent: envelope.consent.is_some_and(Raw::is_filled_object),
                visitors: envelope.visitors(),
            }
        }
    }
}

/// What enrichment sets: members of the event, in key order, and members of its `context` when the event has one
/// that is an object (when it has none, a new `context` is among the event's members).
struct Changes<T> {
    members: Vec<(&'static str, T)>,
    context: Vec<(&'static str, T)>,
}

/// A value enrichment writes.
enum New<'e> {
    Text(Cow<'e, str>),
    Copy(Raw<'e>),
    Object(Vec<(&'static str, New<'e>)>),
}

impl New<'_> {
    fn write(&self, out: &mut String) {
        match self {
            New::Text(text) => write_json_string(text, out),
            New::Copy(raw) => raw.write(out),
            New::Object(members) => {
                out.push('{');
                for (index, (key, value)) in members.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    write_json_string(key, out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }

    fn value(&self) -> Value {
        match self {
            New::Text(text) => Value::String(text.to_string()),
            New::Copy(raw) => raw.value(),
            New::Object(members) => {
                Value::Object(members.iter().map(|(key, value)| (key.to_string(), value.value())).collect())
            }
        }
    }
}

/// An event's text with what enrichment changed: the members it set written after the event's own, where the
/// later member wins, and those it set in `context` at the end of the `context` that counts (the object member
/// `context` is when it was sent as one).
fn amended(text: &str, members: &[Member<'_>], changes: &Changes<New<'_>>, context: Option<usize>) -> String {
    fn push_member(out: &mut String, first: &mut bool, key: &str, value: &New<'_>) {
        if !std::mem::take(first) {
            out.push(',');
        }
        write_json_string(key, out);
        out.push(':');
        value.write(out);
    }
    // `text` is the whole body: the event's own members give its length.
    let own = members.first().zip(members.last()).map_or(0, |(first, last)| last.span.end - first.span.start);
    let mut out = String::with_capacity(own + 512);
    out.push('{');
    for (index, member) in members.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        if Some(index) != context {
            out.push_str(&text[member.span.clone()]);
            continue;
        }
        // Up to the object's closing brace, then the additions.
        out.push_str(&text[member.span.start..member.value.end - 1]);
        let mut first = text[member.value.start + 1..member.value.end - 1].trim_ascii().is_empty();
        for (key, value) in &changes.context {
            push_member(&mut out, &mut first, key, value);
        }
        out.push('}');
    }
    let mut first = members.is_empty();
    for (key, value) in &changes.members {
        push_member(&mut out, &mut first, key, value);
    }
    out.push('}');
    out
}

/// The members naming a visitor, and the kind of identity memory key each gives.
const VISITORS: [(&str, &str); 3] = [("anonymousId", "anon:"), ("userId", "user:"), ("previousId", "anon:")];

/// The visitors a received event's text names, each as its last occurrence says: what [`Received::visitors`] must
/// be, read the long way, for the tests and the fuzzer to hold it to.
pub(super) fn visitors(event: &str) -> Vec<String> {
    let members = crate::input::members(event).unwrap_or_default();
    (VISITORS.into_iter())
        .filter_map(|(field, kind)| {
            let value = members.iter().rev().find(|m| m.key == field)?.value.clone();
            match serde_json::from_str::<Value>(&event[value]) {
                Ok(Value::String(id)) if !id.is_empty() => Some(format!("{kind}{id}")),
                _ => None,
            }
        })
        .collect()
}

/// What the relay adds to an event whose envelope is checked (its times parse), each addition noted: a
/// `messageId` from `derived_id` when the event has none, the corrected or copied time, `receivedAt`, the
/// visitor's address and User-Agent, and the route's type and the batch's `sentAt` where decoding filled them in.
fn amendments<'e>(
    envelope: &Envelope<'e>,
    facts: &'e Facts<'_>,
    derived_id: impl FnOnce() -> String,
) -> Changes<New<'e>> {
    let blank = |member: Option<Raw<'_>>| member.and_then(Raw::string).is_none_or(|text| text.trim().is_empty());
    let mut members = Vec::with_capacity(8);
    let mut notes: Vec<(&'static str, New<'e>)> = Vec::with_capacity(5);
    let note = |text: &'static str| New::Text(Cow::Borrowed(text));
    if let Some(kind) = envelope.filled_kind {
        members.push(("type", New::Text(Cow::Borrowed(kind))));
    }
    if let Some(sent_at) = envelope.sent_at.filter(|_| envelope.filled_sent_at) {
        members.push(("sentAt", New::Copy(sent_at)));
    }
    if blank(envelope.message_id) {
        members.push(("messageId", New::Text(Cow::Owned(derived_id()))));
        notes.push(("messageId", note("derived from the event's content: the event carried none")));
    }
    let received = &facts.received;
    let own_time = [("timestamp", envelope.timestamp), ("originalTimestamp", envelope.original_timestamp)]
        .into_iter()
        .find_map(|(name, member)| member.filter(|raw| !raw.is_null()).map(|raw| (name, raw)));
    match own_time {
        None => {
            members.push(("timestamp", New::Text(Cow::Borrowed(received))));
            notes.push(("timestamp", note("receivedAt: the event carried no time")));
        }
        Some((name, time)) => {
            let time_ms = time.time_ms();
            let sent_ms = envelope.sent_at.filter(|raw| !raw.is_null()).and_then(Raw::time_ms);
            match (time_ms, sent_ms) {
                (Some(time_ms), Some(sent_ms))
                    if sent_ms != facts.received_ms
                        && jiff::Timestamp::from_millisecond(time_ms.saturating_add(facts.received_ms - sent_ms))
                            .is_ok() =>
                {
                    let skew = facts.received_ms - sent_ms;
                    let corrected = rfc3339(time_ms.saturating_add(skew));
                    if envelope.timestamp.and_then(Raw::string).as_deref() != Some(corrected.as_str()) {
                        members.push(("timestamp", New::Text(Cow::Owned(corrected))));
                    }
                    if envelope.original_timestamp.is_none() {
                        members.push(("originalTimestamp", New::Copy(time)));
                    }
                    let note = format!(
                        "corrected for the client's clock: {name} shifted by {}{} ms (receivedAt − sentAt)",
                        if skew >= 0 { "+" } else { "−" },
                        skew.unsigned_abs()
                    );
                    notes.push(("timestamp", New::Text(Cow::Owned(note))));
                }
                _ if name != "timestamp" => {
                    members.push(("timestamp", New::Copy(time)));
                    notes.push(("timestamp", note("copied from originalTimestamp")));
                }
                _ => {}
            }
        }
    }
    members.push(("receivedAt", New::Text(Cow::Borrowed(received))));
    notes.push(("receivedAt", note("the relay's clock when the request arrived")));

    let mut context = Vec::new();
    if blank(envelope.ip) {
        context.push(("ip", New::Text(Cow::Borrowed(&facts.client_ip))));
        let source =
            if facts.forwarded { "the forwarding header of a trusted proxy" } else { "the connection's address" };
        notes.push(("context.ip", note(source)));
    }
    if let Some(agent) = facts.user_agent.filter(|a| !a.trim().is_empty()) {
        if blank(envelope.user_agent) {
            context.push(("userAgent", New::Text(Cow::Owned(agent.to_string()))));
            notes.push(("context.userAgent", note("the request's User-Agent header")));
        }
    }
    // A context that is not an object (absent, or null: anything else was refused) is replaced by a new one.
    if !envelope.context.is_some_and(Raw::is_object) {
        members.push(("context", New::Object(std::mem::take(&mut context))));
    }
    notes.sort_by_key(|(key, _)| *key);
    members.push((RELAY_NOTES, New::Object(notes)));
    // Written in key order, as the tree writes them.
    members.sort_by_key(|(key, _)| *key);
    Changes { members, context }
}

/// An id for an event that has none, derived from what it says, so that a client retrying the same request gets
/// the same OpenAI id and OpenAI's deduplication holds. `sentAt` changes between retries and is left out; keys
/// are sorted (serde_json's map), so the same content always gives the same id.
pub(super) fn content_id(event: &Map<String, Value>) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in event {
        if key == "sentAt" || key == "messageId" || key == RELAY_NOTES {
            continue;
        }
        hasher.update(serde_json::to_vec(key).unwrap_or_default());
        hasher.update(b":");
        hasher.update(serde_json::to_vec(value).unwrap_or_default());
        hasher.update(b",");
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("derived-{hex}")
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| format!("{t:.3}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde_json::json;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "198.51.100.9".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(client_ip(stranger, &spoofed, &trusted), (stranger, false), "a stranger's header is ignored");
        assert_eq!(client_ip(proxy, &spoofed, &[]), (proxy, false), "no proxy is trusted by default");
        let chain = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.7, 10.0.0.9")]);
        assert_eq!(
            client_ip(proxy, &chain, &trusted),
            ("203.0.113.7".parse().unwrap(), true),
            "the nearest untrusted hop is the client; what it claims before itself is not believed"
        );
        let forwarded = headers(&[("forwarded", r#"for="[2001:db8::7]:443";proto=https, for=10.0.0.2"#)]);
        assert_eq!(client_ip(proxy, &forwarded, &trusted), ("2001:db8::7".parse().unwrap(), true));
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        let one = headers(&[("x-forwarded-for", "203.0.113.8:5555")]);
        assert_eq!(client_ip(mapped, &one, &trusted), ("203.0.113.8".parse().unwrap(), true));
        assert_eq!(client_ip(proxy, &headers(&[("x-forwarded-for", "garbage")]), &trusted), (proxy, false));
    }

    pub(super) fn facts() -> Facts<'static> {
        Facts::new(1_795_000_000_000, "203.0.113.7".parse().unwrap(), false, Some("Mozilla/5.0 (test)"))
    }

    fn enriched(event: Value) -> Map<String, Value> {
        let Value::Object(event) = event else { panic!() };
        let received = enrich(Incoming::Tree(event), &facts());
        serde_json::from_str(&received.text).expect("the relay writes JSON")
    }

    #[test]
    fn the_relay_adds_what_the_browser_cannot_know_and_notes_it() {
        let event = enriched(json!({"type": "page", "anonymousId": "a", "messageId": "m"}));
        assert_eq!(event["context"]["ip"], "203.0.113.7");
        assert_eq!(event["context"]["userAgent"], "Mozilla/5.0 (test)");
        assert_eq!(event["receivedAt"], "2026-11-18T11:06:40.000Z");
        assert_eq!(event["timestamp"], event["receivedAt"], "no time: the time of receipt");
        assert_eq!(event["_relay"]["context.ip"], "the connection's address");
        assert_eq!(event["messageId"], "m");
        let own = enriched(json!({"type": "page", "anonymousId": "a", "messageId": "m",
                                  "context": {"ip": "192.0.2.1", "userAgent": "curl/8"}}));
        assert_eq!(
            (own["context"]["ip"].as_str(), own["context"]["userAgent"].as_str()),
            (Some("192.0.2.1"), Some("curl/8"))
        );
        assert!(own["_relay"].get("context.ip").is_none());
    }

    #[test]
    fn a_clients_clock_skew_is_corrected_from_sent_at() {
        // The client's clock is 5 minutes behind: it says it sent at 11:01:40 what the relay received at 11:06:40.
        let event = enriched(json!({"type": "page", "anonymousId": "a", "messageId": "m",
                                    "timestamp": "2026-11-18T11:01:30.000Z", "sentAt": "2026-11-18T11:01:40.000Z"}));
        assert_eq!(event["timestamp"], "2026-11-18T11:06:30.000Z");
        assert_eq!(event["originalTimestamp"], "2026-11-18T11:01:30.000Z");
        assert!(
            event["_relay"]["timestamp"].as_str().unwrap().contains("timestamp shifted by +300000 ms"),
            "{}",
            event["_relay"]
        );
        let unskewed = enriched(json!({"type": "page", "anonymousId": "a", "messageId": "m",
                                       "timestamp": "2026-11-18T08:48:10.000Z"}));
        assert_eq!(unskewed["timestamp"], "2026-11-18T08:48:10.000Z", "without sentAt the time stands");
    }

    #[test]
    fn an_event_without_message_id_gets_one_from_its_content() {
        let event = json!({"type": "track", "event": "E", "anonymousId": "a", "timestamp": "2026-11-18T08:00:00Z"});
        let first = enriched(event.clone());
        let mut retried = event.clone();
        retried["sentAt"] = json!("2026-11-18T08:00:09Z");
        let second = enriched(retried);
        assert!(first["messageId"].as_str().unwrap().starts_with("derived-"));
        assert_eq!(first["messageId"], second["messageId"], "a retry keeps its id");
        let mut other = event;
        other["event"] = json!("F");
        assert_ne!(enriched(other)["messageId"], first["messageId"]);
    }
}

/// Events read where they were sent and amended must come out as those read whole into a tree and enriched there.
#[cfg(test)]
mod readings {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::super::decode::{body_text, decode, decode_tree, Incoming, Shape, ENVELOPE};
    use super::{enrich, tests::facts};

    /// Reads `body` both ways; every event must be accepted or refused alike, and each accepted one enriched into
    /// the same JSON. Returns the events, and how many were read as sent.
    fn both_readings_agree(body: &str, shape: Shape) -> (Vec<Result<Value, String>>, usize) {
        let sent = decode(body.as_bytes(), shape, 1 << 20).map_err(|e| format!("{e:?}"));
        let tree =
            body_text(body.as_bytes()).and_then(|text| decode_tree(text, shape, 1 << 20)).map_err(|e| format!("{e:?}"));
        let (sent, tree) = match (sent, tree) {
            (Ok(sent), Ok(tree)) => (sent, tree),
            (sent, tree) => {
                assert_eq!(sent.err(), tree.err(), "{body}");
                return (Vec::new(), 0);
            }
        };
        assert_eq!(sent.write_key, tree.write_key);
        let as_sent = sent.events.iter().filter(|e| matches!(e, Ok(Incoming::Sent(_)))).count();
        let mut events = Vec::new();
        for (one, other) in sent.events.into_iter().zip(tree.events) {
            match (one, other) {
                (Ok(one), Ok(other)) => {
                    let (one, other) = (enrich(one, &facts()), enrich(other, &facts()));
                    let value: Value = serde_json::from_str(&one.text).expect("the relay writes JSON");
                    assert_eq!(value, serde_json::from_str::<Value>(&other.text).unwrap(), "{body}\n{}", one.text);
                    assert_eq!(one.consent, other.consent, "{body}");
                    assert_eq!(one.visitors, super::visitors(&one.text), "{body}");
                    assert_eq!(other.visitors, super::visitors(&other.text), "{body}");
                    events.push(Ok(value));
                }
                (Err(one), Err(other)) => {
                    assert_eq!(one, other, "{body}");
                    events.push(Err(one.message));
                }
                (one, other) => panic!("{body}: {one:?} but {other:?}"),
            }
        }
        (events, as_sent)
    }

    #[test]
    fn the_example_stream_reads_the_same_as_sent_and_whole() {
        let stream = include_str!("../../examples/events.ndjson");
        let lines: Vec<&str> = stream.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut read_as_sent = 0;
        for line in &lines {
            read_as_sent += both_readings_agree(line, Shape::Single(None)).1;
        }
        let batch = format!(r#"{{"sentAt": "2026-11-18T11:06:41Z", "batch": [{}]}}"#, lines.join(",\n"));
        let (events, as_sent) = both_readings_agree(&batch, Shape::Batch);
        assert_eq!(events.len(), lines.len());
        assert!(read_as_sent * 10 >= lines.len() * 9, "{read_as_sent} of {} read as sent", lines.len());
        assert_eq!(as_sent, read_as_sent, "in a batch as one by one");
    }

    #[test]
    fn hand_picked_events_read_the_same_as_sent_and_whole() {
        let base = r#""type":"track","event":"E","anonymousId":"a","messageId":"m""#;
        for (event, what) in [
            (format!("{{{base}}}"), "nothing of its own: every addition appended"),
            (format!(r#"{{{base},"context":{{"ip":"192.0.2.1","userAgent":"curl/8"}}}}"#), "its own ip and agent"),
            (format!(r#"{{{base},"context":{{"ip":" ","page":{{"url":"u"}}}}}}"#), "a blank ip replaced inside"),
            (format!(r#"{{{base},"context":{{ }}}}"#), "an empty context"),
            (format!(r#"{{{base},"context":null}}"#), "a null context"),
            (format!(r#"{{{base},"context":{{"ip":"1.2.3.4"}},"context":{{"ip":""}}}}"#), "the last context counts"),
            (format!(r#"{{{base},"context":{{"ip":""}},"context":null}}"#), "a last context of null"),
            (format!(r#"{{{base},"context":{{"ip":5,"ip":"9.9.9.9"}}}}"#), "the last ip counts"),
            (format!(r#"{{{base},"context":{{"consent":{{"ad_storage":"granted"}}}}}}"#), "consent"),
            (format!(r#"{{"writeKey":"wk",{base},"writeKey":"again"}}"#), "write keys cut"),
            (r#"{"writeKey":"wk"}"#.to_string(), "nothing but a write key"),
            (format!(r#"{{{base},"timestamp":"2026-11-18T11:01:30Z","sentAt":"2026-11-18T11:01:40Z"}}"#), "skew"),
            (format!(r#"{{{base},"timestamp":"2026-11-18T11:01:30Z","timestamp":null}}"#), "a later null time"),
            (format!(r#"{{{base},"originalTimestamp":"2026-11-18T11:01:30Z"}}"#), "only an original time"),
            (format!(r#"{{{base},"receivedAt":"x","_relay":{{"x":1}}}}"#), "the relay's own members replaced"),
            (format!(r#"{{{base},"message\u0049d":"  "}}"#), "an escaped key: a blank id, derived"),
            (r#"{"type":"page","anonymousId":"a"}"#.to_string(), "no id: read whole"),
            (format!(r#"{{{base},"properties":[1]}}"#), "properties not an object"),
            (format!(r#"{{{base},"type":"screen","type":"bogus"}}"#), "a bogus last type"),
            (
                format!("\n {{ {} , \"properties\" : {{ \"revenue\" : 1.50 }} }} \n", base.replace(',', " ,\n ")),
                "spaced",
            ),
        ] {
            let (events, _) = both_readings_agree(&event, Shape::Single(None));
            assert_eq!(events.len(), 1, "{what}");
            let (events, _) =
                both_readings_agree(&format!(r#"{{"batch":[{event}],"sentAt":"2026-11-18T11:06:39Z"}}"#), Shape::Batch);
            assert_eq!(events.len(), 1, "{what}");
        }
        let (events, as_sent) =
            both_readings_agree(r#"{"anonymousId":"a","messageId":"m"}"#, Shape::Single(Some("page")));
        assert_eq!((events[0].as_ref().unwrap()["type"].as_str(), as_sent), (Some("page"), 1), "the route's type");
        let (events, _) = both_readings_agree(&format!(r#"{{{base},"writeKey":"wk"}}"#), Shape::Single(None));
        assert!(events[0].as_ref().unwrap().get("writeKey").is_none(), "keys never travel further");
    }

    /// A member as it may appear in an event: a key the relay reads (or not), and a value of any kind.
    fn member() -> impl Strategy<Value = String> {
        let mut keys = ENVELOPE.to_vec();
        keys.extend(["writeKey", "receivedAt", "_relay", "x", "message\\u0049d"]);
        let keys = prop::sample::select(keys);
        let values = prop::sample::select(vec![
            r#""track""#,
            r#""page""#,
            r#""alias""#,
            r#""E""#,
            r#""m1""#,
            r#"" ""#,
            r#""""#,
            r#""u1""#,
            r#""2026-11-18T11:01:30.000Z""#,
            r#""2026-11-18T11:01:40Z""#,
            "1795000000000",
            "null",
            "true",
            "7",
            "1e2",
            "{}",
            r#"{"ip":"192.0.2.1"}"#,
            r#"{"ip":" ","userAgent":"curl/8","consent":{"ad":"granted"}}"#,
            r#"{"consent":{}}"#,
            r#"{"ip":5}"#,
            "[1]",
            r#"{"ip":"1.2.3.4","ip":""}"#,
            r#"{"a":{"b":[1,{"c":null}]}}"#,
        ]);
        (keys, values, prop::sample::select(vec!["", " ", "\n  "]))
            .prop_map(|(key, value, space)| format!(r#"{space}"{key}"{space}:{space}{value}"#))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn generated_events_read_the_same_as_sent_and_whole(
            valid in any::<bool>(),
            events in prop::collection::vec(prop::collection::vec(member(), 0..10), 1..4),
            single in any::<bool>(),
            sent_at in prop::sample::select(vec!["", r#","sentAt":"2026-11-18T11:06:39Z""#, r#","sentAt":null"#]),
        ) {
            let base = r#""type":"track","event":"E","anonymousId":"a","messageId":"m""#;
            let texts: Vec<String> = events
                .iter()
                .map(|members| {
                    let mut all: Vec<&str> = members.iter().map(String::as_str).collect();
                    if valid {
                        all.insert(0, base);
                    }
                    format!("{{{}}}", all.join(","))
                })
                .collect();
            if single {
                both_readings_agree(&texts[0], Shape::Single(None));
                both_readings_agree(&texts[0], Shape::Single(Some("track")));
            } else {
                both_readings_agree(&format!(r#"{{"batch":[{}]{sent_at}}}"#, texts.join(",")), Shape::Batch);
            }
        }
    }
}
