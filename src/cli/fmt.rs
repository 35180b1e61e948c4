//! `engine fmt`: rewrites mapping files in their canonical layout, or (`--check`) names the ones that are not in
//! it; `-` formats stdin to stdout, for editors. Files with syntax errors are left alone and reported.
//!
//! Streams: stdout names the files changed (or that would change), or carries the formatted text for `-`;
//! diagnostics, diffs and the summary go to stderr. Exit: 0 done; 1 a file would change (`--check`) or has
//! syntax errors; 2 usage or I/O error.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use signal_engine::diagnostic::{self, Diagnostic, RenderOptions};
use signal_engine::format;
use signal_engine::source::Sources;

use super::{mapping_files, plural, usage, write_or_quit, Color, Failure};

/// At most this many lines of diff are shown per file under `--check`: enough to see what the formatter wants.
const DIFF_LINES: usize = 16;

pub(super) fn fmt(paths: &[PathBuf], check: bool, color: Color) -> Result<u8, Failure> {
    if paths.iter().any(|p| p.as_os_str() == "-") {
        if paths.len() > 1 {
            return Err(usage("`-` (stdin) cannot be combined with other paths"));
        }
        return stdin(check, color);
    }
    let files = mapping_files(paths)?;
    let mut stdout = io::stdout().lock();
    let (mut changed, mut refused) = (0, 0);
    for file in &files {
        let name = file.to_string_lossy();
        let text = fs::read_to_string(file).map_err(|e| usage(format!("cannot read {name}: {e}")))?;
        let formatted = match format::format(&text) {
            Ok(formatted) => formatted,
            Err(diagnostics) => {
                refused += 1;
                report(&name, &text, &diagnostics, color);
                continue;
            }
        };
        if formatted == text {
            continue;
        }
        changed += 1;
        if check {
            eprint!("{}", first_differences(&name, &text, &formatted));
        } else {
            replace(file, &formatted).map_err(|e| usage(format!("cannot write {name}: {e}")))?;
        }
        write_or_quit(&mut stdout, format!("{name}\n").as_bytes())?;
    }
    let verb = if check { "would be reformatted" } else { "reformatted" };
    let mut summary = format!("engine fmt: {} file{}, {changed} {verb}", files.len(), plural(files.len()));
    if refused > 0 {
        summary.push_str(&format!(", {refused} with syntax errors left alone"));
    }
    eprintln!("{summary}");
    Ok(if refused > 0 || (check && changed > 0) { 1 } else { 0 })
}

/// `engine fmt -`: the formatted text on stdout; on syntax errors, nothing on stdout, so an editor keeps its text.
fn stdin(check: bool, color: Color) -> Result<u8, Failure> {
    let mut text = String::new();
    io::stdin().read_to_string(&mut text).map_err(|e| usage(format!("cannot read stdin: {e}")))?;
    let formatted = match format::format(&text) {
        Ok(formatted) => formatted,
        Err(diagnostics) => {
            report("<stdin>", &text, &diagnostics, color);
            return Ok(1);
        }
    };
    let mut stdout = io::stdout().lock();
    if !check {
        write_or_quit(&mut stdout, formatted.as_bytes())?;
        return Ok(0);
    }
    if formatted == text {
        return Ok(0);
    }
    eprint!("{}", first_differences("<stdin>", &text, &formatted));
    write_or_quit(&mut stdout, b"<stdin>\n")?;
    Ok(1)
}

fn report(name: &str, text: &str, diagnostics: &[Diagnostic], color: Color) {
    let mut sources = Sources::default();
    let file = sources.add(name, text);
    debug_assert_eq!(file, format::FILE);
    let color = color.enabled(&io::stderr());
    let width = if color { 100 } else { 80 };
    eprint!("{}", diagnostic::render(diagnostics, &sources, RenderOptions { color, width }));
}

/// The first hunk of a unified diff from the file to its formatted text, cut to [`DIFF_LINES`] lines.
fn first_differences(name: &str, text: &str, formatted: &str) -> String {
    let diff = similar::TextDiff::from_lines(text, formatted);
    let mut unified = diff.unified_diff();
    let mut hunks = unified.context_radius(1).iter_hunks();
    let Some(hunk) = hunks.next() else { return String::new() };
    let hunk = hunk.to_string();
    let mut out = format!("--- {name}\n+++ {name} (formatted)\n");
    let lines: Vec<&str> = hunk.lines().collect();
    for line in lines.iter().take(DIFF_LINES) {
        out.push_str(line);
        out.push('\n');
    }
    let more_hunks = hunks.count();
    if lines.len() > DIFF_LINES || more_hunks > 0 {
        out.push_str("…\n");
    }
    out
}

/// Replaces a file's contents through a temporary file beside it and a rename, so that a crash or a full disk
/// never leaves a mapping half written. A symbolic link keeps pointing at the file it names.
fn replace(path: &Path, text: &str) -> io::Result<()> {
    let path = fs::canonicalize(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new().prefix(".engine-fmt-").tempfile_in(dir)?;
    temp.write_all(text.as_bytes())?;
    temp.as_file().set_permissions(fs::metadata(&path)?.permissions())?;
    temp.as_file().sync_all()?;
    temp.persist(&path).map_err(|e| e.error)?;
    Ok(())
}
