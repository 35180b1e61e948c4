//! `/api/dead-letters`: the events OpenAI refused or that expired, on the running relay: list, show one, put back
//! into their queue (replay) or delete for good (purge). Replayed events wake their pixel's delivery at once.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::integrations::blocking;
use super::{body, ApiError, ApiResult, Console};
use crate::relay::store::DeadLetter;

#[derive(Deserialize)]
pub(super) struct Filter {
    pixel: Option<String>,
}

fn letter_json(letter: &DeadLetter) -> Value {
    json!({
        "pixel": letter.pixel,
        "seq": letter.seq,
        "id": letter.pending.id,
        "event_type": letter.pending.event_type,
        "timestamp_ms": letter.pending.timestamp_ms,
        "received_ms": letter.pending.received_ms,
        "reason": letter.reason,
        "detail": letter.detail,
        "dead_ms": letter.dead_ms,
        // The event as it would be sent: personal fields are already hashed by the mapping.
        "event": serde_json::from_str::<Value>(&letter.pending.event).unwrap_or(Value::Null),
    })
}

pub(super) async fn list(State(console): State<Arc<Console>>, Query(filter): Query<Filter>) -> ApiResult {
    let shared = console.shared.clone();
    let letters =
        blocking(move || shared.store.dead_letters(filter.pixel.as_deref()).map_err(ApiError::storage)).await?;
    Ok(Json(json!({
        "count": letters.len(),
        "dead_letters": letters.iter().map(letter_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

pub(super) async fn show(State(console): State<Arc<Console>>, Path((pixel, seq)): Path<(String, u64)>) -> ApiResult {
    let shared = console.shared.clone();
    let wanted = pixel.clone();
    let letters = blocking(move || shared.store.dead_letters(Some(&wanted)).map_err(ApiError::storage)).await?;
    let letter = letters
        .iter()
        .find(|l| l.seq == seq)
        .ok_or_else(|| ApiError::not_found(format!("pixel {pixel:?} has no dead letter {seq}")))?;
    Ok(Json(letter_json(letter)).into_response())
}

/// Which dead letters: of one pixel or all, every one or the given sequence numbers (unique across pixels).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Choice {
    pixel: Option<String>,
    seqs: Option<Vec<u64>>,
}

impl Choice {
    fn wake(&self, console: &Console) {
        for pixel in console.shared.pixels.all() {
            if self.pixel.as_ref().is_none_or(|p| *p == pixel.name) {
                pixel.queued.notify_one();
            }
        }
    }
}

pub(super) async fn replay(State(console): State<Arc<Console>>, bytes: Bytes) -> ApiResult {
    let choice: Choice = body(&bytes)?;
    let shared = console.shared.clone();
    let (pixel, seqs) = (choice.pixel.clone(), choice.seqs.clone());
    let replayed =
        blocking(move || shared.store.replay(pixel.as_deref(), seqs.as_deref()).map_err(ApiError::storage)).await?;
    choice.wake(&console);
    tracing::info!(
        events = replayed,
        pixel = choice.pixel.as_deref().unwrap_or("every pixel"),
        "dead letters replayed from the console"
    );
    Ok(Json(json!({"replayed": replayed})).into_response())
}

pub(super) async fn purge(State(console): State<Arc<Console>>, bytes: Bytes) -> ApiResult {
    let choice: Choice = body(&bytes)?;
    let shared = console.shared.clone();
    let (pixel, seqs) = (choice.pixel.clone(), choice.seqs.clone());
    let purged =
        blocking(move || shared.store.purge(pixel.as_deref(), seqs.as_deref()).map_err(ApiError::storage)).await?;
    tracing::info!(
        events = purged,
        pixel = choice.pixel.as_deref().unwrap_or("every pixel"),
        "dead letters purged from the console"
    );
    Ok(Json(json!({"purged": purged})).into_response())
}
