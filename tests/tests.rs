//! The one integration-test binary: a module per area.

mod cli;
mod diagnostics;
mod doors;
mod explain;
mod format;
mod functions;
mod grammar;
mod lsp;
mod mapping_tests;
mod presets;
mod properties;
mod quality;
mod relay;
mod runtime;
mod support;
