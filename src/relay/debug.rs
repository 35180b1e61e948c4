//! The event debugger: the latest events with their stages — the input (personal data masked), the mapped payload
//! with field provenance from `explain`, each delivery attempt and OpenAI's response — at `GET /debug/events` and
//! as a small page at `/debug`. Kept in memory only; it answers "did my Order Completed reach OpenAI, and what did
//! it look like?".

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Shared;
use crate::explain::Explanation;
use crate::run::Outcome;

/// One event at one pixel, and what became of it.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Entry {
    /// Position in the debugger, newest highest.
    pub seq: u64,
    pub pixel: String,
    pub received_ms: i64,
    /// The event as received, kept in memory only: shown with personal values masked, and kept whole so that the
    /// console can preview a draft mapping on it (masked values would not map as the real ones do).
    #[serde(rename = "input", serialize_with = "masked_input")]
    pub raw: Arc<Value>,
    /// `mapped`, `dropped` or `rejected`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The OpenAI event id, for mapped events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The Signal event's `messageId`, for every event: dropped and rejected ones are found by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// `explain`'s account, shown with personal values masked: the payload and where each field came from. Kept as
    /// it was recorded and written out only when someone looks, since most entries are pushed out unseen.
    #[serde(serialize_with = "masked_explanation")]
    pub explanation: Arc<Explanation<'static>>,
    /// `queued`, `delivered`, `validated` (sent with `validate_only`: checked, not recorded), `dead_lettered`,
    /// `dry_run` (mapped, not sent: the relay runs dry), or the outcome for events that are not sent.
    pub state: String,
    pub attempts: Vec<Attempt>,
}

fn masked_input<S: serde::Serializer>(raw: &Arc<Value>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut input = (**raw).clone();
    crate::personal::mask_personal_keys(&mut input);
    input.serialize(serializer)
}

fn masked_explanation<S: serde::Serializer>(
    explanation: &Arc<Explanation<'_>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    explanation.to_json(false).serialize(serializer)
}

/// The value at `path` in an event as the debugger shows it: `None` where a key on the way names personal data.
fn shown<'v>(event: &'v Value, path: &[&str]) -> Option<&'v Value> {
    let input = crate::schema::input();
    path.iter().try_fold(event, |value, key| if input.is_pii_key(key) { None } else { value.get(key) })
}

/// One request that carried the event to OpenAI.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Attempt {
    pub at_ms: i64,
    /// HTTP status; `None` when no response came (timeout, connection error).
    pub status: Option<u16>,
    /// OpenAI's response body (cut at 2 KB), or what went wrong.
    pub response: String,
    pub batch_size: usize,
    pub dry_run: bool,
}

impl Entry {
    pub fn received(
        pixel: &str,
        input: Value,
        explanation: Explanation<'_>,
        event_id: Option<String>,
        now_ms: i64,
    ) -> Entry {
        let (outcome, reason) = describe(&explanation.outcome);
        let state = if outcome == "mapped" { "queued" } else { outcome }.to_string();
        let message_id = shown(&input, &["messageId"]).and_then(|m| match m {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            _ => None,
        });
        Entry {
            seq: 0,
            pixel: pixel.to_string(),
            received_ms: now_ms,
            raw: Arc::new(input),
            outcome,
            reason,
            event_id,
            message_id,
            explanation: Arc::new(explanation.into_owned()),
            state,
            attempts: Vec::new(),
        }
    }
}

/// An outcome as the debugger and the metrics name it: `mapped`, `dropped` or `rejected`, and the reason.
pub(super) fn describe(outcome: &Outcome) -> (&'static str, Option<String>) {
    match outcome {
        Outcome::Mapped(_) => ("mapped", None),
        Outcome::Dropped(d) => ("dropped", Some(reason_name(&d.reason))),
        Outcome::Rejected(r) => ("rejected", Some(reason_name(&r.reason))),
    }
}

fn reason_name(reason: &impl Serialize) -> String {
    serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// A request refused whole, or one event of a batch refused: who sent it and why, never its body.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Refused {
    pub at_ms: i64,
    pub route: String,
    /// The key's name, when the key was recognised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The answer's status (200 for an event refused inside a batch that was taken).
    pub status: u16,
    pub reason: String,
    pub error: String,
    /// The event's position in its batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

/// How many events the writer may explain for the debugger: [`Sampler::PER_SECOND`] on average, in bursts of up
/// to the log's capacity. An explanation costs about twice what applying does, and at a trickle every event is
/// explained; under load a fixed number per second is, which keeps the log fresh (500 entries are ten seconds of
/// samples) without explaining thousands of events a second that the next ones push out of it.
pub(super) struct Sampler {
    tokens: f64,
    burst: f64,
    last: std::time::Instant,
}

impl Sampler {
    pub const PER_SECOND: f64 = 50.0;

    pub fn new(burst: usize, now: std::time::Instant) -> Sampler {
        Sampler { tokens: burst as f64, burst: burst as f64, last: now }
    }

    /// How many of `wanted` explanations may be made at `now`; those are spent.
    pub fn take(&mut self, wanted: usize, now: std::time::Instant) -> usize {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * Self::PER_SECOND;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = self.last.max(now);
        let granted = (self.tokens as usize).min(wanted);
        self.tokens -= granted as f64;
        granted
    }
}

/// The latest entries, bounded.
pub(super) struct DebugLog {
    entries: Mutex<VecDeque<Entry>>,
    refused: Mutex<VecDeque<Refused>>,
    capacity: usize,
}

impl DebugLog {
    pub fn new(capacity: usize) -> DebugLog {
        DebugLog { entries: Mutex::new(VecDeque::new()), refused: Mutex::new(VecDeque::new()), capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        // A panic elsewhere while holding the lock leaves a log that is still fine to read.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many entries it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn push(&self, mut entry: Entry) {
        let mut entries = self.lock();
        entry.seq = entries.back().map_or(1, |e| e.seq + 1);
        if entries.len() == self.capacity {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// Records a delivery attempt on the entries of these events, and their new state when it is final.
    pub fn attempt(&self, pixel: &str, event_ids: &[&str], attempt: &Attempt, state: Option<&str>) {
        // A batch has up to 1,000 events and the log as many entries: each entry looks its id up in a set rather
        // than through the list.
        let ids: std::collections::HashSet<&str> = event_ids.iter().copied().collect();
        let mut entries = self.lock();
        for entry in entries.iter_mut().rev() {
            let Some(id) = entry.event_id.as_deref() else { continue };
            if entry.pixel == pixel && ids.contains(id) {
                entry.attempts.push(attempt.clone());
                if let Some(state) = state {
                    entry.state = state.to_string();
                }
            }
        }
    }

    pub fn refused(&self, refused: Refused) {
        let mut list = self.refused.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if list.len() == self.capacity {
            list.pop_front();
        }
        list.push_back(refused);
    }

    pub fn latest_refused(&self, limit: usize) -> Vec<Refused> {
        let list = self.refused.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        list.iter().rev().take(limit).cloned().collect()
    }

    /// The event the debugger keeps as `seq`, as it was received.
    pub fn input_of(&self, seq: u64) -> Option<Value> {
        self.lock().iter().find(|e| e.seq == seq).map(|e| (*e.raw).clone())
    }

    /// The newest entries that match `search`, up to `limit`.
    pub fn search(&self, search: &Search, limit: usize) -> Vec<Entry> {
        let entries = self.lock();
        entries.iter().rev().filter(|e| search.matches(e)).take(limit).cloned().collect()
    }

    pub fn latest(&self, limit: usize, pixel: Option<&str>) -> Vec<Entry> {
        let entries = self.lock();
        entries.iter().rev().filter(|e| pixel.is_none_or(|p| e.pixel == p)).take(limit).cloned().collect()
    }
}

/// What the console's event debugger looks for: text found in an id (message id, OpenAI event id, order id,
/// anonymous id, user id), an outcome or state, an event type (Signal's or OpenAI's), a pixel.
#[derive(Deserialize, Default)]
pub(super) struct Search {
    pub q: Option<String>,
    pub outcome: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub pixel: Option<String>,
    pub limit: Option<usize>,
}

impl Search {
    fn matches(&self, entry: &Entry) -> bool {
        let text = |value: &Value| match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        if self.pixel.as_ref().is_some_and(|p| *p != entry.pixel) {
            return false;
        }
        if self.outcome.as_ref().is_some_and(|o| *o != entry.outcome && *o != entry.state) {
            return false;
        }
        if let Some(kind) = &self.event_type {
            let mapped = match &entry.explanation.outcome {
                Outcome::Mapped(mapped) => Some(&*mapped.event_type),
                _ => None,
            };
            let event = &entry.raw;
            let names = [shown(event, &["event"]), shown(event, &["type"])].map(|v| v.and_then(Value::as_str));
            let names = [names[0], names[1], mapped];
            if !names.iter().flatten().any(|name| name.eq_ignore_ascii_case(kind)) {
                return false;
            }
        }
        let Some(query) = self.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) else { return true };
        let ids = [
            entry.message_id.clone(),
            entry.event_id.clone(),
            shown(&entry.raw, &["properties", "order_id"]).and_then(text),
            shown(&entry.raw, &["anonymousId"]).and_then(text),
            shown(&entry.raw, &["userId"]).and_then(text),
        ];
        ids.iter().flatten().any(|id| id.contains(query))
    }
}

#[derive(Deserialize)]
struct Filter {
    limit: Option<usize>,
    pixel: Option<String>,
}

pub(super) fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/debug/events", get(events))
        .route("/debug/refused", get(refused))
        .route("/debug", get(page))
        .with_state(shared)
}

async fn events(State(shared): State<Arc<Shared>>, Query(filter): Query<Filter>) -> Response {
    if !shared.config.debug {
        return (StatusCode::NOT_FOUND, "the debugger is off: set `debug: true` in relay.yaml").into_response();
    }
    let limit = filter.limit.unwrap_or(50).min(500);
    Json(shared.debug.latest(limit, filter.pixel.as_deref())).into_response()
}

async fn refused(State(shared): State<Arc<Shared>>, Query(filter): Query<Filter>) -> Response {
    if !shared.config.debug {
        return (StatusCode::NOT_FOUND, "the debugger is off: set `debug: true` in relay.yaml").into_response();
    }
    Json(shared.debug.latest_refused(filter.limit.unwrap_or(50).min(500))).into_response()
}

async fn page(State(shared): State<Arc<Shared>>) -> Response {
    if !shared.config.debug {
        return (StatusCode::NOT_FOUND, "the debugger is off: set `debug: true` in relay.yaml").into_response();
    }
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE)).into_response()
}

/// A dependency-free page: it polls `/debug/events` and renders each event's stages.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>signal-engine relay — events</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; }
  h1 { font-size: 1.2rem; }
  .event { border: 1px solid #ccc; border-radius: 6px; margin: .6rem 0; padding: .5rem .8rem; }
  .event header { display: flex; gap: 1rem; flex-wrap: wrap; }
  .state { font-weight: 600; }
  .event-id { color: #57606a; }
  .why { margin: .3rem 0; }
  .delivered { color: #1a7f37; } .dead_lettered, .rejected { color: #cf222e; } .queued { color: #9a6700; }
  pre { background: #f6f8fa; padding: .5rem; overflow-x: auto; font-size: 12px; }
  details summary { cursor: pointer; }
</style>
</head>
<body>
<h1>Latest events</h1>
<p id="status">loading…</p>
<div id="events"></div>
<h2>Refused requests</h2>
<p>Requests the relay did not take (wrong key, origin, size, malformed body …) and events refused inside a batch.</p>
<div id="refused"></div>
<script>
function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}
function block(stage, title, value, open) {
  const d = document.createElement('details');
  d.dataset.stage = stage;
  if (open) d.open = true;
  d.appendChild(text('summary', title));
  d.appendChild(text('pre', typeof value === 'string' ? value : JSON.stringify(value, null, 2)));
  return d;
}
async function refresh() {
  try {
    const response = await fetch('/debug/events?limit=100');
    const entries = await response.json();
    const list = document.getElementById('events');
    list.replaceChildren();
    for (const e of entries) {
      const div = document.createElement('div');
      div.className = 'event';
      div.dataset.eventId = e.event_id || '';
      div.dataset.state = e.state;
      const head = document.createElement('header');
      head.appendChild(text('span', e.input.event || e.input.type || '(no type)'));
      if (e.event_id) head.appendChild(text('code', e.event_id, 'event-id'));
      head.appendChild(text('span', 'pixel ' + e.pixel));
      head.appendChild(text('span', e.state, 'state ' + e.state));
      if (e.reason) head.appendChild(text('span', e.reason));
      head.appendChild(text('span', new Date(e.received_ms).toISOString()));
      div.appendChild(head);
      div.appendChild(block('input', 'input (personal data masked)', e.input));
      const outcome = e.explanation.outcome || {};
      if (outcome.message) div.appendChild(text('p', outcome.message, 'why'));
      if (outcome.event) div.appendChild(block('payload', 'mapped payload', outcome.event, true));
      div.appendChild(block('provenance', 'field provenance', e.explanation.fields || []));
      for (const a of e.attempts) {
        const label = (a.dry_run ? 'dry run' : 'HTTP ' + (a.status ?? 'no response')) + ' — batch of ' + a.batch_size;
        const attempt = block('delivery', 'delivery: ' + label, a.response, true);
        attempt.dataset.status = a.dry_run ? 'dry-run' : String(a.status ?? 'none');
        div.appendChild(attempt);
      }
      list.appendChild(div);
    }
    document.getElementById('status').textContent = entries.length + (entries.length === 1 ? ' event' : ' events');
    const refused = await (await fetch('/debug/refused?limit=100')).json();
    const box = document.getElementById('refused');
    box.replaceChildren();
    for (const r of refused) {
      const row = document.createElement('div');
      row.className = 'refusal';
      row.dataset.reason = r.reason;
      row.appendChild(text('span', new Date(r.at_ms).toISOString() + ' '));
      row.appendChild(text('code', r.route + (r.index !== undefined ? ' #' + r.index : '') + ' '));
      row.appendChild(text('span', (r.status === 200 ? 'event refused' : 'HTTP ' + r.status) + ' ' + r.reason, 'rejected'));
      row.appendChild(text('span', ' — ' + r.error + (r.key ? ' (key ' + r.key + ')' : '') + (r.origin ? ' from ' + r.origin : '')));
      box.appendChild(row);
    }
  } catch (error) {
    document.getElementById('status').textContent = 'cannot load events: ' + error;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Sampler;

    #[test]
    fn a_burst_is_sampled_whole_up_to_the_log_and_a_flood_at_the_rate_per_second() {
        let start = Instant::now();
        let mut sampler = Sampler::new(500, start);
        let burst: usize = (0..40).map(|_| sampler.take(16, start)).sum();
        assert_eq!(burst, 500, "a burst as large as the log is explained whole");
        assert_eq!(sampler.take(16, start), 0, "then nothing more at once");
        let mut flood = 0;
        for tick in 1..=100 {
            flood += sampler.take(16, start + Duration::from_millis(10 * tick));
        }
        assert!((49..=50).contains(&flood), "a second of groups every 10 ms: the rate per second, not {flood}");
        let later = start + Duration::from_secs(3600);
        assert_eq!(sampler.take(1000, later), 500, "an idle hour earns one burst, not more");
        assert_eq!(sampler.take(1, later - Duration::from_secs(1)), 0, "a clock that steps back earns nothing");
    }
}
