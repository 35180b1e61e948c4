//! `engine explain`: each event's explanation (which rule produced each field, what it read, what each function
//! made of it, why other rules produced nothing) as a tree for people or JSON for tools.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use serde_json::value::RawValue;

use signal_engine::identity::MemoryStore;
use signal_engine::Context;

use super::run::inputs;
use super::{load_mapping, now_ms, usage, write_or_quit, Color, Failure, Format, MappingArgs};

pub(super) struct ExplainArgs {
    pub(super) inputs: Vec<PathBuf>,
    pub(super) mapping: MappingArgs,
    pub(super) stateless: bool,
    pub(super) show_pii: bool,
    pub(super) format: Format,
}

pub(super) fn explain(args: ExplainArgs, color: Color) -> Result<u8, Failure> {
    let Some(compiled) = load_mapping(args.mapping.map.as_deref(), args.mapping.params.as_deref(), "explain", color)?
    else {
        return Ok(1);
    };
    let Some(plan) = compiled.plan.as_ref() else { return Ok(1) };
    let now_ms = now_ms(args.mapping.now.as_deref())?;
    // Each input holds one document, a stream of them (NDJSON or pretty-printed), or an array: every event is
    // explained in order. All inputs are read and checked before the first explanation is written, and each event
    // is explained from its own text, which is borrowed, never parsed into a tree first.
    let mut texts = Vec::new();
    for input in inputs(&args.inputs) {
        let (file, mut reader) = input?;
        let name = file.unwrap_or_else(|| "stdin".to_string());
        let mut text = String::new();
        reader.read_to_string(&mut text).map_err(|e| usage(format!("cannot read {name}: {e}")))?;
        texts.push((name, text));
    }
    let mut events: Vec<&str> = Vec::new();
    for (name, text) in &texts {
        let not_json = |e: serde_json::Error| usage(format!("{name} is not JSON: {e}"));
        for document in serde_json::Deserializer::from_str(text).into_iter::<&RawValue>() {
            let document = document.map_err(not_json)?.get();
            if document.starts_with('[') {
                let items: Vec<&RawValue> = serde_json::from_str(document).map_err(not_json)?;
                events.extend(items.into_iter().map(RawValue::get));
            } else {
                events.push(document);
            }
        }
    }
    if events.is_empty() {
        return Err(usage("no event to explain: give one JSON event, several, or an array of them"));
    }
    let mut memory = MemoryStore::new(MemoryStore::DEFAULT_CAPACITY);
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let many = events.len() > 1;
    let mut rendered = Vec::with_capacity(1 << 14);
    for (index, event) in events.iter().enumerate() {
        let mut context =
            if args.stateless { Context::stateless(now_ms) } else { Context::with_identity(now_ms, &mut memory) };
        let mut explanation = signal_engine::explain::explain(plan, event, &mut context);
        if !args.show_pii {
            explanation.mask();
        }
        rendered.clear();
        match args.format {
            Format::Human => {
                if many {
                    rendered.extend_from_slice(format!("event {}\n", index + 1).as_bytes());
                }
                // Masked above when it had to be.
                rendered.extend_from_slice(explanation.render_text(true).as_bytes());
                if many {
                    rendered.push(b'\n');
                }
            }
            Format::Json => {
                serde_json::to_writer(&mut rendered, &explanation.json(Some(index + 1)))
                    .map_err(|e| usage(format!("cannot write output: {e}")))?;
                rendered.push(b'\n');
            }
        }
        write_or_quit(&mut out, &rendered)?;
    }
    out.flush().map_err(|e| usage(format!("cannot write stdout: {e}")))?;
    Ok(0)
}
