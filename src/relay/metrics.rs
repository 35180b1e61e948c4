//! `/metrics` in Prometheus text format, `/livez`, `/readyz` and `/healthz`: events received, mapped, dropped and rejected by reason,
//! delivered, retried and dead-lettered per pixel, queue depth, batch latency, paused pixels, and ingestion refused
//! at the disk cap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::json;

use super::match_quality::Window;
use super::Shared;

type Labels = Vec<(&'static str, String)>;

pub(super) struct Metrics {
    registry: Registry,
    received: Counter,
    outcomes: Family<Labels, Counter>,
    delivered: Family<Labels, Counter>,
    retried: Family<Labels, Counter>,
    dead_lettered: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    requests_refused: Family<Labels, Counter>,
    queue_depth: Family<Labels, Gauge>,
    paused: Family<Labels, Gauge>,
    store_up: Gauge,
    stored_bytes: Gauge,
    match_score: Family<Labels, Gauge<f64, AtomicU64>>,
    match_share: Family<Labels, Gauge<f64, AtomicU64>>,
    batch_latency: Family<Labels, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn pixel(name: &str) -> Labels {
    vec![("pixel", name.to_string())]
}

impl Metrics {
    pub fn new<'a>(pixels: impl Iterator<Item = &'a str>) -> Metrics {
        let mut registry = Registry::with_prefix("signal_relay");
        let metrics = Metrics {
            received: Counter::default(),
            outcomes: Family::default(),
            delivered: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            refused: Family::default(),
            requests_refused: Family::default(),
            queue_depth: Family::default(),
            paused: Family::default(),
            store_up: Gauge::default(),
            stored_bytes: Gauge::default(),
            match_score: Family::default(),
            match_share: Family::default(),
            batch_latency: Family::new_with_constructor(latency_histogram),
            registry: Registry::default(),
        };
        registry.register("events_received", "Signal events accepted and stored", metrics.received.clone());
        registry.register(
            "events",
            "Events per pixel by outcome (mapped, dropped, rejected) and reason",
            metrics.outcomes.clone(),
        );
        registry.register("events_delivered", "OpenAI events accepted by OpenAI", metrics.delivered.clone());
        registry.register("requests_retried", "OpenAI requests that will be retried", metrics.retried.clone());
        registry.register(
            "events_dead_lettered",
            "Events moved to the dead-letter store",
            metrics.dead_lettered.clone(),
        );
        registry.register("ingestion_refused", "Events refused at ingestion, by reason", metrics.refused.clone());
        registry.register(
            "requests_refused",
            "Ingestion requests refused whole (401, 403, 400, 413, 429, 503 …), by reason",
            metrics.requests_refused.clone(),
        );
        registry.register("queue_depth", "OpenAI events waiting for delivery", metrics.queue_depth.clone());
        registry.register(
            "pixel_paused",
            "1 while a pixel is paused on an authentication error",
            metrics.paused.clone(),
        );
        registry.register(
            "store_up",
            "1 while the store (redb, or the fleet's PostgreSQL database) answers",
            metrics.store_up.clone(),
        );
        registry.register(
            "stored_bytes",
            "Bytes of queued events, dead letters and identity memory, counted against the disk cap",
            metrics.stored_bytes.clone(),
        );
        registry.register(
            "match_quality_score",
            "Match quality (0-10) of the events OpenAI took, per pixel and window (hour, day, week)",
            metrics.match_score.clone(),
        );
        registry.register(
            "match_signal_share",
            "Share of delivered events carrying each identity signal, per pixel, window and OpenAI event type",
            metrics.match_share.clone(),
        );
        registry.register("batch_latency_seconds", "Time OpenAI took to answer a batch", metrics.batch_latency.clone());
        // Series that alerts watch exist from the start, so that a first dead letter or refusal is an increase.
        for reason in ["disk_cap", "invalid_event", "invalid_timestamp", "too_large", "mapping_rejected"] {
            metrics.refused.get_or_create(&vec![("reason", reason.to_string())]).inc_by(0);
        }
        for reason in ["unauthorized", "origin_not_allowed", "malformed", "too_large", "rate_limited"] {
            metrics.requests_refused.get_or_create(&vec![("reason", reason.to_string())]).inc_by(0);
        }
        let metrics = Metrics { registry, ..metrics };
        for name in pixels {
            metrics.add_pixel(name);
        }
        metrics
    }

    /// Shows a pixel's series from zero, so that dashboards see it before its first event.
    pub fn add_pixel(&self, name: &str) {
        self.queue_depth.get_or_create(&pixel(name)).set(0);
        self.paused.get_or_create(&pixel(name)).set(0);
        self.delivered.get_or_create(&pixel(name)).inc_by(0);
        for reason in ["expired", "rejected"] {
            let labels = vec![("pixel", name.to_string()), ("reason", reason.to_string())];
            self.dead_lettered.get_or_create(&labels).inc_by(0);
        }
    }

    pub fn received(&self, events: usize) {
        self.received.inc_by(events as u64);
    }

    pub fn refused_full(&self, events: usize) {
        self.refused.get_or_create(&vec![("reason", "disk_cap".to_string())]).inc_by(events as u64);
    }

    /// Events of a taken request that were refused one by one.
    pub fn events_refused(&self, reason: &str, events: usize) {
        if events > 0 {
            self.refused.get_or_create(&vec![("reason", reason.to_string())]).inc_by(events as u64);
        }
    }

    pub fn request_refused(&self, reason: &str) {
        self.requests_refused.get_or_create(&vec![("reason", reason.to_string())]).inc();
    }

    pub fn outcome(&self, name: &str, outcome: &str, reason: Option<String>) {
        let mut labels = pixel(name);
        labels.push(("outcome", outcome.to_string()));
        labels.push(("reason", reason.unwrap_or_default()));
        self.outcomes.get_or_create(&labels).inc();
    }

    pub fn delivered(&self, name: &str, events: usize) {
        self.delivered.get_or_create(&pixel(name)).inc_by(events as u64);
    }

    pub fn retried(&self, name: &str, why: &str) {
        let mut labels = pixel(name);
        labels.push(("reason", why.to_string()));
        self.retried.get_or_create(&labels).inc();
    }

    pub fn dead_lettered(&self, name: &str, reason: &str, events: usize) {
        let mut labels = pixel(name);
        labels.push(("reason", reason.to_string()));
        self.dead_lettered.get_or_create(&labels).inc_by(events as u64);
    }

    pub fn batch_latency(&self, name: &str, seconds: f64) {
        self.batch_latency.get_or_create(&pixel(name)).observe(seconds);
    }

    /// Match quality as of this scrape; series of event types no longer seen in a window disappear.
    fn match_quality(&self, shared: &Shared) {
        self.match_score.clear();
        self.match_share.clear();
        let now = super::now_ms();
        for p in shared.pixels.all() {
            let target = p.setup().plan.target_schema();
            for window in Window::ALL {
                let report = shared.quality.report(&p.name, target, window, now);
                let labels = vec![("pixel", p.name.clone()), ("window", window.name().to_string())];
                self.match_score.get_or_create(&labels).set(report.score);
                for kind in &report.types {
                    for (signal, share) in &kind.signals {
                        let mut labels = labels.clone();
                        labels.push(("event_type", kind.event_type.clone()));
                        labels.push(("signal", signal.clone()));
                        self.match_share.get_or_create(&labels).set(*share);
                    }
                }
            }
        }
    }

    fn render(&self, shared: &Shared) -> Result<String, std::fmt::Error> {
        match shared.store.stored_bytes() {
            Ok(bytes) => {
                self.store_up.set(1);
                self.stored_bytes.set(bytes as i64);
            }
            Err(_) => {
                self.store_up.set(0);
            }
        }
        for p in shared.pixels.all() {
            if let Ok(depth) = shared.store.depth(&p.name) {
                self.queue_depth.get_or_create(&pixel(&p.name)).set(depth as i64);
            }
            let paused = p.paused.load(Ordering::Relaxed);
            self.paused.get_or_create(&pixel(&p.name)).set(i64::from(paused));
        }
        self.match_quality(shared);
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

pub(super) fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .route("/livez", get(live))
        .route("/readyz", get(ready))
        .with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    // The store is asked (a database, perhaps): off the async threads.
    let rendered = tokio::task::spawn_blocking(move || shared.metrics.render(&shared)).await;
    match rendered.unwrap_or(Err(std::fmt::Error)) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// 200 whenever the process serves: for a supervisor deciding whether to restart it.
async fn live() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// 200 when the relay can take and deliver events: its store answers and is writable (below the disk cap), and no
/// pixel is paused; 503 naming what is wrong otherwise, for a load balancer deciding where to send traffic.
async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let paused: Vec<String> =
        shared.pixels.all().into_iter().filter(|p| p.paused.load(Ordering::Relaxed)).map(|p| p.name.clone()).collect();
    let mut problems = Vec::new();
    let store = shared.clone();
    let stored = tokio::task::spawn_blocking(move || store.store.stored_bytes())
        .await
        .unwrap_or_else(|e| Err(super::store::StoreError(e.to_string())));
    match stored {
        Ok(bytes) if bytes >= shared.config.disk_cap_bytes => {
            problems.push(format!("the disk cap is reached ({bytes} of {} bytes)", shared.config.disk_cap_bytes))
        }
        Ok(_) => {}
        Err(error) => problems.push(format!("the store does not answer: {error}")),
    }
    if !paused.is_empty() {
        problems.push(format!("paused on an authentication error: {}", paused.join(", ")));
    }
    let status = if problems.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if problems.is_empty() { "ready" } else { "not_ready" },
        "problems": problems,
        "paused_pixels": paused,
    });
    (status, Json(body)).into_response()
}

/// 200 while every pixel delivers; 503 naming the paused pixels (their events are kept) or a failing store.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let paused: Vec<String> =
        shared.pixels.all().into_iter().filter(|p| p.paused.load(Ordering::Relaxed)).map(|p| p.name.clone()).collect();
    let asked = shared.clone();
    let store = tokio::task::spawn_blocking(move || asked.store.stored_bytes())
        .await
        .unwrap_or_else(|e| Err(super::store::StoreError(e.to_string())));
    let status = if paused.is_empty() && store.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if status == StatusCode::OK { "ok" } else { "degraded" },
        "paused_pixels": paused,
        "stored_bytes": store.as_ref().ok(),
        "disk_cap_bytes": shared.config.disk_cap_bytes,
        "store_error": store.err().map(|e| e.0),
        "dry_run": shared.config.dry_run,
    });
    (status, Json(body)).into_response()
}
