//! `engine serve` and `engine dlq`: starting the relay with its logging and runtime, and handling its dead letters.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use signal_engine::relay::config::{RelayConfig, StoreKind};
use signal_engine::relay::postgres::PostgresStore;
use signal_engine::relay::store::{DeadLetter, Pending, RedbStore, Store};

use super::{usage, Failure};

#[derive(clap::Args)]
pub(super) struct ServeArgs {
    /// The relay's configuration (see README "Running the relay"); without it, a local trial on 127.0.0.1:8088
    /// in dry-run mode: events are mapped and stored, and batches go to the log and /debug instead of OpenAI.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Logs as JSON lines instead of text.
    #[arg(long)]
    json_logs: bool,
}

#[derive(clap::Args)]
pub(super) struct DlqArgs {
    #[command(subcommand)]
    action: DlqAction,
    /// The relay's configuration, for its `data_dir` (and its console's token while it runs).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The data directory, instead of `--config`.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum DlqAction {
    /// One line per dead letter: sequence number, pixel, event id and type, reason.
    List {
        #[arg(long)]
        pixel: Option<String>,
    },
    /// A dead letter in full: the OpenAI event and why it was refused, as JSON.
    Show { seq: u64 },
    /// Puts dead letters back in their pixel's queue (all of them, one pixel's, or the given sequence numbers).
    Replay {
        #[arg(long)]
        pixel: Option<String>,
        seqs: Vec<u64>,
    },
    /// Deletes dead letters for good: the given sequence numbers, or with `--all` every one (of `--pixel`).
    Purge {
        #[arg(long)]
        pixel: Option<String>,
        #[arg(long)]
        all: bool,
        seqs: Vec<u64>,
    },
}

pub(super) fn serve(args: ServeArgs, color: super::Color) -> Result<u8, Failure> {
    init_logging(args.json_logs, color);
    let config = match &args.config {
        Some(path) => {
            RelayConfig::load(path, &|name| std::env::var(name).ok()).map_err(|e| Failure { code: 2, message: e.0 })?
        }
        None => {
            let config = RelayConfig::trial(PathBuf::from("relay-data"));
            tracing::info!(
                "no --config: a local trial on http://{} in dry-run mode (nothing is sent to OpenAI); open \
                 http://{}/debug to watch events, and POST Signal events to /v1/t, /v1/p, /v1/i or /v1/batch",
                config.listen,
                config.listen
            );
            config
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| usage(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(signal_engine::relay::serve(config)).map_err(|e| Failure { code: 2, message: e.0 })?;
    Ok(0)
}

fn init_logging(json: bool, color: super::Color) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENGINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = color.enabled(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

pub(super) fn dlq(args: DlqArgs) -> Result<u8, Failure> {
    let data_dir = match (&args.data_dir, &args.config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(config)) => RelayConfig::data_dir_of(config).map_err(|e| Failure { code: 2, message: e.0 })?,
        (None, None) => PathBuf::from("relay-data"),
    };
    let letters = Letters::open(&data_dir, args.config.as_deref())?;
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| usage(format!("cannot write stdout: {e}"));
    match args.action {
        DlqAction::List { pixel } => {
            let letters = letters.list(pixel.as_deref())?;
            for letter in &letters {
                writeln!(out, "{}", line(letter)).map_err(io)?;
            }
            eprintln!("{} dead letter{}", letters.len(), if letters.len() == 1 { "" } else { "s" });
        }
        DlqAction::Show { seq } => {
            let all = letters.list(None)?;
            let Some(letter) = all.iter().find(|l| l.seq == seq) else {
                return Err(usage(format!("no dead letter {seq}; `engine dlq list` shows them")));
            };
            let event: serde_json::Value = serde_json::from_str(&letter.pending.event).unwrap_or_default();
            let record = json!({
                "seq": letter.seq, "pixel": letter.pixel, "reason": letter.reason, "detail": letter.detail,
                "dead_ms": letter.dead_ms, "received_ms": letter.pending.received_ms, "event": event,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&record).unwrap_or_default()).map_err(io)?;
        }
        DlqAction::Replay { pixel, seqs } => {
            let chosen = (!seqs.is_empty()).then_some(seqs.as_slice());
            let count = letters.change(Change::Replay, pixel.as_deref(), chosen)?;
            let when = if letters.is_live() {
                "the running relay sends them now"
            } else {
                "the relay sends them when it runs"
            };
            writeln!(out, "{count} dead letter(s) put back in the queue; {when}").map_err(io)?;
        }
        DlqAction::Purge { pixel, all, seqs } => {
            if seqs.is_empty() && !all {
                return Err(usage("name the dead letters to purge, or give --all"));
            }
            let chosen = (!all).then_some(seqs.as_slice());
            let count = letters.change(Change::Purge, pixel.as_deref(), chosen)?;
            writeln!(out, "{count} dead letter(s) purged").map_err(io)?;
        }
    }
    Ok(0)
}

/// Where `engine dlq` finds the dead letters: in the store, or, while a relay runs and holds the store, through
/// that relay's console (its address is in the data directory; its token, if it has one, in the variable the
/// configuration's `admin.token_env` names).
enum Letters {
    Store(Box<dyn Store>),
    Console { url: String, token: Option<String>, runtime: tokio::runtime::Runtime },
}

#[derive(Clone, Copy)]
enum Change {
    Replay,
    Purge,
}

impl Letters {
    fn open(data_dir: &Path, config: Option<&Path>) -> Result<Letters, Failure> {
        if let Some(path) = config {
            let kind = RelayConfig::store_of(path, &|name| std::env::var(name).ok())
                .map_err(|e| Failure { code: 2, message: e.0 })?;
            if let StoreKind::Postgres { url, lease, .. } = kind {
                // A shared store: any number of relays and tools use it at once.
                let url = secrecy::ExposeSecret::expose_secret(&url).to_string();
                let store = PostgresStore::open(&url, 2, lease).map_err(storage)?;
                return Ok(Letters::Store(Box::new(store)));
            }
        }
        if !data_dir.join(RedbStore::FILE).is_file() {
            return Err(usage(format!("no relay store in {}", data_dir.display())));
        }
        let held = match RedbStore::open(data_dir) {
            Ok(store) => return Ok(Letters::Store(Box::new(store))),
            Err(error) => error,
        };
        // Only a store another process holds sends the tool to a console; a damaged one is reported as it is.
        if !held.0.contains("open in another process") {
            return Err(usage(held.0));
        }
        let noted = std::fs::read_to_string(data_dir.join(signal_engine::relay::CONSOLE_FILE)).unwrap_or_default();
        let url = noted.trim().to_string();
        if url.is_empty() {
            return Err(usage(format!(
                "{} (a running relay holds the store and serves no console: stop it first, or enable `admin`)",
                held.0
            )));
        }
        let token = match config {
            Some(path) => RelayConfig::console_token_of(path, &|name| std::env::var(name).ok())
                .map_err(|e| Failure { code: 2, message: e.0 })?
                .map(|t| secrecy::ExposeSecret::expose_secret(&t).to_string()),
            None => None,
        };
        // reqwest's TLS needs a process-wide crypto provider, even for the plain-HTTP console.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| usage(format!("cannot start the async runtime: {e}")))?;
        eprintln!("the relay is running: going through its console at {url}");
        Ok(Letters::Console { url, token, runtime })
    }

    fn is_live(&self) -> bool {
        matches!(self, Letters::Console { .. })
    }

    /// One console request: its JSON answer, or the console's own message when it refuses.
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, Failure> {
        let Letters::Console { url, token, runtime } = self else {
            return Err(usage("no console to ask: the store is open"));
        };
        runtime.block_on(async {
            let mut request = reqwest::Client::new().request(method, format!("{url}{path}"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.header("content-type", "application/json").body(body.to_string());
            }
            let response =
                request.send().await.map_err(|e| usage(format!("the console at {url} does not answer: {e}")))?;
            let status = response.status();
            let answer: serde_json::Value = response.json().await.unwrap_or_default();
            if !status.is_success() {
                let message = answer["message"].as_str().unwrap_or("no message");
                return Err(usage(format!("the console refused (HTTP {}): {message}", status.as_u16())));
            }
            Ok(answer)
        })
    }

    fn list(&self, pixel: Option<&str>) -> Result<Vec<DeadLetter>, Failure> {
        if let Letters::Store(store) = self {
            return store.dead_letters(pixel).map_err(storage);
        }
        let query = pixel
            .map(|p| format!("?pixel={}", form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>()))
            .unwrap_or_default();
        let answer = self.call(reqwest::Method::GET, &format!("/api/dead-letters{query}"), None)?;
        let letters = answer["dead_letters"].as_array().cloned().unwrap_or_default();
        Ok(letters
            .iter()
            .map(|d| DeadLetter {
                pixel: d["pixel"].as_str().unwrap_or_default().to_string(),
                seq: d["seq"].as_u64().unwrap_or_default(),
                pending: Pending {
                    id: d["id"].as_str().unwrap_or_default().to_string(),
                    event_type: d["event_type"].as_str().unwrap_or_default().to_string(),
                    timestamp_ms: d["timestamp_ms"].as_i64(),
                    received_ms: d["received_ms"].as_i64().unwrap_or_default(),
                    event: d["event"].to_string(),
                    consent_sent: None,
                    observed: None,
                },
                reason: d["reason"].as_str().unwrap_or_default().to_string(),
                detail: d["detail"].as_str().unwrap_or_default().to_string(),
                dead_ms: d["dead_ms"].as_i64().unwrap_or_default(),
            })
            .collect())
    }

    /// Replays or purges; how many dead letters it took.
    fn change(&self, change: Change, pixel: Option<&str>, seqs: Option<&[u64]>) -> Result<usize, Failure> {
        if let Letters::Store(store) = self {
            let done = match change {
                Change::Replay => store.replay(pixel, seqs),
                Change::Purge => store.purge(pixel, seqs),
            };
            return done.map_err(storage);
        }
        let (path, key) = match change {
            Change::Replay => ("/api/dead-letters/replay", "replayed"),
            Change::Purge => ("/api/dead-letters/purge", "purged"),
        };
        let answer = self.call(reqwest::Method::POST, path, Some(json!({"pixel": pixel, "seqs": seqs})))?;
        Ok(answer[key].as_u64().unwrap_or_default() as usize)
    }
}

fn storage(error: signal_engine::relay::store::StoreError) -> Failure {
    usage(error.0)
}

fn line(letter: &DeadLetter) -> String {
    let detail: String = letter.detail.chars().take(120).collect();
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        letter.seq, letter.pixel, letter.pending.id, letter.pending.event_type, letter.reason, detail
    )
}
