//! The `engine` binary: a thin shell over the `signal_engine` library (see `cli` for commands and exit codes).

#![forbid(unsafe_code)]

mod cli;
mod lsp;

fn main() -> std::process::ExitCode {
    cli::main()
}
