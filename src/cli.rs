//! The `engine` command line: argument parsing, the helpers commands share, and exit codes; each command lives in
//! its own module below (`cli/run.rs` is `engine run`). It owns everything the library deliberately does not do
//! (reading files, stdin and stdout, clocks); the mapping work is the library's.
//!
//! Exit codes: 0 success; 1 findings (`check` found errors, `run` was given a mapping with errors, a mapping
//! test failed or could not be run, or `fmt` met a file that is not formatted under `--check` or has syntax
//! errors, or `send` had events refused); 2 usage or I/O error (for `send`: the relay could not be reached).

mod check;
mod color;
mod explain;
mod fmt;
mod functions;
mod quality;
mod relay;
mod run;
mod send;
mod test;

use color::Color;
use explain::ExplainArgs;
use functions::FunctionsArgs;
use quality::{QualityArgs, QualityFormat};
use run::RunArgs;
use test::TestArgs;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value};

use signal_engine::diagnostic::{self, RenderOptions};
use signal_engine::files::FileLoader;
use signal_engine::identity::MemoryStore;
use signal_engine::presets;
use signal_engine::{CompileOptions, Compiled};

/// `engine --version`: the crate's version and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("ENGINE_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "engine",
    version = VERSION,
    about = "Maps Signal analytics events to OpenAI Ads Conversions API events",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Colour: auto (a terminal, unless NO_COLOR, CLICOLOR or TERM=dumb says otherwise), always or never.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the relay: receives Signal and Segment events over HTTP, maps them, and delivers them to OpenAI.
    #[command(
        after_help = "Examples:\n  engine serve                          a trial relay on 127.0.0.1:8088 (loopback, dry run)\n  engine serve --config relay.yaml      as configured (README: Running the relay)\n\nExit codes: 0 after a clean stop (SIGTERM, ctrl-c); 2 when it cannot start (invalid configuration, mapping with errors, port in use, store held by another process)."
    )]
    Serve(relay::ServeArgs),
    /// Lists, shows, replays or purges the relay's dead letters (while the relay is stopped).
    #[command(
        after_help = "Examples:\n  engine dlq list --config relay.yaml\n  engine dlq replay --config relay.yaml          every dead letter back in its queue\n\nExit codes: 0 done; 2 usage error, an unknown sequence number, no store in the data directory, or a store a running relay holds."
    )]
    Dlq(relay::DlqArgs),
    /// Posts NDJSON events to a relay as a server SDK would: batches, gzip, retries on 429 and 5xx.
    #[command(
        after_help = "Examples:\n  engine send examples/events.ndjson --to http://127.0.0.1:8088 --rebase-time --gzip\n  engine send - --to http://127.0.0.1:8088 --key $SIGNAL_WRITE_KEY < events.ndjson\n\nExit codes: 0 every event accepted; 1 some were refused or malformed; 2 usage error or the relay unreachable."
    )]
    Send(send::SendArgs),
    /// Checks mapping files and reports every problem found (exit 1 when any is an error).
    #[command(
        after_help = "Examples:\n  engine check                           every .map file under mappings/\n  engine check my.map --format json      diagnostics as JSON, for editors and CI\n\nExit codes: 0 no errors (warnings allowed); 1 errors found; 2 usage or I/O error."
    )]
    Check {
        /// Mapping files to check; a directory stands for every `.map` file below it; default: `mappings/`.
        files: Vec<PathBuf>,
        /// Parameter values (YAML mapping of name to value) to check the mappings with.
        #[arg(long)]
        params: Option<PathBuf>,
        /// `human` (rustc-style) or `json` (one array of diagnostics, for editors and CI).
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Maps Signal events (NDJSON from files or stdin) to OpenAI events (NDJSON on stdout).
    #[command(
        after_help = "Examples:\n  engine run --now 2026-11-20T12:00:00Z < examples/events.ndjson\n  engine run --map my.map --rejects rejects.ndjson day1.ndjson day2.ndjson > openai.ndjson\n\nExit codes: 0 the stream was processed (whatever was dropped or rejected); 1 the mapping has errors; 2 usage or I/O error."
    )]
    Run {
        /// NDJSON event files, read in order; none, or `-`, reads stdin.
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        mapping: MappingArgs,
        /// Map each event alone, without identity memory.
        #[arg(long)]
        stateless: bool,
        /// Write request bodies `{"events":[…]}` of at most 1,000 events instead of one event per line.
        #[arg(long)]
        batch: bool,
        /// Write drop, rejection and warning records to this file instead of stderr.
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// How many visitor keys identity memory holds before forgetting the least recently seen visitors.
        #[arg(long, default_value_t = MemoryStore::DEFAULT_CAPACITY)]
        identity_capacity: usize,
        /// How much memory (MiB) identity memory may take before forgetting the least recently seen visitors.
        #[arg(long, default_value_t = MemoryStore::DEFAULT_BUDGET >> 20, value_name = "MIB")]
        identity_memory: usize,
    },
    /// Scores how well a stream's events are equipped for OpenAI to match them to ad clicks: per OpenAI event type,
    /// the share carrying each identity signal (oppref, email, phone, external id, IP, User-Agent), amounts and
    /// order ids on conversions, opt-outs, a score from 0 to 10, and advice naming the fix.
    #[command(
        after_help = "Examples:\n  engine quality --now 2026-11-20T12:00:00Z < examples/events.ndjson\n  engine quality --map my.map --format markdown day1.ndjson > quality.md\n\nExit codes: 0 the report was written; 1 the mapping has errors; 2 usage or I/O error."
    )]
    Quality {
        /// NDJSON event files, read in order; none, or `-`, reads stdin.
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        mapping: MappingArgs,
        /// Map each event alone, without identity memory.
        #[arg(long)]
        stateless: bool,
        /// `text`, `json` or `markdown`.
        #[arg(long, value_enum, default_value_t = QualityFormat::Text)]
        format: QualityFormat,
    },
    /// Explains how events (JSON from files or stdin: one document, several, or an array) are mapped: the rule,
    /// source value and each function's result behind every output field, and why other rules produced nothing.
    #[command(
        after_help = "Examples:\n  engine explain event.json --format json --show-pii\n  head -3 examples/events.ndjson | engine explain --now 2026-11-20T12:00:00Z\n\nExit codes: 0 explained; 1 the mapping has errors; 2 usage or I/O error (no event, not JSON)."
    )]
    Explain {
        /// Files of JSON events, read in order; none, or `-`, reads stdin.
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        mapping: MappingArgs,
        /// Explain each event alone, without identity memory from the events before it.
        #[arg(long)]
        stateless: bool,
        /// Show personal values (email, phone) before hashing instead of masking them.
        #[arg(long)]
        show_pii: bool,
        /// `human` (a tree per event) or `json` (one object per event and line).
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Lists the function library: signatures, docs and examples (`--format markdown` is docs/functions.md).
    #[command(
        after_help = "Examples:\n  engine functions\n  engine functions minor_units\n\nExit codes: 0 shown; 2 unknown function (with a did-you-mean)."
    )]
    Functions(FunctionsArgs),
    /// Serves the language server protocol on stdin and stdout, for editors (see README "Editor support").
    #[command(
        after_help = "Exit codes: 0 after the client's shutdown and exit; 1 exit without shutdown; 2 the connection broke."
    )]
    Lsp,
    /// Runs mapping tests: `*.test.yaml` files of input events and the outcomes expected (exit 1 on a failure).
    #[command(
        after_help = "Examples:\n  engine test\n  engine test mappings/openai_ads.test.yaml --filter refund\n\nExit codes: 0 every case passed; 1 a case failed or a file could not be run; 2 usage error."
    )]
    Test(TestArgs),
    /// Formats mapping files in place: rule tables aligned, comments kept; `-` formats stdin to stdout.
    #[command(
        after_help = "Examples:\n  engine fmt                      every .map file under mappings/\n  engine fmt --check my.map       name what would change, change nothing\n  engine fmt - < my.map           the formatted text on stdout, for editors\n\nExit codes: 0 done; 1 a file would change (--check) or has syntax errors; 2 usage or I/O error."
    )]
    Fmt(FmtArgs),
    /// Prints a shell completion script: `engine completions bash > /etc/bash_completion.d/engine`.
    #[command(
        after_help = "Examples:\n  engine completions bash > ~/.local/share/bash-completion/completions/engine\n  engine completions zsh > ~/.zfunc/_engine\n\nExit codes: 0 written; 2 unknown shell."
    )]
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Prints the manual page (roff): `engine man > engine.1 && man ./engine.1`.
    #[command(after_help = "Exit codes: 0 written; 2 it could not be written.")]
    Man,
}

/// Exit codes, shown at the end of `engine --help`.
const EXIT_CODES: &str = "Exit codes: 0 success; 1 findings (check found errors, a mapping has errors, a mapping \
test failed, fmt --check found a file to reformat); 2 usage or I/O error. See each command's --help.";

/// The mapping `run` and `explain` apply, and the clock they apply it at.
#[derive(clap::Args)]
struct MappingArgs {
    /// The mapping to apply; without it, the embedded default preset (mappings/openai_ads.map).
    #[arg(long)]
    map: Option<PathBuf>,
    /// Parameter values: a YAML mapping of name to value.
    #[arg(long)]
    params: Option<PathBuf>,
    /// The time the timestamp window is checked against (RFC 3339); default: the current time.
    #[arg(long)]
    now: Option<String>,
}

#[derive(clap::Args)]
struct FmtArgs {
    /// Change nothing: name the files that are not formatted, show how, and exit 1 if there are any.
    #[arg(long)]
    check: bool,
    /// Mapping files; a directory stands for every `.map` file below it, `-` for stdin; default: `mappings/`.
    paths: Vec<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

/// A failure that ends the command, with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: 2, message: message.into() }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
        }
    };
    let color = cli.color;
    let result = match cli.command {
        Command::Check { files, params, format } => {
            or_mappings(files).and_then(|files| check::check(&files, params.as_deref(), format, color))
        }
        Command::Run { inputs, mapping, stateless, batch, rejects, identity_capacity, identity_memory } => {
            run::run(RunArgs { inputs, mapping, stateless, batch, rejects, identity_capacity, identity_memory }, color)
        }
        Command::Quality { inputs, mapping, stateless, format } => {
            quality::quality(QualityArgs { inputs, mapping, stateless, format }, color)
        }
        Command::Explain { inputs, mapping, stateless, show_pii, format } => {
            explain::explain(ExplainArgs { inputs, mapping, stateless, show_pii, format }, color)
        }
        Command::Functions(args) => functions::functions(&args),
        Command::Lsp => lsp(),
        Command::Test(args) => test::test(args, color),
        Command::Fmt(FmtArgs { check, paths }) => or_mappings(paths).and_then(|paths| fmt::fmt(&paths, check, color)),
        Command::Serve(args) => relay::serve(args, color),
        Command::Dlq(args) => relay::dlq(args),
        Command::Send(args) => send::send(args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "engine", &mut script);
            write_or_quit(&mut io::stdout(), &script).map(|()| 0)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(|e| usage(format!("cannot render the manual page: {e}")))
                .and_then(|()| write_or_quit(&mut io::stdout(), &page))
                .map(|()| 0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("engine: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Exit 0 after `shutdown` and `exit`; 1 when the client sent `exit` without `shutdown`, as the protocol asks.
fn lsp() -> Result<u8, Failure> {
    match crate::lsp::serve_stdio() {
        Ok(()) => Ok(0),
        Err(crate::lsp::LspError::ExitWithoutShutdown) => Ok(1),
        Err(error) => Err(usage(format!("lsp: {error}"))),
    }
}

fn read_params(path: Option<&Path>) -> Result<Map<String, Value>, Failure> {
    let Some(path) = path else { return Ok(Map::new()) };
    let text =
        fs::read_to_string(path).map_err(|e| usage(format!("cannot read parameters {}: {e}", path.display())))?;
    let value: Value = signal_engine::yaml::from_str(&text)
        .map_err(|e| usage(format!("parameters are not valid YAML: {}", e.in_file(&path.display().to_string()))))?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        _ => Err(usage(format!("parameters {} must be a mapping of name: value", path.display()))),
    }
}

fn compile_file(path: &Path, options: &CompileOptions) -> Result<Compiled, Failure> {
    let text = fs::read_to_string(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    Ok(signal_engine::compile(&path.to_string_lossy(), &text, &FileLoader, options))
}

/// The files below `dir` (recursively, in path order) that `wanted` picks.
fn files_below(dir: &Path, wanted: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) -> Result<(), Failure> {
    let entries = fs::read_dir(dir).map_err(|e| usage(format!("cannot read {}: {e}", dir.display())))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            files_below(&path, wanted, out)?;
        } else if wanted(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The mapping files named: files as given, directories expanded to the `.map` files below them, sorted.
fn mapping_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            files_below(path, &|p| p.extension().is_some_and(|e| e == "map"), &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Writes to stdout; a closed pipe (`engine run | head`) ends the program quietly, as it is not an error.
fn write_or_quit(out: &mut impl Write, bytes: &[u8]) -> Result<(), Failure> {
    match out.write_all(bytes) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(usage(format!("cannot write output: {e}"))),
    }
}

/// The mapping a command applies: `--map` or the embedded default, compiled with `--params`. A mapping with
/// errors has its diagnostics printed and yields `None`.
fn load_mapping(
    map: Option<&Path>,
    params: Option<&Path>,
    command: &str,
    color: Color,
) -> Result<Option<Compiled>, Failure> {
    let options = CompileOptions { params: read_params(params)? };
    let compiled = match map {
        Some(path) => compile_file(path, &options)?,
        None => presets::OPENAI_ADS.compile(&options),
    };
    let color = color.enabled(&io::stderr());
    let render = |compiled: &Compiled| {
        diagnostic::render(&compiled.diagnostics, &compiled.sources, RenderOptions { color, width: 100 })
    };
    if compiled.plan.is_some() {
        // Warnings do not stop a run, but a run should not hide what `engine check` would say.
        if !compiled.diagnostics.is_empty() {
            eprint!("{}", render(&compiled));
            eprintln!("engine {command}: the mapping has warnings (above); mapping anyway");
        }
        return Ok(Some(compiled));
    }
    eprint!("{}", render(&compiled));
    eprintln!("engine {command}: the mapping has errors; nothing was mapped");
    Ok(None)
}

/// `--now`, or the current time, in epoch ms.
fn now_ms(now: Option<&str>) -> Result<i64, Failure> {
    Ok(match now {
        Some(text) => text
            .parse::<jiff::Timestamp>()
            .map_err(|e| usage(format!("--now {text:?} is not an RFC 3339 time: {e}")))?
            .as_millisecond(),
        None => jiff::Timestamp::now().as_millisecond(),
    })
}

/// The paths given, or `mappings/` (as `engine test` defaults to it).
fn or_mappings(paths: Vec<PathBuf>) -> Result<Vec<PathBuf>, Failure> {
    if !paths.is_empty() {
        return Ok(paths);
    }
    let default = PathBuf::from("mappings");
    if !default.is_dir() {
        return Err(usage("no mapping files given, and no `mappings/` directory here to default to"));
    }
    Ok(vec![default])
}
