//! The `engine` command line: argument parsing, file and stream I/O, and exit codes. It owns everything the
//! library deliberately does not do (reading files, stdin and stdout, clocks); the mapping work is the library's.
//!
//! Exit codes: 0 success; 1 findings (`check` found errors, `run` was given a mapping with errors, a mapping
//! test failed or could not be run, or `fmt` met a file that is not formatted under `--check` or has syntax
//! errors, or `send` had events refused); 2 usage or I/O error (for `send`: the relay could not be reached).

mod color;
mod fmt;
mod relay;
mod send;

use color::Color;

use std::fs;
use std::io::{self, BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

use signal_engine::diagnostic::{self, RenderOptions};
use signal_engine::functions;
use signal_engine::identity::MemoryStore;
use signal_engine::mapping_test;
use signal_engine::presets;
use signal_engine::run::{DropReason, Outcome, RejectReason};
use signal_engine::source::FileLoader;
use signal_engine::{CompileOptions, Compiled, Context};

/// The most events one OpenAI request may carry.
const MAX_BATCH: usize = 1000;

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
        /// How many visitor keys identity memory holds before forgetting the least recently seen.
        #[arg(long, default_value_t = MemoryStore::DEFAULT_CAPACITY)]
        identity_capacity: usize,
        /// How much memory (MiB) identity memory may take before forgetting the least recently seen visitors.
        #[arg(long, default_value_t = MemoryStore::DEFAULT_BUDGET >> 20, value_name = "MIB")]
        identity_memory: usize,
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

#[derive(clap::Args)]
struct TestArgs {
    /// Test files, or directories searched for `*.test.yaml`; default: `mappings/` if it exists, else `.`.
    paths: Vec<PathBuf>,
    /// Run only the cases whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
}

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
struct FunctionsArgs {
    /// One function to show in full; without it, every function in brief.
    name: Option<String>,
    /// `text` for a terminal, `markdown` (the reference, exactly docs/functions.md) or `json` for tools.
    #[arg(long, value_enum, default_value_t = DocFormat::Text)]
    format: DocFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum DocFormat {
    Text,
    Markdown,
    Json,
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
            or_mappings(files).and_then(|files| check(&files, params.as_deref(), format, color))
        }
        Command::Run { inputs, mapping, stateless, batch, rejects, identity_capacity, identity_memory } => {
            run(RunArgs { inputs, mapping, stateless, batch, rejects, identity_capacity, identity_memory }, color)
        }
        Command::Explain { inputs, mapping, stateless, show_pii, format } => {
            explain(ExplainArgs { inputs, mapping, stateless, show_pii, format }, color)
        }
        Command::Functions(args) => functions(&args),
        Command::Lsp => lsp(),
        Command::Test(args) => test(args, color),
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

/// `engine functions`: the library's docs, rendered from the declarations the compiler uses.
fn functions(args: &FunctionsArgs) -> Result<u8, Failure> {
    let to_json = |value: Value| serde_json::to_string_pretty(&value).map(|text| text + "\n");
    let text = match &args.name {
        None => match args.format {
            DocFormat::Text => functions::reference_text(),
            DocFormat::Markdown => functions::reference_markdown(),
            DocFormat::Json => to_json(functions::reference_json()).map_err(|e| usage(e.to_string()))?,
        },
        Some(name) => {
            let Some(function) = functions::find(name) else {
                let names = functions::all().iter().map(|f| f.name);
                return Err(usage(match diagnostic::did_you_mean(name, names) {
                    Some(meant) => format!("unknown function `{name}`; did you mean `{meant}`?"),
                    None => format!("unknown function `{name}`; `engine functions` lists them all"),
                }));
            };
            match args.format {
                DocFormat::Text => function.text(),
                DocFormat::Markdown => function.markdown(),
                DocFormat::Json => to_json(function.to_json()).map_err(|e| usage(e.to_string()))?,
            }
        }
    };
    write_or_quit(&mut io::stdout().lock(), text.as_bytes())?;
    Ok(0)
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
    let value: Value = serde_norway::from_str(&text)
        .map_err(|e| usage(format!("parameters {} are not valid YAML: {e}", path.display())))?;
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

fn check(paths: &[PathBuf], params: Option<&Path>, format: Format, color: Color) -> Result<u8, Failure> {
    let options = CompileOptions { params: read_params(params)? };
    let files = mapping_files(paths)?;
    let mut errors = 0;
    let mut warnings = 0;
    let mut json_out = Vec::new();
    let color = color.enabled(&io::stdout());
    let mut stdout = io::stdout().lock();
    for file in &files {
        let compiled = compile_file(file, &options)?;
        errors += compiled.diagnostics.iter().filter(|d| d.is_error()).count();
        warnings += compiled.diagnostics.iter().filter(|d| !d.is_error()).count();
        match format {
            Format::Json => {
                json_out.extend(compiled.diagnostics.iter().map(|d| diagnostic::to_json(d, &compiled.sources)));
            }
            Format::Human => {
                let width = if color { 100 } else { 80 };
                let text = diagnostic::render(&compiled.diagnostics, &compiled.sources, RenderOptions { color, width });
                write_or_quit(&mut stdout, text.as_bytes())?;
            }
        }
    }
    match format {
        Format::Json => {
            let text = serde_json::to_string_pretty(&json_out).map_err(|e| usage(e.to_string()))?;
            write_or_quit(&mut stdout, format!("{text}\n").as_bytes())?;
        }
        Format::Human => {
            let summary = format!(
                "engine check: {} file{}, {errors} error{}, {warnings} warning{}\n",
                files.len(),
                plural(files.len()),
                plural(errors),
                plural(warnings)
            );
            write_or_quit(&mut stdout, summary.as_bytes())?;
        }
    }
    Ok(if errors > 0 { 1 } else { 0 })
}

/// `engine test`: every test file named or found, run in path order; the outcome of each case as it finishes.
fn test(args: TestArgs, color: Color) -> Result<u8, Failure> {
    let roots = if args.paths.is_empty() {
        vec![PathBuf::from(if Path::new("mappings").is_dir() { "mappings" } else { "." })]
    } else {
        args.paths
    };
    let mut files = Vec::new();
    for root in &roots {
        if root.is_dir() {
            let before = files.len();
            files_below(root, &|p| p.to_string_lossy().ends_with(mapping_test::TEST_FILE_SUFFIX), &mut files)?;
            if files.len() == before {
                return Err(usage(format!("no `*{}` files in {}", mapping_test::TEST_FILE_SUFFIX, root.display())));
            }
        } else {
            files.push(root.clone());
        }
    }
    let style = mapping_test::Style { color: color.enabled(&io::stdout()) };
    let mut stdout = io::stdout().lock();
    let mut reports = Vec::with_capacity(files.len());
    for file in &files {
        let text = fs::read_to_string(file).map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?;
        let report = mapping_test::run_file(&file.to_string_lossy(), &text, &FileLoader, args.filter.as_deref());
        write_or_quit(&mut stdout, mapping_test::render_progress(&report, style).as_bytes())?;
        reports.push(report);
    }
    write_or_quit(&mut stdout, mapping_test::render_summary(&reports, style).as_bytes())?;
    Ok(if reports.iter().all(mapping_test::FileReport::ok) { 0 } else { 1 })
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

struct RunArgs {
    inputs: Vec<PathBuf>,
    mapping: MappingArgs,
    stateless: bool,
    batch: bool,
    rejects: Option<PathBuf>,
    identity_capacity: usize,
    identity_memory: usize,
}

/// Counts for the closing summary.
#[derive(Default)]
struct Summary {
    lines: usize,
    mapped: usize,
    unmapped: usize,
    identify: usize,
    rejected: usize,
    malformed: usize,
    warnings: usize,
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

struct ExplainArgs {
    inputs: Vec<PathBuf>,
    mapping: MappingArgs,
    stateless: bool,
    show_pii: bool,
    format: Format,
}

fn explain(args: ExplainArgs, color: Color) -> Result<u8, Failure> {
    let Some(compiled) = load_mapping(args.mapping.map.as_deref(), args.mapping.params.as_deref(), "explain", color)?
    else {
        return Ok(1);
    };
    let Some(plan) = compiled.plan.as_ref() else { return Ok(1) };
    let now_ms = now_ms(args.mapping.now.as_deref())?;
    // Each input holds one document, a stream of them (NDJSON or pretty-printed), or an array: every event is
    // explained in order.
    let mut events = Vec::new();
    for input in inputs(&args.inputs) {
        let (file, mut reader) = input?;
        let name = file.as_deref().unwrap_or("stdin");
        let mut text = String::new();
        reader.read_to_string(&mut text).map_err(|e| usage(format!("cannot read {name}: {e}")))?;
        for document in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
            match document.map_err(|e| usage(format!("{name} is not JSON: {e}")))? {
                Value::Array(items) => events.extend(items),
                event => events.push(event),
            }
        }
    }
    if events.is_empty() {
        return Err(usage("no event to explain: give one JSON event, several, or an array of them"));
    }
    let mut memory = MemoryStore::new(MemoryStore::DEFAULT_CAPACITY);
    let mut out = BufWriter::new(io::stdout().lock());
    let many = events.len() > 1;
    for (index, event) in events.iter().enumerate() {
        let mut context =
            if args.stateless { Context::stateless(now_ms) } else { Context::with_identity(now_ms, &mut memory) };
        let explanation = signal_engine::explain::explain(plan, &event.to_string(), &mut context);
        let rendered = match args.format {
            Format::Human if many => format!("event {}\n{}\n", index + 1, explanation.render_text(args.show_pii)),
            Format::Human => explanation.render_text(args.show_pii),
            Format::Json => {
                let mut value = explanation.to_json(args.show_pii);
                value["event"] = json!(index + 1);
                format!("{value}\n")
            }
        };
        write_or_quit(&mut out, rendered.as_bytes())?;
    }
    out.flush().map_err(|e| usage(format!("cannot write stdout: {e}")))?;
    Ok(0)
}

fn run(args: RunArgs, color: Color) -> Result<u8, Failure> {
    let Some(compiled) = load_mapping(args.mapping.map.as_deref(), args.mapping.params.as_deref(), "run", color)?
    else {
        return Ok(1);
    };
    let Some(plan) = compiled.plan.as_ref() else { return Ok(1) };
    let now_ms = now_ms(args.mapping.now.as_deref())?;
    let mut reports: Box<dyn Write> = match &args.rejects {
        Some(path) => Box::new(BufWriter::new(
            fs::File::create(path).map_err(|e| usage(format!("cannot create {}: {e}", path.display())))?,
        )),
        None => Box::new(BufWriter::new(io::stderr().lock())),
    };
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let mut memory = MemoryStore::bounded(args.identity_capacity, args.identity_memory.saturating_mul(1 << 20));
    let mut summary = Summary::default();
    let mut batch: Vec<String> = Vec::new();
    // One line buffer for the whole stream, refilled from a large read buffer: a stream of millions of events
    // costs no allocation per line and few system calls.
    let mut bytes = Vec::with_capacity(4096);
    for input in inputs(&args.inputs) {
        let (file, mut reader) = input?;
        let file = file.as_deref();
        let mut line_number = 0;
        loop {
            bytes.clear();
            let read = reader
                .read_until(b'\n', &mut bytes)
                .map_err(|e| usage(format!("cannot read {}: {e}", file.unwrap_or("stdin"))))?;
            if read == 0 {
                break;
            }
            line_number += 1;
            let Ok(text) = std::str::from_utf8(&bytes) else {
                summary.lines += 1;
                summary.malformed += 1;
                report(
                    &mut reports,
                    file,
                    json!({"line": line_number, "outcome": "malformed", "message": "not UTF-8"}),
                )?;
                continue;
            };
            if text.trim().is_empty() {
                continue;
            }
            summary.lines += 1;
            let mut context =
                if args.stateless { Context::stateless(now_ms) } else { Context::with_identity(now_ms, &mut memory) };
            match plan.apply_str(text, &mut context) {
                Outcome::Mapped(mapped) => {
                    summary.mapped += 1;
                    for warning in &mapped.warnings {
                        summary.warnings += 1;
                        report(
                            &mut reports,
                            file,
                            json!({"line": line_number, "outcome": "warning", "field": warning.field, "rule": warning.rule, "message": warning.message}),
                        )?;
                    }
                    if args.batch {
                        batch.push(mapped.json);
                        if batch.len() == MAX_BATCH {
                            write_batch(&mut out, &mut batch)?;
                        }
                    } else {
                        write_or_quit(&mut out, mapped.json.as_bytes())?;
                        write_or_quit(&mut out, b"\n")?;
                    }
                }
                Outcome::Dropped(dropped) => {
                    match dropped.reason {
                        DropReason::Unmapped => summary.unmapped += 1,
                        // An alias, like an identify, only feeds identity memory.
                        DropReason::Identify | DropReason::Alias => summary.identify += 1,
                        // A reason a newer library adds is still a drop.
                        _ => summary.unmapped += 1,
                    }
                    report(
                        &mut reports,
                        file,
                        json!({"line": line_number, "outcome": "dropped", "reason": dropped.reason, "message": dropped.message}),
                    )?;
                }
                Outcome::Rejected(rejected) => {
                    if rejected.reason == RejectReason::InvalidInput {
                        summary.malformed += 1;
                        report(
                            &mut reports,
                            file,
                            json!({"line": line_number, "outcome": "malformed", "message": rejected.message}),
                        )?;
                    } else {
                        summary.rejected += 1;
                        summary.warnings += rejected.warnings.len();
                        let mut record = serde_json::to_value(&rejected).unwrap_or(Value::Null);
                        if let Value::Object(map) = &mut record {
                            map.insert("line".into(), json!(line_number));
                            map.insert("outcome".into(), json!("rejected"));
                        }
                        report(&mut reports, file, record)?;
                    }
                }
                // The library marks its outcomes open to additions; this build knows every one it can return.
                _ => {}
            }
        }
    }
    if !batch.is_empty() {
        write_batch(&mut out, &mut batch)?;
    }
    out.flush().map_err(|e| usage(format!("cannot write output: {e}")))?;
    let text = format!(
        "engine run: {} events: {} mapped, {} dropped ({} unmapped, {} identify), {} rejected, {} malformed; {} warnings\n",
        summary.lines,
        summary.mapped,
        summary.unmapped + summary.identify,
        summary.unmapped,
        summary.identify,
        summary.rejected,
        summary.malformed,
        summary.warnings,
    );
    reports.flush().map_err(|e| usage(format!("cannot write reports: {e}")))?;
    drop(reports);
    eprint!("{text}");
    // Freeing a memory of up to millions of visitors one by one takes a noticeable part of a run; the process ends
    // right after, and the operating system takes the memory back whole.
    std::mem::forget(memory);
    Ok(0)
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

/// The inputs of `run` and `explain`, in order: each file named (`None` for stdin) with a reader. No file, or
/// `-`, stands for stdin.
fn inputs(paths: &[PathBuf]) -> impl Iterator<Item = Result<(Option<String>, Box<dyn BufRead>), Failure>> + '_ {
    let stdin_only = paths.is_empty().then(|| PathBuf::from("-"));
    let paths: Vec<PathBuf> = stdin_only.into_iter().chain(paths.iter().cloned()).collect();
    paths.into_iter().map(|path| {
        if path.as_os_str() == "-" {
            return Ok((None, Box::new(io::BufReader::with_capacity(1 << 20, io::stdin().lock())) as Box<dyn BufRead>));
        }
        let file = fs::File::open(&path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
        Ok((
            Some(path.display().to_string()),
            Box::new(io::BufReader::with_capacity(1 << 20, file)) as Box<dyn BufRead>,
        ))
    })
}

fn write_batch(out: &mut impl Write, batch: &mut Vec<String>) -> Result<(), Failure> {
    let mut body = String::with_capacity(batch.iter().map(|e| e.len() + 1).sum::<usize>() + 16);
    body.push_str("{\"events\":[");
    body.push_str(&batch.join(","));
    body.push_str("]}\n");
    batch.clear();
    write_or_quit(out, body.as_bytes())
}

/// Writes one report record; with events read from files, the record names the file its line is in.
fn report(reports: &mut dyn Write, file: Option<&str>, mut record: Value) -> Result<(), Failure> {
    if let (Some(file), Value::Object(map)) = (file, &mut record) {
        map.insert("file".into(), json!(file));
    }
    let mut line = record.to_string();
    line.push('\n');
    match reports.write_all(line.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(usage(format!("cannot write reports: {e}"))),
    }
}
