//! `/api/quality`: match quality of what each pixel delivered over the last hour, day or week, with the score, the
//! share of each signal per event type, ages at delivery, drop and refusal reasons, and advice naming the fix.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::integrations::find;
use super::{ApiResult, Console};
use crate::relay::match_quality::Window;
use crate::relay::now_ms;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QualityQuery {
    /// One pixel; by default every pixel.
    pixel: Option<String>,
    /// `hour`, `day` (default) or `week`.
    window: Option<Window>,
}

pub(super) async fn report(State(console): State<Arc<Console>>, Query(query): Query<QualityQuery>) -> ApiResult {
    let window = query.window.unwrap_or(Window::Day);
    let pixels = match &query.pixel {
        Some(name) => vec![find(&console, name)?],
        None => console.shared.pixels.all(),
    };
    let now = now_ms();
    let reports: Vec<_> = pixels
        .iter()
        .map(|pixel| {
            let target = pixel.setup().plan.target_schema();
            let report = console.shared.quality.report(&pixel.name, target, window, now);
            json!({"pixel": pixel.name, "window": window, "report": report, "markdown": report.markdown()})
        })
        .collect();
    Ok(Json(json!({"window": window, "pixels": reports})).into_response())
}
