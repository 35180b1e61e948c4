//! `engine check`: every problem of every mapping file, rendered rustc-style or as one JSON array, with a summary.

use std::io;
use std::path::{Path, PathBuf};

use signal_engine::diagnostic::{self, RenderOptions};

use super::{compile_file, mapping_files, plural, read_params, usage, write_or_quit, Color, Failure, Format};
use signal_engine::CompileOptions;

pub(super) fn check(paths: &[PathBuf], params: Option<&Path>, format: Format, color: Color) -> Result<u8, Failure> {
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
