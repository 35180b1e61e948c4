//! The one integration-test binary: a module per area.

mod cli;
mod diagnostics;
mod explain;
mod fake_openai;
mod format;
mod functions;
mod grammar;
mod lsp;
mod mapping_tests;
mod presets;
mod properties;
mod relay;
mod relay_browser;
mod relay_dlq;
mod relay_docs;
mod relay_process;
mod relay_sdk;
mod runtime;
mod support;
