//! The one integration-test binary: a module per area.

mod cli;
mod diagnostics;
mod explain;
mod functions;
mod grammar;
mod presets;
mod properties;
mod runtime;
