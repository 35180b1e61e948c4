//! `engine test`: runs the mapping tests (`*.test.yaml`) and reports them in the style of `cargo test`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use signal_engine::files::FileLoader;
use signal_engine::mapping_cases;

use super::{files_below, usage, write_or_quit, Color, Failure};

#[derive(clap::Args)]
pub(super) struct TestArgs {
    /// Test files, or directories searched for `*.test.yaml`; default: `mappings/` if it exists, else `.`.
    pub(super) paths: Vec<PathBuf>,
    /// Run only the cases whose name contains this text.
    #[arg(long)]
    pub(super) filter: Option<String>,
}

/// `engine test`: every test file named or found, run in path order; the outcome of each case as it finishes.
pub(super) fn test(args: TestArgs, color: Color) -> Result<u8, Failure> {
    let roots = if args.paths.is_empty() {
        vec![PathBuf::from(if Path::new("mappings").is_dir() { "mappings" } else { "." })]
    } else {
        args.paths
    };
    let mut files = Vec::new();
    for root in &roots {
        if root.is_dir() {
            let before = files.len();
            files_below(root, &|p| p.to_string_lossy().ends_with(mapping_cases::TEST_FILE_SUFFIX), &mut files)?;
            if files.len() == before {
                return Err(usage(format!("no `*{}` files in {}", mapping_cases::TEST_FILE_SUFFIX, root.display())));
            }
        } else {
            files.push(root.clone());
        }
    }
    let style = mapping_cases::Style { color: color.enabled(&io::stdout()) };
    let mut stdout = io::stdout().lock();
    let mut reports = Vec::with_capacity(files.len());
    for file in &files {
        let text = fs::read_to_string(file).map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?;
        let report = mapping_cases::run_file(&file.to_string_lossy(), &text, &FileLoader, args.filter.as_deref());
        write_or_quit(&mut stdout, mapping_cases::render_progress(&report, style).as_bytes())?;
        reports.push(report);
    }
    write_or_quit(&mut stdout, mapping_cases::render_summary(&reports, style).as_bytes())?;
    Ok(if reports.iter().all(mapping_cases::FileReport::ok) { 0 } else { 1 })
}
