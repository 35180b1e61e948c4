//! What the test modules share: running the `engine` binary as a user does.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `engine ARGS` in `dir` with `stdin` as its input.
pub fn engine_in(dir: &Path, args: &[&str], stdin: &str) -> Output {
    engine_with_env(dir, args, stdin, &[])
}

/// Runs `engine ARGS` in `dir` with these environment variables set, and the colour conventions' variables
/// (`NO_COLOR`, `CLICOLOR`, `CLICOLOR_FORCE`) removed unless given, so that the developer's shell does not decide.
pub fn engine_with_env(dir: &Path, args: &[&str], stdin: &str, vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_engine"));
    for name in ["NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE"] {
        command.env_remove(name);
    }
    command.envs(vars.iter().copied());
    let mut child = command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the engine binary starts");
    // A command that exits before reading its input closes the pipe; that is its answer, not a test failure.
    let _ = child.stdin.take().expect("stdin is piped").write_all(stdin.as_bytes());
    child.wait_with_output().expect("the engine binary finishes")
}

/// Runs `engine ARGS` in the repository root.
pub fn engine(args: &[&str], stdin: &str) -> Output {
    engine_in(Path::new(env!("CARGO_MANIFEST_DIR")), args, stdin)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A preset compiled with default parameters; a shipped preset compiles without any diagnostic.
pub fn preset_plan(preset: &signal_engine::presets::Preset) -> signal_engine::Plan {
    let compiled = preset.compile(&signal_engine::CompileOptions::default());
    assert!(compiled.diagnostics.is_empty(), "{} has diagnostics: {:?}", preset.name, compiled.diagnostics);
    compiled.plan.expect("a preset compiles")
}

pub fn millis(rfc3339: &str) -> i64 {
    rfc3339.parse::<jiff::Timestamp>().expect("valid time").as_millisecond()
}

/// One fixture of `fixtures/events/`: the preset it names (default: openai_ads), the clock, whether its events
/// share identity memory, and the events.
pub struct PresetCase {
    pub about: serde_json::Value,
    pub plan: signal_engine::Plan,
    pub now_ms: i64,
    pub remembering: bool,
    pub events: Vec<serde_json::Value>,
}

impl PresetCase {
    pub fn load(path: &Path) -> PresetCase {
        let case: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let preset = match case["preset"].as_str() {
            Some("openai_ads_developer_docs") => signal_engine::presets::OPENAI_ADS_DEVELOPER_DOCS,
            _ => signal_engine::presets::OPENAI_ADS,
        };
        PresetCase {
            plan: preset_plan(&preset),
            now_ms: millis(case["now"].as_str().expect("every case has `now`")),
            remembering: case["identity"].as_bool().unwrap_or(false),
            events: case["events"].as_array().expect("every case has `events`").clone(),
            about: case["about"].clone(),
        }
    }
}
