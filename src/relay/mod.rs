//! The relay (`engine serve`): receives Signal and Segment events over HTTP, maps them with the engine, stores the
//! OpenAI events durably before acknowledging, and delivers them to OpenAI in batches per pixel, retrying what can
//! succeed later and dead-lettering what never will. This is the only part of the crate that uses tokio and
//! reqwest; the engine it embeds stays synchronous.

mod admin;
pub mod config;
mod console;
mod debug;
mod decode;
mod deliver;
mod enrich;
#[doc(hidden)]
pub mod fuzzing;
mod ingest;
#[doc(hidden)]
pub mod killpoint;
mod match_quality;
mod metrics;
pub mod postgres;
mod registry;
mod server;
pub mod store;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use config::RelayConfig;
use registry::{Pixel, Registry};
use store::{RedbStore, Store};

pub use config::ConfigError;

/// The file in the data directory holding the running relay's console address (`http://127.0.0.1:8089`).
pub const CONSOLE_FILE: &str = "console.url";

/// What every part of a running relay shares.
struct Shared {
    config: RelayConfig,
    store: Arc<dyn Store>,
    pixels: Registry,
    debug: debug::DebugLog,
    metrics: metrics::Metrics,
    /// Match quality of what each pixel delivers, over the last hour, day and week.
    quality: match_quality::Board,
    /// `Some(deadline)` once stopping; delivery tasks started later (a pixel added in the console) watch it too.
    stopping: watch::Receiver<Option<Instant>>,
    /// Delivery tasks, awaited when the relay stops.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    /// Starts delivering to `pixel`; the task ends when the relay stops or the pixel is removed.
    fn spawn_delivery(self: &Arc<Self>, pixel: Arc<Pixel>) {
        let task = tokio::spawn(deliver::run(self.clone(), pixel, self.stopping.clone()));
        self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(task);
    }
}

/// A relay running in this process: its address, and the handle to stop it.
pub struct RelayHandle {
    pub addr: SocketAddr,
    /// The console's address, when it is served.
    pub admin_addr: Option<SocketAddr>,
    /// `Some(deadline)` once stopping: deliveries drain the queue until the deadline.
    shutdown: watch::Sender<Option<Instant>>,
    grace: Duration,
    done: tokio::task::JoinHandle<()>,
}

impl RelayHandle {
    /// Stops accepting; delivery sends what is queued for up to `shutdown_grace_ms` (without waiting for full
    /// batches), then abandons what is still in flight. Whatever was not delivered stays stored for the next start.
    pub async fn stop(self) {
        let _ = self.shutdown.send(Some(Instant::now() + self.grace));
        let _ = self.done.await;
    }

    /// Waits until the relay stops (after SIGTERM or ctrl-c when started by [`serve`]).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Starts a relay: opens the store, compiles the mappings, binds the listener and spawns ingestion and delivery.
/// Must be called inside a tokio runtime.
pub async fn start(config: RelayConfig) -> Result<RelayHandle, ConfigError> {
    // reqwest's TLS needs a process-wide crypto provider; a second relay in the same process finds it installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = open_store(&config).await?;
    let pixels: Vec<Pixel> = console::setups(&config, store.as_ref())?.into_iter().map(Pixel::new).collect();
    let tls = config.tls.as_ref().map(server::tls_acceptor).transpose()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ConfigError(format!("`listen`: cannot listen on {}: {e}", config.listen)))?;
    let addr = listener.local_addr().map_err(|e| ConfigError(format!("`listen`: {e}")))?;
    let admin_listener = match config.admin.listen {
        Some(address) => Some(tokio::net::TcpListener::bind(address).await.map_err(|e| {
            ConfigError(format!(
                "`admin.listen`: cannot listen on {address}: {e} (`admin: {{enabled: false}}` serves no console)"
            ))
        })?),
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(|e| ConfigError(format!("`admin.listen`: {e}")))?;
    let metrics = metrics::Metrics::new(pixels.iter().map(|p| p.name.as_str()));
    let (shutdown_tx, shutdown_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        config,
        store,
        pixels: Registry::new(pixels),
        debug: debug::DebugLog::new(500),
        metrics,
        quality: Default::default(),
        stopping: shutdown_rx.clone(),
        tasks: Default::default(),
    });
    let grace = shared.config.shutdown_grace;
    let (jobs_tx, jobs_rx) = mpsc::channel(1024);
    let writer = writer::start(shared.clone(), jobs_rx)
        .map_err(|e| ConfigError(format!("cannot start the writer's threads: {e}")))?;
    let pruning = tokio::spawn(forget_old_visitors(shared.clone(), shutdown_rx.clone()));
    for pixel in shared.pixels.all() {
        shared.spawn_delivery(pixel);
    }
    let app = ingest::router(shared.clone(), jobs_tx);
    // Tools on this machine (`engine dlq`) find the running relay's console here, whatever port it got.
    let console_file = shared.config.data_dir.join(CONSOLE_FILE);
    if let Some(addr) = admin_addr {
        if let Err(error) = std::fs::write(&console_file, format!("http://{addr}\n")) {
            tracing::warn!(%error, file = %console_file.display(), "cannot note the console's address");
        }
    }
    let admin = admin_listener.map(|listener| {
        let app = admin::router(shared.clone());
        tracing::info!(addr = %admin_addr.expect("bound"), token = shared.config.admin.token.is_some(), "console listening");
        tokio::spawn(server::serve(listener, None, shared.config.http, app, shutdown_rx.clone()))
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, pixels = shared.pixels.all().len(), dry_run = shared.config.dry_run, "relay listening");
    let limits = shared.config.http;
    let server_shutdown = shutdown_rx.clone();
    let done = tokio::spawn(async move {
        server::serve(listener, tls, limits, app, server_shutdown).await;
        // The router held the only senders: the writer drains what was submitted, then ends.
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        loop {
            let tasks = std::mem::take(&mut *shared.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            if tasks.is_empty() {
                break;
            }
            for delivery in tasks {
                let _ = delivery.await;
            }
        }
        // Every task holding the store has ended, so the store is closed once `stop` returns.
        let _ = pruning.await;
        let _ = std::fs::remove_file(&console_file);
        tracing::info!("relay stopped");
    });
    Ok(RelayHandle { addr, admin_addr, shutdown: shutdown_tx, grace, done })
}

/// Opens the store the configuration names: redb in `data_dir`, or a PostgreSQL database (off the async threads:
/// connecting and migrating wait on the network).
async fn open_store(config: &RelayConfig) -> Result<Arc<dyn Store>, ConfigError> {
    match &config.store {
        config::StoreKind::Redb => {
            Ok(Arc::new(RedbStore::open(&config.data_dir).map_err(|e| ConfigError(format!("`data_dir`: {}", e.0)))?))
        }
        config::StoreKind::Postgres { url, pool_size, lease } => {
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|e| ConfigError(format!("`data_dir`: cannot create {}: {e}", config.data_dir.display())))?;
            let url = secrecy::ExposeSecret::expose_secret(url).to_string();
            let (pool_size, lease) = (*pool_size, *lease);
            let store = tokio::task::spawn_blocking(move || postgres::PostgresStore::open(&url, pool_size, lease))
                .await
                .map_err(|e| ConfigError(format!("`store`: {e}")))?
                .map_err(|e| ConfigError(format!("`store`: {}", e.0)))?;
            Ok(Arc::new(store))
        }
    }
}

/// Identity memory forgets visitors not seen for `identity_ttl`, checked at start and every hour, so that the
/// store stays bounded however many visitors come and go.
async fn forget_old_visitors(shared: Arc<Shared>, mut shutdown: watch::Receiver<Option<Instant>>) {
    loop {
        let cutoff = now_ms() - shared.config.identity_ttl.as_millis() as i64;
        let store = shared.store.clone();
        match tokio::task::spawn_blocking(move || store.forget_visitors(cutoff)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(forgotten)) => {
                tracing::info!(visitors = forgotten, "identity memory forgot visitors not seen lately")
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot prune identity memory"),
            Err(error) => tracing::warn!(%error, "the identity pruning task failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = shutdown.wait_for(Option::is_some) => return,
        }
    }
}

/// Runs a relay until SIGTERM or ctrl-c, then drains and returns.
pub async fn serve(config: RelayConfig) -> Result<(), ConfigError> {
    let handle = start(config).await?;
    let shutdown = handle.shutdown.clone();
    let grace = handle.grace;
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutting down: no new events accepted; delivering what is queued within the grace period, the rest stays stored"
        );
        let _ = shutdown.send(Some(Instant::now() + grace));
    });
    handle.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Epoch milliseconds now.
fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}
