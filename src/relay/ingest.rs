//! Ingestion: the doors events come in by, as real clients use them. Signal's browser routes (`/v1/t|p|i|g`), its
//! signed server route (`/v1/events`) and batch; Segment's tracking API (`/v1/track|page|identify|screen|group|
//! alias`, `/v1/batch`, `/v1/import`) and the short routes of its browser SDK (`/v1/t|p|i|s|g|a`, `/v1/b` for
//! batches, `/v1/m` for its telemetry, taken and discarded). A request is checked for its key (Basic, Bearer or
//! the body's `writeKey`), its origin (CORS, per key), its size, encoding and events; its good events are
//! enriched (see `enrich`) and answered only once the writer has mapped them and committed the result to the store
//! (group commit), so a 200 always means fsynced. Refused requests are logged, counted and listed on /debug.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use base64::Engine as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

use super::decode::{self, BodyError, Shape};
use super::enrich::{self, Facts, Received};
use super::writer::{Answer, Job, Refusal, Verdict};
use super::{debug, now_ms, Shared};

#[derive(Clone)]
struct Ingress {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
    limiter: Arc<DefaultKeyedRateLimiter<usize>>,
    /// Signatures of the signed requests stored within the replay window, with when they were: the same signed
    /// request again (a replay, or a server SDK retrying after a lost answer) is answered 200 and not stored twice.
    signatures: Arc<Mutex<lru::LruCache<Vec<u8>, i64>>>,
}

/// How many signed requests the replay check remembers; beyond that the oldest are forgotten first.
const REMEMBERED_SIGNATURES: usize = 100_000;

/// What a route takes.
#[derive(Clone, Copy, Debug)]
enum Door {
    Events(Shape),
    /// `/v1/events`: one event, HMAC-signed.
    Signed,
    /// `/v1/m`: the browser SDK's own metrics, acknowledged and discarded.
    Telemetry,
}

const ROUTES: [(&str, Door); 18] = [
    ("/v1/t", Door::Events(Shape::Single(Some("track")))),
    ("/v1/p", Door::Events(Shape::Single(Some("page")))),
    ("/v1/i", Door::Events(Shape::Single(Some("identify")))),
    ("/v1/g", Door::Events(Shape::Single(Some("group")))),
    ("/v1/s", Door::Events(Shape::Single(Some("screen")))),
    ("/v1/a", Door::Events(Shape::Single(Some("alias")))),
    ("/v1/track", Door::Events(Shape::Single(Some("track")))),
    ("/v1/page", Door::Events(Shape::Single(Some("page")))),
    ("/v1/identify", Door::Events(Shape::Single(Some("identify")))),
    ("/v1/screen", Door::Events(Shape::Single(Some("screen")))),
    ("/v1/group", Door::Events(Shape::Single(Some("group")))),
    ("/v1/alias", Door::Events(Shape::Single(Some("alias")))),
    ("/v1/events", Door::Signed),
    ("/v1/batch", Door::Events(Shape::Batch)),
    ("/v1/b", Door::Events(Shape::Batch)),
    ("/v1/import", Door::Events(Shape::Batch)),
    ("/v1/m", Door::Telemetry),
    // RudderStack's sendBeacon delivery: a batch, the key in the query string.
    ("/beacon/v1/batch", Door::Events(Shape::Batch)),
];

/// Events refused inside one batch that are logged and listed on /debug one by one; beyond them one line sums up,
/// so that a batch of thousands of bad events cannot flood the log or push everything else off the debugger.
const LISTED_REFUSALS: usize = 20;

/// Headers a page may send cross-origin, named explicitly: `*` does not cover `Authorization`.
const ALLOWED_HEADERS: &str =
    "Authorization, Content-Type, Content-Encoding, X-Signal-Timestamp, X-Signal-Signature, AnonymousId";

pub(super) fn router(shared: Arc<Shared>, jobs: mpsc::Sender<Job>) -> Router {
    let per_second = NonZeroU32::new(shared.config.ingestion.rate_limit).unwrap_or(NonZeroU32::MIN);
    let burst = per_second.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
    let limiter = Arc::new(RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)));
    let signatures = lru::LruCache::new(NonZeroUsize::new(REMEMBERED_SIGNATURES).unwrap_or(NonZeroUsize::MIN));
    let ingress = Ingress { shared: shared.clone(), jobs, limiter, signatures: Arc::new(Mutex::new(signatures)) };
    let mut router = Router::new();
    for (path, door) in ROUTES {
        router = router.route(
            path,
            on(
                MethodFilter::POST,
                move |s: State<Ingress>, c: ConnectInfo<SocketAddr>, u: Uri, h: HeaderMap, b: Body| {
                    ingest(s, c, u, h, b, path, door)
                },
            )
            .on(MethodFilter::OPTIONS, move |s: State<Ingress>, h: HeaderMap| preflight(s, h, path)),
        );
    }
    router
        .with_state(ingress)
        .merge(super::debug::routes(shared.clone()))
        .merge(super::metrics::routes(shared))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(axum::middleware::map_response(no_sniff))
}

async fn not_found() -> Response {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such route: events go to /v1/t, /v1/p, /v1/i, /v1/batch …")
        .into_response()
}

/// A known route asked with another method. The routes of events take POST and OPTIONS, the others GET.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let events = ROUTES.iter().any(|(path, _)| *path == uri.path());
    let allowed = if events { "POST, OPTIONS" } else { "GET" };
    let mut response = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not taken on {}: use {allowed}", uri.path()),
    )
    .into_response();
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
    response
}

/// Browsers must not guess a type other than the one declared, on any answer.
async fn no_sniff(mut response: Response) -> Response {
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// A refused request: status, a stable reason for logs and metrics, and a JSON body naming the problem.
#[derive(Debug)]
pub(super) struct Problem {
    status: StatusCode,
    reason: &'static str,
    pub(super) message: String,
    index: Option<usize>,
    field: Option<String>,
    retry_after: Option<Duration>,
    close: bool,
}

impl Problem {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Problem {
        Problem { status, reason, message: message.into(), index: None, field: None, retry_after: None, close: false }
    }

    fn unauthorized(message: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    fn unavailable(reason: &'static str, message: &str, after: Duration) -> Problem {
        let mut problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, reason, message);
        problem.retry_after = Some(after);
        problem
    }
}

impl From<BodyError> for Problem {
    fn from(error: BodyError) -> Problem {
        match error {
            BodyError::TooLarge(message) => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message),
            BodyError::Malformed(message) => Problem::new(StatusCode::BAD_REQUEST, "malformed", message),
            BodyError::UnsupportedEncoding(message) => {
                Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding", message)
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({ "success": false, "error": self.message, "reason": self.reason });
        if let Some(index) = self.index {
            body["index"] = json!(index);
        }
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if self.close {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Who sent a request, as far as it is known, for the answer's CORS headers and the log of refusals.
struct Caller<'h> {
    path: &'static str,
    origin: Option<&'h str>,
    /// The key's index; `None` before it is known, or when no key is configured.
    key: Option<usize>,
}

async fn ingest(
    State(ingress): State<Ingress>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    path: &'static str,
    door: Door,
) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let mut caller = Caller { path, origin, key: None };
    // sendBeacon cannot set headers: RudderStack puts the key in the query string.
    let query_key = uri.query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes()).find(|(name, _)| name == "writeKey").map(|(_, key)| key.into_owned())
    });
    let result = ingress.take(door, peer, &headers, query_key, body, &mut caller).await;
    let mut response = match result {
        Ok(answer) => (StatusCode::OK, Json(answer)).into_response(),
        Err(problem) => {
            ingress.record_refusal(&caller, &problem);
            problem.into_response()
        }
    };
    if let Some(origin) = origin {
        let keys = &ingress.shared.config.ingestion;
        let allowed = match caller.key {
            Some(key) => keys.keys.get(key).is_none_or(|k| k.allows(origin)),
            None => keys.any_key_allows(origin),
        };
        if allowed {
            cors_headers(response.headers_mut(), origin);
        }
    }
    response
}

fn cors_headers(headers: &mut HeaderMap, origin: &str) {
    if let Ok(origin) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Retry-After"));
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// A CORS preflight: the browser asks before a request with `Authorization` or a JSON content type. It carries
/// no key, so an origin that any key allows is answered yes; the request itself is then held to its own key.
async fn preflight(State(ingress): State<Ingress>, headers: HeaderMap, path: &'static str) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let caller = Caller { path, origin, key: None };
    let Some(origin) = origin else {
        let problem =
            Problem::new(StatusCode::BAD_REQUEST, "malformed", "OPTIONS without Origin: not a CORS preflight");
        ingress.record_refusal(&caller, &problem);
        return problem.into_response();
    };
    if !ingress.shared.config.ingestion.any_key_allows(origin) {
        let problem = Problem::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!("origin {origin} is not allowed: add it to a key's `allowed_origins`"),
        );
        ingress.record_refusal(&caller, &problem);
        return problem.into_response();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let answer = response.headers_mut();
    cors_headers(answer, origin);
    answer.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
    // The headers asked for are named back (when they are header names) beside the ones the relay reads.
    let requested = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|name| HeaderName::from_bytes(name.as_bytes()).is_ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut allowed = ALLOWED_HEADERS.to_string();
    for name in requested {
        if !allowed.to_ascii_lowercase().split(", ").any(|known| known.eq_ignore_ascii_case(name)) {
            allowed.push_str(", ");
            allowed.push_str(name);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&allowed) {
        answer.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
    }
    answer.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("7200"));
    response
}

impl Ingress {
    async fn take(
        &self,
        door: Door,
        peer: SocketAddr,
        headers: &HeaderMap,
        query_key: Option<String>,
        body: Body,
        caller: &mut Caller<'_>,
    ) -> Result<Value, Problem> {
        let ingestion = &self.shared.config.ingestion;
        if headers.get(header::ORIGIN).is_some_and(|o| o.to_str().is_err()) {
            return Err(Problem::new(StatusCode::BAD_REQUEST, "malformed", "the Origin header is not ASCII"));
        }
        if let Door::Telemetry = door {
            if let Some(origin) = caller.origin.filter(|o| !ingestion.any_key_allows(o)) {
                return Err(origin_refused(origin));
            }
            self.read_body(body, ingestion.max_batch_bytes).await?;
            return Ok(json!({ "success": true }));
        }
        // A key in the header is checked before the body is read; one in the body after.
        let header_key = authorization(headers)?;
        if let Some(presented) = &header_key {
            caller.key = self.authenticate(presented)?;
            self.rate_limit(caller.key)?;
        }
        let (shape, limit) = match door {
            Door::Events(Shape::Batch) => (Shape::Batch, ingestion.max_batch_bytes),
            Door::Events(shape) => (shape, ingestion.max_event_bytes),
            _ => (Shape::Single(None), ingestion.max_event_bytes),
        };
        check_content_type(headers)?;
        let encoding = match headers.get(header::CONTENT_ENCODING) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_encoding",
                    "Content-Encoding is not ASCII",
                )
            })?),
        };
        // A compressed body is bounded before inflating too, with room for the format's own bytes.
        let raw_limit = if encoding.is_some() { limit + 4096 } else { limit };
        let raw = self.read_body(body, raw_limit).await.map_err(|mut problem| {
            if problem.status == StatusCode::PAYLOAD_TOO_LARGE {
                let what = if shape == Shape::Batch { "batch" } else { "event" };
                problem.message = format!("the {what} is more than the limit of {limit} bytes");
            }
            problem
        })?;
        let inflated = decode::inflate(&raw, encoding, limit)?;
        if inflated.len() > limit {
            let what = if shape == Shape::Batch { "batch" } else { "event" };
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the {what} is {} bytes, more than the limit of {limit}", inflated.len()),
            ));
        }
        let decoded = decode::decode(&inflated, shape, ingestion.max_event_bytes)?;
        if header_key.is_none() {
            caller.key = match decoded.write_key.as_ref().or(query_key.as_ref()) {
                Some(key) => self.authenticate(key)?,
                None if ingestion.keys.is_empty() => None,
                None => {
                    return Err(Problem::unauthorized(
                        "no key: send it as the Basic user name, a Bearer token, or `writeKey` in the body",
                    ))
                }
            };
            self.rate_limit(caller.key)?;
        }
        let key = caller.key.and_then(|k| ingestion.keys.get(k));
        match (caller.origin, key) {
            (Some(origin), Some(key)) if !key.allows(origin) => return Err(origin_refused(origin)),
            (None, Some(key)) if key.browser => {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "origin_not_allowed",
                    format!("key `{}` is a browser key: it only takes requests from its allowed origins", key.name),
                ))
            }
            _ => {}
        }
        let mut signed = None;
        if let Door::Signed = door {
            if key.is_some_and(|k| k.browser) {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "browser_key",
                    "a browser key cannot send signed server events",
                ));
            }
            let signature = self.verify_signature(caller.key, headers, &raw)?;
            let window_ms = ingestion.replay_window.as_millis() as i64;
            let mut seen = self.signatures.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.get(&signature).is_some_and(|&at| now_ms() - at <= window_ms) {
                tracing::info!(
                    route = caller.path,
                    "a signed request received before, again: answered, not stored twice"
                );
                return Ok(json!({ "success": true, "duplicate": true }));
            }
            drop(seen);
            signed = Some(signature);
        }

        let (client_ip, forwarded) = enrich::client_ip(peer.ip(), headers, &ingestion.trusted_proxies);
        // A User-Agent may carry bytes beyond ASCII; the visitor's browser is still worth naming.
        let user_agent = headers.get(header::USER_AGENT).map(|v| String::from_utf8_lossy(v.as_bytes()));
        let user_agent = user_agent.as_deref();
        let facts = Facts::new(now_ms(), client_ip, forwarded, user_agent);
        let mut positions = Vec::new();
        let mut events = Vec::new();
        let mut refused = Vec::new();
        for (index, event) in decoded.events.into_iter().enumerate() {
            match event {
                Ok(event) => {
                    positions.push(index);
                    events.push(enrich::enrich(event, &facts));
                }
                Err(error) => {
                    if shape != Shape::Batch {
                        return Err(Problem::new(StatusCode::BAD_REQUEST, error.reason, error.message));
                    }
                    self.shared.metrics.events_refused(error.reason, 1);
                    if refused.len() < LISTED_REFUSALS {
                        self.record_event_refusal(caller, index, error.reason, &error.message);
                    }
                    refused.push(json!({ "index": index, "error": error.message, "reason": error.reason }));
                }
            }
        }
        let mut dropped = Vec::new();
        if !events.is_empty() {
            let verdicts = self.submit(events).await?;
            for (index, verdict) in positions.into_iter().zip(verdicts) {
                match verdict {
                    Verdict::Queued => {}
                    Verdict::Dropped { reason } => dropped.push(json!({ "index": index, "reason": reason })),
                    Verdict::Refused { reason, message, field } => {
                        if shape != Shape::Batch {
                            let mut problem = Problem::new(StatusCode::BAD_REQUEST, "mapping_rejected", message);
                            problem.field = field;
                            return Err(problem);
                        }
                        if refused.len() < LISTED_REFUSALS {
                            self.record_event_refusal(caller, index, "mapping_rejected", &message);
                        }
                        refused.push(json!({
                            "index": index, "error": message, "reason": "mapping_rejected",
                            "rejection": reason, "field": field
                        }));
                    }
                }
            }
        }
        if refused.len() > LISTED_REFUSALS {
            tracing::info!(
                route = caller.path,
                key = self.key_name(caller).as_deref().unwrap_or("-"),
                refused = refused.len(),
                "events refused in a batch (the first {LISTED_REFUSALS} are listed on /debug; all are in the answer)"
            );
        }
        if let Some(signature) = signed {
            self.signatures.lock().unwrap_or_else(PoisonError::into_inner).put(signature, now_ms());
        }
        let mut answer = Map::new();
        answer.insert("success".into(), Value::Bool(true));
        if !refused.is_empty() {
            answer.insert("refused".into(), Value::Array(refused));
        }
        if !dropped.is_empty() {
            answer.insert("dropped".into(), Value::Array(dropped));
        }
        Ok(Value::Object(answer))
    }

    /// Reads a body of at most `limit` bytes within the body timeout.
    async fn read_body(&self, body: Body, limit: usize) -> Result<axum::body::Bytes, Problem> {
        let timeout = self.shared.config.http.body_timeout;
        let limited = http_body_util::Limited::new(body, limit);
        match tokio::time::timeout(timeout, limited.collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is more than the limit of {limit} bytes"),
            )),
            Ok(Err(error)) => {
                Err(Problem::new(StatusCode::BAD_REQUEST, "malformed", format!("cannot read the body: {error}")))
            }
            Err(_) => {
                let mut problem = Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the body did not arrive within {} ms", timeout.as_millis()),
                );
                problem.close = true;
                Err(problem)
            }
        }
    }

    /// The index of the key presented; `None` when no key is configured (a loopback trial takes every request).
    fn authenticate(&self, presented: &str) -> Result<Option<usize>, Problem> {
        let keys = &self.shared.config.ingestion.keys;
        if keys.is_empty() {
            return Ok(None);
        }
        keys.iter()
            .position(|k| bool::from(k.key.expose_secret().as_bytes().ct_eq(presented.trim().as_bytes())))
            .map(Some)
            .ok_or_else(|| Problem::unauthorized("unknown key"))
    }

    /// `/v1/events` requests carry `X-Signal-Timestamp` (unix seconds) and `X-Signal-Signature: sha256=<hex>`, the
    /// HMAC-SHA256 of `{timestamp}.{body}` (the body as sent) under the key's secret; old timestamps are refused so
    /// a captured request cannot be replayed later.
    fn verify_signature(&self, key: Option<usize>, headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, Problem> {
        let ingestion = &self.shared.config.ingestion;
        let Some(secret) = key.and_then(|k| ingestion.keys.get(k)).and_then(|k| k.hmac_secret.as_ref()) else {
            return Err(Problem::unauthorized("this key has no `hmac_secret`: /v1/events takes signed requests only"));
        };
        let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let timestamp = header_text("x-signal-timestamp")
            .and_then(|t| t.trim().parse::<i64>().ok())
            .ok_or_else(|| Problem::unauthorized("missing or malformed X-Signal-Timestamp (unix seconds)"))?;
        let age = (now_ms() / 1000).saturating_sub(timestamp).unsigned_abs();
        if age > ingestion.replay_window.as_secs() {
            return Err(Problem::unauthorized(format!(
                "X-Signal-Timestamp is {age} s away from now, outside the replay window of {} s",
                ingestion.replay_window.as_secs()
            )));
        }
        let signature = header_text("x-signal-signature")
            .and_then(|s| s.trim().strip_prefix("sha256="))
            .and_then(decode_hex)
            .ok_or_else(|| Problem::unauthorized("missing or malformed X-Signal-Signature (sha256=<hex>)"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
            .map_err(|_| Problem::unauthorized("the key's secret cannot be used"))?;
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&signature).map_err(|_| Problem::unauthorized("the signature does not match the body"))?;
        Ok(signature)
    }

    fn rate_limit(&self, key: Option<usize>) -> Result<(), Problem> {
        self.limiter.check_key(&key.unwrap_or(usize::MAX)).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            let mut problem =
                Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "rate limit reached for this key");
            problem.retry_after = Some(wait);
            problem
        })
    }

    /// Hands the events to the writer and waits for their commit.
    async fn submit(&self, events: Vec<Received>) -> Result<Vec<Verdict>, Problem> {
        let (reply, answer) = oneshot::channel();
        let stopping = || Problem::unavailable("stopping", "the relay is shutting down; retry", Duration::from_secs(5));
        self.jobs.send(Job { events, reply }).await.map_err(|_| stopping())?;
        // The events are freed here, on the request's task, rather than by the writer.
        let answer = answer.await.map(|Answer { events, verdicts }| {
            drop(events);
            verdicts
        });
        match answer {
            Ok(Ok(verdicts)) => Ok(verdicts),
            Ok(Err(Refusal::Full)) => Err(Problem::unavailable(
                "disk_cap",
                "the relay's disk cap is reached; retry later",
                Duration::from_secs(30),
            )),
            Ok(Err(Refusal::Storage(error))) => {
                tracing::error!(%error, "events could not be stored");
                Err(Problem::unavailable(
                    "storage",
                    "the events could not be stored; retry later",
                    Duration::from_secs(5),
                ))
            }
            Err(_) => Err(stopping()),
        }
    }

    fn key_name(&self, caller: &Caller<'_>) -> Option<String> {
        caller.key.and_then(|k| self.shared.config.ingestion.keys.get(k)).map(|k| k.name.clone())
    }

    /// Logs, counts and lists a refused request. Never the body: it may hold personal data.
    fn record_refusal(&self, caller: &Caller<'_>, problem: &Problem) {
        let key = self.key_name(caller);
        tracing::warn!(
            route = caller.path,
            key = key.as_deref().unwrap_or("-"),
            origin = caller.origin.unwrap_or("-"),
            status = problem.status.as_u16(),
            reason = problem.reason,
            "request refused: {}",
            problem.message
        );
        self.shared.metrics.request_refused(problem.reason);
        self.list_refusal(caller, key, problem.status.as_u16(), problem.reason, &problem.message, problem.index);
    }

    /// Lists one refused event of a batch that was otherwise taken.
    fn record_event_refusal(&self, caller: &Caller<'_>, index: usize, reason: &str, message: &str) {
        let key = self.key_name(caller);
        tracing::info!(
            route = caller.path,
            key = key.as_deref().unwrap_or("-"),
            index,
            reason,
            "event refused in a batch"
        );
        self.list_refusal(caller, key, 200, reason, message, Some(index));
    }

    /// Adds a refusal to the debugger's list.
    fn list_refusal(
        &self,
        caller: &Caller<'_>,
        key: Option<String>,
        status: u16,
        reason: &str,
        error: &str,
        index: Option<usize>,
    ) {
        self.shared.debug.refused(debug::Refused {
            at_ms: now_ms(),
            route: caller.path.to_string(),
            key,
            origin: caller.origin.map(str::to_string),
            status,
            reason: reason.to_string(),
            error: error.to_string(),
            index,
        });
    }
}

fn origin_refused(origin: &str) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!("origin {origin} is not allowed for this key: add it to the key's `allowed_origins`"),
    )
}

/// JSON comes as `application/json`, as `text/plain` (sendBeacon and analytics.js, to avoid a preflight), as
/// curl's default form type, or with no type at all; anything else is not an event.
pub(super) fn check_content_type(headers: &HeaderMap) -> Result<(), Problem> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return Ok(()) };
    let text = value
        .to_str()
        .map_err(|_| {
            Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_type",
                "the Content-Type header is not ASCII",
            )
        })?
        .to_ascii_lowercase();
    let essence = text.split(';').next().unwrap_or_default().trim();
    // `application/x-www-form-urlencoded` is what `curl -d` sends unless told otherwise; the body is still JSON.
    let json_like = essence.is_empty()
        || essence == "application/json"
        || essence == "text/plain"
        || essence == "application/x-www-form-urlencoded"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json_like {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_type",
            format!("Content-Type {essence:?} is not taken: send JSON as application/json or text/plain"),
        ))
    }
}

/// The key in the `Authorization` header, if there is one: `Bearer KEY`, or `Basic` with the key as user name
/// (Segment's way). Scheme names are case-insensitive (RFC 7235).
pub(super) fn authorization(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let value = value
        .to_str()
        .map_err(|_| Problem::unauthorized("the Authorization header is not ASCII: send the key as Bearer or Basic"))?
        .trim();
    let (scheme, credentials) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if credentials.is_empty() {
            return Err(Problem::unauthorized("the Bearer token is empty"));
        }
        return Ok(Some(credentials.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let malformed = || Problem::unauthorized("malformed Basic credentials: base64 of `KEY:`");
        let decoded = base64::engine::general_purpose::STANDARD.decode(credentials).map_err(|_| malformed())?;
        let text = String::from_utf8(decoded).map_err(|_| malformed())?;
        let user = text.split(':').next().unwrap_or_default();
        if user.is_empty() {
            return Err(malformed());
        }
        return Ok(Some(user.to_string()));
    }
    Err(Problem::unauthorized(format!("unsupported Authorization scheme {scheme:?}: use Bearer or Basic")))
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.is_ascii() {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}
