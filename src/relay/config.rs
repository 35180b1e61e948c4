//! The relay's configuration (`relay.yaml`): what it listens on, where it stores, who may send to it, and the pixels
//! it delivers to, each with its mapping. Loading checks everything a relay needs before it starts and names the
//! field at fault; secrets are held in a redacting type so they never reach logs or debug output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The default environment variable holding a pixel's OpenAI API key.
pub const DEFAULT_API_KEY_ENV: &str = "OPENAI_ADS_API_KEY";
pub const DEFAULT_ENDPOINT: &str = "https://bzr.openai.com";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8088";

/// `relay.yaml` as written. Single-pixel relays may put the pixel's fields at the top level; several pixels go
/// under `integrations`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    /// Bytes the queue and dead letters may take, e.g. `512MiB`; ingestion answers 503 beyond it.
    disk_cap: Option<String>,
    /// Delivery is simulated: batches go to the log and the debugger instead of OpenAI.
    dry_run: Option<bool>,
    /// Serve `/debug` and `/debug/events`; default: only when listening on a loopback address.
    debug: Option<bool>,
    /// Days after which identity memory forgets a visitor it has not seen since (default 90).
    identity_ttl_days: Option<u64>,
    /// On SIGTERM, how long delivery keeps sending what is queued before the relay exits (default 5000).
    shutdown_grace_ms: Option<u64>,
    #[serde(default)]
    ingestion: IngestionFile,
    #[serde(default)]
    batch: BatchFile,
    #[serde(default)]
    retry: RetryFile,
    #[serde(default)]
    http: HttpFile,
    /// Serve HTTPS: PEM files of the certificate chain and its private key.
    tls: Option<TlsFile>,
    /// The console and its JSON API, on a listener of their own.
    #[serde(default)]
    admin: AdminFile,
    /// Where the queue, dead letters, identity memory and the console's settings are kept.
    #[serde(default)]
    store: StoreFile,
    // The one pixel of a single-pixel file, written at the top level. Spelled out rather than
    // `#[serde(flatten)]`: flattening buffers the document and errors would lose their line.
    name: Option<String>,
    pixel_id: Option<String>,
    api_key: Option<String>,
    api_key_env: Option<String>,
    validate_only: Option<bool>,
    consent_category: Option<String>,
    mapping: Option<PathBuf>,
    params: Option<Map<String, Value>>,
    endpoint: Option<String>,
    #[serde(default)]
    integrations: Vec<IntegrationFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntegrationFile {
    name: Option<String>,
    pixel_id: Option<String>,
    api_key: Option<String>,
    api_key_env: Option<String>,
    validate_only: Option<bool>,
    consent_category: Option<String>,
    mapping: Option<PathBuf>,
    params: Option<Map<String, Value>>,
    endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestionFile {
    #[serde(default)]
    keys: Vec<KeyFile>,
    /// Seconds a signed `/v1/events` request stays valid.
    replay_window_secs: Option<u64>,
    max_event_bytes: Option<usize>,
    max_batch_bytes: Option<usize>,
    /// Requests per second and key; bursts up to twice that.
    rate_limit: Option<u32>,
    /// Peers (CIDRs such as `10.0.0.0/8` or single addresses) whose `X-Forwarded-For` / `Forwarded` headers are
    /// believed; from anyone else those headers are ignored and the connection's address is the visitor's.
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    /// `redb` (default: one file in `data_dir`) or `postgres` (shared by a fleet of relays).
    kind: Option<String>,
    /// For `postgres`: the environment variable holding the connection URL.
    url_env: Option<String>,
    /// For `postgres`: connections each relay keeps (default 8).
    pool_size: Option<usize>,
    /// For `postgres`: how long a relay holds a batch it is delivering before another may take it (default:
    /// twice `retry.timeout_ms` plus 10 s).
    lease_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminFile {
    /// `false` serves no console.
    enabled: Option<bool>,
    /// Default 127.0.0.1:8089 (a port the system picks when `listen` asks for one with port 0).
    listen: Option<String>,
    /// The environment variable holding the token the console and its API ask for.
    token_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    header_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    name: Option<String>,
    key: Option<String>,
    key_env: Option<String>,
    hmac_secret: Option<String>,
    hmac_secret_env: Option<String>,
    /// Origins web pages may send with this key from: `https://shop.example.com`, `https://*.example.com`.
    #[serde(default)]
    allowed_origins: Vec<String>,
    /// A key published in web pages: it only ingests, and only from its allowed origins.
    browser: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchFile {
    max_events: Option<usize>,
    linger_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    timeout_ms: Option<u64>,
    /// How often a pixel paused on an authentication error tries again.
    auth_probe_ms: Option<u64>,
}

/// A validated relay configuration.
#[derive(Debug)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub disk_cap_bytes: u64,
    pub dry_run: bool,
    /// `/debug` is served (personal data masked, but the mapped payloads and OpenAI's answers are visible).
    pub debug: bool,
    /// A visitor not seen for this long is forgotten by identity memory.
    pub identity_ttl: Duration,
    /// On stop, how long delivery keeps sending what is queued before abandoning what is in flight.
    pub shutdown_grace: Duration,
    pub ingestion: Ingestion,
    pub batch: Batching,
    pub retry: Retry,
    pub http: Http,
    /// HTTPS on the listener.
    pub tls: Option<Tls>,
    pub admin: Admin,
    pub store: StoreKind,
    pub integrations: Vec<Integration>,
    /// Started without a configuration file: a local trial.
    pub trial: bool,
}

#[derive(Debug)]
pub struct Ingestion {
    /// No key configured: every request is accepted (only allowed on a loopback address).
    pub keys: Vec<IngestionKey>,
    pub replay_window: Duration,
    pub max_event_bytes: usize,
    pub max_batch_bytes: usize,
    pub rate_limit: u32,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Ingestion {
    /// Whether a page at `origin` may send to the relay at all (a CORS preflight carries no key): with keys, some
    /// key must allow it; without keys (a loopback trial), every origin may.
    pub fn any_key_allows(&self, origin: &str) -> bool {
        self.keys.is_empty() || self.keys.iter().any(|k| k.allows(origin))
    }
}

/// The listener's limits: how long a client may take and how many may be connected at once.
#[derive(Debug, Clone, Copy)]
pub struct Http {
    /// The whole request head (line and headers) must arrive within this; the same bound applies to a kept-alive
    /// connection waiting for its next request.
    pub header_timeout: Duration,
    /// The whole body must arrive within this after the head.
    pub body_timeout: Duration,
    /// A connection that moves no byte for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Where the relay keeps its state.
#[derive(Debug, Clone)]
pub enum StoreKind {
    /// One redb file in `data_dir`: a single relay.
    Redb,
    /// A PostgreSQL database a fleet of relays shares.
    Postgres {
        /// The connection URL (it may hold a password).
        url: SecretString,
        pool_size: usize,
        lease: Duration,
    },
}

/// The console's listener and the token it asks for.
#[derive(Debug, Clone)]
pub struct Admin {
    /// `None`: no console.
    pub listen: Option<SocketAddr>,
    /// Without a token the console answers only connections from loopback addresses.
    pub token: Option<SecretString>,
}

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8089";

#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
pub struct IngestionKey {
    pub name: String,
    pub key: SecretString,
    pub hmac_secret: Option<SecretString>,
    pub allowed_origins: Vec<OriginPattern>,
    /// Published in web pages: ingests only from its allowed origins, never through the signed route.
    pub browser: bool,
}

impl IngestionKey {
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|pattern| pattern.matches(origin))
    }
}

/// An allowed origin: exact (`https://shop.example.com`, `http://localhost:3000`) or with a wildcard for any
/// subdomain (`https://*.example.com` matches `https://www.example.com` and `https://a.b.example.com`, not
/// `https://example.com`). Compared without regard to case, as origins are.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginPattern {
    scheme: String,
    /// `Some(".example.com")` for a wildcard.
    wildcard_suffix: Option<String>,
    /// The exact host, or empty for a wildcard.
    host: String,
    port: Option<u16>,
}

impl OriginPattern {
    pub fn parse(text: &str) -> Result<OriginPattern, String> {
        let text = text.trim().to_ascii_lowercase();
        let (scheme, rest) = text
            .split_once("://")
            .filter(|(scheme, _)| *scheme == "http" || *scheme == "https")
            .ok_or_else(|| format!("{text:?} is not an origin such as https://shop.example.com"))?;
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(format!("{text:?} is not an origin: scheme, host and port only, no path"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| format!("{text:?}: the port is not a number"))?;
        let (wildcard_suffix, host) = match host.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') => (Some(format!(".{domain}")), String::new()),
            _ if host.contains('*') => {
                return Err(format!("{text:?}: a wildcard stands only for subdomains, as in https://*.example.com"))
            }
            _ => (None, host.to_string()),
        };
        Ok(OriginPattern { scheme: scheme.to_string(), wildcard_suffix, host, port })
    }

    /// Whether the `Origin` a browser sent is allowed by this pattern.
    pub fn matches(&self, origin: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        let Some((scheme, rest)) = origin.split_once("://") else { return false };
        if scheme != self.scheme || rest.contains(['/', '@']) {
            return false;
        }
        let Some((host, port)) = split_host_port(rest) else { return false };
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        if port.unwrap_or(default_port) != self.port.unwrap_or(default_port) {
            return false;
        }
        match &self.wildcard_suffix {
            Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            None => host == self.host,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub max_events: usize,
    pub linger: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
    pub auth_probe: Duration,
}

#[derive(Debug, Clone)]
pub struct Integration {
    pub name: String,
    pub pixel_id: String,
    /// `None` only in dry-run mode, where nothing is sent.
    pub api_key: Option<SecretString>,
    pub validate_only: bool,
    /// The mapping file; `None` is the embedded default preset.
    pub mapping: Option<PathBuf>,
    /// Parameters for the mapping, `consent_category` included.
    pub params: Map<String, Value>,
    pub endpoint: String,
}

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl RelayConfig {
    /// Reads and validates `path`; `env` looks up environment variables (injected so tests need not set them).
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<RelayConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&path.display().to_string(), &text, path.parent().unwrap_or(Path::new(".")), env)
    }

    /// Reads and validates configuration `text`, named `name` in errors, with relative paths (mappings, TLS files,
    /// the data directory) taken from `base`.
    pub fn parse(
        name: &str,
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RelayConfig, ConfigError> {
        let file: File = crate::yaml::from_str(text).map_err(|e| ConfigError(e.in_file(name)))?;
        build(file, base, env, false).map_err(|ConfigError(message)| ConfigError(format!("{name}: {message}")))
    }

    /// Only the data directory of `path`, for tools that open the store without running the relay.
    pub fn data_dir_of(path: &Path) -> Result<PathBuf, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let file: File =
            crate::yaml::from_str(&text).map_err(|e| ConfigError(e.in_file(&path.display().to_string())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(file.data_dir.map(|d| base.join(d)).unwrap_or_else(|| base.join("relay-data")))
    }

    /// Only the store of `path` (and the environment variable it names), for tools that open the store without
    /// running the relay.
    pub fn store_of(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<StoreKind, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let file: File =
            crate::yaml::from_str(&text).map_err(|e| ConfigError(e.in_file(&path.display().to_string())))?;
        store(file.store, &file.retry, env)
    }

    /// Only the console's token of `path` (from the variable `admin.token_env` names), for tools that talk to a
    /// running relay's console without needing the rest of its settings (API keys) at hand.
    pub fn console_token_of(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<SecretString>, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let file: File =
            crate::yaml::from_str(&text).map_err(|e| ConfigError(e.in_file(&path.display().to_string())))?;
        match file.admin.token_env {
            None => Ok(None),
            Some(variable) => env(&variable).map(|t| Some(SecretString::from(t.trim().to_string()))).ok_or_else(|| {
                ConfigError(format!("`admin.token_env`: the environment variable {variable} is not set"))
            }),
        }
    }

    /// The configuration of `engine serve` without a file: a local trial on 127.0.0.1, delivering nowhere.
    pub fn trial(data_dir: PathBuf) -> RelayConfig {
        let file = File { data_dir: Some(data_dir), dry_run: Some(true), ..File::default() };
        build(file, Path::new("."), &|_| None, true).expect("the trial configuration is valid")
    }
}

fn build(
    file: File,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    trial: bool,
) -> Result<RelayConfig, ConfigError> {
    let dry_run = file.dry_run.unwrap_or(false) || trial;
    let listen_text = file.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen: SocketAddr = listen_text
        .parse()
        .map_err(|_| ConfigError(format!("`listen`: {listen_text:?} is not an address such as 127.0.0.1:8088")))?;
    let data_dir = file.data_dir.map(|d| base.join(d)).unwrap_or_else(|| base.join("relay-data"));
    let disk_cap_bytes = match &file.disk_cap {
        Some(text) => parse_bytes(text).ok_or_else(|| {
            ConfigError(format!("`disk_cap`: {text:?} is not a size such as 512MiB, 2GiB or 1000000"))
        })?,
        None => 1 << 30,
    };
    let ingestion = ingestion(file.ingestion, env)?;
    if ingestion.keys.is_empty() && !listen.ip().is_loopback() {
        return Err(ConfigError(format!(
            "`ingestion.keys`: none configured, but `listen` ({listen}) is not a loopback address; \
             add a key so that strangers cannot send events"
        )));
    }
    let batch = Batching {
        max_events: file.batch.max_events.unwrap_or(1000),
        linger: Duration::from_millis(file.batch.linger_ms.unwrap_or(1000)),
    };
    if !(1..=1000).contains(&batch.max_events) {
        return Err(ConfigError(format!(
            "`batch.max_events`: {} is outside 1..=1000 (OpenAI takes at most 1,000 events per request)",
            batch.max_events
        )));
    }
    let retry = Retry {
        initial_backoff: Duration::from_millis(file.retry.initial_backoff_ms.unwrap_or(500)),
        max_backoff: Duration::from_millis(file.retry.max_backoff_ms.unwrap_or(60_000)),
        timeout: Duration::from_millis(file.retry.timeout_ms.unwrap_or(30_000)),
        auth_probe: Duration::from_millis(file.retry.auth_probe_ms.unwrap_or(60_000)),
    };
    if retry.initial_backoff.is_zero() || retry.max_backoff < retry.initial_backoff {
        return Err(ConfigError("`retry`: initial_backoff_ms must be positive and at most max_backoff_ms".to_string()));
    }
    let http = Http {
        header_timeout: Duration::from_millis(file.http.header_timeout_ms.unwrap_or(10_000)),
        body_timeout: Duration::from_millis(file.http.body_timeout_ms.unwrap_or(30_000)),
        idle_timeout: Duration::from_millis(file.http.idle_timeout_ms.unwrap_or(60_000)),
        max_connections: file.http.max_connections.unwrap_or(1024),
    };
    if http.header_timeout.is_zero() || http.body_timeout.is_zero() || http.idle_timeout.is_zero() {
        return Err(ConfigError("`http`: timeouts must be positive".to_string()));
    }
    if http.max_connections == 0 {
        return Err(ConfigError("`http.max_connections`: must be at least 1".to_string()));
    }
    let tls = match file.tls {
        None => None,
        Some(TlsFile { cert: Some(cert), key: Some(key) }) => Some(Tls { cert: base.join(cert), key: base.join(key) }),
        Some(TlsFile { cert: None, .. }) => {
            return Err(ConfigError("`tls.cert` is missing: the PEM file of the certificate chain".to_string()))
        }
        Some(TlsFile { key: None, .. }) => {
            return Err(ConfigError("`tls.key` is missing: the PEM file of the certificate's private key".to_string()))
        }
    };
    let admin = admin(file.admin, listen, env)?;
    let store = store(file.store, &file.retry, env)?;
    let mut files = file.integrations;
    let from_list = !files.is_empty();
    let top_level = IntegrationFile {
        name: file.name,
        pixel_id: file.pixel_id,
        api_key: file.api_key,
        api_key_env: file.api_key_env,
        validate_only: file.validate_only,
        consent_category: file.consent_category,
        mapping: file.mapping,
        params: file.params,
        endpoint: file.endpoint,
    };
    let has_top_level = top_level.pixel_id.is_some() || top_level.api_key.is_some() || top_level.mapping.is_some();
    if has_top_level && !files.is_empty() {
        return Err(ConfigError(
            "`pixel_id` at the top level and `integrations` are both given: put every pixel under `integrations`"
                .to_string(),
        ));
    }
    if files.is_empty() {
        if trial || (dry_run && top_level.pixel_id.is_none()) {
            files.push(IntegrationFile { pixel_id: Some("trial".to_string()), ..top_level });
        } else {
            files.push(top_level);
        }
    }
    let mut integrations = Vec::new();
    for (index, integration) in files.into_iter().enumerate() {
        let field = |name: &str| if from_list { format!("integrations[{index}].{name}") } else { name.to_string() };
        let built = integration_config(integration, index, dry_run, base, env, &field)?;
        if integrations.iter().any(|i: &Integration| i.name == built.name) {
            return Err(ConfigError(format!("`{}`: {:?} is used twice", field("name"), built.name)));
        }
        integrations.push(built);
    }
    let debug = file.debug.unwrap_or(listen.ip().is_loopback());
    let ttl_days = file.identity_ttl_days.unwrap_or(90);
    if ttl_days == 0 {
        return Err(ConfigError("`identity_ttl_days`: must be at least 1".to_string()));
    }
    let identity_ttl = Duration::from_secs(ttl_days.saturating_mul(86_400));
    Ok(RelayConfig {
        listen,
        data_dir,
        disk_cap_bytes,
        dry_run,
        debug,
        identity_ttl,
        shutdown_grace: Duration::from_millis(file.shutdown_grace_ms.unwrap_or(5000)),
        ingestion,
        batch,
        retry,
        http,
        tls,
        admin,
        store,
        integrations,
        trial,
    })
}

fn store(file: StoreFile, retry: &RetryFile, env: &dyn Fn(&str) -> Option<String>) -> Result<StoreKind, ConfigError> {
    match file.kind.as_deref().unwrap_or("redb") {
        "redb" => {
            if file.url_env.is_some() || file.pool_size.is_some() || file.lease_ms.is_some() {
                return Err(ConfigError(
                    "`store`: `url_env`, `pool_size` and `lease_ms` are settings of `kind: postgres`".to_string(),
                ));
            }
            Ok(StoreKind::Redb)
        }
        "postgres" => {
            let variable = file.url_env.ok_or_else(|| {
                ConfigError(
                    "`store.url_env` is missing: the environment variable holding the PostgreSQL URL".to_string(),
                )
            })?;
            let url = env(&variable).filter(|u| !u.trim().is_empty()).ok_or_else(|| {
                ConfigError(format!("`store.url_env`: the environment variable {variable} is not set"))
            })?;
            let pool_size = file.pool_size.unwrap_or(8);
            if pool_size == 0 {
                return Err(ConfigError("`store.pool_size`: must be at least 1".to_string()));
            }
            let timeout = retry.timeout_ms.unwrap_or(30_000);
            let lease = Duration::from_millis(file.lease_ms.unwrap_or(timeout * 2 + 10_000));
            if lease < Duration::from_millis(timeout) {
                return Err(ConfigError(format!(
                    "`store.lease_ms`: {} ms is shorter than a request to OpenAI may take (`retry.timeout_ms`, {timeout} \
                     ms): another relay would send the same batch while the first is still waiting",
                    lease.as_millis()
                )));
            }
            Ok(StoreKind::Postgres { url: SecretString::from(url.trim().to_string()), pool_size, lease })
        }
        other => Err(ConfigError(format!("`store.kind`: {other:?} is not `redb` or `postgres`"))),
    }
}

fn admin(file: AdminFile, listen: SocketAddr, env: &dyn Fn(&str) -> Option<String>) -> Result<Admin, ConfigError> {
    if file.enabled == Some(false) {
        return Ok(Admin { listen: None, token: None });
    }
    let address = match &file.listen {
        Some(text) => text.parse::<SocketAddr>().map_err(|_| {
            ConfigError(format!("`admin.listen`: {text:?} is not an address such as {DEFAULT_ADMIN_LISTEN}"))
        })?,
        None if listen.port() == 0 => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0),
        None => DEFAULT_ADMIN_LISTEN.parse().expect("the default admin address parses"),
    };
    let token = match file.token_env {
        None => None,
        Some(variable) => match env(&variable) {
            Some(token) if token.trim().len() >= 16 => Some(SecretString::from(token.trim().to_string())),
            Some(_) => {
                return Err(ConfigError(format!(
                    "`admin.token_env`: the token in {variable} is shorter than 16 characters"
                )))
            }
            None => {
                return Err(ConfigError(format!("`admin.token_env`: the environment variable {variable} is not set")))
            }
        },
    };
    if token.is_none() && !address.ip().is_loopback() {
        return Err(ConfigError(format!(
            "`admin.token_env`: the console listens on {address}, which is not a loopback address, but no token is \
             set; set one so that strangers cannot change the relay (or listen on 127.0.0.1)"
        )));
    }
    Ok(Admin { listen: Some(address), token })
}

fn integration_config(
    file: IntegrationFile,
    index: usize,
    dry_run: bool,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    field: &dyn Fn(&str) -> String,
) -> Result<Integration, ConfigError> {
    let pixel_id = file.pixel_id.filter(|p| !p.trim().is_empty()).ok_or_else(|| {
        ConfigError(format!("`{}` is missing: the OpenAI pixel id events are sent to (`?pid=…`)", field("pixel_id")))
    })?;
    let name = file.name.unwrap_or_else(|| if index == 0 { "default".to_string() } else { pixel_id.clone() });
    let api_key = match (file.api_key, file.api_key_env) {
        (Some(_), Some(_)) => {
            return Err(ConfigError(format!("`{}` and `{}`: give one of them", field("api_key"), field("api_key_env"))))
        }
        (Some(key), None) => Some(SecretString::from(key)),
        (None, variable) => {
            let variable = variable.unwrap_or_else(|| DEFAULT_API_KEY_ENV.to_string());
            match env(&variable) {
                Some(key) if !key.trim().is_empty() => Some(SecretString::from(key)),
                _ if dry_run => None,
                _ => {
                    return Err(ConfigError(format!(
                        "`{}`: the environment variable {variable} is not set; it holds the OpenAI API key of pixel \
                         {pixel_id} (or set `dry_run: true` to try the relay without sending)",
                        field("api_key_env")
                    )))
                }
            }
        }
    };
    let endpoint = file.endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    let endpoint = endpoint.trim_end_matches('/').to_string();
    if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
        return Err(ConfigError(format!("`{}`: {endpoint:?} is not an http(s) URL", field("endpoint"))));
    }
    let mut params = file.params.unwrap_or_default();
    if let Some(category) = file.consent_category {
        params.insert("consent_category".to_string(), Value::String(category));
    }
    Ok(Integration {
        name,
        pixel_id,
        api_key,
        validate_only: file.validate_only.unwrap_or(false),
        mapping: file.mapping.map(|m| base.join(m)),
        params,
        endpoint,
    })
}

fn ingestion(file: IngestionFile, env: &dyn Fn(&str) -> Option<String>) -> Result<Ingestion, ConfigError> {
    let mut keys = Vec::new();
    for (index, key) in file.keys.into_iter().enumerate() {
        let field = |name: &str| format!("ingestion.keys[{index}].{name}");
        let secret = |value: Option<String>,
                      variable: Option<String>,
                      name: &str|
         -> Result<Option<SecretString>, ConfigError> {
            match (value, variable) {
                (Some(_), Some(_)) => {
                    Err(ConfigError(format!("`{}` and `{}_env`: give one of them", field(name), field(name))))
                }
                (Some(value), None) => Ok(Some(SecretString::from(value))),
                (None, Some(variable)) => match env(&variable) {
                    Some(value) if !value.is_empty() => Ok(Some(SecretString::from(value))),
                    _ => Err(ConfigError(format!(
                        "`{}_env`: the environment variable {variable} is not set",
                        field(name)
                    ))),
                },
                (None, None) => Ok(None),
            }
        };
        let value = secret(key.key, key.key_env, "key")?
            .ok_or_else(|| ConfigError(format!("`{}` is missing (or `{}_env`)", field("key"), field("key"))))?;
        if value.expose_secret().len() < 8 {
            return Err(ConfigError(format!("`{}`: a key must be at least 8 characters", field("key"))));
        }
        let hmac_secret = secret(key.hmac_secret, key.hmac_secret_env, "hmac_secret")?;
        let mut allowed_origins = Vec::new();
        for (position, text) in key.allowed_origins.iter().enumerate() {
            let pattern = OriginPattern::parse(text)
                .map_err(|message| ConfigError(format!("`{}[{position}]`: {message}", field("allowed_origins"))))?;
            allowed_origins.push(pattern);
        }
        let browser = key.browser.unwrap_or(false);
        if browser && allowed_origins.is_empty() {
            return Err(ConfigError(format!(
                "`{}`: a browser key needs `allowed_origins`, the pages that may send with it",
                field("browser")
            )));
        }
        if browser && hmac_secret.is_some() {
            return Err(ConfigError(format!(
                "`{}`: a browser key is public, so it cannot sign server requests; give the secret to a server key",
                field("hmac_secret")
            )));
        }
        keys.push(IngestionKey {
            name: key.name.unwrap_or_else(|| format!("key{index}")),
            key: value,
            hmac_secret,
            allowed_origins,
            browser,
        });
    }
    let mut trusted_proxies = Vec::new();
    for (index, text) in file.trusted_proxies.iter().enumerate() {
        let text = text.trim();
        let network = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                ConfigError(format!(
                    "`ingestion.trusted_proxies[{index}]`: {text:?} is not an address or CIDR such as 10.0.0.0/8"
                ))
            })?;
        trusted_proxies.push(network);
    }
    Ok(Ingestion {
        keys,
        replay_window: Duration::from_secs(file.replay_window_secs.unwrap_or(300)),
        max_event_bytes: file.max_event_bytes.unwrap_or(32 * 1024),
        max_batch_bytes: file.max_batch_bytes.unwrap_or(500 * 1024),
        rate_limit: file.rate_limit.unwrap_or(1000).max(1),
        trusted_proxies,
    })
}

/// `host`, `host:port`, `[::1]`, `[::1]:port`; `None` when the port is not a number.
fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let colon = match text.strip_prefix('[') {
        Some(inner) => inner.find(']').map(|end| end + 2).filter(|&after| after < text.len()),
        None => text.rfind(':'),
    };
    match colon {
        Some(at) if text[at..].starts_with(':') => Some((&text[..at], Some(text[at + 1..].parse().ok()?))),
        Some(_) => None,
        None => Some((text, None)),
    }
}

/// `512MiB`, `2GiB`, `100MB`, `1000000`.
fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier).filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<RelayConfig, String> {
        let dir = std::env::temp_dir().join(format!("engine-config-{}-{}", std::process::id(), yaml.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.yaml");
        std::fs::write(&path, yaml).unwrap();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let result = RelayConfig::load(&path, &|name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()));
        std::fs::remove_dir_all(&dir).unwrap();
        result.map_err(|e| e.0)
    }

    #[test]
    fn a_single_pixel_at_the_top_level_with_the_key_from_the_environment() {
        let config =
            load("pixel_id: px_1\nconsent_category: ads\n", &[("OPENAI_ADS_API_KEY", "sk-secret-value")]).unwrap();
        let pixel = &config.integrations[0];
        assert_eq!((pixel.name.as_str(), pixel.pixel_id.as_str()), ("default", "px_1"));
        assert_eq!(pixel.params["consent_category"], "ads");
        assert_eq!(pixel.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(config.batch.max_events, 1000);
        assert!(!format!("{config:?}").contains("sk-secret-value"), "the key never shows in debug output");
    }

    #[test]
    fn every_problem_names_its_field() {
        let cases = [
            ("pixel_id: px\n", "`api_key_env`: the environment variable OPENAI_ADS_API_KEY is not set"),
            ("api_key: k\n", "`pixel_id` is missing"),
            ("pixel_id: px\napi_key: k\nbatch: {max_events: 5000}\n", "`batch.max_events`: 5000 is outside 1..=1000"),
            ("pixel_id: px\napi_key: k\nlisten: nowhere\n", "`listen`: \"nowhere\" is not an address"),
            ("pixel_id: px\napi_key: k\ndisk_cap: lots\n", "`disk_cap`: \"lots\" is not a size"),
            ("pixel_id: px\napi_key: k\npixle: 1\n", "3:1: unknown field `pixle`"),
            ("integrations:\n  - pixel_id: a\n    api_key: k\n  - pixel_id: b\n", "`integrations[1].api_key_env`"),
            ("pixel_id: px\napi_key: k\nlisten: 0.0.0.0:80\n", "`ingestion.keys`: none configured"),
            (
                "pixel_id: px\napi_key: k\ningestion: {keys: [{key: short}]}\n",
                "`ingestion.keys[0].key`: a key must be at least 8",
            ),
            (
                "pixel_id: px\napi_key: k\ningestion: {keys: [{key: public-key, browser: true}]}\n",
                "`ingestion.keys[0].browser`: a browser key needs `allowed_origins`",
            ),
            (
                "pixel_id: px\napi_key: k\ningestion: {keys: [{key: public-key, allowed_origins: [shop.com]}]}\n",
                "`ingestion.keys[0].allowed_origins[0]`",
            ),
            ("pixel_id: px\napi_key: k\ningestion: {trusted_proxies: [10.0.0/8]}\n", "trusted_proxies[0]"),
            ("pixel_id: px\napi_key: k\ntls: {cert: c.pem}\n", "`tls.key` is missing"),
            ("pixel_id: px\napi_key: k\nhttp: {max_connections: 0}\n", "`http.max_connections`"),
        ];
        for (yaml, expected) in cases {
            let error = load(yaml, &[]).expect_err(yaml);
            assert!(error.contains(expected), "{yaml:?}: expected {expected:?} in {error:?}");
        }
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain_wildcard() {
        let exact = OriginPattern::parse("https://Shop.Example.com").unwrap();
        assert!(exact.matches("https://shop.example.com"));
        assert!(exact.matches("https://shop.example.com:443"), "the default port is the same origin");
        assert!(!exact.matches("http://shop.example.com"), "another scheme is another origin");
        assert!(!exact.matches("https://shop.example.com.evil.net"));
        assert!(!exact.matches("https://shop.example.com:8443"));
        assert!(!exact.matches("null"));
        let wild = OriginPattern::parse("https://*.example.com").unwrap();
        assert!(wild.matches("https://www.example.com") && wild.matches("https://a.b.example.com"));
        assert!(!wild.matches("https://example.com"), "the wildcard stands for a subdomain");
        assert!(!wild.matches("https://evilexample.com"));
        let local = OriginPattern::parse("http://127.0.0.1:3000").unwrap();
        assert!(local.matches("http://127.0.0.1:3000") && !local.matches("http://127.0.0.1:3001"));
        for bad in ["shop.example.com", "https://shop.example.com/path", "https://*", "https://a.*.com", "ftp://x"] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("2 GB"), Some(2_000_000_000));
        assert_eq!(parse_bytes("0"), None);
        assert_eq!(parse_bytes("12XB"), None);
    }
}
