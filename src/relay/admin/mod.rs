//! The console: a JSON API (`/api/…`) and the web pages over it (`/ui`), on a listener of their own (`admin.listen`,
//! loopback by default). It manages the pixels while the relay runs (settings, the API key, mappings with their
//! history, a test event sent with `validate_only`), the dead letters, and shows match quality.
//!
//! Who may use it: with `admin.token_env` set, callers present the token (`Authorization: Bearer …`) or a session
//! cookie obtained by typing it into the login page; without a token, only connections from loopback addresses
//! addressed to a loopback host name (so a web page cannot reach it by DNS rebinding). Changes from a browser carry
//! the page's anti-forgery token (`X-CSRF-Token`) and come from the console's own origin; bearer-token callers are
//! not browsers' ambient credentials and need no anti-forgery token.

mod dead_letters;
mod integrations;
mod mappings;
mod quality;
mod ui;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::Shared;

/// The console's state: the relay, and the sessions of those who logged in with the token.
pub(super) struct Console {
    shared: Arc<Shared>,
    /// The anti-forgery token of pages served without a token (loopback only), fixed for the process.
    loopback_csrf: String,
    /// Session id → its anti-forgery token and when it began.
    sessions: Mutex<HashMap<String, (String, std::time::Instant)>>,
}

/// The name of the session cookie.
pub(super) const SESSION_COOKIE: &str = "engine_console";
/// The header a browser's change carries the page's anti-forgery token in.
const CSRF_HEADER: &str = "x-csrf-token";

pub(super) fn router(shared: Arc<Shared>) -> Router {
    let console = Arc::new(Console { shared, loopback_csrf: random_token(), sessions: Mutex::new(HashMap::new()) });
    let api = Router::new()
        .route("/api/integrations", get(integrations::list).post(integrations::create))
        .route(
            "/api/integrations/{name}",
            get(integrations::show).patch(integrations::edit).delete(integrations::delete),
        )
        .route("/api/integrations/{name}/test-event", post(integrations::test_event))
        .route("/api/integrations/{name}/mapping", get(mappings::show).put(mappings::save))
        .route("/api/integrations/{name}/mapping/check", post(mappings::check))
        .route("/api/integrations/{name}/mapping/preview", post(mappings::preview))
        .route("/api/integrations/{name}/mapping/rollback", post(mappings::rollback))
        .route("/api/quality", get(quality::report))
        .route("/api/events", get(ui::events))
        .route("/api/vocabulary", get(ui::vocabulary))
        .route("/", get(|| async { axum::response::Redirect::to("/ui") }))
        .route("/ui", get(ui::page))
        .route("/ui/", get(ui::page))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .route("/ui/login", get(ui::login_page).post(ui::login))
        .route("/ui/logout", post(ui::logout))
        .route("/api/dead-letters", get(dead_letters::list))
        .route("/api/dead-letters/{pixel}/{seq}", get(dead_letters::show))
        .route("/api/dead-letters/replay", post(dead_letters::replay))
        .route("/api/dead-letters/purge", post(dead_letters::purge))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such console endpoint") });
    api.layer(axum::middleware::from_fn_with_state(console.clone(), guard)).with_state(console)
}

/// A refusal or failure, as every console endpoint answers it: `{"error": code, "message": …}` and perhaps
/// `diagnostics`.
pub(super) struct ApiError {
    pub status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<(&'static str, Value)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), extra: None }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn storage(error: super::store::StoreError) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage", error.0)
    }

    pub fn with(mut self, key: &'static str, value: Value) -> ApiError {
        self.extra = Some((key, value));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if let Some((key, value)) = self.extra {
            body[key] = value;
        }
        (self.status, Json(body)).into_response()
    }
}

pub(super) type ApiResult = Result<Response, ApiError>;

/// A JSON body, or a 400 that says what is wrong with it (axum's own rejection is plain text).
pub(super) fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"{}").map_err(|e| ApiError::bad_request(format!("the body is required: {e}")));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not what this endpoint takes: {e}")))
}

pub(super) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // Without the system's randomness no token could be trusted: the console refuses to serve rather than guess.
    getrandom::fill(&mut bytes).expect("the operating system's random numbers");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a request proved who it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// `Authorization: Bearer <token>`: not something a browser sends on its own, so no anti-forgery token.
    Bearer,
    /// A session cookie, or a loopback connection when no token is set: a browser may attach either by itself.
    Ambient,
}

/// Lets a request through only if it may use the console, and a change only if it is not forged.
async fn guard(
    State(console): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    // The login page and the static files hold nothing secret; the login checks the token itself.
    // Logging out needs no proof either: the worst a forged one does is end a session.
    if matches!(path, "/ui/login" | "/ui/logout" | "/ui/app.js" | "/ui/app.css") {
        return next.run(request).await;
    }
    match console.admit(peer, request.method(), request.headers()) {
        Ok(csrf) => {
            request.extensions_mut().insert(ui::PageToken(csrf));
            next.run(request).await
        }
        // A person opening a page without a session is sent to the login page rather than shown JSON.
        Err(error) if error.status == StatusCode::UNAUTHORIZED && !path.starts_with("/api/") => {
            axum::response::Redirect::to("/ui/login").into_response()
        }
        Err(error) => error.into_response(),
    }
}

impl Console {
    /// Admits a request, returning the anti-forgery token its pages carry (empty for bearer-token callers).
    fn admit(&self, peer: SocketAddr, method: &Method, headers: &HeaderMap) -> Result<String, ApiError> {
        let (caller, csrf) = self.identify(peer, headers)?;
        let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if caller == Caller::Ambient && changes && from_browser(headers) {
            forged(headers, &csrf)?;
        }
        Ok(csrf)
    }

    /// Who the caller is, with the anti-forgery token their pages carry.
    fn identify(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<(Caller, String), ApiError> {
        let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let Some(token) = &self.shared.config.admin.token else {
            if !peer.ip().is_loopback() {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "without `admin.token_env` the console answers only connections from this machine",
                ));
            }
            if !loopback_host(headers) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the request names a host that is not this machine (`Host`); without `admin.token_env` the \
                     console answers only requests to localhost, 127.0.0.1 or [::1]",
                ));
            }
            return Ok((Caller::Ambient, self.loopback_csrf.clone()));
        };
        if let Some(presented) = bearer(headers)? {
            if bool::from(presented.as_bytes().ct_eq(token.expose_secret().as_bytes())) {
                return Ok((Caller::Bearer, String::new()));
            }
            return Err(unauthorized("the token is not the console's (`admin.token_env`)"));
        }
        if let Some(session) = cookie(headers, SESSION_COOKIE) {
            let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((csrf, _)) = sessions.get(session).filter(|(_, since)| since.elapsed() < ui::SESSION_LIFETIME) {
                return Ok((Caller::Ambient, csrf.clone()));
            }
            return Err(unauthorized("the session has ended: log in again"));
        }
        Err(unauthorized("the console needs its token: `Authorization: Bearer <token>` (`admin.token_env`)"))
    }
}

/// The token of `Authorization: Bearer …`; another scheme is refused.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let text = value.to_str().map_err(|_| {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the Authorization header is not ASCII")
    })?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the console takes `Authorization: Bearer <token>`",
        )),
    }
}

pub(super) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

/// Whether `Host` names this machine: what a page on another site cannot make a browser send to a loopback
/// listener, even through DNS rebinding.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host
            .rsplit_once(':')
            .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a request comes from a browser, which may send it on another site's behalf: browsers mark every
/// change they send with `Origin` and `Sec-Fetch-*`, and attach cookies. A script on this machine sends none.
fn from_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
        || headers.contains_key("sec-fetch-site")
        || headers.contains_key("sec-fetch-mode")
        || headers.contains_key(header::COOKIE)
}

/// Whether a browser says the request comes from the console's own pages: `Sec-Fetch-Site` when it sends one (it
/// always does for changes, and it is right even where `Origin` is `null`), `Origin` against `Host` otherwise.
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.to_str().unwrap_or_default(), "same-origin" | "none");
    }
    match (headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()), headers.get(header::HOST)) {
        (Some(origin), Some(host)) => {
            origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == host.to_str().ok()
        }
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// Refuses a change a browser may have been made to send by another site: it must come from the console's own
/// origin and carry the anti-forgery token of the console's pages.
fn forged(headers: &HeaderMap, csrf: &str) -> Result<(), ApiError> {
    let refuse = |message: &str| ApiError::new(StatusCode::FORBIDDEN, "csrf", message);
    if !same_origin(headers) {
        return Err(refuse("a change from another site (`Origin`, `Sec-Fetch-Site`) is refused"));
    }
    let presented = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if presented.is_empty() || !bool::from(presented.as_bytes().ct_eq(csrf.as_bytes())) {
        return Err(refuse(
            "a change from a browser needs the console page's anti-forgery token (`X-CSRF-Token`); scripts use \
             `Authorization: Bearer <token>`",
        ));
    }
    Ok(())
}
