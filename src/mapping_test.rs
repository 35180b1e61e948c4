//! Mapping tests (`engine test`): the YAML test-file format that sits beside a mapping, the runner that applies
//! the mapping to each case's events and compares the outcomes with what the file expects, the result model,
//! and its `cargo test`-style rendering. The runner is pure: it reads the mapping through a [`SourceLoader`] and
//! takes its clock from the file, so a test gives the same result on every machine and every day.
//!
//! ```yaml
//! mapping: openai_ads.map          # optional: default = the .map with the same stem beside the test file
//! now: 2026-11-20T12:00:00Z        # the clock of the timestamp window, for every case; a case may override it
//! params: {consent_category: marketing}   # parameter values; a case's `params` override and extend these
//! cases:
//!   - name: order completed with a string amount
//!     events:                      # applied in order with one identity memory per case
//!       - input: {type: track, event: Order Completed, …}
//!         expect:
//!           fields: {data.amount: 12999, data.contents[0].id: SKU-A}   # partial: only the listed fields
//!           absent: [user.email]                                        # fields that must not be sent
//!       - input: …
//!         expect: {event: {…}}                                        # exact: the whole OpenAI event
//!       - input: …
//!         expect: {dropped: unmapped}
//!       - input: …
//!         expect: {rejected: timestamp_out_of_window, field: timestamp_ms}
//! ```

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::diagnostic::{self, codes, Diagnostic, RenderOptions};
use crate::explain::{explain, Explanation, Origin};
use crate::identity::MemoryStore;
use crate::personal::{looks_personal, mask};
use crate::plan::Plan;
use crate::run::{DropReason, Outcome, RejectReason, Warning};
use crate::schema::TargetSchema;
use crate::source::{SourceLoader, Sources};
use crate::{compile, CompileOptions, Compiled, Context};

/// The suffix that marks a mapping test file.
pub const TEST_FILE_SUFFIX: &str = ".test.yaml";

// ---- the file format ----

/// One test file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The mapping under test, relative to the test file; default: `<stem>.map` beside `<stem>.test.yaml`.
    #[serde(default)]
    pub mapping: Option<String>,
    /// The clock for every case that does not set its own.
    #[serde(default)]
    pub now: Option<Now>,
    /// Parameter values for every case.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// A place for YAML anchors (`&order`) that cases reuse (`<<: *order`); not read otherwise.
    #[serde(default)]
    pub templates: Option<serde_norway::Value>,
    pub cases: Vec<Case>,
}

/// One test case: events applied in order with one identity memory, and what each must produce.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub now: Option<Now>,
    /// Parameter values that override or extend the file's.
    #[serde(default)]
    pub params: Map<String, Value>,
    pub events: Vec<Step>,
}

/// One input event and its expected outcome.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The Signal event. Kept as YAML so that merge keys (`<<: *template`) work.
    pub input: serde_norway::Value,
    pub expect: Expectation,
}

/// An RFC 3339 time, as epoch milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now(pub i64);

impl<'de> Deserialize<'de> for Now {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse::<jiff::Timestamp>().map(|t| Now(t.as_millisecond())).map_err(|e| {
            de::Error::custom(format!("`now` must be an RFC 3339 time such as 2026-11-20T12:00:00Z, got {text:?}: {e}"))
        })
    }
}

/// What one event must produce.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RawExpectation")]
pub enum Expectation {
    /// An OpenAI event: exactly `event`, or one that has the listed `fields` and lacks the `absent` ones.
    Mapped {
        event: Option<Value>,
        fields: Vec<(String, Value)>,
        absent: Vec<String>,
        warnings: Option<Vec<ExpectedWarning>>,
    },
    Dropped {
        reason: DropReason,
        message: Option<String>,
    },
    Rejected {
        reason: RejectReason,
        field: Option<String>,
        message: Option<String>,
        warnings: Option<Vec<ExpectedWarning>>,
    },
}

/// A warning the event must produce: its field, and text its message contains.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedWarning {
    pub field: String,
    #[serde(default)]
    pub message: Option<String>,
}

/// `expect:` as written, before the combinations are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpectation {
    #[serde(default)]
    event: Option<Value>,
    #[serde(default)]
    fields: Option<OrderedFields>,
    #[serde(default)]
    absent: Option<Vec<String>>,
    #[serde(default)]
    dropped: Option<DropReason>,
    #[serde(default)]
    rejected: Option<RejectReason>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    warnings: Option<Vec<ExpectedWarning>>,
}

impl TryFrom<RawExpectation> for Expectation {
    type Error = String;

    fn try_from(raw: RawExpectation) -> Result<Self, String> {
        let mapped = raw.event.is_some() || raw.fields.is_some() || raw.absent.is_some();
        let chosen = [mapped, raw.dropped.is_some(), raw.rejected.is_some()].iter().filter(|c| **c).count();
        if chosen == 0 {
            return Err(
                "say what the event must produce: `event` or `fields`/`absent` (mapped), `dropped` or `rejected`"
                    .to_string(),
            );
        }
        if chosen > 1 {
            return Err(
                "an event has one outcome: give `event` or `fields`/`absent` (mapped), `dropped` or `rejected`, not several"
                    .to_string(),
            );
        }
        if raw.event.is_some() && (raw.fields.is_some() || raw.absent.is_some()) {
            return Err("`event` is the whole expected event; `fields` and `absent` are for a partial match: use one"
                .to_string());
        }
        if raw.field.is_some() && raw.rejected.is_none() {
            return Err("`field` names the field a rejection blames: it goes with `rejected`".to_string());
        }
        if raw.message.is_some() && raw.dropped.is_none() && raw.rejected.is_none() {
            return Err("`message` is checked on drops and rejections; for warnings use `warnings`".to_string());
        }
        if raw.warnings.is_some() && raw.dropped.is_some() {
            return Err("a dropped event has no warnings".to_string());
        }
        Ok(if let Some(reason) = raw.dropped {
            Expectation::Dropped { reason, message: raw.message }
        } else if let Some(reason) = raw.rejected {
            Expectation::Rejected { reason, field: raw.field, message: raw.message, warnings: raw.warnings }
        } else {
            Expectation::Mapped {
                event: raw.event,
                fields: raw.fields.map(|f| f.0).unwrap_or_default(),
                absent: raw.absent.unwrap_or_default(),
                warnings: raw.warnings,
            }
        })
    }
}

/// `fields:` in the order written, so failures are listed in the order the test names them.
struct OrderedFields(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = OrderedFields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of output field (dotted path, e.g. data.contents[0].id) to expected value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedFields, A::Error> {
                let mut fields: Vec<(String, Value)> = Vec::new();
                while let Some(path) = map.next_key::<String>()? {
                    let value: Value = map.next_value()?;
                    if value.is_null() {
                        return Err(de::Error::custom(format!(
                            "`{path}: null`: the output never holds null; to expect no value, list the field under `absent:`"
                        )));
                    }
                    if fields.iter().any(|(p, _)| *p == path) {
                        return Err(de::Error::custom(format!("`{path}` is listed twice")));
                    }
                    fields.push((path, value));
                }
                Ok(OrderedFields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// Why a test file could not be read: its name, and the line and column when the YAML tells them.
#[derive(Clone, Debug, PartialEq)]
pub struct FileError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "{}:{line}:{column}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Parses a test file; `name` is how errors name it.
pub fn parse(name: &str, text: &str) -> Result<TestFile, FileError> {
    let file: TestFile = serde_norway::from_str(text).map_err(|error| {
        let location = error.location();
        let mut message = error.to_string();
        // The location is given separately, as `file:line:col`.
        if let Some(cut) = message.rfind(" at line ") {
            message.truncate(cut);
        }
        FileError {
            file: name.to_string(),
            line: location.as_ref().map(|l| l.line()),
            column: location.map(|l| l.column()),
            message,
        }
    })?;
    let plain = |message: String| FileError { file: name.to_string(), line: None, column: None, message };
    if file.cases.is_empty() {
        return Err(plain("the file has no cases".to_string()));
    }
    let mut names = BTreeSet::new();
    for case in &file.cases {
        if case.name.trim().is_empty() {
            return Err(plain("every case needs a `name`".to_string()));
        }
        if !names.insert(case.name.as_str()) {
            return Err(plain(format!(
                "two cases are named {:?}; names tell failures apart, so they must differ",
                case.name
            )));
        }
        if case.events.is_empty() {
            return Err(plain(format!("case {:?} has no events", case.name)));
        }
        if case.now.or(file.now).is_none() {
            return Err(plain(format!(
                "case {:?} has no `now`: set `now:` at the top of the file or in the case, so the timestamp window is the same on every run",
                case.name
            )));
        }
    }
    Ok(file)
}

/// The mapping a test file tests when it does not say: `openai_ads.test.yaml` tests `openai_ads.map`.
pub fn default_mapping(test_file: &str) -> String {
    let file_name = test_file.rsplit(['/', '\\']).next().unwrap_or(test_file);
    let stem = file_name.strip_suffix(TEST_FILE_SUFFIX).unwrap_or(file_name);
    format!("{stem}.map")
}

// ---- results ----

/// The result of running one test file.
#[derive(Debug)]
pub struct FileReport {
    /// The test file, as named by the caller.
    pub file: String,
    /// The mapping it tested, as the compiler named it.
    pub mapping: Option<String>,
    /// The file could not be run at all (invalid YAML, unknown key, unreadable mapping): no case ran.
    pub error: Option<FileError>,
    /// The mapping (with the file's parameters) has errors: every case fails, and these say why.
    pub compile_errors: Option<CompileErrors>,
    pub cases: Vec<CaseReport>,
    /// Cases left out by the name filter.
    pub filtered_out: usize,
}

impl FileReport {
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.passed()).count()
    }

    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }

    pub fn ok(&self) -> bool {
        self.error.is_none() && self.cases.iter().all(CaseReport::passed)
    }
}

/// A mapping's diagnostics with the sources they point into, for rendering.
#[derive(Debug, Clone)]
pub struct CompileErrors {
    pub diagnostics: Vec<Diagnostic>,
    pub sources: Sources,
}

#[derive(Debug)]
pub struct CaseReport {
    pub name: String,
    /// What each input event is, for failure headers: `track "Order Completed"`, `page`.
    pub events: Vec<String>,
    /// Empty when the case passed.
    pub failures: Vec<Failure>,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What went wrong in a case; `event` is the 1-based index of the event, `None` for the case as a whole.
#[derive(Debug)]
pub struct Failure {
    pub event: Option<usize>,
    pub mismatch: Mismatch,
}

#[derive(Debug)]
pub enum Mismatch {
    /// The file's mapping does not compile (its diagnostics are in [`FileReport::compile_errors`]).
    MappingErrors,
    /// The mapping does not compile with this case's parameters.
    CaseMappingErrors(CompileErrors),
    /// The case itself is wrong: an input that is not JSON, a field the target does not have.
    InvalidCase(String),
    /// A different kind of outcome than expected (an event where a drop was expected, another reason, …).
    Outcome {
        expected: String,
        actual: String,
        detail: Option<String>,
    },
    /// One output field differs.
    Field(FieldDiff),
    Warnings {
        expected: Vec<ExpectedWarning>,
        actual: Vec<Warning>,
    },
}

/// A field whose value differs from the expected one; `None` means absent.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDiff {
    pub field: String,
    pub expected: Option<Value>,
    pub actual: Option<Value>,
    /// Where the value came from: `rule FILE:LINE:COL` (the rule that produced the field, or that was meant to
    /// and produced nothing), `identity memory`, or `route table FILE:LINE:COL`.
    pub source: Option<String>,
}

// ---- the runner ----

/// Runs every case of a test file whose name contains `filter`. `name` is the test file's path, through which
/// `loader` finds the mapping (relative to the test file) and its includes.
pub fn run_file(name: &str, text: &str, loader: &dyn SourceLoader, filter: Option<&str>) -> FileReport {
    let mut report = FileReport {
        file: name.to_string(),
        mapping: None,
        error: None,
        compile_errors: None,
        cases: Vec::new(),
        filtered_out: 0,
    };
    let file = match parse(name, text) {
        Ok(file) => file,
        Err(error) => {
            report.error = Some(error);
            return report;
        }
    };
    let mapping_path = file.mapping.clone().unwrap_or_else(|| default_mapping(name));
    let (mapping_name, mapping_text) = match loader.load(name, &mapping_path) {
        Ok(loaded) => loaded,
        Err(error) => {
            report.error = Some(FileError {
                file: name.to_string(),
                line: None,
                column: None,
                message: format!("cannot read the mapping {mapping_path:?}: {error}"),
            });
            return report;
        }
    };
    report.mapping = Some(mapping_name.clone());
    let compile_with = |params: &Map<String, Value>| {
        compile(&mapping_name, &mapping_text, loader, &CompileOptions { params: params.clone() })
    };
    let shared = compile_with(&file.params);
    if shared.plan.is_none() {
        report.compile_errors =
            Some(CompileErrors { diagnostics: shared.diagnostics.clone(), sources: shared.sources.clone() });
    }
    for case in &file.cases {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            report.filtered_out += 1;
            continue;
        }
        let now_ms = case.now.or(file.now).map(|n| n.0).unwrap_or_default();
        let failures = if case.params.is_empty() {
            match &shared.plan {
                Some(plan) => with_param_problems(&shared, run_case(plan, case, now_ms)),
                None => vec![Failure { event: None, mismatch: Mismatch::MappingErrors }],
            }
        } else {
            let mut params = file.params.clone();
            params.extend(case.params.clone());
            let compiled = compile_with(&params);
            match &compiled.plan {
                Some(plan) => with_param_problems(&compiled, run_case(plan, case, now_ms)),
                None => vec![Failure {
                    event: None,
                    mismatch: Mismatch::CaseMappingErrors(CompileErrors {
                        diagnostics: compiled.diagnostics,
                        sources: compiled.sources,
                    }),
                }],
            }
        };
        let events = case.events.iter().map(|step| event_label(&step.input)).collect();
        report.cases.push(CaseReport { name: case.name.clone(), events, failures });
    }
    report
}

/// A parameter the mapping does not declare is only a warning for `engine check`, but in a test it is a typo
/// that would silently test the default value instead: it fails the case.
fn with_param_problems(compiled: &Compiled, mut failures: Vec<Failure>) -> Vec<Failure> {
    let problems = compiled.diagnostics.iter().filter(|d| d.code == codes::UNDECLARED_PARAM_VALUE).map(|d| {
        let help = d.help.as_deref().map(|h| format!("; {h}")).unwrap_or_default();
        Failure { event: None, mismatch: Mismatch::InvalidCase(format!("params: {}{help}", d.message)) }
    });
    failures.splice(0..0, problems);
    failures
}

/// Applies a case's events in order with a fresh identity memory and compares each outcome.
fn run_case(plan: &Plan, case: &Case, now_ms: i64) -> Vec<Failure> {
    let mut memory = MemoryStore::default();
    let mut failures = Vec::new();
    for (index, step) in case.events.iter().enumerate() {
        let event = Some(index + 1);
        let mut invalid = |message: String| failures.push(Failure { event, mismatch: Mismatch::InvalidCase(message) });
        let input = match yaml_to_json(&step.input) {
            Ok(input) => input,
            Err(message) => {
                invalid(message);
                continue;
            }
        };
        for path in expectation_paths(&step.expect) {
            if let Err(message) = check_target_path(plan, path) {
                invalid(message);
            }
        }
        let explanation = explain(plan, &input.to_string(), &mut Context::with_identity(now_ms, &mut memory));
        failures.extend(compare(&step.expect, &explanation).into_iter().map(|mismatch| Failure { event, mismatch }));
    }
    failures
}

/// `track "Order Completed"`, `page`: what an input event is, without any of its values.
fn event_label(input: &serde_norway::Value) -> String {
    let input = yaml_to_json(input).unwrap_or_default();
    let kind = input.get("type").and_then(Value::as_str);
    let name = input.get("event").and_then(Value::as_str);
    match (kind, name) {
        (Some("track"), Some(name)) => format!("track {name:?}"),
        (Some(kind), _) => kind.to_string(),
        (None, _) => "no type".to_string(),
    }
}

/// The input event as JSON, with YAML merge keys applied.
fn yaml_to_json(input: &serde_norway::Value) -> Result<Value, String> {
    let mut input = input.clone();
    input.apply_merge().map_err(|e| format!("the input's merge keys (`<<`) cannot be applied: {e}"))?;
    serde_json::to_value(&input).map_err(|e| format!("the input cannot be JSON: {e}"))
}

/// The output fields an expectation names, which must exist in the target schema.
fn expectation_paths(expect: &Expectation) -> Vec<&str> {
    let mut paths = Vec::new();
    let warnings = match expect {
        Expectation::Mapped { fields, absent, warnings, .. } => {
            paths.extend(fields.iter().map(|(p, _)| p.as_str()));
            paths.extend(absent.iter().map(String::as_str));
            warnings
        }
        Expectation::Rejected { field, warnings, .. } => {
            paths.extend(field.as_deref());
            warnings
        }
        Expectation::Dropped { .. } => &None,
    };
    paths.extend(warnings.iter().flatten().map(|w| w.field.as_str()));
    paths
}

/// Every field path of the target schema, objects and arrays included, element indexes left out
/// (`data.contents.id`): what a test may name, whether or not this mapping writes it.
fn target_paths(target: &TargetSchema) -> Vec<String> {
    let mut out = Vec::new();
    target.walk(&mut |keys, _| out.push(keys.join(".")));
    out.sort();
    out.dedup();
    out
}

/// `data.contents[0].id` and `data.contents[*].id` → `data.contents.id`; `None` when brackets are malformed.
fn without_indexes(path: &str) -> Option<String> {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find(']')? + open;
        let index = &rest[open + 1..close];
        if !(index == "*" || (!index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))) {
            return None;
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn check_target_path(plan: &Plan, path: &str) -> Result<(), String> {
    let known = target_paths(plan.target_schema());
    let bare = without_indexes(path)
        .ok_or_else(|| format!("`{path}` is not a field path: write indexes as `[0]`, e.g. `data.contents[0].id`"))?;
    if known.contains(&bare) {
        return Ok(());
    }
    let target = plan.target_schema().name.as_str();
    let hint = diagnostic::did_you_mean(&bare, known.iter().map(String::as_str))
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default();
    Err(format!("`{path}` is not a field of the {target} target{hint}"))
}

/// Compares one outcome with its expectation.
fn compare(expect: &Expectation, explanation: &Explanation) -> Vec<Mismatch> {
    let mut mismatches = Vec::new();
    match (expect, &explanation.outcome) {
        (Expectation::Mapped { event, fields, absent, warnings }, Outcome::Mapped(mapped)) => {
            let actual = ordered_leaves(&mapped.json);
            let mut expectations: Vec<(&str, Option<&Value>)> = Vec::new();
            if let Some(event) = event {
                expectations.push(("", Some(event)));
            }
            expectations.extend(fields.iter().map(|(path, value)| (path.as_str(), Some(value))));
            expectations.extend(absent.iter().map(|path| (path.as_str(), None)));
            for (path, expected) in expectations {
                for diff in diff_at(path, expected, &actual) {
                    let source = provenance(explanation, &diff.field).or_else(|| {
                        diff.actual.is_none().then(|| "no rule of this event's route writes it".to_string())
                    });
                    mismatches.push(Mismatch::Field(FieldDiff { source, ..diff }));
                }
            }
            if let Some(warnings) = warnings {
                compare_warnings(warnings, &mapped.warnings, &mut mismatches);
            }
        }
        (Expectation::Dropped { reason, message }, Outcome::Dropped(dropped)) => {
            if dropped.reason != *reason || message.as_ref().is_some_and(|m| !dropped.message.contains(m.as_str())) {
                mismatches.push(Mismatch::Outcome {
                    expected: describe_expectation(expect),
                    actual: format!("dropped: {}", reason_name(&dropped.reason)),
                    detail: Some(dropped.message.clone()),
                });
            }
        }
        (Expectation::Rejected { reason, field, message, warnings }, Outcome::Rejected(rejected)) => {
            let differs = rejected.reason != *reason
                || field.as_ref().is_some_and(|f| rejected.field.as_ref() != Some(f))
                || message.as_ref().is_some_and(|m| !rejected.message.contains(m.as_str()));
            if differs {
                mismatches.push(Mismatch::Outcome {
                    expected: describe_expectation(expect),
                    actual: describe_rejection(rejected.reason, rejected.field.as_deref()),
                    detail: Some(with_rule(&rejected.message, rejected.rule.as_deref())),
                });
            }
            if let Some(warnings) = warnings {
                compare_warnings(warnings, &rejected.warnings, &mut mismatches);
            }
        }
        (_, actual) => {
            let (actual, detail) = match actual {
                Outcome::Mapped(mapped) => ("an event".to_string(), Some(format!("type {}", mapped.event_type))),
                Outcome::Dropped(dropped) => {
                    (format!("dropped: {}", reason_name(&dropped.reason)), Some(dropped.message.clone()))
                }
                Outcome::Rejected(rejected) => (
                    describe_rejection(rejected.reason, rejected.field.as_deref()),
                    Some(with_rule(&rejected.message, rejected.rule.as_deref())),
                ),
            };
            mismatches.push(Mismatch::Outcome { expected: describe_expectation(expect), actual, detail });
        }
    }
    mismatches
}

fn with_rule(message: &str, rule: Option<&str>) -> String {
    match rule {
        Some(rule) => format!("{message} (rule {rule})"),
        None => message.to_string(),
    }
}

fn compare_warnings(expected: &[ExpectedWarning], actual: &[Warning], mismatches: &mut Vec<Mismatch>) {
    let matches = expected.len() == actual.len()
        && expected
            .iter()
            .zip(actual)
            .all(|(e, a)| e.field == a.field && e.message.as_ref().is_none_or(|m| a.message.contains(m.as_str())));
    if !matches {
        mismatches.push(Mismatch::Warnings { expected: expected.to_vec(), actual: actual.to_vec() });
    }
}

fn reason_name(reason: &impl serde::Serialize) -> String {
    serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn describe_rejection(reason: RejectReason, field: Option<&str>) -> String {
    match field {
        Some(field) => format!("rejected: {} at `{field}`", reason_name(&reason)),
        None => format!("rejected: {}", reason_name(&reason)),
    }
}

fn describe_expectation(expect: &Expectation) -> String {
    match expect {
        Expectation::Mapped { .. } => "an event".to_string(),
        Expectation::Dropped { reason, message } => match message {
            Some(m) => format!("dropped: {} with a message containing {m:?}", reason_name(reason)),
            None => format!("dropped: {}", reason_name(reason)),
        },
        Expectation::Rejected { reason, field, message, .. } => {
            let mut text = describe_rejection(*reason, field.as_deref());
            if let Some(m) = message {
                let _ = write!(text, " with a message containing {m:?}");
            }
            text
        }
    }
}

/// The leaves of a JSON document as dotted paths (`data.contents[0].id`) in the order they are written; an
/// empty object or array is a leaf of its own.
fn ordered_leaves(json: &str) -> Vec<(String, Value)> {
    let mut leaves = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_str(json);
    // The engine wrote this JSON itself: it always parses.
    let _ = Leaves { path: String::new(), out: &mut leaves }.deserialize(&mut deserializer);
    leaves
}

/// The leaves of an expected value below `prefix`.
fn value_leaves(prefix: &str, value: &Value) -> Vec<(String, Value)> {
    let mut leaves = Vec::new();
    let _ = Leaves { path: prefix.to_string(), out: &mut leaves }.deserialize(value);
    leaves
}

/// Collects `(path, leaf)` pairs while deserialising, which keeps the order of object keys.
struct Leaves<'a> {
    path: String,
    out: &'a mut Vec<(String, Value)>,
}

impl<'de> DeserializeSeed<'de> for Leaves<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Leaves<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.out.push((self.path, Value::Bool(v)));
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.out.push((self.path, Value::from(v)));
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.out.push((self.path, Value::from(v)));
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.out.push((self.path, Value::from(v)));
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.out.push((self.path, Value::from(v)));
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.push((self.path, Value::Null));
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while seq.next_element_seed(Leaves { path: format!("{}[{index}]", self.path), out: self.out })?.is_some() {
            index += 1;
        }
        if index == 0 {
            self.out.push((self.path, Value::Array(Vec::new())));
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut empty = true;
        while let Some(key) = map.next_key::<String>()? {
            empty = false;
            let path = if self.path.is_empty() { key } else { format!("{}.{key}", self.path) };
            map.next_value_seed(Leaves { path, out: self.out })?;
        }
        if empty {
            self.out.push((self.path, Value::Object(Map::new())));
        }
        Ok(())
    }
}

/// Whether `path` is `prefix` or lies below it.
fn is_under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// The differences between the expected value at `path` (`None`: absent) and the output, leaf by leaf, in the
/// output's order and then the expectation's.
fn diff_at(path: &str, expected: Option<&Value>, actual: &[(String, Value)]) -> Vec<FieldDiff> {
    let expected = expected.map(|value| value_leaves(path, value)).unwrap_or_default();
    let actual: Vec<&(String, Value)> = actual.iter().filter(|(p, _)| is_under(p, path)).collect();
    let mut diffs = Vec::new();
    for (field, value) in &actual {
        let wanted = expected.iter().find(|(p, _)| p == field).map(|(_, v)| v);
        if wanted != Some(value) {
            diffs.push(FieldDiff {
                field: field.clone(),
                expected: wanted.cloned(),
                actual: Some(value.clone()),
                source: None,
            });
        }
    }
    for (field, value) in &expected {
        if !actual.iter().any(|(p, _)| p == field) {
            diffs.push(FieldDiff { field: field.clone(), expected: Some(value.clone()), actual: None, source: None });
        }
    }
    diffs
}

/// Where an output field came from, as the diff names it: `rule FILE:LINE:COL` (the rule that produced the field,
/// or that was meant to and produced nothing), `identity memory` or `route table FILE:LINE:COL`.
fn provenance(explanation: &Explanation, field: &str) -> Option<String> {
    match explanation.field(field).map(|trace| &trace.origin) {
        Some(Origin::Rule(rule)) => Some(format!("rule {}", rule.rule)),
        Some(Origin::Memory) => Some("identity memory".to_string()),
        Some(Origin::Route) => Some(match &explanation.routes_table {
            Some(table) => format!("route table {table}"),
            None => "route table".to_string(),
        }),
        None => explanation.rule_for(field).map(|rule| format!("rule {rule}")),
    }
}

// ---- rendering ----

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

fn render_case_failures(
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
fn show_value(value: &Value) -> String {
    match value {
        Value::String(text) if looks_personal(text) => mask(value).to_string(),
        _ => value.to_string(),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::source::MemoryLoader;

    const MAPPING: &str = r#"
routes { page -> page_viewed (contents) }
messageId -> id
to_unix_ms(timestamp) -> timestamp_ms
"web" -> action_source
context.page.url -> source_url | strip_query
context.page.url -> oppref | url_param("oppref")
remember oppref for 30d
"#;

    fn loader() -> MemoryLoader {
        MemoryLoader { files: [("site.map".to_string(), MAPPING.to_string())].into_iter().collect() }
    }

    fn run(test_file: &str) -> FileReport {
        run_file("site.test.yaml", test_file, &loader(), None)
    }

    fn parse_error(text: &str) -> FileError {
        parse("t.test.yaml", text).expect_err("the file is invalid")
    }

    const PAGE: &str = "{type: page, messageId: m, anonymousId: a, timestamp: 2026-11-19T10:00:00Z, \
                        context: {page: {url: 'https://x.example/?oppref=c1'}}}";

    #[test]
    fn unknown_keys_are_errors_with_their_line_and_column() {
        let error = parse_error("now: 2026-11-20T12:00:00Z\ncases:\n  - name: a\n    evnets: []\n");
        assert_eq!((error.line, error.column), (Some(4), Some(5)));
        assert!(error.message.contains("unknown field `evnets`"), "{error}");
        assert!(error.to_string().starts_with("t.test.yaml:4:5: cases[0]: unknown field `evnets`"), "{error}");
    }

    #[test]
    fn an_expectation_needs_exactly_one_outcome() {
        let file = |expect: &str| {
            format!("now: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  events:\n  - input: {{}}\n    expect: {expect}\n")
        };
        assert!(parse_error(&file("{}")).message.contains("say what the event must produce"));
        assert!(parse_error(&file("{dropped: unmapped, fields: {id: x}}")).message.contains("one outcome"));
        assert!(parse_error(&file("{event: {}, absent: [id]}")).message.contains("use one"));
        assert!(parse_error(&file("{fields: {id: x}, field: id}")).message.contains("goes with `rejected`"));
        assert!(parse_error(&file("{dropped: unmaped}")).message.contains("unknown variant `unmaped`"));
        let null = parse_error(&file("{fields: {user.email: null}}"));
        assert!(null.message.contains("list the field under `absent:`"), "{null}");
        assert_eq!(null.line, Some(6));
    }

    #[test]
    fn every_case_needs_a_clock_a_unique_name_and_events() {
        assert!(parse_error("cases:\n- name: a\n  events: [{input: {}, expect: {dropped: unmapped}}]\n")
            .message
            .contains("has no `now`"));
        let twice =
            "now: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  events: [{input: {}, expect: {dropped: unmapped}}]\n\
                     - name: a\n  events: [{input: {}, expect: {dropped: unmapped}}]\n";
        assert!(parse_error(twice).message.contains("two cases are named \"a\""));
        assert!(parse_error("now: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  events: []\n")
            .message
            .contains("no events"));
        assert!(parse_error("now: 2026-11-20T12:00:00Z\ncases: []\n").message.contains("no cases"));
        assert!(parse_error("now: tomorrow\ncases: []\n").message.contains("RFC 3339"));
    }

    #[test]
    fn the_default_mapping_is_the_map_with_the_same_stem() {
        assert_eq!(default_mapping("mappings/openai_ads.test.yaml"), "openai_ads.map");
        assert_eq!(default_mapping("shop.test.yaml"), "shop.map");
    }

    #[test]
    fn identity_memory_lasts_for_one_case_only() {
        let later = "{type: page, messageId: m2, anonymousId: a, timestamp: 2026-11-19T11:00:00Z, \
                     context: {page: {url: 'https://x.example/thanks'}}}";
        let report = run(&format!(
            "now: 2026-11-20T12:00:00Z\ncases:\n\
             - name: remembers\n  events:\n  - {{input: {PAGE}, expect: {{fields: {{oppref: c1}}}}}}\n  - {{input: {later}, expect: {{fields: {{oppref: c1}}}}}}\n\
             - name: fresh memory\n  events:\n  - {{input: {later}, expect: {{absent: [oppref]}}}}\n"
        ));
        assert_eq!(report.mapping.as_deref(), Some("site.map"));
        assert!(report.ok(), "{:#?}", report.cases);
        assert_eq!(report.passed(), 2);
    }

    #[test]
    fn a_differing_field_names_the_rule_that_produced_it() {
        let report = run(&format!(
            "now: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  events:\n  - {{input: {PAGE}, expect: {{fields: {{source_url: 'https://y.example/', id: m}}}}}}\n"
        ));
        let failures = &report.cases[0].failures;
        assert_eq!(failures.len(), 1, "{failures:#?}");
        let Mismatch::Field(diff) = &failures[0].mismatch else { panic!("{failures:#?}") };
        assert_eq!(diff.field, "source_url");
        assert_eq!(diff.expected, Some(json!("https://y.example/")));
        assert_eq!(diff.actual, Some(json!("https://x.example/")));
        assert_eq!(diff.source.as_deref(), Some("rule site.map:6:1"));
        assert_eq!(failures[0].event, Some(1));
    }

    #[test]
    fn case_params_are_compiled_with_the_files() {
        let mapping = "param region: string = \"US\"\nroutes { page -> page_viewed (contents) }\nmessageId -> id\n\
                       to_unix_ms(timestamp) -> timestamp_ms\n\"web\" -> action_source\n$region -> source_url\n";
        let loader = MemoryLoader { files: [("site.map".to_string(), mapping.to_string())].into_iter().collect() };
        let text = format!(
            "now: 2026-11-20T12:00:00Z\nparams: {{region: 'https://a.example/'}}\ncases:\n\
             - name: file params\n  events: [{{input: {PAGE}, expect: {{fields: {{source_url: 'https://a.example/'}}}}}}]\n\
             - name: case params\n  params: {{region: 'https://b.example/'}}\n  events: [{{input: {PAGE}, expect: {{fields: {{source_url: 'https://b.example/'}}}}}}]\n\
             - name: bad params\n  params: {{region: 5}}\n  events: [{{input: {PAGE}, expect: {{dropped: unmapped}}}}]\n"
        );
        let report = run_file("site.test.yaml", &text, &loader, None);
        assert!(report.cases[0].passed() && report.cases[1].passed(), "{:#?}", report.cases);
        assert!(matches!(report.cases[2].failures[0].mismatch, Mismatch::CaseMappingErrors(_)));
        let typo = format!(
            "now: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  params: {{regoin: x}}\n  events: [{{input: {PAGE}, expect: {{fields: {{id: m}}}}}}]\n"
        );
        let report = run_file("site.test.yaml", &typo, &loader, None);
        let Mismatch::InvalidCase(message) = &report.cases[0].failures[0].mismatch else { panic!("{report:#?}") };
        assert!(message.contains("`regoin`") && message.contains("did you mean `region`?"), "{message}");
    }

    #[test]
    fn a_mapping_with_errors_fails_every_case_and_is_reported_once() {
        let loader =
            MemoryLoader { files: [("site.map".to_string(), "messageId -> idd\n".to_string())].into_iter().collect() };
        let text = format!(
            "now: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  events: [{{input: {PAGE}, expect: {{dropped: unmapped}}}}]\n\
             - name: b\n  events: [{{input: {PAGE}, expect: {{dropped: unmapped}}}}]\n"
        );
        let report = run_file("site.test.yaml", &text, &loader, None);
        assert_eq!(report.failed(), 2);
        assert!(report.compile_errors.is_some());
        let summary = render_summary(&[report], Style::default());
        assert_eq!(summary.matches("unknown_target_field").count(), 1, "{summary}");
        assert!(summary.contains("(the same errors as shown above)"), "{summary}");
    }

    #[test]
    fn an_unreadable_mapping_makes_the_file_fail_to_run() {
        let text = "mapping: missing.map\nnow: 2026-11-20T12:00:00Z\ncases:\n- name: a\n  events: [{input: {}, expect: {dropped: unmapped}}]\n";
        let report = run(text);
        assert!(!report.ok());
        assert!(report.error.unwrap().message.contains("cannot read the mapping \"missing.map\""));
    }

    #[test]
    fn partial_expectations_compare_whole_subtrees_and_absence() {
        let actual = ordered_leaves(r#"{"id":"m","user":{"email":"h"},"data":{"contents":[{"id":"a"},{"id":"b"}]}}"#);
        assert_eq!(actual[0], ("id".to_string(), json!("m")));
        assert_eq!(actual[3].0, "data.contents[1].id");
        // A subtree: every leaf below it must match, and nothing extra may be there.
        let diffs = diff_at("data.contents", Some(&json!([{"id": "a"}])), &actual);
        assert_eq!(diffs.len(), 1);
        assert_eq!((diffs[0].field.as_str(), diffs[0].expected.as_ref()), ("data.contents[1].id", None));
        assert!(diff_at("data.contents[0].id", Some(&json!("a")), &actual).is_empty());
        // `data.contents[1]` is not below `data.contents[10]`, nor `user` below `user_agent`.
        assert!(diff_at("data.contents[10]", None, &actual).is_empty());
        assert_eq!(diff_at("user", None, &actual).len(), 1);
        // The whole event: a missing field is a difference too.
        let expected =
            json!({"id": "m", "user": {"email": "h"}, "data": {"contents": [{"id": "a"}, {"id": "b"}]}, "oppref": "x"});
        let diffs = diff_at("", Some(&expected), &actual);
        assert_eq!(diffs.len(), 1);
        assert_eq!((diffs[0].field.as_str(), diffs[0].actual.as_ref()), ("oppref", None));
    }

    #[test]
    fn field_paths_are_checked_against_the_target_schema() {
        let plan = compile("site.map", MAPPING, &loader(), &CompileOptions::default()).plan.unwrap();
        assert!(check_target_path(&plan, "data.contents[0].id").is_ok());
        assert!(check_target_path(&plan, "data.contents[*].amount").is_ok());
        assert!(
            check_target_path(&plan, "user.phone_number").is_ok(),
            "a field this mapping does not write is still a field"
        );
        assert!(check_target_path(&plan, "user").is_ok());
        let typo = check_target_path(&plan, "data.ammount").unwrap_err();
        assert!(typo.contains("did you mean `data.amount`?"), "{typo}");
        assert!(check_target_path(&plan, "data.contents[x].id").unwrap_err().contains("write indexes as `[0]`"));
    }

    #[test]
    fn values_that_look_like_email_or_phone_are_masked() {
        assert_eq!(show_value(&json!("jane@example.com")), "\"<personal: 16 characters>\"");
        assert_eq!(show_value(&json!("+44 7700 900123")), "\"<personal: 15 characters>\"");
        assert!(show_value(&json!("(415) 555-0132")).contains("<personal"));
        assert_eq!(show_value(&json!("ORD-1234")), "\"ORD-1234\"");
        assert_eq!(show_value(&json!("2026-11-19")), "\"2026-11-19\"");
        assert_eq!(show_value(&json!(12999)), "12999");
    }

    #[test]
    fn yaml_merge_keys_build_inputs_from_templates() {
        let text = format!(
            "now: 2026-11-20T12:00:00Z\ntemplates:\n  page: &page {PAGE}\ncases:\n\
             - name: merged\n  events: [{{input: {{<<: *page, messageId: m9}}, expect: {{fields: {{id: m9, oppref: c1}}}}}}]\n"
        );
        let report = run(&text);
        assert!(report.ok(), "{:#?}", report.cases);
    }
}
