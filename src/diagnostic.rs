//! Diagnostics: what every stage reports about a mapping, the registry of their stable codes, and their
//! rendering (rustc-style through miette, or JSON for editors and CI). Stages build diagnostics as plain data;
//! only this module knows how they are shown.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::ast::{FileId, Span};
use crate::source::Sources;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A stable diagnostic code. Codes are never reused for a different meaning; see [`codes::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Code(pub &'static str);

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The registry of diagnostic codes, one per distinct problem, grouped by stage.
pub mod codes {
    use super::Code;

    // Loading and parsing.
    pub const SYNTAX: Code = Code("engine::parse::syntax");
    pub const INVALID_ESCAPE: Code = Code("engine::parse::invalid_escape");
    pub const INVALID_NUMBER: Code = Code("engine::parse::invalid_number");
    pub const INVALID_DURATION: Code = Code("engine::parse::invalid_duration");
    pub const INCLUDE_NOT_FOUND: Code = Code("engine::parse::include_not_found");
    pub const INCLUDE_CYCLE: Code = Code("engine::parse::include_cycle");

    // Declarations and parameters.
    pub const UNKNOWN_TARGET_SCHEMA: Code = Code("engine::check::unknown_target_schema");
    pub const DUPLICATE_TARGET_DECL: Code = Code("engine::check::duplicate_target_decl");
    pub const UNKNOWN_PARAM_TYPE: Code = Code("engine::check::unknown_param_type");
    pub const DUPLICATE_PARAM: Code = Code("engine::check::duplicate_param");
    pub const PARAM_TYPE: Code = Code("engine::check::param_type");
    pub const MISSING_PARAM: Code = Code("engine::check::missing_param");
    pub const UNKNOWN_PARAM: Code = Code("engine::check::unknown_param");
    pub const UNUSED_PARAM: Code = Code("engine::check::unused_param");
    pub const UNDECLARED_PARAM_VALUE: Code = Code("engine::check::undeclared_param_value");

    // Routing.
    pub const UNKNOWN_EVENT_TYPE: Code = Code("engine::check::unknown_event_type");
    pub const INVALID_CUSTOM_EVENT_NAME: Code = Code("engine::check::invalid_custom_event_name");
    pub const SHAPE_MISMATCH: Code = Code("engine::check::shape_mismatch");
    pub const UNKNOWN_EVENT_KIND: Code = Code("engine::check::unknown_event_kind");
    pub const IDENTIFY_ROUTE: Code = Code("engine::check::identify_route");
    pub const DUPLICATE_ROUTE: Code = Code("engine::check::duplicate_route");
    pub const NO_ROUTES: Code = Code("engine::check::no_routes");
    pub const UNKNOWN_SELECTOR: Code = Code("engine::check::unknown_selector");
    pub const UNREACHABLE_RULE: Code = Code("engine::check::unreachable_rule");

    // Sources and functions.
    pub const UNKNOWN_FUNCTION: Code = Code("engine::check::unknown_function");
    pub const WRONG_ARITY: Code = Code("engine::check::wrong_arity");
    pub const ARGUMENT_TYPE: Code = Code("engine::check::argument_type");
    pub const INPUT_TYPE: Code = Code("engine::check::input_type");
    pub const CONSTANT_REQUIRED: Code = Code("engine::check::constant_required");
    pub const INVALID_ARGUMENT: Code = Code("engine::check::invalid_argument");
    pub const NOT_A_SOURCE: Code = Code("engine::check::not_a_source");
    pub const AMBIGUOUS_NAME: Code = Code("engine::check::ambiguous_name");
    pub const UNKNOWN_SOURCE_FIELD: Code = Code("engine::check::unknown_source_field");
    pub const UNKNOWN_PROPERTY: Code = Code("engine::check::unknown_property");
    pub const MISPLACED_WILDCARD: Code = Code("engine::check::misplaced_wildcard");
    pub const ELEMENT_OUTSIDE_BLOCK: Code = Code("engine::check::element_outside_block");

    // Targets and the OpenAI schema.
    pub const UNKNOWN_TARGET_FIELD: Code = Code("engine::check::unknown_target_field");
    pub const FIELD_NOT_IN_SHAPE: Code = Code("engine::check::field_not_in_shape");
    pub const TARGET_TYPE: Code = Code("engine::check::target_type");
    pub const SET_BY_ROUTE: Code = Code("engine::check::set_by_route");
    pub const NOT_A_LEAF: Code = Code("engine::check::not_a_leaf");
    pub const BLOCK_TARGET: Code = Code("engine::check::block_target");
    pub const MISSING_BLOCK: Code = Code("engine::check::missing_block");
    pub const MISSING_REQUIRED_FIELD: Code = Code("engine::check::missing_required_field");
    pub const AMOUNT_WITHOUT_CURRENCY: Code = Code("engine::check::amount_without_currency");
    pub const RAW_PII: Code = Code("engine::check::raw_pii");
    pub const DUPLICATE_TARGET: Code = Code("engine::check::duplicate_target");

    // Identity memory.
    pub const REMEMBER_NOT_PRODUCED: Code = Code("engine::check::remember_not_produced");
    pub const REMEMBER_TARGET: Code = Code("engine::check::remember_target");

    /// Every code with a one-line meaning, for `docs/` and for the test that codes stay unique.
    pub const ALL: &[(Code, &str)] = &[
        (SYNTAX, "the text does not follow the grammar"),
        (INVALID_ESCAPE, "a string literal has an unknown escape sequence"),
        (INVALID_NUMBER, "a number literal or array index is out of range"),
        (INVALID_DURATION, "a `remember … for` lifetime is zero or too long"),
        (INCLUDE_NOT_FOUND, "an included file cannot be read"),
        (INCLUDE_CYCLE, "files include each other in a cycle"),
        (UNKNOWN_TARGET_SCHEMA, "`target` names a schema that does not exist"),
        (DUPLICATE_TARGET_DECL, "`target` is declared twice"),
        (UNKNOWN_PARAM_TYPE, "a parameter is declared with an unknown type"),
        (DUPLICATE_PARAM, "a parameter is declared twice"),
        (PARAM_TYPE, "a parameter's default or given value has the wrong type"),
        (MISSING_PARAM, "a parameter without default was given no value"),
        (UNKNOWN_PARAM, "`$name` refers to no declared parameter"),
        (UNUSED_PARAM, "a declared parameter is never used"),
        (UNDECLARED_PARAM_VALUE, "a value was given for a parameter the mapping does not declare"),
        (UNKNOWN_EVENT_TYPE, "a route names an OpenAI event type that does not exist"),
        (INVALID_CUSTOM_EVENT_NAME, "a custom route's `custom_event_name` breaks OpenAI's rules"),
        (SHAPE_MISMATCH, "a route's data shape does not fit its event type"),
        (UNKNOWN_EVENT_KIND, "a route or `when` names an unknown Signal event kind"),
        (IDENTIFY_ROUTE, "a route takes identify or group events, which never produce conversions"),
        (DUPLICATE_ROUTE, "two routes take the same Signal event"),
        (NO_ROUTES, "the mapping has no routes, so every event is dropped"),
        (UNKNOWN_SELECTOR, "a `when` block names no route, event type or shape"),
        (UNREACHABLE_RULE, "a rule can never run"),
        (UNKNOWN_FUNCTION, "a call names a function that does not exist"),
        (WRONG_ARITY, "a call has too many or too few arguments"),
        (ARGUMENT_TYPE, "an argument has a type the function does not accept"),
        (INPUT_TYPE, "a function receives a value of a type it does not accept"),
        (CONSTANT_REQUIRED, "an argument that must be a literal or parameter reads the event"),
        (INVALID_ARGUMENT, "a constant argument has a value the function rejects"),
        (NOT_A_SOURCE, "a function that needs a piped input is used as a source"),
        (AMBIGUOUS_NAME, "a bare name could mean an envelope field or a property"),
        (UNKNOWN_SOURCE_FIELD, "a path names a Signal envelope field that does not exist"),
        (UNKNOWN_PROPERTY, "a rule reads a property no event it applies to is known to carry (a misspelling?)"),
        (MISPLACED_WILDCARD, "`[*]` appears where one value is expected"),
        (ELEMENT_OUTSIDE_BLOCK, "`@` is used outside an element block"),
        (UNKNOWN_TARGET_FIELD, "a target names a field the OpenAI schema does not have"),
        (FIELD_NOT_IN_SHAPE, "a target field does not belong to the data shape of a route the rule applies to"),
        (TARGET_TYPE, "the value written has a type the target field cannot hold"),
        (SET_BY_ROUTE, "a rule writes a field that the route table sets"),
        (NOT_A_LEAF, "a rule writes an object or array field as a whole"),
        (BLOCK_TARGET, "an element block's source or target is not an array"),
        (MISSING_BLOCK, "an array target is written without element rules"),
        (MISSING_REQUIRED_FIELD, "a route's events would lack a field OpenAI requires"),
        (AMOUNT_WITHOUT_CURRENCY, "an amount is written where no rule writes its currency"),
        (RAW_PII, "personal data reaches the output without passing through a hash"),
        (DUPLICATE_TARGET, "two rules write the same target for the same route"),
        (REMEMBER_NOT_PRODUCED, "a remembered field is produced by no rule that applies to every event"),
        (REMEMBER_TARGET, "`remember` names a field that cannot be remembered"),
    ];
}

/// One labelled span of a diagnostic.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// A problem found in a mapping: a stable code, a message, a primary label saying what is wrong here, context
/// labels saying why, and help saying what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    pub message: String,
    pub primary: Label,
    pub context: Vec<Label>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: Code, message: impl Into<String>, span: Span, label: impl Into<String>) -> Self {
        Self::new(code, Severity::Error, message, span, label)
    }

    pub fn warning(code: Code, message: impl Into<String>, span: Span, label: impl Into<String>) -> Self {
        Self::new(code, Severity::Warning, message, span, label)
    }

    fn new(code: Code, severity: Severity, message: impl Into<String>, span: Span, label: impl Into<String>) -> Self {
        Diagnostic {
            code,
            severity,
            message: message.into(),
            primary: Label { span, message: label.into() },
            context: Vec::new(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_context(mut self, span: Span, message: impl Into<String>) -> Self {
        self.context.push(Label { span, message: message.into() });
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The closest of `candidates` to `name`, if close enough to be worth suggesting.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name_lower = name.to_ascii_lowercase();
    let mut best: Option<(&str, usize)> = None;
    for candidate in candidates {
        let distance = edit_distance(&name_lower, &candidate.to_ascii_lowercase());
        let limit = (name.chars().count().max(candidate.chars().count()) / 3).max(1);
        if distance <= limit && best.is_none_or(|(_, d)| distance < d) {
            best = Some((candidate, distance));
        }
    }
    best.map(|(candidate, _)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// `help: did you mean `x`?` when there is a close candidate.
pub fn suggestion(name: &str, candidates: &[&str]) -> Option<String> {
    did_you_mean(name, candidates.iter().copied()).map(|c| format!("did you mean `{c}`?"))
}

// ---- rendering ----

struct Rendered<'a> {
    diagnostic: &'a Diagnostic,
    source: miette::NamedSource<Arc<str>>,
}

impl fmt::Debug for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diagnostic.message)
    }
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diagnostic.message)
    }
}

impl std::error::Error for Rendered<'_> {}

impl miette::Diagnostic for Rendered<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.diagnostic.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diagnostic.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diagnostic.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let primary = &self.diagnostic.primary;
        let primary_span = primary.span;
        let labels = std::iter::once(miette::LabeledSpan::new_primary_with_span(
            Some(primary.message.clone()),
            (primary.span.start, primary.span.end - primary.span.start),
        ))
        .chain(
            self.diagnostic
                .context
                .iter()
                // A context label in another file cannot be drawn on this file's snippet.
                .filter(move |l| l.span.file == primary_span.file)
                .map(|l| {
                    miette::LabeledSpan::new_with_span(
                        Some(l.message.clone()),
                        (l.span.start, l.span.end - l.span.start),
                    )
                }),
        );
        Some(Box::new(labels))
    }
}

/// How diagnostics are drawn for a person.
#[derive(Clone, Copy, Debug)]
pub struct RenderOptions {
    pub color: bool,
    pub width: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions { color: false, width: 80 }
    }
}

/// Draws diagnostics rustc-style, each with the snippet of the file it points into.
pub fn render(diagnostics: &[Diagnostic], sources: &Sources, options: RenderOptions) -> String {
    let theme =
        if options.color { miette::GraphicalTheme::unicode() } else { miette::GraphicalTheme::unicode_nocolor() };
    let handler = miette::GraphicalReportHandler::new_themed(theme).with_width(options.width).with_links(false);
    let mut out = String::new();
    // Each file's text is shared by its diagnostics rather than copied for each: thousands of warnings on a large
    // file must not cost thousands of copies of it.
    let mut texts: HashMap<FileId, Arc<str>> = HashMap::new();
    for diagnostic in diagnostics {
        let file = sources.get(diagnostic.primary.span.file);
        let text = texts.entry(diagnostic.primary.span.file).or_insert_with(|| Arc::from(file.text.as_str())).clone();
        let same_file = diagnostic.context.iter().filter(|l| l.span.file == diagnostic.primary.span.file);
        let undrawable = std::iter::once(&diagnostic.primary).chain(same_file).any(|l| line_too_long(&text, l.span));
        if undrawable {
            plain(&mut out, diagnostic, sources);
        } else {
            let rendered = Rendered { diagnostic, source: miette::NamedSource::new(file.name.clone(), text) };
            if handler.render_report(&mut out, &rendered).is_err() {
                out.push_str(&diagnostic.message);
            }
        }
        for label in diagnostic.context.iter().filter(|l| l.span.file != diagnostic.primary.span.file) {
            out.push_str(&format!("  note: {} ({})\n", label.message, sources.location(label.span)));
        }
        out.push('\n');
    }
    out
}

/// Lines longer than this are not drawn as a snippet (the renderer cannot pad past 65,535 columns, and a
/// snippet of a minified line helps no one): such a diagnostic is written as text with its location.
const LONGEST_DRAWN_LINE: usize = 10_000;

fn line_too_long(text: &str, span: Span) -> bool {
    let start = span.start.min(text.len());
    let line_start = text.get(..start).and_then(|before| before.rfind('\n')).map_or(0, |i| i + 1);
    let line_end = text.get(start..).and_then(|after| after.find('\n')).map_or(text.len(), |i| start + i);
    line_end - line_start > LONGEST_DRAWN_LINE
}

/// A diagnostic without its snippet: code, message, where, what the labels say, and the help.
fn plain(out: &mut String, diagnostic: &Diagnostic, sources: &Sources) {
    let mark = match diagnostic.severity {
        Severity::Error => "×",
        Severity::Warning => "⚠",
    };
    out.push_str(&format!("{}\n\n  {mark} {}\n", diagnostic.code, diagnostic.message));
    out.push_str(&format!("  at {}: {}\n", sources.location(diagnostic.primary.span), diagnostic.primary.message));
    // Labels in other files follow as notes for every diagnostic (see `render`).
    for label in diagnostic.context.iter().filter(|l| l.span.file == diagnostic.primary.span.file) {
        out.push_str(&format!("  note: {} ({})\n", label.message, sources.location(label.span)));
    }
    if let Some(help) = &diagnostic.help {
        out.push_str(&format!("  help: {help}\n"));
    }
}

/// The JSON form of one diagnostic, for `engine check --format json`.
#[derive(Serialize)]
pub struct JsonDiagnostic {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    pub label: String,
    pub context: Vec<JsonLabel>,
    pub help: Option<String>,
}

#[derive(Serialize)]
pub struct JsonLabel {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

pub fn to_json(diagnostic: &Diagnostic, sources: &Sources) -> JsonDiagnostic {
    let span = diagnostic.primary.span;
    let (line, column) = sources.line_col(span);
    let (end_line, end_column) = sources.line_col(Span { start: span.end, ..span });
    JsonDiagnostic {
        code: diagnostic.code.0,
        severity: diagnostic.severity,
        message: diagnostic.message.clone(),
        file: sources.get(span.file).name.clone(),
        line,
        column,
        end_line,
        end_column,
        label: diagnostic.primary.message.clone(),
        context: diagnostic
            .context
            .iter()
            .map(|l| {
                let (line, column) = sources.line_col(l.span);
                JsonLabel { file: sources.get(l.span.file).name.clone(), line, column, message: l.message.clone() }
            })
            .collect(),
        help: diagnostic.help.clone(),
    }
}
