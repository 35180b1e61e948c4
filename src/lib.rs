//! signal-engine: compiles mappings from Signal analytics events to OpenAI Ads Conversions API events, and
//! applies them.
#![forbid(unsafe_code)]

pub mod ast;
pub mod compile;
pub mod diagnostic;
mod eval;
pub mod explain;
pub mod files;
pub mod format;
pub mod functions;
pub mod identity;
mod input;
pub mod mapping_cases;
mod observe;
pub mod personal;
pub mod plan;
pub mod presets;
pub mod quality;
#[cfg(feature = "relay")]
pub mod relay;
pub mod run;
pub mod schema;
pub mod source;
mod spare;
pub mod syntax;
#[cfg(test)]
mod testing;
pub mod yaml;

pub use compile::{compile, CompileOptions, Compiled};
pub use plan::Plan;
pub use run::{Context, Outcome};

/// The README's Rust examples, compiled and run as doctests so the README stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
