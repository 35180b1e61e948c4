//! What the test modules share: running the `engine` binary as a user does.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `engine ARGS` in `dir` with `stdin` as its input.
pub fn engine_in(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
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
