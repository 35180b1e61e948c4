//! `/api/integrations`: the pixels with their state; adding, changing, disabling and removing them while the relay
//! runs; and a test event sent through a pixel's mapping to OpenAI with `validate_only`, answered verbatim.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use reqwest::header::CONTENT_TYPE;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{body, ApiError, ApiResult, Console};
use crate::explain::explain_value;
use crate::relay::config::{Integration, DEFAULT_ENDPOINT};
use crate::relay::console::{self, Record, Settings};
use crate::relay::registry::{Origin, Pixel, Setup};
use crate::relay::{now_ms, Shared};
use crate::run::{Context, Outcome};

/// What a pixel looks like to the console. The API key is never shown: only whether it is set and, for a key long
/// enough that this gives little away, its last four characters.
pub(super) fn state(shared: &Shared, pixel: &Pixel) -> Value {
    let setup = pixel.setup();
    let config = &setup.config;
    let status = pixel.status();
    let api_key = match &config.api_key {
        Some(key) => {
            let key = key.expose_secret();
            let last4 = (key.chars().count() >= 12)
                .then(|| key.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect::<String>());
            json!({"set": true, "last4": last4})
        }
        None => json!({"set": false}),
    };
    let depth = shared.store.depth(&pixel.name).ok();
    let dead = shared.store.dead_letters(Some(&pixel.name)).ok().map(|d| d.len());
    let versions =
        console::load_record(shared.store.as_ref(), &pixel.name).ok().flatten().map_or(0, |r| r.mappings.len());
    json!({
        "name": pixel.name,
        "origin": setup.origin,
        "pixel_id": config.pixel_id,
        "api_key": api_key,
        "validate_only": config.validate_only,
        "consent_category": config.params.get("consent_category").cloned().unwrap_or(json!("marketing")),
        "params": config.params,
        "endpoint": config.endpoint,
        "disabled": setup.disabled,
        "mapping": {"name": setup.mapping.name, "version": setup.mapping.version, "saved_versions": versions},
        "queue_depth": depth,
        "dead_letters": dead,
        "paused": pixel.paused.load(std::sync::atomic::Ordering::Relaxed),
        "paused_why": status.paused_why,
        "last_delivery": status.last_delivery,
        "dry_run": shared.config.dry_run,
    })
}

pub(super) fn find(console: &Console, name: &str) -> Result<Arc<Pixel>, ApiError> {
    console.shared.pixels.find(name).ok_or_else(|| ApiError::not_found(format!("no integration is named {name:?}")))
}

pub(super) async fn list(State(console): State<Arc<Console>>) -> ApiResult {
    let shared = console.shared.clone();
    let states =
        blocking(move || Ok(shared.pixels.all().iter().map(|pixel| state(&shared, pixel)).collect::<Vec<_>>())).await?;
    Ok(Json(json!({"integrations": states})).into_response())
}

pub(super) async fn show(State(console): State<Arc<Console>>, Path(name): Path<String>) -> ApiResult {
    let pixel = find(&console, &name)?;
    let shared = console.shared.clone();
    let state = blocking(move || Ok(state(&shared, &pixel))).await?;
    Ok(Json(state).into_response())
}

/// Runs store calls off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the task failed: {e}")))?
}

/// The settings an add or an edit may give; absent fields keep their value (or take the default, when adding).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Changes {
    name: Option<String>,
    pixel_id: Option<String>,
    /// Write-only: never returned.
    api_key: Option<String>,
    validate_only: Option<bool>,
    consent_category: Option<String>,
    params: Option<Map<String, Value>>,
    endpoint: Option<String>,
    disabled: Option<bool>,
    /// For a new pixel: the embedded mapping to start from, `openai_ads` (default) or `openai_ads_developer_docs`.
    preset: Option<String>,
}

fn valid_name(name: &str) -> Result<(), ApiError> {
    let fits = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if fits {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "`name`: {name:?} is not a pixel name: 1 to 64 letters, digits, `_`, `-` or `.`"
        )))
    }
}

fn valid_endpoint(endpoint: &str) -> Result<String, ApiError> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    match url::Url::parse(endpoint) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(endpoint.to_string()),
        _ => Err(ApiError::bad_request(format!("`endpoint`: {endpoint:?} is not an http(s) URL"))),
    }
}

/// Applies `changes` over a pixel's configuration, checking each.
fn apply_changes(config: &mut Integration, disabled: &mut bool, changes: Changes) -> Result<(), ApiError> {
    if let Some(pixel_id) = changes.pixel_id {
        if pixel_id.trim().is_empty() {
            return Err(ApiError::bad_request(
                "`pixel_id`: the OpenAI pixel id events are sent to (`?pid=…`) is empty",
            ));
        }
        config.pixel_id = pixel_id.trim().to_string();
    }
    if let Some(key) = changes.api_key {
        if key.trim().len() < 8 {
            return Err(ApiError::bad_request("`api_key`: an OpenAI Conversions API key is longer than that"));
        }
        config.api_key = Some(SecretString::from(key.trim().to_string()));
    }
    if let Some(validate_only) = changes.validate_only {
        config.validate_only = validate_only;
    }
    if let Some(params) = changes.params {
        let category = config.params.get("consent_category").cloned();
        config.params = params;
        if let (Some(category), false) = (category, config.params.contains_key("consent_category")) {
            config.params.insert("consent_category".to_string(), category);
        }
    }
    if let Some(category) = changes.consent_category {
        if category.trim().is_empty() {
            return Err(ApiError::bad_request(
                "`consent_category`: name the consent category that governs advertising",
            ));
        }
        config.params.insert("consent_category".to_string(), Value::String(category.trim().to_string()));
    }
    if let Some(endpoint) = changes.endpoint {
        config.endpoint = valid_endpoint(&endpoint)?;
    }
    if let Some(flag) = changes.disabled {
        *disabled = flag;
    }
    Ok(())
}

/// The mapping's diagnostics as the console shows them.
pub(super) fn diagnostics_json(compiled: &crate::Compiled) -> Value {
    let list: Vec<Value> = compiled
        .diagnostics
        .iter()
        .map(|d| {
            let mut value = serde_json::to_value(crate::diagnostic::to_json(d, &compiled.sources)).unwrap_or_default();
            value["start"] = json!(d.primary.span.start);
            value["end"] = json!(d.primary.span.end);
            value
        })
        .collect();
    Value::Array(list)
}

fn unusable_mapping(broken: console::Broken) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "mapping_errors",
        "the mapping does not compile with these settings",
    )
    .with("diagnostics", diagnostics_json(&broken.0))
}

/// What changed in the console, to be kept.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Persist {
    /// The settings (and the API key, if `true`).
    Settings { key: bool },
    /// Only the mapping in force: for a pixel of relay.yaml whose settings the console never changed, they stay
    /// the file's and follow it.
    Mapping,
}

/// Writes what the console holds of a pixel: its settings, its mapping history and its API key when it changed.
pub(super) fn persist(shared: &Shared, setup: &Setup, record: Option<Record>, change: Persist) -> Result<(), ApiError> {
    let name = &setup.config.name;
    let preset =
        crate::presets::ALL.iter().find(|p| p.name == setup.base.name).map(|p| console::preset_name(p).to_string());
    let mut record = record.unwrap_or(Record {
        origin: setup.origin,
        file_fingerprint: None,
        settings: None,
        mappings: Vec::new(),
        active: 0,
    });
    record.origin = setup.origin;
    record.file_fingerprint = setup.fingerprint.clone();
    if matches!(change, Persist::Settings { .. }) || setup.origin == Origin::Console || record.settings.is_some() {
        let preset = preset.filter(|_| setup.origin == Origin::Console);
        record.settings = Some(Settings::of(&setup.config, setup.disabled, preset));
    }
    record.active = setup.mapping.version;
    let mut writes = vec![(console::record_key(name), Some(serde_json::to_vec(&record).expect("JSON")))];
    if change == (Persist::Settings { key: true }) {
        let key = setup.config.api_key.as_ref().map(|k| k.expose_secret().as_bytes().to_vec());
        writes.push((console::secret_key(name), key));
    }
    shared.store.put_settings(&writes).map_err(ApiError::storage)
}

pub(super) async fn create(State(console): State<Arc<Console>>, bytes: Bytes) -> ApiResult {
    let changes: Changes = body(&bytes)?;
    let name = changes.name.clone().ok_or_else(|| ApiError::bad_request("`name` is missing"))?;
    valid_name(&name)?;
    if console.shared.pixels.find(&name).is_some() {
        return Err(ApiError::conflict(format!("an integration named {name:?} exists already")));
    }
    if changes.pixel_id.is_none() {
        return Err(ApiError::bad_request("`pixel_id` is missing: the OpenAI pixel id events are sent to (`?pid=…`)"));
    }
    if changes.api_key.is_none() && !console.shared.config.dry_run {
        return Err(ApiError::bad_request("`api_key` is missing: the pixel's Conversions API key"));
    }
    let preset = changes.preset.clone();
    if let Some(preset) = &preset {
        if !crate::presets::ALL.iter().any(|p| console::preset_name(p) == preset) {
            let names: Vec<&str> = crate::presets::ALL.iter().map(console::preset_name).collect();
            return Err(ApiError::bad_request(format!("`preset`: {preset:?} is not one of {}", names.join(", "))));
        }
    }
    let mut config = Integration {
        name: name.clone(),
        pixel_id: String::new(),
        api_key: None,
        // A new pixel starts in Validate Only: OpenAI checks its events without recording them until it is switched off.
        validate_only: true,
        mapping: None,
        params: Map::new(),
        endpoint: DEFAULT_ENDPOINT.to_string(),
    };
    let mut disabled = false;
    apply_changes(&mut config, &mut disabled, Changes { preset: None, name: None, ..changes })?;
    let base = console::preset_mapping(preset.as_deref());
    let plan = console::compile(&base.name, &base.source, None, &config.params).map_err(unusable_mapping)?;
    let setup = Setup {
        config,
        plan: Arc::new(plan),
        mapping: base.clone(),
        base,
        fingerprint: None,
        disabled,
        origin: Origin::Console,
    };
    let shared = console.shared.clone();
    let setup = blocking(move || {
        persist(&shared, &setup, None, Persist::Settings { key: true })?;
        Ok(setup)
    })
    .await?;
    let Some(pixel) = console.shared.pixels.add(Pixel::new(setup)) else {
        return Err(ApiError::conflict(format!("an integration named {name:?} exists already")));
    };
    console.shared.metrics.add_pixel(&name);
    console.shared.spawn_delivery(pixel.clone());
    tracing::info!(pixel = %name, "integration added in the console");
    let shared = console.shared.clone();
    let state = blocking(move || Ok(state(&shared, &pixel))).await?;
    Ok((StatusCode::CREATED, Json(state)).into_response())
}

pub(super) async fn edit(State(console): State<Arc<Console>>, Path(name): Path<String>, bytes: Bytes) -> ApiResult {
    let changes: Changes = body(&bytes)?;
    if changes.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::bad_request(
            "`name` cannot change: the queue, dead letters and identity memory are kept under it",
        ));
    }
    if changes.preset.is_some() {
        return Err(ApiError::bad_request("`preset` is chosen when adding; change the mapping with PUT …/mapping"));
    }
    let pixel = find(&console, &name)?;
    let current = pixel.setup();
    let mut config = current.config.clone();
    let mut disabled = current.disabled;
    let key_changed = changes.api_key.is_some();
    let params_changed = changes.params.is_some() || changes.consent_category.is_some();
    apply_changes(&mut config, &mut disabled, changes)?;
    // Parameters are compiled into the plan: new ones need the mapping compiled again.
    let plan = if params_changed {
        let file = console::mapping_file(&config);
        Arc::new(
            console::compile(&current.mapping.name, &current.mapping.source, file.as_deref(), &config.params)
                .map_err(unusable_mapping)?,
        )
    } else {
        current.plan.clone()
    };
    let setup = Setup {
        config,
        plan,
        mapping: current.mapping.clone(),
        base: current.base.clone(),
        fingerprint: current.fingerprint.clone(),
        disabled,
        origin: current.origin,
    };
    let shared = console.shared.clone();
    let setup = blocking(move || {
        let record = console::load_record(shared.store.as_ref(), &setup.config.name).map_err(ApiError::storage)?;
        persist(&shared, &setup, record, Persist::Settings { key: key_changed })?;
        Ok(setup)
    })
    .await?;
    pixel.replace(setup);
    if key_changed {
        // A new key may be the fix for a pause on an authentication error: try at once.
        pixel.queued.notify_one();
    }
    tracing::info!(pixel = %name, "integration changed in the console");
    let shared = console.shared.clone();
    let state = blocking(move || Ok(state(&shared, &pixel))).await?;
    Ok(Json(state).into_response())
}

pub(super) async fn delete(State(console): State<Arc<Console>>, Path(name): Path<String>) -> ApiResult {
    let pixel = find(&console, &name)?;
    if pixel.setup().origin == Origin::File {
        return Err(ApiError::conflict(format!(
            "{name:?} is defined in the configuration file: remove it there, or disable it here (`disabled: true`)"
        )));
    }
    let shared = console.shared.clone();
    let check = name.clone();
    let (depth, dead) = blocking(move || {
        let depth = shared.store.depth(&check).map_err(ApiError::storage)?;
        let dead = shared.store.dead_letters(Some(&check)).map_err(ApiError::storage)?.len();
        Ok((depth, dead))
    })
    .await?;
    if depth > 0 || dead > 0 {
        return Err(ApiError::conflict(format!(
            "{name:?} still holds {depth} queued events and {dead} dead letters: nothing is deleted with it; let \
             delivery empty the queue (keep it enabled) and replay or purge its dead letters first"
        )));
    }
    console.shared.pixels.remove(&name);
    let shared = console.shared.clone();
    let removed = name.clone();
    blocking(move || {
        shared
            .store
            .put_settings(&[(console::record_key(&removed), None), (console::secret_key(&removed), None)])
            .map_err(ApiError::storage)
    })
    .await?;
    tracing::info!(pixel = %name, "integration deleted in the console");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TestEvent {
    /// The Signal event to send; by default an `Order Completed` of now.
    event: Option<Value>,
}

/// A conversion to test with when none is given: everything the default preset maps, timed now.
pub(super) fn sample_event(now_ms: i64) -> Value {
    let timestamp = jiff::Timestamp::from_millisecond(now_ms).map(|t| t.to_string()).unwrap_or_default();
    json!({
        "type": "track",
        "event": "Order Completed",
        "messageId": format!("console-test-{now_ms}"),
        "anonymousId": "console-test-visitor",
        "timestamp": timestamp,
        "properties": {
            "order_id": format!("TEST-{now_ms}"),
            "revenue": 1.0,
            "currency": "USD",
            "products": [{"product_id": "TEST-SKU", "product_name": "Test product", "price": 1.0, "quantity": 1}]
        },
        "context": {
            "ip": "203.0.113.10",
            "userAgent": "signal-engine console test event",
            "page": {"url": "https://shop.example.com/checkout/thanks"},
            "consent": {"marketing": true, "advertising": true}
        }
    })
}

/// Maps one event with the pixel's mapping and sends it to OpenAI with `validate_only: true`, whatever the pixel's
/// own setting: OpenAI checks it and records nothing. OpenAI's answer is returned as it came.
pub(super) async fn test_event(
    State(console): State<Arc<Console>>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let request: TestEvent = body(&bytes)?;
    let pixel = find(&console, &name)?;
    let setup = pixel.setup();
    let now = now_ms();
    let event = request.event.unwrap_or_else(|| sample_event(now));
    let outcome = setup.plan.apply(&event, &mut Context::stateless(now));
    let mapped = match outcome {
        Outcome::Mapped(mapped) => mapped,
        other => {
            let (outcome, reason) = crate::relay::debug::describe(&other);
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_mapped",
                format!(
                    "the mapping does not turn this event into an OpenAI event: {outcome} ({})",
                    reason.unwrap_or_default()
                ),
            )
            .with("explanation", explain_value(&setup.plan, &event, &mut Context::stateless(now)).to_json(false)));
        }
    };
    let sent: Value = serde_json::from_str(&mapped.json).unwrap_or(Value::Null);
    let body = format!("{{\"validate_only\":true,\"events\":[{}]}}", mapped.json);
    let pid = form_urlencoded::byte_serialize(setup.config.pixel_id.as_bytes()).collect::<String>();
    let url = format!("{}/v1/events?pid={pid}", setup.config.endpoint);
    let Some(key) = setup.config.api_key.as_ref().filter(|_| !console.shared.config.dry_run) else {
        return Err(ApiError::conflict(
            "the relay runs in dry-run mode (or the pixel has no API key): nothing is sent to OpenAI",
        )
        .with("event", sent));
    };
    let client = reqwest::Client::builder()
        .timeout(console.shared.config.retry.timeout)
        .build()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("no HTTP client: {e}")))?;
    let answer = client
        .post(&url)
        .bearer_auth(key.expose_secret())
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let response = match answer {
        Ok(response) => response,
        Err(error) => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "unreachable",
                format!(
                    "OpenAI did not answer: {}",
                    if error.is_timeout() { "timeout".to_string() } else { error.to_string() }
                ),
            )
            .with("event", sent))
        }
    };
    let status = response.status().as_u16();
    let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = response.text().await.unwrap_or_default();
    tracing::info!(pixel = %name, status, "test event sent with validate_only");
    Ok(Json(json!({
        "sent": {"url": url, "validate_only": true, "event": sent},
        "response": {"status": status, "content_type": content_type, "body": text},
    }))
    .into_response())
}
