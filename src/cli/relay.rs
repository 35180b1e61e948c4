//! `engine serve` and `engine dlq`: starting the relay with its logging and runtime, and handling its dead letters.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use signal_engine::relay::config::RelayConfig;
use signal_engine::relay::store::{DeadLetter, RedbStore, Store};

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
    /// The relay's configuration, for its `data_dir`; the relay must be stopped (it holds the store).
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
    let store = open(&data_dir)?;
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| usage(format!("cannot write stdout: {e}"));
    match args.action {
        DlqAction::List { pixel } => {
            let letters = store.dead_letters(pixel.as_deref()).map_err(storage)?;
            for letter in &letters {
                writeln!(out, "{}", line(letter)).map_err(io)?;
            }
            eprintln!("{} dead letter{}", letters.len(), if letters.len() == 1 { "" } else { "s" });
        }
        DlqAction::Show { seq } => {
            let letters = store.dead_letters(None).map_err(storage)?;
            let Some(letter) = letters.iter().find(|l| l.seq == seq) else {
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
            let count = store.replay(pixel.as_deref(), chosen).map_err(storage)?;
            writeln!(out, "{count} dead letter(s) put back in the queue; the relay sends them when it runs")
                .map_err(io)?;
        }
        DlqAction::Purge { pixel, all, seqs } => {
            if seqs.is_empty() && !all {
                return Err(usage("name the dead letters to purge, or give --all"));
            }
            let chosen = (!all).then_some(seqs.as_slice());
            let count = store.purge(pixel.as_deref(), chosen).map_err(storage)?;
            writeln!(out, "{count} dead letter(s) purged").map_err(io)?;
        }
    }
    Ok(0)
}

fn open(data_dir: &Path) -> Result<RedbStore, Failure> {
    if !data_dir.join(RedbStore::FILE).is_file() {
        return Err(usage(format!("no relay store in {}", data_dir.display())));
    }
    RedbStore::open(data_dir)
        .map_err(|e| usage(format!("{} (if the relay is running it holds the store: stop it first)", e.0)))
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
