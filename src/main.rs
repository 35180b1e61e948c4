//! The `engine` binary: a thin shell over the `signal_engine` library (see `cli` for commands and exit codes).

#![forbid(unsafe_code)]

mod cli;
mod lsp;

// The engine allocates and frees a few dozen small values per event, and the relay many more per request: mimalloc
// serves them from per-thread pages with less work than glibc's malloc (benches/README.md has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
