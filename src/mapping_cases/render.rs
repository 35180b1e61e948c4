//! Rendering in the style of `cargo test`: a progress line per file, each failing case with its field diffs, and a
//! summary.

use super::*;

/// How results are drawn.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn ok(&self) -> String {
        self.paint("32", "ok")
    }
    fn failed(&self) -> String {
        self.paint("31", "FAILED")
    }
}

/// The lines printed while a file runs: a header, then one line per case.
pub fn render_progress(report: &FileReport, style: Style) -> String {
    let mut out = String::new();
    if let Some(error) = &report.error {
        let _ = writeln!(out, "\nrunning {}", report.file);
        let _ = writeln!(out, "{}: {error}", style.paint("31", "error"));
        return out;
    }
    let count = report.cases.len();
    let _ = writeln!(out, "\nrunning {count} case{} from {}", plural(count), report.file);
    for case in &report.cases {
        let verdict = if case.passed() { style.ok() } else { style.failed() };
        let _ = writeln!(out, "case {} ... {verdict}", case.name);
    }
    out
}

/// The `failures:` section and the summary line, after every file has run.
pub fn render_summary(reports: &[FileReport], style: Style) -> String {
    let mut out = String::new();
    let failing: Vec<(&FileReport, &CaseReport)> =
        reports.iter().flat_map(|r| r.cases.iter().filter(|c| !c.passed()).map(move |c| (r, c))).collect();
    if !failing.is_empty() {
        out.push_str("\nfailures:\n");
        let mut shown_compile_errors = BTreeSet::new();
        for (report, case) in &failing {
            let _ = writeln!(out, "\n---- {}: {} ----", report.file, case.name);
            if let Some(mapping) = &report.mapping {
                let _ = writeln!(out, "mapping: {mapping}");
            }
            render_case_failures(&mut out, report, case, &mut shown_compile_errors, style);
        }
        out.push_str("\nfailures:\n");
        for (report, case) in &failing {
            let _ = writeln!(out, "    {}: {}", report.file, case.name);
        }
    }
    let passed: usize = reports.iter().map(FileReport::passed).sum();
    let failed: usize = reports.iter().map(FileReport::failed).sum();
    let filtered: usize = reports.iter().map(|r| r.filtered_out).sum();
    let invalid = reports.iter().filter(|r| r.error.is_some()).count();
    let ok = reports.iter().all(FileReport::ok);
    let verdict = if ok { style.ok() } else { style.failed() };
    let _ = write!(out, "\ntest result: {verdict}. {passed} passed, {failed} failed");
    if filtered > 0 {
        let _ = write!(out, ", {filtered} filtered out");
    }
    if invalid > 0 {
        let _ = write!(out, ", {invalid} test file{} could not be run", plural(invalid));
    }
    out.push('\n');
    out
}

pub(super) fn render_case_failures(
    out: &mut String,
    report: &FileReport,
    case: &CaseReport,
    shown_compile_errors: &mut BTreeSet<String>,
    style: Style,
) {
    let render_diagnostics = |errors: &CompileErrors| {
        diagnostic::render(&errors.diagnostics, &errors.sources, RenderOptions { color: style.color, width: 80 })
    };
    let mut current_event = None;
    let mut field_lines: Vec<(String, Option<String>)> = Vec::new();
    let flush = |out: &mut String, lines: &mut Vec<(String, Option<String>)>| {
        let width = lines
            .iter()
            .filter(|(_, source)| source.is_some())
            .map(|(t, _)| t.chars().count())
            .max()
            .unwrap_or(0)
            .min(72);
        for (text, source) in lines.drain(..) {
            match source {
                Some(source) => {
                    let pad = width.saturating_sub(text.chars().count());
                    let _ = writeln!(out, "  {text}{}   {}", " ".repeat(pad), style.paint("2", &format!("({source})")));
                }
                None => {
                    let _ = writeln!(out, "  {text}");
                }
            }
        }
    };
    for failure in &case.failures {
        if failure.event != current_event {
            flush(out, &mut field_lines);
            current_event = failure.event;
            if let Some(event) = failure.event {
                let label = case.events.get(event - 1).map(String::as_str).unwrap_or_default();
                let _ = writeln!(out, "event {event} of {} ({label}):", case.events.len());
            }
        }
        match &failure.mismatch {
            Mismatch::MappingErrors | Mismatch::CaseMappingErrors(_) => {
                let (errors, what) = match &failure.mismatch {
                    Mismatch::CaseMappingErrors(errors) => (Some(errors), " with this case's params"),
                    _ => (report.compile_errors.as_ref(), ""),
                };
                let _ = writeln!(out, "  the mapping has errors{what}; no event was applied");
                if let Some(errors) = errors {
                    // The same errors are drawn once, not once per case.
                    let rendered = render_diagnostics(errors);
                    if shown_compile_errors.insert(rendered.clone()) {
                        out.push_str(&rendered);
                    } else {
                        out.push_str("  (the same errors as shown above)\n");
                    }
                }
            }
            Mismatch::InvalidCase(message) => field_lines.push((format!("invalid test: {message}"), None)),
            Mismatch::Outcome { expected, actual, detail } => {
                field_lines.push((format!("expected {expected}, got {actual}"), None));
                if let Some(detail) = detail {
                    field_lines.push((format!("  {detail}"), None));
                }
            }
            Mismatch::Field(diff) => {
                let expected = diff.expected.as_ref().map_or_else(|| "absent".to_string(), show_value);
                let actual = diff.actual.as_ref().map_or_else(|| "absent".to_string(), show_value);
                field_lines.push((format!("{}: expected {expected}, got {actual}", diff.field), diff.source.clone()));
            }
            Mismatch::Warnings { expected, actual } => {
                let expected: Vec<String> = expected
                    .iter()
                    .map(|w| match &w.message {
                        Some(m) => format!("{} ({m:?})", w.field),
                        None => w.field.clone(),
                    })
                    .collect();
                field_lines.push((format!("warnings: expected [{}], got:", expected.join(", ")), None));
                if actual.is_empty() {
                    field_lines.push(("  none".to_string(), None));
                }
                for warning in actual {
                    field_lines.push((
                        format!("  {}: {}", warning.field, warning.message),
                        Some(format!("rule {}", warning.rule)),
                    ));
                }
            }
        }
    }
    flush(out, &mut field_lines);
}

/// A value as the diff shows it. Strings that look like an email address or a phone number are masked: a test
/// that expects a raw one is wrong, and its output must not spread the value further.
pub(super) fn show_value(value: &Value) -> String {
    match value {
        Value::String(text) if looks_personal(text) => mask(value).to_string(),
        _ => value.to_string(),
    }
}

pub(super) fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
