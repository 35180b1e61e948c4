//! `/api/integrations/{name}/mapping`: a pixel's mapping text and version history; `check` of a draft (the same
//! diagnostics as `engine check`); a preview of a draft applied to an event (pasted, or one the debugger kept) with
//! each field's provenance; saving, which swaps the plan in the running relay only if the draft compiles without
//! errors; and rollback to an earlier version.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::integrations::{blocking, diagnostics_json, find, persist, sample_event, Persist};
use super::{body, ApiError, ApiResult, Console};
use crate::explain::explain_value;
use crate::relay::console::{self, SavedMapping};
use crate::relay::now_ms;
use crate::relay::registry::{MappingText, Setup};
use crate::run::Context;

pub(super) async fn show(State(console): State<Arc<Console>>, Path(name): Path<String>) -> ApiResult {
    let pixel = find(&console, &name)?;
    let setup = pixel.setup();
    let shared = console.shared.clone();
    let record =
        blocking(move || console::load_record(shared.store.as_ref(), &name).map_err(ApiError::storage)).await?;
    let mut versions = vec![json!({
        "version": 0,
        "note": if setup.base.name.starts_with("mappings/") && setup.config.mapping.is_none() { "the embedded preset" } else { "the configuration file's" },
        "saved_ms": Value::Null,
        "active": setup.mapping.version == 0,
    })];
    for saved in record.iter().flat_map(|r| &r.mappings) {
        versions.push(json!({
            "version": saved.version,
            "note": saved.note,
            "saved_ms": saved.saved_ms,
            "active": setup.mapping.version == saved.version,
        }));
    }
    Ok(Json(json!({
        "name": setup.mapping.name,
        "version": setup.mapping.version,
        "source": &*setup.mapping.source,
        "versions": versions,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Draft {
    source: String,
}

/// Compiles a draft as the pixel would: its name, its parameters, includes beside its file.
fn compile_draft(setup: &Setup, source: &str) -> crate::Compiled {
    let options = crate::CompileOptions { params: setup.config.params.clone() };
    match &setup.config.mapping {
        Some(_) => crate::compile(&setup.mapping.name, source, &crate::files::FileLoader, &options),
        None => crate::compile(&setup.mapping.name, source, &crate::source::MemoryLoader::default(), &options),
    }
}

fn report(compiled: &crate::Compiled) -> Value {
    let errors = compiled.diagnostics.iter().filter(|d| d.is_error()).count();
    json!({
        "errors": errors,
        "warnings": compiled.diagnostics.len() - errors,
        "diagnostics": diagnostics_json(compiled),
    })
}

pub(super) async fn check(State(console): State<Arc<Console>>, Path(name): Path<String>, bytes: Bytes) -> ApiResult {
    let draft: Draft = body(&bytes)?;
    let pixel = find(&console, &name)?;
    let compiled = compile_draft(&pixel.setup(), &draft.source);
    Ok(Json(report(&compiled)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Preview {
    /// The draft; by default the mapping in force.
    source: Option<String>,
    /// A Signal event, pasted.
    event: Option<Value>,
    /// Or the debugger's entry of that number (`seq` in `/debug/events`).
    recent: Option<u64>,
}

/// Applies a draft to one event without storing or sending anything: the payload, each field's provenance and
/// the silent rules, personal data masked as `engine explain` masks it.
pub(super) async fn preview(State(console): State<Arc<Console>>, Path(name): Path<String>, bytes: Bytes) -> ApiResult {
    let request: Preview = body(&bytes)?;
    let pixel = find(&console, &name)?;
    let setup = pixel.setup();
    let now = now_ms();
    let event = match (request.event, request.recent) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give `event` or `recent`, not both")),
        (Some(event), None) => event,
        (None, Some(seq)) => console
            .shared
            .debug
            .input_of(seq)
            .ok_or_else(|| ApiError::not_found(format!("the debugger no longer holds event {seq}")))?,
        (None, None) => sample_event(now),
    };
    let (compiled, plan) = match request.source {
        Some(source) => {
            let mut compiled = compile_draft(&setup, &source);
            let check = report(&compiled);
            let plan = compiled.plan.take().filter(|_| !compiled.has_errors()).map(Arc::new);
            (Some(check), plan)
        }
        None => (None, Some(setup.plan.clone())),
    };
    let diagnostics = compiled;
    let Some(plan) = plan else {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "mapping_errors", "the draft does not compile")
            .with("check", diagnostics.unwrap_or_default()));
    };
    // Identity memory is left out: a preview must not teach the relay anything.
    let explanation = explain_value(&plan, &event, &mut Context::stateless(now));
    Ok(Json(json!({"check": diagnostics, "explanation": explanation.to_json(false)})).into_response())
}

/// Saves a draft as the pixel's next version and swaps it in, only if it compiles without errors. Events already
/// being mapped finish under the plan they started with.
pub(super) async fn save(State(console): State<Arc<Console>>, Path(name): Path<String>, bytes: Bytes) -> ApiResult {
    let draft: Draft = body(&bytes)?;
    let pixel = find(&console, &name)?;
    let current = pixel.setup();
    let mut compiled = compile_draft(&current, &draft.source);
    let check = report(&compiled);
    let plan = match compiled.plan.take() {
        Some(plan) if !compiled.has_errors() => plan,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "mapping_errors",
                "the draft has errors: nothing was saved, the mapping in force is unchanged",
            )
            .with("check", check))
        }
    };
    let shared = console.shared.clone();
    let source = draft.source;
    let (setup, version) = blocking(move || {
        let mut record =
            console::load_record(shared.store.as_ref(), &current.config.name).map_err(ApiError::storage)?;
        let version = record.as_ref().and_then(|r| r.mappings.iter().map(|m| m.version).max()).unwrap_or(0) + 1;
        let setup = Setup {
            config: current.config.clone(),
            plan: Arc::new(plan),
            mapping: MappingText { name: current.base.name.clone(), source: source.as_str().into(), version },
            base: current.base.clone(),
            fingerprint: current.fingerprint.clone(),
            disabled: current.disabled,
            origin: current.origin,
        };
        let saved = SavedMapping { version, source, saved_ms: now_ms(), note: "saved".to_string() };
        let mut updated = record.take().unwrap_or(console::Record {
            origin: setup.origin,
            file_fingerprint: setup.fingerprint.clone(),
            settings: None,
            mappings: Vec::new(),
            active: 0,
        });
        updated.mappings.push(saved);
        persist(&shared, &setup, Some(updated), Persist::Mapping)?;
        Ok((setup, version))
    })
    .await?;
    pixel.replace(setup);
    tracing::info!(pixel = %name, version, "mapping saved in the console and in force");
    Ok(Json(json!({"version": version, "check": check})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollback {
    version: u64,
}

/// Puts an earlier version back in force (0: the file's mapping or the preset).
pub(super) async fn rollback(State(console): State<Arc<Console>>, Path(name): Path<String>, bytes: Bytes) -> ApiResult {
    let request: Rollback = body(&bytes)?;
    let pixel = find(&console, &name)?;
    let current = pixel.setup();
    let shared = console.shared.clone();
    let setup = blocking(move || {
        let record = console::load_record(shared.store.as_ref(), &current.config.name).map_err(ApiError::storage)?;
        let empty = console::Record {
            origin: current.origin,
            file_fingerprint: current.fingerprint.clone(),
            settings: None,
            mappings: Vec::new(),
            active: 0,
        };
        let mapping = console::version_source(record.as_ref().unwrap_or(&empty), &current.base, request.version)
            .ok_or_else(|| ApiError::not_found(format!("the mapping has no version {}", request.version)))?;
        let file = console::mapping_file(&current.config);
        let plan = console::compile(&mapping.name, &mapping.source, file.as_deref(), &current.config.params).map_err(
            |broken| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "mapping_errors",
                    format!("version {} no longer compiles with the pixel's settings", request.version),
                )
                .with("check", report(&broken.0))
            },
        )?;
        let setup = Setup {
            config: current.config.clone(),
            plan: Arc::new(plan),
            mapping,
            base: current.base.clone(),
            fingerprint: current.fingerprint.clone(),
            disabled: current.disabled,
            origin: current.origin,
        };
        persist(&shared, &setup, record, Persist::Mapping)?;
        Ok(setup)
    })
    .await?;
    let version = setup.mapping.version;
    pixel.replace(setup);
    tracing::info!(pixel = %name, version, "mapping rolled back in the console");
    Ok(Json(json!({"version": version})).into_response())
}
