//! Ingestion: the Signal (`/v1/t|p|i|g|batch|events`) and Segment-compatible (`/v1/track|page|identify|batch`)
//! endpoints. A request is authenticated, its events are checked, and it is answered only once the writer has
//! mapped them and committed the result to the store: the writer thread commits many requests in one
//! transaction (group commit), so an acknowledgement always means fsynced.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

use super::store::{IngestTx, Pending, StoreError};
use super::{debug, now_ms, Shared};
use crate::explain::explain;
use crate::identity::{IdentityStore, Profile};
use crate::run::{Context, Outcome};

/// Events of one request, on their way to the writer.
pub(super) struct Job {
    events: Vec<Value>,
    reply: oneshot::Sender<Result<(), Refusal>>,
}

/// Why the writer could not take a request.
#[derive(Debug)]
enum Refusal {
    /// The disk cap is reached: nothing was stored.
    Full,
    Storage(StoreError),
}

#[derive(Clone)]
struct Ingress {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
    limiter: Arc<DefaultKeyedRateLimiter<usize>>,
}

pub(super) fn router(shared: Arc<Shared>, jobs: mpsc::Sender<Job>) -> Router {
    let per_second = NonZeroU32::new(shared.config.ingestion.rate_limit).unwrap_or(NonZeroU32::MIN);
    let burst = per_second.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
    let limiter = Arc::new(RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)));
    let body_limit = shared.config.ingestion.max_batch_bytes.max(shared.config.ingestion.max_event_bytes);
    let ingress = Ingress { shared: shared.clone(), jobs, limiter };
    Router::new()
        .route("/v1/t", post(|s: State<Ingress>, h: HeaderMap, b: Body| single(s, h, b, Some("track"), false)))
        .route("/v1/p", post(|s: State<Ingress>, h: HeaderMap, b: Body| single(s, h, b, Some("page"), false)))
        .route("/v1/i", post(|s: State<Ingress>, h: HeaderMap, b: Body| single(s, h, b, Some("identify"), false)))
        .route("/v1/g", post(|s: State<Ingress>, h: HeaderMap, b: Body| single(s, h, b, Some("group"), false)))
        .route("/v1/track", post(|s: State<Ingress>, h: HeaderMap, b: Body| single(s, h, b, Some("track"), false)))
        .route("/v1/page", post(|s: State<Ingress>, h: HeaderMap, b: Body| single(s, h, b, Some("page"), false)))
        .route(
            "/v1/identify",
            post(|s: State<Ingress>, h: HeaderMap, b: Body| single(s, h, b, Some("identify"), false)),
        )
        .route("/v1/events", post(|s: State<Ingress>, h: HeaderMap, b: Body| single(s, h, b, None, true)))
        .route("/v1/batch", post(batch))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(ingress)
        .merge(super::debug::routes(shared.clone()))
        .merge(super::metrics::routes(shared))
}

/// A refused request: status and a JSON body naming the problem.
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    message: String,
    index: Option<usize>,
    retry_after: Option<Duration>,
}

impl Problem {
    fn new(status: StatusCode, message: impl Into<String>) -> Problem {
        Problem { status, message: message.into(), index: None, retry_after: None }
    }

    fn at(mut self, index: usize) -> Problem {
        self.index = Some(index);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({ "success": false, "error": self.message });
        if let Some(index) = self.index {
            body["index"] = json!(index);
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// A request body, or why it could not be read: a body over the limit is refused only after the key is checked,
/// and with a JSON error like every other refusal.
type Body = Result<Bytes, BytesRejection>;

fn read_body(body: Body, what: &str, limit: usize) -> Result<Bytes, Problem> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the {what} is more than the limit of {limit} bytes"))
        } else {
            Problem::new(StatusCode::BAD_REQUEST, format!("cannot read the body: {}", rejection.body_text()))
        }
    })
}

async fn single(
    State(ingress): State<Ingress>,
    headers: HeaderMap,
    body: Body,
    kind: Option<&'static str>,
    signed: bool,
) -> Response {
    let result = async {
        let key = ingress.authenticate(&headers)?;
        let body = read_body(body, "event", ingress.shared.config.ingestion.max_event_bytes)?;
        if signed {
            ingress.verify_signature(key, &headers, &body)?;
        }
        ingress.rate_limit(key)?;
        let limit = ingress.shared.config.ingestion.max_event_bytes;
        if body.len() > limit {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the event is {} bytes, more than the limit of {limit}", body.len()),
            ));
        }
        let mut event = parse(&body)?;
        check_event(&mut event, kind)?;
        ingress.submit(vec![event]).await
    }
    .await;
    respond(result)
}

async fn batch(State(ingress): State<Ingress>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let key = ingress.authenticate(&headers)?;
        ingress.rate_limit(key)?;
        let config = &ingress.shared.config.ingestion;
        let body = read_body(body, "batch", config.max_batch_bytes)?;
        if body.len() > config.max_batch_bytes {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the batch is {} bytes, more than the limit of {}", body.len(), config.max_batch_bytes),
            ));
        }
        let Value::Object(mut request) = parse(&body)? else {
            return Err(Problem::new(StatusCode::BAD_REQUEST, "the body must be an object {\"batch\": [event, …]}"));
        };
        let Some(Value::Array(events)) = request.remove("batch") else {
            return Err(Problem::new(StatusCode::BAD_REQUEST, "`batch` is missing or not an array of events"));
        };
        if events.is_empty() {
            return Err(Problem::new(StatusCode::BAD_REQUEST, "`batch` is empty"));
        }
        let mut checked = Vec::with_capacity(events.len());
        for (index, mut event) in events.into_iter().enumerate() {
            let size = serde_json::to_vec(&event).map(|v| v.len()).unwrap_or(0);
            if size > config.max_event_bytes {
                let message = format!("the event is {size} bytes, more than the limit of {}", config.max_event_bytes);
                return Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, message).at(index));
            }
            check_event(&mut event, None).map_err(|p| p.at(index))?;
            checked.push(event);
        }
        ingress.submit(checked).await
    }
    .await;
    respond(result)
}

fn respond(result: Result<(), Problem>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, Json(json!({ "success": true }))).into_response(),
        Err(problem) => problem.into_response(),
    }
}

fn parse(body: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(body).map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))
}

const KINDS: [&str; 6] = ["track", "page", "screen", "identify", "group", "alias"];

/// Checks the envelope fields every event needs; an endpoint that implies a type fills it in when absent.
fn check_event(event: &mut Value, kind: Option<&str>) -> Result<(), Problem> {
    let bad = |message: String| Problem::new(StatusCode::BAD_REQUEST, message);
    let Value::Object(fields) = event else { return Err(bad("an event must be a JSON object".to_string())) };
    match (fields.get("type"), kind) {
        (None, Some(kind)) => {
            fields.insert("type".to_string(), Value::from(kind));
        }
        (None, None) => return Err(bad("`type` is missing".to_string())),
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
    if text("messageId")?.is_none_or(str::is_empty) {
        return Err(bad("`messageId` is missing: it becomes the OpenAI event id that deduplicates retries".into()));
    }
    let anonymous = text("anonymousId")?.is_some_and(|s| !s.is_empty());
    let user = text("userId")?.is_some_and(|s| !s.is_empty());
    if !anonymous && !user {
        return Err(bad("the event needs `anonymousId` or `userId`".to_string()));
    }
    text("timestamp")?;
    if fields.get("type").and_then(Value::as_str) == Some("track") && text("event")?.is_none_or(str::is_empty) {
        return Err(bad("a track event needs its `event` name".to_string()));
    }
    for object in ["properties", "context", "traits"] {
        if let Some(value) = fields.get(object).filter(|v| !v.is_null() && !v.is_object()) {
            return Err(bad(format!("`{object}` must be an object, not {}", kind_of(value))));
        }
    }
    Ok(())
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Ingress {
    /// The index of the key the request carries (Bearer, or Basic with the key as user name, as Segment's SDKs
    /// send it). With no key configured, every request is accepted as key 0.
    fn authenticate(&self, headers: &HeaderMap) -> Result<usize, Problem> {
        let keys = &self.shared.config.ingestion.keys;
        if keys.is_empty() {
            return Ok(0);
        }
        let unauthorized = |message: &str| Problem::new(StatusCode::UNAUTHORIZED, message);
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthorized("missing Authorization: send the key as a Bearer token or Basic user name"))?;
        let presented = if let Some(token) = value.strip_prefix("Bearer ") {
            token.trim().to_string()
        } else if let Some(encoded) = value.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| unauthorized("malformed Basic credentials"))?;
            let text = String::from_utf8(decoded).map_err(|_| unauthorized("malformed Basic credentials"))?;
            text.split(':').next().unwrap_or_default().to_string()
        } else {
            return Err(unauthorized("unsupported Authorization scheme: use Bearer or Basic"));
        };
        keys.iter()
            .position(|k| bool::from(k.key.expose_secret().as_bytes().ct_eq(presented.as_bytes())))
            .ok_or_else(|| unauthorized("unknown key"))
    }

    /// `/v1/events` requests carry `X-Signal-Timestamp` (unix seconds) and `X-Signal-Signature: sha256=<hex>`, the
    /// HMAC-SHA256 of `{timestamp}.{body}` under the key's secret; old timestamps are refused so a captured
    /// request cannot be replayed later.
    fn verify_signature(&self, key: usize, headers: &HeaderMap, body: &[u8]) -> Result<(), Problem> {
        let unauthorized = |message: String| Problem::new(StatusCode::UNAUTHORIZED, message);
        let ingestion = &self.shared.config.ingestion;
        let Some(secret) = ingestion.keys.get(key).and_then(|k| k.hmac_secret.as_ref()) else {
            return Err(unauthorized("this key has no `hmac_secret`: /v1/events takes signed requests only".into()));
        };
        let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let timestamp = header_text("x-signal-timestamp")
            .and_then(|t| t.trim().parse::<i64>().ok())
            .ok_or_else(|| unauthorized("missing or malformed X-Signal-Timestamp (unix seconds)".into()))?;
        let age = (now_ms() / 1000 - timestamp).unsigned_abs();
        if age > ingestion.replay_window.as_secs() {
            return Err(unauthorized(format!(
                "X-Signal-Timestamp is {age} s away from now, outside the replay window of {} s",
                ingestion.replay_window.as_secs()
            )));
        }
        let signature = header_text("x-signal-signature")
            .and_then(|s| s.trim().strip_prefix("sha256="))
            .and_then(decode_hex)
            .ok_or_else(|| unauthorized("missing or malformed X-Signal-Signature (sha256=<hex>)".into()))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
            .map_err(|_| unauthorized("the key's secret cannot be used".into()))?;
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&signature).map_err(|_| unauthorized("the signature does not match the body".into()))
    }

    fn rate_limit(&self, key: usize) -> Result<(), Problem> {
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            let mut problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate limit reached for this key");
            problem.retry_after = Some(wait);
            problem
        })
    }

    /// Hands the events to the writer and waits for their commit.
    async fn submit(&self, events: Vec<Value>) -> Result<(), Problem> {
        let (reply, answer) = oneshot::channel();
        let unavailable = |message: &str| {
            let mut problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, message);
            problem.retry_after = Some(Duration::from_secs(5));
            problem
        };
        self.jobs.send(Job { events, reply }).await.map_err(|_| unavailable("the relay is shutting down"))?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Refusal::Full)) => {
                let mut problem = unavailable("the relay's disk cap is reached; retry later");
                problem.retry_after = Some(Duration::from_secs(30));
                Err(problem)
            }
            Ok(Err(Refusal::Storage(error))) => {
                tracing::error!(%error, "events could not be stored");
                Err(unavailable("the events could not be stored; retry later"))
            }
            Err(_) => Err(unavailable("the relay is shutting down")),
        }
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// Identity memory of one pixel inside the writer's transaction: keys are namespaced by pixel, so pixels with
/// different mappings never read each other's remembered fields.
struct PixelMemory<'t> {
    tx: &'t mut dyn IngestTx,
    prefix: &'t str,
}

impl IdentityStore for PixelMemory<'_> {
    fn load(&mut self, key: &str) -> Option<Profile> {
        self.tx.load(&format!("{}/{key}", self.prefix))
    }

    fn store(&mut self, key: &str, profile: Profile) {
        self.tx.store(&format!("{}/{key}", self.prefix), profile);
    }
}

/// The writer thread: takes requests as they come, maps their events for every pixel and commits each group of
/// requests in one transaction before answering them all. Ends when every sender is gone.
pub(super) fn writer(shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>) {
    const MAX_GROUP: usize = 256;
    while let Some(first) = jobs.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let full = shared.store.stored_bytes().map(|bytes| bytes >= shared.config.disk_cap_bytes);
        match full {
            Ok(true) => {
                shared.metrics.refused_full(group.iter().map(|j| j.events.len()).sum());
                for job in group {
                    let _ = job.reply.send(Err(Refusal::Full));
                }
                continue;
            }
            Err(error) => {
                for job in group {
                    let _ = job.reply.send(Err(Refusal::Storage(StoreError(error.0.clone()))));
                }
                continue;
            }
            Ok(false) => {}
        }
        let now = now_ms();
        let mut entries = Vec::new();
        let mut outcomes: Vec<(&str, &'static str, Option<String>)> = Vec::new();
        // An explanation costs several times what applying does, so under load the debugger samples: the newest
        // events of each group are explained and kept, the others only applied. At a trickle, every event is.
        const EXPLAINED_PER_GROUP: usize = 64;
        let mapped_events = group.iter().map(|j| j.events.len()).sum::<usize>() * shared.pixels.len();
        let explain_from = mapped_events.saturating_sub(EXPLAINED_PER_GROUP.min(shared.debug.capacity()));
        let result = shared.store.ingest(&mut |tx| {
            entries.clear();
            outcomes.clear();
            let mut index = 0;
            for job in &group {
                for event in &job.events {
                    let text = event.to_string();
                    for pixel in &shared.pixels {
                        let mut memory = PixelMemory { tx: &mut *tx, prefix: &pixel.config.name };
                        let mut context = Context::with_identity(now, &mut memory);
                        let explanation = (index >= explain_from).then(|| explain(&pixel.plan, &text, &mut context));
                        index += 1;
                        let applied;
                        let outcome = match &explanation {
                            Some(explanation) => &explanation.outcome,
                            None => {
                                applied = pixel.plan.apply_str(&text, &mut context);
                                &applied
                            }
                        };
                        let (name, reason) = debug::describe(outcome);
                        outcomes.push((&pixel.config.name, name, reason));
                        let mut event_id = None;
                        if let Outcome::Mapped(mapped) = outcome {
                            let output: Value = serde_json::from_str(&mapped.json).unwrap_or(Value::Null);
                            let id = output["id"].as_str().unwrap_or_default().to_string();
                            let pending = Pending {
                                id: id.clone(),
                                event_type: mapped.event_type.clone(),
                                timestamp_ms: output["timestamp_ms"].as_i64(),
                                received_ms: now,
                                event: mapped.json.clone(),
                            };
                            tx.enqueue(&pixel.config.name, &pending)?;
                            event_id = Some(id);
                        }
                        if let Outcome::Rejected(rejected) = outcome {
                            // The message may quote a value; the reason, field and rule say what to fix.
                            tracing::info!(
                                pixel = %pixel.config.name,
                                reason = ?rejected.reason,
                                field = rejected.field.as_deref().unwrap_or_default(),
                                rule = rejected.rule.as_deref().unwrap_or_default(),
                                "event rejected by the mapping: not sent (see /debug)"
                            );
                        }
                        if let Some(explanation) = &explanation {
                            entries.push(debug::Entry::received(&pixel.config.name, event, explanation, event_id, now));
                        }
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                for (pixel, outcome, reason) in outcomes.drain(..) {
                    shared.metrics.outcome(pixel, outcome, reason);
                }
                for entry in entries.drain(..) {
                    shared.debug.push(entry);
                }
                for job in group {
                    shared.metrics.received(job.events.len());
                    let _ = job.reply.send(Ok(()));
                }
                for pixel in &shared.pixels {
                    pixel.queued.notify_one();
                }
            }
            Err(error) => {
                for job in group {
                    let _ = job.reply.send(Err(Refusal::Storage(StoreError(error.0.clone()))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_checks_name_the_field() {
        let cases = [
            (json!([]), None, "must be a JSON object"),
            (json!({"messageId": "m", "anonymousId": "a"}), None, "`type` is missing"),
            (json!({"type": "track", "anonymousId": "a", "event": "E"}), None, "`messageId` is missing"),
            (json!({"type": "track", "messageId": "m", "event": "E"}), None, "needs `anonymousId` or `userId`"),
            (json!({"type": "track", "messageId": "m", "anonymousId": "a"}), None, "needs its `event` name"),
            (json!({"type": "page", "messageId": "m", "anonymousId": "a"}), Some("track"), "takes \"track\" events"),
            (json!({"type": "bogus", "messageId": "m", "anonymousId": "a"}), None, "is not one of"),
            (json!({"type": "page", "messageId": 7, "anonymousId": "a"}), None, "`messageId` must be a string"),
            (json!({"type": "page", "messageId": "m", "anonymousId": "a", "properties": []}), None, "`properties`"),
        ];
        for (mut event, kind, expected) in cases {
            let problem = check_event(&mut event, kind).expect_err(expected);
            assert!(problem.message.contains(expected), "{expected:?} not in {:?}", problem.message);
            assert_eq!(problem.status, StatusCode::BAD_REQUEST);
        }
        let mut event = json!({"messageId": "m", "anonymousId": "a"});
        check_event(&mut event, Some("page")).unwrap();
        assert_eq!(event["type"], "page", "the endpoint's type is filled in");
    }
}
