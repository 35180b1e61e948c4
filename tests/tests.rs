//! The one integration-test binary: a module per area.

mod cli;
mod grammar;
mod presets;
mod properties;
