//! The console's web pages: one small page and its script and style, embedded in the binary (no CDN, no build step,
//! works offline), which draw everything from the JSON API; the login page for relays with a token; the event
//! debugger's search (`/api/events`) and the words the mapping editor completes (`/api/vocabulary`), taken from the
//! same function library and schemas `engine lsp` completes from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::integrations::find;
use super::{random_token, ApiResult, Console, SESSION_COOKIE};
use crate::relay::debug::Search;
use crate::schema::{self, InputField};

/// The anti-forgery token of the request's caller, put in the pages it is served.
#[derive(Clone)]
pub(super) struct PageToken(pub String);

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");
const LOGIN: &str = include_str!("ui/login.html");

/// How long a login lasts.
pub(super) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 64;

/// Headers every page gets: no script but the console's own, no framing by other sites, nothing cached.
fn page_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

pub(super) async fn page(State(console): State<Arc<Console>>, Extension(token): Extension<PageToken>) -> Response {
    // A bearer-token caller gets a page too (for scripts that fetch it), but its forms need a session or loopback.
    let html = INDEX
        .replace("{{csrf}}", &token.0)
        .replace("{{dry_run}}", if console.shared.config.dry_run { "true" } else { "false" })
        .replace("{{login}}", if console.shared.config.admin.token.is_some() { "true" } else { "false" });
    let mut response = Html(html).into_response();
    page_headers(response.headers_mut());
    response
}

pub(super) async fn script() -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response();
    page_headers(response.headers_mut());
    response
}

pub(super) async fn style() -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response();
    page_headers(response.headers_mut());
    response
}

pub(super) async fn login_page(State(console): State<Arc<Console>>) -> Response {
    if console.shared.config.admin.token.is_none() {
        return Redirect::to("/ui").into_response();
    }
    login_form(StatusCode::OK, "")
}

fn login_form(status: StatusCode, message: &str) -> Response {
    let escaped = message.replace('&', "&amp;").replace('<', "&lt;");
    let mut response = (status, Html(LOGIN.replace("{{message}}", &escaped))).into_response();
    page_headers(response.headers_mut());
    response
}

/// Checks the token typed into the login page and starts a session: an HttpOnly, SameSite=Strict cookie that
/// scripts cannot read and other sites cannot make the browser send.
pub(super) async fn login(State(console): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(token) = &console.shared.config.admin.token else { return Redirect::to("/ui").into_response() };
    if !super::same_origin(&headers) {
        return login_form(StatusCode::FORBIDDEN, "a login from another site is refused");
    }
    let typed = form_urlencoded::parse(&body).find(|(key, _)| key == "token").map(|(_, value)| value.into_owned());
    let matches =
        typed.is_some_and(|typed| bool::from(typed.trim().as_bytes().ct_eq(token.expose_secret().as_bytes())));
    if !matches {
        tracing::warn!("a console login with a wrong token");
        return login_form(StatusCode::UNAUTHORIZED, "That is not the console's token (`admin.token_env`).");
    }
    let session = random_token();
    {
        let mut sessions = console.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.retain(|_, (_, since)| since.elapsed() < SESSION_LIFETIME);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, (_, since))| *since).map(|(id, _)| id.clone()) {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(session.clone(), (random_token(), Instant::now()));
    }
    let cookie = format!(
        "{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    );
    let mut response = Redirect::to("/ui").into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("an ASCII cookie"));
    response
}

pub(super) async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Some(session) = super::cookie(&headers, SESSION_COOKIE) {
        console.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(session);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    let expired = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&expired).expect("an ASCII cookie"));
    response
}

/// The debugger's entries that match a search, newest first, personal data masked as `engine explain` masks it.
pub(super) async fn events(State(console): State<Arc<Console>>, Query(search): Query<Search>) -> ApiResult {
    let limit = search.limit.unwrap_or(100).min(500);
    let entries = console.shared.debug.search(&search, limit);
    Ok(Json(json!({"events": entries, "capacity": console.shared.debug.capacity()})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VocabularyQuery {
    pixel: String,
}

/// What the mapping editor completes, for one pixel's mapping: functions after `|`, fields of the pixel's target
/// after `->`, Signal fields in source position, parameters after `$`, event types in the route table.
pub(super) async fn vocabulary(State(console): State<Arc<Console>>, Query(query): Query<VocabularyQuery>) -> ApiResult {
    let pixel = find(&console, &query.pixel)?;
    let setup = pixel.setup();
    let target = setup.plan.target_schema();
    let functions: Vec<Value> = crate::functions::all()
        .iter()
        .map(|f| json!({"name": f.name, "signature": f.signature(), "summary": f.summary}))
        .collect();
    let mut sources = Vec::new();
    fn walk(prefix: &str, fields: &[InputField], out: &mut Vec<Value>) {
        for field in fields {
            let path = if prefix.is_empty() { field.name.clone() } else { format!("{prefix}.{}", field.name) };
            out.push(json!({"path": path, "type": field.ty.to_string(), "personal": field.pii}));
            walk(&path, &field.fields, out);
        }
    }
    walk("", &schema::input().fields, &mut sources);
    let mut targets: Vec<Value> = Vec::new();
    target.walk(&mut |keys, def| {
        if !def.fields.is_empty() || target.resolve(keys, false).is_none() {
            return;
        }
        let path = keys.join(".");
        let path = if def.items.is_some() { format!("{path}[*]") } else { path };
        if !targets.iter().any(|t| t["path"] == path.as_str()) {
            targets.push(
                json!({"path": path, "type": def.type_name, "summary": def.doc.lines().next().unwrap_or_default()}),
            );
        }
    });
    let event_types: Vec<&String> = target.event_types.iter().map(|(name, _)| name).collect();
    let mut params: Vec<String> = setup.config.params.keys().cloned().collect();
    for line in setup.mapping.source.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("param ") {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && !params.contains(&name) {
                params.push(name);
            }
        }
    }
    Ok(Json(json!({
        "functions": functions,
        "sources": sources,
        "targets": targets,
        "params": params,
        "event_types": event_types,
    }))
    .into_response())
}
