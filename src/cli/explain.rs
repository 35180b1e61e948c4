//! `engine explain`: each event's explanation (which rule produced each field, what it read, what each function
//! made of it, why other rules produced nothing) as a tree for people or JSON for tools.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

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
