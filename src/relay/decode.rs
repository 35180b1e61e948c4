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

use crate::input::{batch, event_members, Batch, Element, Member};

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
// Nearly every event is `Sent`: boxing it would allocate once more for each.
#[allow(clippy::large_enum_variant)]
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
    /// The members the relay checks and amends, read where they are in `text`, checked, with the route's type and
    /// the batch's `sentAt` filled in.
    pub envelope: Envelope<'b>,
    /// Which of `members` is the `context` that counts (the last), when it is an object.
    pub context: Option<usize>,
}

/// A value of an event's envelope where it was read: its JSON text in the body, or a node of a tree. Checks and
/// enrichment read both alike, so an event read as sent and one taken apart follow one set of rules.
#[derive(Clone, Copy, Debug)]
pub(super) enum Raw<'e> {
    Text(&'e str),
    Tree(&'e Value),
}

impl<'e> Raw<'e> {
    pub fn is_null(self) -> bool {
        match self {
            Raw::Text(text) => text.starts_with('n'),
            Raw::Tree(value) => value.is_null(),
        }
    }

    pub fn is_object(self) -> bool {
        match self {
            Raw::Text(text) => text.starts_with('{'),
            Raw::Tree(value) => value.is_object(),
        }
    }

    /// What it is, as an error names it.
    pub fn kind(self) -> &'static str {
        match self {
            Raw::Tree(value) => kind_of(value),
            // The splitter has read it as JSON, so its first byte says what it is.
            Raw::Text(text) => match text.as_bytes().first() {
                Some(b'n') => "null",
                Some(b't' | b'f') => "a boolean",
                Some(b'"') => "a string",
                Some(b'[') => "an array",
                Some(b'{') => "an object",
                _ => "a number",
            },
        }
    }

    /// The string it holds, unescaped; `None` when it is not a string.
    pub fn string(self) -> Option<Cow<'e, str>> {
        match self {
            Raw::Tree(value) => value.as_str().map(Cow::Borrowed),
            Raw::Text(text) => {
                let inner = text.strip_prefix('"')?.strip_suffix('"')?;
                if inner.contains('\\') {
                    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
                } else {
                    Some(Cow::Borrowed(inner))
                }
            }
        }
    }

    /// A non-empty object (what a consent object must be to count).
    pub fn is_filled_object(self) -> bool {
        match self {
            Raw::Text(text) => text.starts_with('{') && !text[1..text.len() - 1].trim_ascii().is_empty(),
            Raw::Tree(value) => value.as_object().is_some_and(|object| !object.is_empty()),
        }
    }

    /// The value as a tree.
    pub fn value(self) -> Value {
        match self {
            Raw::Text(text) => parse(text),
            Raw::Tree(value) => value.clone(),
        }
    }

    /// Its JSON text, as serde_json writes it.
    pub fn write(self, out: &mut String) {
        match self {
            Raw::Text(text) => out.push_str(text),
            Raw::Tree(value) => out.push_str(&value.to_string()),
        }
    }

    /// The time it holds, in epoch milliseconds, read as `to_unix_ms` reads it.
    pub fn time_ms(self) -> Option<i64> {
        match self {
            Raw::Tree(value) => crate::functions::timestamp_ms(value),
            Raw::Text(_) => match self.string() {
                Some(text) => crate::functions::text_timestamp_ms(&text),
                None => crate::functions::timestamp_ms(&self.value()),
            },
        }
    }
}

/// The members of an event the relay checks and amends, each as its last occurrence says (`None`: absent); of
/// `context`, when it is an object, the members the relay reads.
#[derive(Clone, Debug, Default)]
pub(super) struct Envelope<'e> {
    pub kind: Option<Raw<'e>>,
    pub event: Option<Raw<'e>>,
    pub message_id: Option<Raw<'e>>,
    pub anonymous_id: Option<Raw<'e>>,
    pub user_id: Option<Raw<'e>>,
    pub previous_id: Option<Raw<'e>>,
    pub timestamp: Option<Raw<'e>>,
    pub original_timestamp: Option<Raw<'e>>,
    pub sent_at: Option<Raw<'e>>,
    pub properties: Option<Raw<'e>>,
    pub context: Option<Raw<'e>>,
    pub traits: Option<Raw<'e>>,
    pub integrations: Option<Raw<'e>>,
    pub ip: Option<Raw<'e>>,
    pub user_agent: Option<Raw<'e>>,
    pub consent: Option<Raw<'e>>,
    /// The route's type, filled in for an event that names none.
    pub filled_kind: Option<&'static str>,
    /// Whether `sent_at` is the batch's, filled in for an event that has none of its own.
    pub filled_sent_at: bool,
}

impl<'e> Envelope<'e> {
    /// The place of the member `name`, when the relay reads it.
    fn member(&mut self, name: &str) -> Option<&mut Option<Raw<'e>>> {
        Some(match name {
            "type" => &mut self.kind,
            "event" => &mut self.event,
            "messageId" => &mut self.message_id,
            "anonymousId" => &mut self.anonymous_id,
            "userId" => &mut self.user_id,
            "previousId" => &mut self.previous_id,
            "timestamp" => &mut self.timestamp,
            "originalTimestamp" => &mut self.original_timestamp,
            "sentAt" => &mut self.sent_at,
            "properties" => &mut self.properties,
            "context" => &mut self.context,
            "traits" => &mut self.traits,
            "integrations" => &mut self.integrations,
            _ => return None,
        })
    }

    fn context_member(&mut self, name: &str) -> Option<&mut Option<Raw<'e>>> {
        Some(match name {
            "ip" => &mut self.ip,
            "userAgent" => &mut self.user_agent,
            "consent" => &mut self.consent,
            _ => return None,
        })
    }

    /// The envelope of an event still in its text, and which of its members is the `context` that counts (the
    /// last, when it is an object). `members` are as an event splitter ([`crate::input::event_members`], the batch
    /// splitter) gives them, `context` split too.
    fn of_members(text: &'e str, members: &[Member<'e>]) -> (Envelope<'e>, Option<usize>) {
        let mut envelope = Envelope::default();
        let mut context = None;
        for (index, member) in members.iter().enumerate() {
            let value = &text[member.value.clone()];
            let Some(place) = envelope.member(&member.key) else { continue };
            *place = Some(Raw::Text(value));
            if member.key == "context" {
                (envelope.ip, envelope.user_agent, envelope.consent) = (None, None, None);
                context = None;
                if value.starts_with('{') {
                    context = Some(index);
                    // Split with the event by the event splitters, which give every member here.
                    for inner in member.inner.iter().flatten() {
                        if let Some(place) = envelope.context_member(&inner.key) {
                            *place = Some(Raw::Text(&text[inner.value.clone()]));
                        }
                    }
                }
            }
        }
        (envelope, context)
    }

    /// The envelope of an event read into a tree.
    pub fn of_tree(event: &'e Map<String, Value>) -> Envelope<'e> {
        let mut envelope = Envelope::default();
        for name in ENVELOPE {
            if let (Some(place), Some(value)) = (envelope.member(name), event.get(name)) {
                *place = Some(Raw::Tree(value));
            }
        }
        if let Some(Value::Object(context)) = event.get("context") {
            for name in CONTEXT {
                if let (Some(place), Some(value)) = (envelope.context_member(name), context.get(name)) {
                    *place = Some(Raw::Tree(value));
                }
            }
        }
        envelope
    }

    /// A member's value when it is present and not null.
    fn given(member: Option<Raw<'e>>) -> Option<Raw<'e>> {
        member.filter(|raw| !raw.is_null())
    }

    /// The event's type: as sent, or the route's.
    pub fn kind(&self) -> Option<Cow<'e, str>> {
        match self.filled_kind {
            Some(kind) => Some(Cow::Borrowed(kind)),
            None => self.kind.and_then(Raw::string),
        }
    }

    /// The visitors it names, keyed as identity memory keys them.
    pub fn visitors(&self) -> Vec<String> {
        [(self.anonymous_id, "anon:"), (self.user_id, "user:"), (self.previous_id, "anon:")]
            .into_iter()
            .filter_map(|(member, prefix)| match member.and_then(Raw::string) {
                Some(id) if !id.is_empty() => Some([prefix, &id].concat()),
                _ => None,
            })
            .collect()
    }
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
        Shape::Single(_) => event_members(text).map(|members| Batch { members, events: None }),
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
    let sent_at = shared("sentAt");
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
                    sent_event(text, place, members, sent_at, None)
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
    sent_at: Option<&'b str>,
    kind: Option<&'static str>,
) -> Result<Incoming<'b>, EventError> {
    let (mut envelope, context) = Envelope::of_members(text, &kept);
    if envelope.message_id.and_then(Raw::string).is_none_or(|id| id.trim().is_empty()) {
        let shared = sent_at.into_iter().map(|v| ("sentAt".to_string(), parse(v))).collect();
        return tree_event(parse(&text[place]), &shared, kind).map(Incoming::Tree);
    }
    if let Some(sent_at) = sent_at {
        if envelope.sent_at.is_none_or(Raw::is_null) {
            envelope.sent_at = Some(Raw::Text(sent_at));
            envelope.filled_sent_at = true;
        }
    }
    check(&mut envelope, kind)?;
    Ok(Incoming::Sent(Sent { text, members: kept, envelope, context }))
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
            let event = tree_event(Value::Object(object), &Map::new(), kind).map(Incoming::Tree);
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
fn tree_event(
    event: Value,
    shared: &Map<String, Value>,
    kind: Option<&'static str>,
) -> Result<Map<String, Value>, EventError> {
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
    let mut envelope = Envelope::of_tree(&event);
    check(&mut envelope, kind)?;
    if let Some(kind) = envelope.filled_kind {
        event.insert("type".to_string(), Value::from(kind));
    }
    Ok(event)
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
pub(super) fn check(envelope: &mut Envelope<'_>, kind: Option<&'static str>) -> Result<(), EventError> {
    let bad = |message: String| EventError::invalid(message);
    match (Envelope::given(envelope.kind), kind) {
        (None, Some(kind)) => envelope.filled_kind = Some(kind),
        (None, None) => return Err(bad("`type` is missing".to_string())),
        (Some(raw), _) => match (raw.string(), kind) {
            (Some(given), Some(kind)) if given != kind => {
                return Err(bad(format!("`type` is {given:?}, but this endpoint takes {kind:?} events")))
            }
            (Some(given), _) if !KINDS.contains(&&*given) => {
                return Err(bad(format!("`type` {given:?} is not one of {}", KINDS.join(", "))))
            }
            (Some(_), _) => {}
            (None, _) => return Err(bad(format!("`type` must be a string, not {}", raw.kind()))),
        },
    }
    fn text<'e>(name: &str, member: Option<Raw<'e>>) -> Result<Option<Cow<'e, str>>, EventError> {
        match Envelope::given(member) {
            None => Ok(None),
            Some(raw) => match raw.string() {
                Some(text) => Ok(Some(text)),
                None => Err(EventError::invalid(format!("`{name}` must be a string, not {}", raw.kind()))),
            },
        }
    }
    text("messageId", envelope.message_id)?;
    let anonymous = text("anonymousId", envelope.anonymous_id)?.is_some_and(|s| !s.trim().is_empty());
    let user = text("userId", envelope.user_id)?.is_some_and(|s| !s.trim().is_empty());
    if !anonymous && !user {
        return Err(bad("the event needs `anonymousId` or `userId`".to_string()));
    }
    let kind = envelope.kind().unwrap_or_default();
    if kind == "track" && text("event", envelope.event)?.is_none_or(|s| s.trim().is_empty()) {
        return Err(bad("a track event needs its `event` name".to_string()));
    }
    if kind == "alias" && text("previousId", envelope.previous_id)?.is_none_or(|s| s.trim().is_empty()) {
        return Err(bad("an alias event needs `previousId`, the id it links to `userId`".to_string()));
    }
    let objects = [
        ("properties", envelope.properties),
        ("context", envelope.context),
        ("traits", envelope.traits),
        ("integrations", envelope.integrations),
    ];
    for (name, member) in objects {
        if let Some(value) = Envelope::given(member).filter(|v| !v.is_object()) {
            return Err(bad(format!("`{name}` must be an object, not {}", value.kind())));
        }
    }
    let times = [
        ("timestamp", envelope.timestamp),
        ("originalTimestamp", envelope.original_timestamp),
        ("sentAt", envelope.sent_at),
    ];
    for (name, member) in times {
        let Some(value) = Envelope::given(member) else { continue };
        match value.kind() {
            "a string" | "a number" => {
                // A time must also be one a timestamp can hold (years -9999 to 9999), or no correction can be written.
                let ms = value.time_ms().filter(|&ms| jiff::Timestamp::from_millisecond(ms).is_ok());
                if ms.is_none() {
                    return Err(EventError {
                        reason: "invalid_timestamp",
                        message: format!(
                            "`{name}` {} is not a time: send ISO 8601 such as 2026-11-20T12:00:00.000Z \
                             (or leave it out, and the relay's time of receipt is used)",
                            value.value()
                        ),
                    });
                }
            }
            other => return Err(bad(format!("`{name}` must be a string, not {other}"))),
        }
    }
    Ok(())
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

    /// An event as a tree, whichever way it was read: as sent, its members with what decoding filled in.
    fn tree(event: &Incoming<'_>) -> Map<String, Value> {
        match event {
            Incoming::Tree(tree) => tree.clone(),
            Incoming::Sent(sent) => {
                let mut tree: Map<String, Value> =
                    sent.members.iter().map(|m| (m.key.to_string(), parse(&sent.text[m.value.clone()]))).collect();
                if let Some(kind) = sent.envelope.filled_kind {
                    tree.insert("type".to_string(), Value::from(kind));
                }
                if let Some(sent_at) = sent.envelope.sent_at.filter(|_| sent.envelope.filled_sent_at) {
                    tree.insert("sentAt".to_string(), sent_at.value());
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
