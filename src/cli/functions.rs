//! `engine functions`: the function library's reference, rendered from the declarations the compiler uses.

use std::io;

use clap::ValueEnum;
use serde_json::Value;

use signal_engine::{diagnostic, functions};

use super::{usage, write_or_quit, Failure};

#[derive(clap::Args)]
pub(super) struct FunctionsArgs {
    /// One function to show in full; without it, every function in brief.
    pub(super) name: Option<String>,
    /// `text` for a terminal, `markdown` (the reference, exactly docs/functions.md) or `json` for tools.
    #[arg(long, value_enum, default_value_t = DocFormat::Text)]
    pub(super) format: DocFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum DocFormat {
    Text,
    Markdown,
    Json,
}

/// `engine functions`: the library's docs, rendered from the declarations the compiler uses.
pub(super) fn functions(args: &FunctionsArgs) -> Result<u8, Failure> {
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
