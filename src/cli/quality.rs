//! `engine quality`: the match quality of a stream of events under a mapping, before it goes live: the share of
//! events carrying each identity signal per OpenAI event type, a score from 0 to 10, and advice naming the fix.

use std::io::{self, BufRead};
use std::path::PathBuf;

use signal_engine::identity::MemoryStore;
use signal_engine::quality::Quality;
use signal_engine::Context;

use super::run::inputs;
use super::{load_mapping, now_ms, usage, write_or_quit, Color, Failure, MappingArgs};

/// How the report is written.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(super) enum QualityFormat {
    Text,
    Json,
    Markdown,
}

pub(super) struct QualityArgs {
    pub(super) inputs: Vec<PathBuf>,
    pub(super) mapping: MappingArgs,
    pub(super) stateless: bool,
    pub(super) format: QualityFormat,
}

pub(super) fn quality(args: QualityArgs, color: Color) -> Result<u8, Failure> {
    let Some(compiled) = load_mapping(args.mapping.map.as_deref(), args.mapping.params.as_deref(), "quality", color)?
    else {
        return Ok(1);
    };
    let Some(plan) = compiled.plan.as_ref() else { return Ok(1) };
    let now_ms = now_ms(args.mapping.now.as_deref())?;
    let mut memory = MemoryStore::default();
    let mut quality = Quality::new(plan.target_schema(), now_ms);
    let mut line = String::new();
    for input in inputs(&args.inputs) {
        let (file, mut reader) = input?;
        loop {
            line.clear();
            let read = reader
                .read_line(&mut line)
                .map_err(|e| usage(format!("cannot read {}: {e}", file.as_deref().unwrap_or("stdin"))))?;
            if read == 0 {
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            let mut context =
                if args.stateless { Context::stateless(now_ms) } else { Context::with_identity(now_ms, &mut memory) };
            let (outcome, observed) = plan.apply_str_noting_quality(&line, &mut context);
            quality.observe_noted(&line, &outcome, observed);
        }
    }
    let report = quality.report();
    let text = match args.format {
        QualityFormat::Text => report.text(),
        QualityFormat::Markdown => report.markdown(),
        QualityFormat::Json => {
            serde_json::to_string_pretty(&report).map_err(|e| usage(format!("cannot write the report: {e}")))? + "\n"
        }
    };
    write_or_quit(&mut io::stdout(), text.as_bytes())?;
    Ok(0)
}
