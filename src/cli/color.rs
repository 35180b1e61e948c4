//! Whether the binary colours what it writes: `--color` and the environment's conventions, decided in one place.

use std::io::IsTerminal;

/// `--color`, which every command takes.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Color {
    /// Colour a terminal, unless the environment says otherwise.
    #[default]
    Auto,
    Always,
    Never,
}

impl Color {
    /// Whether to colour text written to `stream`. `auto` follows the conventions other tools follow (read with
    /// `anstyle-query`, as clap and cargo read them): `NO_COLOR` set and not empty turns colour off,
    /// `CLICOLOR_FORCE` set and not `0` turns it on even into a pipe, `CLICOLOR=0` turns it off, and otherwise a
    /// terminal whose `TERM` is set and not `dumb` gets colour.
    pub fn enabled(self, stream: &impl IsTerminal) -> bool {
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto if anstyle_query::no_color() => false,
            // The clicolors convention: any value but `0` forces colour (anstyle-query counts `0` as set).
            Color::Auto if std::env::var_os("CLICOLOR_FORCE").is_some_and(|v| !v.is_empty() && v != "0") => true,
            Color::Auto if anstyle_query::clicolor() == Some(false) => false,
            Color::Auto => stream.is_terminal() && anstyle_query::term_supports_color(),
        }
    }
}
