//! An in-process stand-in for OpenAI's Conversions API that enforces the documented rules — Bearer key, known pixel
//! id, at most 1,000 events, each event's required fields and timestamp window, whole-batch rejection, deduplication
//! on `id` and `type` per pixel — and can be scripted to answer 429, 5xx, slowly, or not at all, or be down for a
//! while.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

/// A scripted answer for the next request, instead of the rules.
#[derive(Clone, Debug)]
pub enum Scripted {
    /// Answer with this status (and `Retry-After` seconds when given), accepting nothing.
    Status(u16, Option<u64>),
    /// Apply the rules (accepting the events when they pass), then wait this long before answering: a client that
    /// gives up sooner sends again what OpenAI already has.
    Slow(Duration),
    /// Never answer (the client times out).
    Hang,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub status: u16,
    pub events: usize,
    pub pid: Option<String>,
    pub validate_only: bool,
    /// The `id` of every event the request carried, in order.
    pub ids: Vec<String>,
}

/// An event OpenAI accepted, and the pixel it was sent to.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub pid: String,
    pub event: Value,
}

#[derive(Default)]
struct FakeState {
    api_key: String,
    pixels: Vec<String>,
    script: VecDeque<Scripted>,
    /// While set, every request is answered with this status (an outage), after the script.
    outage: Option<u16>,
    /// Accepted events, once per (pixel, id, type), in order of first acceptance.
    accepted: Vec<Accepted>,
    keys: HashMap<(String, String, String), usize>,
    duplicates: usize,
    requests: Vec<Seen>,
    /// Events whose `id` is listed here make the batch fail with 400, as a malformed event would.
    poisoned: Vec<String>,
    /// Poisoned ids that are cured once a batch holding them was refused.
    poisoned_once: Vec<String>,
    /// Events accepted again whose payload differs from the first acceptance: (first, again).
    mismatched: Vec<(Value, Value)>,
}

#[derive(Clone)]
pub struct FakeOpenAi {
    pub url: String,
    state: Arc<Mutex<FakeState>>,
}

impl FakeOpenAi {
    /// Starts the fake on a free loopback port, accepting `api_key` for the given pixel ids.
    pub async fn start(api_key: &str, pixels: &[&str]) -> FakeOpenAi {
        let state = Arc::new(Mutex::new(FakeState {
            api_key: api_key.to_string(),
            pixels: pixels.iter().map(|p| p.to_string()).collect(),
            ..FakeState::default()
        }));
        let app = Router::new().route("/v1/events", post(events)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOpenAi { url, state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key OpenAI accepts from now on (an operator fixed or rotated it).
    pub fn set_api_key(&self, key: &str) {
        self.lock().api_key = key.to_string();
    }

    /// Answers the next requests as scripted, in order, before the rules apply again.
    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.lock().script.extend(answers);
    }

    /// Answers every request with `status` until called again with `None`.
    pub fn outage(&self, status: Option<u16>) {
        self.lock().outage = status;
    }

    /// Events with this id are malformed: a batch holding one is rejected as a whole with 400.
    pub fn poison(&self, id: &str) {
        self.lock().poisoned.push(id.to_string());
    }

    /// Batches holding an event with this id are rejected with 400 until it was refused alone (dead-lettered);
    /// after that the event is well-formed, as if its cause was fixed.
    pub fn poison_once(&self, id: &str) {
        let mut state = self.lock();
        state.poisoned.push(id.to_string());
        state.poisoned_once.push(id.to_string());
    }

    /// Events with this id are well-formed again: a batch holding one is judged by the other rules.
    pub fn cure(&self, id: &str) {
        self.lock().poisoned.retain(|p| p != id);
    }

    /// Every event accepted, once per (pixel, `id`, `type`).
    pub fn accepted(&self) -> Vec<Value> {
        self.lock().accepted.iter().map(|a| a.event.clone()).collect()
    }

    /// The events accepted for one pixel.
    pub fn accepted_for(&self, pid: &str) -> Vec<Value> {
        self.lock().accepted.iter().filter(|a| a.pid == pid).map(|a| a.event.clone()).collect()
    }

    /// How many accepted events repeated a (pixel, `id`, `type`) already accepted.
    pub fn duplicates(&self) -> usize {
        self.lock().duplicates
    }

    /// Repeated events whose payload differs from the one first accepted under the same id and type.
    pub fn mismatched(&self) -> Vec<(Value, Value)> {
        self.lock().mismatched.clone()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.lock().requests.clone()
    }

    /// Waits until `n` distinct events were accepted, or fails after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let accepted = self.accepted();
            if accepted.len() >= n {
                return accepted;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} events reached OpenAI within {within:?}; requests: {:#?}",
                accepted.len(),
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn problem(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": { "message": message } }))).into_response()
}

async fn events(
    State(state): State<Arc<Mutex<FakeState>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let ids: Vec<String> = parsed
        .as_ref()
        .and_then(|b| b["events"].as_array())
        .map(|events| events.iter().map(|e| e["id"].as_str().unwrap_or_default().to_string()).collect())
        .unwrap_or_default();
    let validate_only = parsed.as_ref().is_some_and(|b| b["validate_only"] == json!(true));
    let pid = query.get("pid").cloned();
    let seen = |status: u16| Seen {
        at: Instant::now(),
        status,
        events: ids.len(),
        pid: pid.clone(),
        validate_only,
        ids: ids.clone(),
    };
    let scripted = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        let scripted = state.script.pop_front();
        if matches!(scripted, Some(Scripted::Hang)) {
            // Recorded now with status 0, since no answer ever comes.
            state.requests.push(seen(0));
        }
        scripted
    };
    if matches!(scripted, Some(Scripted::Hang)) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let response = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        let forced = match scripted {
            Some(Scripted::Status(status, retry_after)) => Some((status, retry_after)),
            _ => state.outage.map(|status| (status, None)),
        };
        let response = match forced {
            Some((status, retry_after)) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut response = problem(status, "scripted".into());
                if let Some(seconds) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, seconds.to_string().parse().expect("a header value"));
                }
                response
            }
            None => judge(&mut state, &headers, pid.as_deref(), parsed, validate_only),
        };
        state.requests.push(seen(response.status().as_u16()));
        response
    };
    if let Some(Scripted::Slow(delay)) = scripted {
        tokio::time::sleep(delay).await;
    }
    response
}

/// OpenAI's documented rules.
fn judge(
    state: &mut FakeState,
    headers: &HeaderMap,
    pid: Option<&str>,
    body: Option<Value>,
    validate_only: bool,
) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", state.api_key));
    if !authorized {
        return problem(StatusCode::UNAUTHORIZED, "invalid API key".into());
    }
    if !pid.is_some_and(|p| state.pixels.iter().any(|known| known == p)) {
        return problem(StatusCode::FORBIDDEN, format!("the key is not authorised for pixel {pid:?}"));
    }
    let Some(events) = body.as_ref().and_then(|b| b["events"].as_array()) else {
        return problem(StatusCode::BAD_REQUEST, "the body must be {\"events\": [...]}".into());
    };
    if events.is_empty() || events.len() > 1000 {
        return problem(StatusCode::BAD_REQUEST, format!("{} events: a batch holds 1 to 1,000", events.len()));
    }
    let now = jiff::Timestamp::now().as_millisecond();
    for (index, event) in events.iter().enumerate() {
        let id = event["id"].as_str().unwrap_or_default();
        let problem_with = if id.is_empty() || event["type"].as_str().is_none() {
            Some("`id` and `type` are required".to_string())
        } else if state.poisoned.iter().any(|p| p == id) {
            Some(format!("event {id} is malformed"))
        } else {
            match event["timestamp_ms"].as_i64() {
                Some(t) if t >= now - 7 * 24 * 3_600_000 && t <= now + 600_000 => None,
                _ => Some("`timestamp_ms` is missing or outside the accepted window".to_string()),
            }
        };
        if let Some(message) = problem_with {
            // Cured once refused alone, so that the relay's bisection still isolates it and dead-letters it.
            if events.len() == 1 && state.poisoned_once.iter().any(|p| p == id) {
                state.poisoned_once.retain(|p| p != id);
                state.poisoned.retain(|p| p != id);
            }
            return problem(StatusCode::BAD_REQUEST, format!("events[{index}]: {message}"));
        }
    }
    if !validate_only {
        let pid = pid.unwrap_or_default().to_string();
        for event in events {
            let key = (
                pid.clone(),
                event["id"].as_str().unwrap_or_default().to_string(),
                event["type"].as_str().unwrap_or_default().to_string(),
            );
            if let Some(&first) = state.keys.get(&key) {
                state.duplicates += 1;
                if state.accepted[first].event != *event {
                    let first = state.accepted[first].event.clone();
                    state.mismatched.push((first, event.clone()));
                }
            } else {
                state.keys.insert(key, state.accepted.len());
                state.accepted.push(Accepted { pid: pid.clone(), event: event.clone() });
            }
        }
    }
    (StatusCode::ACCEPTED, axum::Json(json!({ "received": events.len() }))).into_response()
}
