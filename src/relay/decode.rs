//! Reading an ingestion request's body: the content encoding inflated within the size limits (a gzip bomb is
//! refused after the limit, not inflated whole), the JSON of one event or of a batch, the write key a body may
//! carry, Segment's batch-level fields merged into each event, and the envelope checks every event must pass.
//! Events stay the text they were sent as wherever the relay only adds to them; the few members it checks are read
//! out of that text, not the whole event. Pure functions on bytes, so that hostile input can be tried on them
//! directly.

use std::borrow::Cow;
use std::io::Read;
use std::ops::Range;

use serde_json::{Map, Value};

use crate::input::{batch, members, Batch, Element, Member};

/// What a route takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Shape {
    /// One event; a route that implies the type (`/v1/t`, `/v1/track`) names it.
    Single(Option<&'static str>),
    /// `{"batch": [event, …]}` with optional `writeKey`, `sentAt`, `context` and `integrations` beside it.
    Batch,
}

/// Why a whole body cannot be read.
#[derive(Debug, PartialEq)]
pub(super) enum BodyError {
    TooLarge(String),
    Malformed(String),
    UnsupportedEncoding(String),
}

/// Why one event is refused: a stable reason for metrics and a message naming the field.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct EventError {
    pub reason: &'static str,
    pub message: String,
}

impl EventError {
    fn invalid(message: impl Into<String>) -> EventError {
        EventError { reason: "invalid_event", message: message.into() }
    }
}

/// A request's events, each checked, and the write key its body carried.
#[derive(Debug)]
pub(super) struct Decoded<'b> {
    pub write_key: Option<String>,
    pub events: Vec<Result<Incoming<'b>, EventError>>,
}

/// One checked event: still the text it was sent as, or taken apart where the relay must rebuild it (an event
/// without a `messageId`, whose id comes from its whole content; a batch sharing `context` or `integrations`, merged
/// member by member; JSON nested deeper than the splitter goes).
#[derive(Debug)]
pub(super) enum Incoming<'b> {
    Sent(Sent<'b>),
    Tree(Map<String, Value>),
}

/// An event as sent, with what the relay reads of it.
#[derive(Debug)]
pub(super) struct Sent<'b> {
    /// The body the event is in.
    pub text: &'b str,
    /// Its members in order, placed in `text`, less the write key, which never travels further.
    pub members: Vec<Member<'b>>,
    /// The members the relay checks and amends ([`ENVELOPE`]), each as its last occurrence says; of `context`, only
    /// the members the relay reads ([`CONTEXT`]), and of the other objects nothing but that they are objects.
    pub sent: Map<String, Value>,
    /// The same checked, with the route's type and the batch's `sentAt` filled in: what enrichment amends.
    pub envelope: Map<String, Value>,
    /// Which of `members` is the `context` that counts (the last), when it is an object.
    pub context: Option<usize>,
}

/// The members of an event the relay checks or amends.
pub(super) const ENVELOPE: [&str; 13] = [
    "type",
    "event",
    "messageId",
    "anonymousId",
    "userId",
    "previousId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "properties",
    "context",
    "traits",
    "integrations",
];

/// The members of an event's `context` the relay reads.
const CONTEXT: [&str; 3] = ["ip", "userAgent", "consent"];

/// Inflates a body sent with `Content-Encoding` (`gzip`, `x-gzip`, `deflate`, `identity`, or a list applied in
/// order), reading at most `limit` bytes of the result.
pub(super) fn inflate<'b>(body: &'b [u8], encoding: Option<&str>, limit: usize) -> Result<Cow<'b, [u8]>, BodyError> {
    let mut data = Cow::Borrowed(body);
    let Some(encoding) = encoding else { return Ok(data) };
    // Codings are listed in the order they were applied, so they are undone from the last.
    for coding in encoding.split(',').map(|c| c.trim().to_ascii_lowercase()).rev() {
        data = match coding.as_str() {
            "" | "identity" => data,
            "gzip" | "x-gzip" => Cow::Owned(read_limited(flate2::read::MultiGzDecoder::new(&data[..]), limit)?),
            // HTTP's `deflate` is zlib-wrapped, but some clients send a raw deflate stream.
            "deflate" => match read_limited(flate2::read::ZlibDecoder::new(&data[..]), limit) {
                Err(BodyError::Malformed(_)) => {
                    Cow::Owned(read_limited(flate2::read::DeflateDecoder::new(&data[..]), limit)?)
                }
                other => Cow::Owned(other?),
            },
            other => {
                return Err(BodyError::UnsupportedEncoding(format!(
                    "Content-Encoding {other:?} is not supported: send gzip, deflate or an uncompressed body"
                )))
            }
        };
    }
    Ok(data)
}

fn read_limited(reader: impl Read, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    let read = reader.take(limit as u64 + 1).read_to_end(&mut out);
    match read {
        Ok(_) if out.len() > limit => {
            Err(BodyError::TooLarge(format!("the body inflates to more than the limit of {limit} bytes")))
        }
        Ok(_) => Ok(out),
        Err(error) => Err(BodyError::Malformed(format!("the compressed body cannot be inflated: {error}"))),
    }
}

/// Reads the events of a body. A body that is not JSON, or not of the route's shape, is refused whole; in a batch,
/// each event is checked on its own, so one bad event does not cost the others. `max_event_bytes` bounds each
/// event of a batch, measured as its compact JSON.
pub(super) fn decode(body: &[u8], shape: Shape, max_event_bytes: usize) -> Result<Decoded<'_>, BodyError> {
    let text = body_text(body)?;
    // Whatever the splitter gives up on (broken JSON, deep nesting), serde_json reads, with its own messages.
    let split = match shape {
        Shape::Single(_) => members(text).map(|members| Batch { members, events: None }),
        Shape::Batch => batch(text),
    };
    let Some(Batch { members: mut top, events }) = split else { return decode_tree(text, shape, max_event_bytes) };
    let last = |top: &[Member<'_>], name: &str| top.iter().rposition(|m| m.key == name);
    let write_key = match last(&top, "writeKey").map(|i| parse(&text[top[i].value.clone()])) {
        Some(Value::String(key)) => Some(key),
        None | Some(Value::Null) => None,
        Some(other) => {
            return Err(BodyError::Malformed(format!("`writeKey` must be a string, not {}", kind_of(&other))))
        }
    };
    if let Shape::Single(kind) = shape {
        top.retain(|m| m.key != "writeKey");
        return Ok(Decoded { write_key, events: vec![sent_event(text, 0..text.len(), top, None, kind)] });
    }
    let Some(events) = events else {
        return Err(BodyError::Malformed("`batch` is missing or not an array of events".to_string()));
    };
    if events.is_empty() {
        return Err(BodyError::Malformed("`batch` is empty".to_string()));
    }
    // A shared `context` or `integrations` is merged into each event member by member, on the tree.
    let shared = |name| last(&top, name).map(|i| &text[top[i].value.clone()]).filter(|v| *v != "null");
    if shared("context").is_some() || shared("integrations").is_some() {
        return decode_tree(text, shape, max_event_bytes);
    }
    let sent_at = shared("sentAt").map(parse);
    let events = events
        .into_iter()
        .map(|Element { place, members }| {
            // Measured as serde_json writes it, as when read into a tree. Only a number's text grows when written
            // again (`1e15` becomes `1000000000000000.0`, 4.5 times), so an event within an eighth of the limit as
            // sent cannot pass it, and only a larger one is read to be measured.
            if place.len() > max_event_bytes / 8 {
                let size = compact_len(&parse(&text[place.clone()]));
                if size > max_event_bytes {
                    return Err(too_large(size, max_event_bytes));
                }
            }
            match members {
                Some(mut members) => {
                    members.retain(|m| m.key != "writeKey");
                    sent_event(text, place, members, sent_at.as_ref(), None)
                }
                None => tree_event(parse(&text[place]), &Map::new(), None).map(Incoming::Tree),
            }
        })
        .collect();
    Ok(Decoded { write_key, events })
}

/// The body as text: not empty, and UTF-8, checked once, whole, rather than string by string as a parser would from
/// bytes.
pub(super) fn body_text(body: &[u8]) -> Result<&str, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Malformed("the body is empty: send a JSON event".to_string()));
    }
    std::str::from_utf8(body).map_err(|e| {
        BodyError::Malformed(format!(
            "malformed JSON: the body is not UTF-8 (invalid bytes at byte {})",
            e.valid_up_to()
        ))
    })
}

/// A value the splitter has found, read: it is JSON, so serde_json reads it.
fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn too_large(size: usize, max_event_bytes: usize) -> EventError {
    EventError {
        reason: "too_large",
        message: format!("the event is {size} bytes, more than the limit of {max_event_bytes}"),
    }
}

/// Checks the event at `place` in the body's `text`, reading only the members the relay checks and amends. An
/// event whose id must come from its content is taken apart instead.
fn sent_event<'b>(
    text: &'b str,
    place: Range<usize>,
    kept: Vec<Member<'b>>,
    sent_at: Option<&Value>,
    kind: Option<&str>,
) -> Result<Incoming<'b>, EventError> {
    let mut sent = Map::new();
    let mut context = None;
    for (index, member) in kept.iter().enumerate() {
        let Some(&name) = ENVELOPE.iter().find(|&&name| member.key == name) else { continue };
        let value = &text[member.value.clone()];
        let read = match name {
            "context" if value.starts_with('{') => {
                context = Some(index);
                let mut read = Map::new();
                for inner in members(value).unwrap_or_default() {
                    if CONTEXT.contains(&&*inner.key) {
                        read.insert(inner.key.into_owned(), parse(&value[inner.value]));
                    }
                }
                Value::Object(read)
            }
            // Only their being objects is checked.
            "properties" | "traits" | "integrations" if value.starts_with('{') => Value::Object(Map::new()),
            _ => {
                if name == "context" {
                    context = None;
                }
                parse(value)
            }
        };
        sent.insert(name.to_string(), read);
    }
    if !matches!(sent.get("messageId"), Some(Value::String(id)) if !id.trim().is_empty()) {
        let shared = sent_at.into_iter().map(|v| ("sentAt".to_string(), v.clone())).collect();
        return tree_event(parse(&text[place]), &shared, kind).map(Incoming::Tree);
    }
    let mut envelope = sent.clone();
    if let Some(sent_at) = sent_at {
        if envelope.get("sentAt").is_none_or(Value::is_null) {
            envelope.insert("sentAt".to_string(), sent_at.clone());
        }
    }
    let envelope = check_event(envelope, kind)?;
    Ok(Incoming::Sent(Sent { text, members: kept, sent, envelope, context }))
}

/// Reads a body whole into a tree: what the splitter leaves to serde_json, and every body in the tests that
/// compare both readings.
pub(super) fn decode_tree(text: &str, shape: Shape, max_event_bytes: usize) -> Result<Decoded<'static>, BodyError> {
    let value: Value = serde_json::from_str(text).map_err(|e| BodyError::Malformed(format!("malformed JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        let expected = match shape {
            Shape::Single(_) => "an event must be a JSON object",
            Shape::Batch => "the body must be an object {\"batch\": [event, …]}",
        };
        return Err(BodyError::Malformed(format!("{expected}, not {}", kind_of(&value))));
    };
    let write_key = match object.remove("writeKey") {
        Some(Value::String(key)) => Some(key),
        None | Some(Value::Null) => None,
        Some(other) => {
            return Err(BodyError::Malformed(format!("`writeKey` must be a string, not {}", kind_of(&other))))
        }
    };
    match shape {
        Shape::Single(kind) => {
            let event = check_event(object, kind).map(Incoming::Tree);
            Ok(Decoded { write_key, events: vec![event] })
        }
        Shape::Batch => {
            let events = match object.remove("batch") {
                Some(Value::Array(events)) => events,
                _ => return Err(BodyError::Malformed("`batch` is missing or not an array of events".to_string())),
            };
            if events.is_empty() {
                return Err(BodyError::Malformed("`batch` is empty".to_string()));
            }
            // Segment's batch API: `context`, `integrations` and `sentAt` at the top apply to every event, which
            // keeps its own where it has them.
            let shared: Map<String, Value> = ["context", "integrations", "sentAt"]
                .into_iter()
                .filter_map(|name| object.remove(name).filter(|v| !v.is_null()).map(|v| (name.to_string(), v)))
                .collect();
            let events = events
                .into_iter()
                .map(|event| {
                    let size = compact_len(&event);
                    if size > max_event_bytes {
                        return Err(too_large(size, max_event_bytes));
                    }
                    tree_event(event, &shared, None).map(Incoming::Tree)
                })
                .collect();
            Ok(Decoded { write_key, events })
        }
    }
}

/// Checks an event read into a tree, with the members its batch shares merged in.
fn tree_event(event: Value, shared: &Map<String, Value>, kind: Option<&str>) -> Result<Map<String, Value>, EventError> {
    let Value::Object(mut event) = event else {
        return Err(EventError::invalid(format!("an event must be a JSON object, not {}", kind_of(&event))));
    };
    event.remove("writeKey");
    for (name, value) in shared {
        match event.get_mut(name) {
            None | Some(Value::Null) => {
                event.insert(name.clone(), value.clone());
            }
            Some(own) => merge_missing(own, value),
        }
    }
    check_event(event, kind)
}

/// The length of `value` written as compact JSON, as `serde_json::to_vec` writes it, counted without writing it.
fn compact_len(value: &Value) -> usize {
    use crate::functions::json_string_len;
    match value {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(number) => match (number.as_u64(), number.as_i64()) {
            (Some(n), _) => digits(n),
            (None, Some(n)) => 1 + digits(n.unsigned_abs()),
            // Floats are rare in events: formatted, into a counter.
            _ => {
                struct Counter(usize);
                impl std::fmt::Write for Counter {
                    fn write_str(&mut self, text: &str) -> std::fmt::Result {
                        self.0 += text.len();
                        Ok(())
                    }
                }
                let mut counter = Counter(0);
                let _ = std::fmt::Write::write_fmt(&mut counter, format_args!("{number}"));
                counter.0
            }
        },
        Value::String(text) => json_string_len(text),
        Value::Array(items) => 2 + items.len().saturating_sub(1) + items.iter().map(compact_len).sum::<usize>(),
        Value::Object(map) => {
            let members: usize = map.iter().map(|(key, item)| json_string_len(key) + 1 + compact_len(item)).sum();
            2 + map.len().saturating_sub(1) + members
        }
    }
}

fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Adds to `own` the keys of `shared` it lacks, recursively; what `own` has is kept.
fn merge_missing(own: &mut Value, shared: &Value) {
    if let (Value::Object(own), Value::Object(shared)) = (own, shared) {
        for (key, value) in shared {
            match own.get_mut(key) {
                None | Some(Value::Null) => {
                    own.insert(key.clone(), value.clone());
                }
                Some(mine) => merge_missing(mine, value),
            }
        }
    }
}

/// The event types Segment's and Signal's APIs define.
pub(super) const KINDS: [&str; 6] = ["track", "page", "screen", "identify", "group", "alias"];

/// Checks the envelope fields every event needs; a route that implies a type fills it in when absent. A missing
/// `messageId` is not an error: the relay derives one from the event's content.
pub(super) fn check_event(
    mut fields: Map<String, Value>,
    kind: Option<&str>,
) -> Result<Map<String, Value>, EventError> {
    let bad = |message: String| EventError::invalid(message);
    match (fields.get("type"), kind) {
        (None | Some(Value::Null), Some(kind)) => {
            fields.insert("type".to_string(), Value::from(kind));
        }
        (None | Some(Value::Null), None) => return Err(bad("`type` is missing".to_string())),
        (Some(Value::String(given)), Some(kind)) if given != kind => {
            return Err(bad(format!("`type` is {given:?}, but this endpoint takes {kind:?} events")))
        }
        (Some(Value::String(given)), _) if !KINDS.contains(&given.as_str()) => {
            return Err(bad(format!("`type` {given:?} is not one of {}", KINDS.join(", "))))
        }
        (Some(Value::String(_)), _) => {}
        (Some(other), _) => return Err(bad(format!("`type` must be a string, not {}", kind_of(other)))),
    }
    let text = |name: &str| match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(bad(format!("`{name}` must be a string, not {}", kind_of(other)))),
    };
    text("messageId")?;
    let anonymous = text("anonymousId")?.is_some_and(|s| !s.trim().is_empty());
    let user = text("userId")?.is_some_and(|s| !s.trim().is_empty());
    if !anonymous && !user {
        return Err(bad("the event needs `anonymousId` or `userId`".to_string()));
    }
    let kind = fields.get("type").and_then(Value::as_str).unwrap_or_default();
    if kind == "track" && text("event")?.is_none_or(|s| s.trim().is_empty()) {
        return Err(bad("a track event needs its `event` name".to_string()));
    }
    if kind == "alias" && text("previousId")?.is_none_or(|s| s.trim().is_empty()) {
        return Err(bad("an alias event needs `previousId`, the id it links to `userId`".to_string()));
    }
    for object in ["properties", "context", "traits", "integrations"] {
        if let Some(value) = fields.get(object).filter(|v| !v.is_null() && !v.is_object()) {
            return Err(bad(format!("`{object}` must be an object, not {}", kind_of(value))));
        }
    }
    for time in ["timestamp", "originalTimestamp", "sentAt"] {
        match fields.get(time) {
            None | Some(Value::Null) => {}
            Some(value @ (Value::String(_) | Value::Number(_))) => {
                // A time must also be one a timestamp can hold (years -9999 to 9999), or no correction can be written.
                let ms =
                    crate::functions::timestamp_ms(value).filter(|&ms| jiff::Timestamp::from_millisecond(ms).is_ok());
                if ms.is_none() {
                    return Err(EventError {
                        reason: "invalid_timestamp",
                        message: format!(
                            "`{time}` {value} is not a time: send ISO 8601 such as 2026-11-20T12:00:00.000Z \
                             (or leave it out, and the relay's time of receipt is used)"
                        ),
                    });
                }
            }
            Some(other) => return Err(bad(format!("`{time}` must be a string, not {}", kind_of(other)))),
        }
    }
    Ok(fields)
}

pub(super) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use serde_json::json;

    use super::*;

    fn single(value: Value, kind: Option<&'static str>) -> Result<Map<String, Value>, EventError> {
        let text = value.to_string();
        let decoded = decode(text.as_bytes(), Shape::Single(kind), 1 << 20).expect("decodes");
        decoded.events.into_iter().next().expect("one event").map(|event| tree(&event))
    }

    /// An event as a tree, whichever way it was read: as sent, its members with the envelope's changes over them.
    fn tree(event: &Incoming<'_>) -> Map<String, Value> {
        match event {
            Incoming::Tree(tree) => tree.clone(),
            Incoming::Sent(sent) => {
                let mut tree: Map<String, Value> =
                    sent.members.iter().map(|m| (m.key.to_string(), parse(&sent.text[m.value.clone()]))).collect();
                for (key, value) in &sent.envelope {
                    if sent.sent.get(key) != Some(value) {
                        tree.insert(key.clone(), value.clone());
                    }
                }
                tree
            }
        }
    }

    proptest::proptest! {
        /// The size an event is refused over is the length of its compact JSON, counted without writing it.
        #[test]
        fn compact_length_is_the_length_serde_json_writes(
            value in crate::testing::json_value(
                proptest::strategy::Strategy::boxed("[a-z\"\u{1}é]{0,4}"),
                "[a-z\"\\\\/\u{0}-\u{1f}\u{7f}é😀]{0,8}",
            )
        ) {
            proptest::prop_assert_eq!(compact_len(&value), serde_json::to_vec(&value).unwrap().len());
        }
    }

    #[test]
    fn envelope_checks_name_the_field() {
        let cases = [
            (json!({"messageId": "m", "anonymousId": "a"}), None, "`type` is missing"),
            (json!({"type": "track", "messageId": "m", "event": "E"}), None, "needs `anonymousId` or `userId`"),
            (json!({"type": "track", "messageId": "m", "anonymousId": "a"}), None, "needs its `event` name"),
            (json!({"type": "page", "messageId": "m", "anonymousId": "a"}), Some("track"), "takes \"track\" events"),
            (json!({"type": "bogus", "messageId": "m", "anonymousId": "a"}), None, "is not one of"),
            (json!({"type": "page", "messageId": 7, "anonymousId": "a"}), None, "`messageId` must be a string"),
            (json!({"type": "page", "anonymousId": "a", "properties": []}), None, "`properties`"),
            (json!({"type": "alias", "userId": "u"}), None, "needs `previousId`"),
            (json!({"type": "page", "anonymousId": "a", "timestamp": "yesterday at noon"}), None, "`timestamp`"),
            (json!({"type": "page", "anonymousId": "a", "sentAt": true}), None, "`sentAt` must be a string"),
            (json!({"type": "page", "anonymousId": "a", "timestamp": -1e15}), None, "is not a time"),
        ];
        for (event, kind, expected) in cases {
            let error = single(event, kind).expect_err(expected);
            assert!(error.message.contains(expected), "{expected:?} not in {:?}", error.message);
        }
        let event = single(json!({"anonymousId": "a"}), Some("page")).unwrap();
        assert_eq!(event["type"], "page", "the endpoint's type is filled in");
        assert!(single(json!({"type": "page", "anonymousId": "a"}), None).is_ok(), "messageId may be absent");
    }

    #[test]
    fn a_batch_keeps_its_good_events_and_shares_its_top_level_fields() {
        let body = json!({
            "writeKey": "wk_1", "sentAt": "2026-11-20T12:00:01Z",
            "context": {"library": {"name": "analytics-python"}, "ip": "198.51.100.7"},
            "batch": [
                {"type": "page", "anonymousId": "a", "context": {"ip": "203.0.113.1"}},
                {"type": "track", "anonymousId": "a"},
                "not an event",
                {"type": "identify", "userId": "u", "writeKey": "other", "sentAt": "2026-11-20T12:00:00Z"}
            ]
        });
        let body = body.to_string();
        let decoded = decode(body.as_bytes(), Shape::Batch, 1 << 20).unwrap();
        assert_eq!(decoded.write_key.as_deref(), Some("wk_1"));
        let first = tree(decoded.events[0].as_ref().unwrap());
        assert_eq!(first["context"]["ip"], "203.0.113.1", "the event's own context wins");
        assert_eq!(first["context"]["library"]["name"], "analytics-python", "the batch's context fills in");
        assert_eq!(first["sentAt"], "2026-11-20T12:00:01Z");
        assert!(decoded.events[1].as_ref().unwrap_err().message.contains("`event` name"));
        assert!(decoded.events[2].as_ref().unwrap_err().message.contains("not a string"));
        let last = tree(decoded.events[3].as_ref().unwrap());
        assert_eq!(last["sentAt"], "2026-11-20T12:00:00Z");
        assert!(last.get("writeKey").is_none(), "keys never travel further");
    }

    #[test]
    fn an_event_of_a_batch_is_measured_as_its_compact_json() {
        // As sent: spaced out past the limit, and numbers whose compact text is longer than what was sent.
        let spaced = r#"{"type":"page", "anonymousId":"a", "messageId":"m",  "properties": {"n": 0}}"#;
        let grown = r#"{"type":"page","anonymousId":"a","messageId":"m","properties":{"n":[1e15,1e15,1e15]}}"#;
        let compact = |event: &str| serde_json::to_string(&serde_json::from_str::<Value>(event).unwrap()).unwrap();
        for event in [spaced, grown] {
            let size = compact(event).len();
            let body = format!(r#"{{"batch": [{event}]}}"#);
            // The limit at the compact size, and at an eighth of it, where the sent text is past it.
            for limit in [size, (size / 8).max(1)] {
                let decoded = decode(body.as_bytes(), Shape::Batch, limit).unwrap();
                match &decoded.events[0] {
                    Ok(_) => assert!(size <= limit, "{event} taken under {limit}"),
                    Err(error) => {
                        assert!(size > limit, "{event} refused under {limit}: {}", error.message);
                        assert_eq!(error.reason, "too_large");
                        assert!(error.message.contains(&format!("the event is {size} bytes")), "{}", error.message);
                    }
                }
            }
            let decoded = decode(body.as_bytes(), Shape::Batch, size - 1).unwrap();
            assert!(decoded.events[0].is_err(), "{event}: one byte over its compact size");
        }
        assert!(spaced.len() > compact(spaced).len() && grown.len() < compact(grown).len());
    }

    #[test]
    fn whole_bodies_that_cannot_be_read_are_refused() {
        let cases: [(&[u8], Shape, &str); 7] = [
            (b"{\"type\": ", Shape::Single(None), "malformed JSON"),
            (b"{\"type\": \"page\", \"name\": \"\xff\"}", Shape::Single(None), "not UTF-8 (invalid bytes at byte 26)"),
            (b"", Shape::Single(None), "empty"),
            (b"[1]", Shape::Single(None), "must be a JSON object"),
            (b"{\"events\": []}", Shape::Batch, "`batch` is missing"),
            (b"{\"batch\": []}", Shape::Batch, "`batch` is empty"),
            (b"{\"writeKey\": 5, \"batch\": [{}]}", Shape::Batch, "`writeKey` must be a string"),
        ];
        for (body, shape, expected) in cases {
            match decode(body, shape, 1 << 20) {
                Err(BodyError::Malformed(message)) => assert!(message.contains(expected), "{expected}: {message}"),
                other => panic!("{expected}: {other:?}"),
            }
        }
    }

    #[test]
    fn compressed_bodies_inflate_within_the_limit() {
        let text = br#"{"type":"page","anonymousId":"a"}"#;
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(text).unwrap();
        let gzip = gzip.finish().unwrap();
        assert_eq!(&*inflate(&gzip, Some("GZIP"), 1000).unwrap(), text);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(text).unwrap();
        assert_eq!(&*inflate(&zlib.finish().unwrap(), Some("deflate"), 1000).unwrap(), text);
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(text).unwrap();
        assert_eq!(&*inflate(&raw.finish().unwrap(), Some("deflate"), 1000).unwrap(), text, "raw deflate too");
        assert_eq!(&*inflate(text, Some("identity"), 1000).unwrap(), text);
        assert!(matches!(inflate(text, Some("br"), 1000), Err(BodyError::UnsupportedEncoding(_))));
        assert!(matches!(inflate(text, Some("gzip"), 1000), Err(BodyError::Malformed(_))));

        // A bomb: 100 MB of zeros in about 100 KB, refused once the limit is passed.
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..100 {
            bomb.write_all(&zeros).unwrap();
        }
        let bomb = bomb.finish().unwrap();
        assert!(bomb.len() < 200_000, "{}", bomb.len());
        match inflate(&bomb, Some("gzip"), 512_000) {
            Err(BodyError::TooLarge(message)) => assert!(message.contains("512000"), "{message}"),
            other => panic!("{:?}", other.map(|b| b.len())),
        }
    }
}
