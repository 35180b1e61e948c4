//! The runner: compiles the mapping a test file names, applies it to each case's events with one identity memory per
//! case, and compares each outcome with what the case expects.

use super::*;

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
pub(super) fn with_param_problems(compiled: &Compiled, mut failures: Vec<Failure>) -> Vec<Failure> {
    let problems = compiled.diagnostics.iter().filter(|d| d.code == codes::UNDECLARED_PARAM_VALUE).map(|d| {
        let help = d.help.as_deref().map(|h| format!("; {h}")).unwrap_or_default();
        Failure { event: None, mismatch: Mismatch::InvalidCase(format!("params: {}{help}", d.message)) }
    });
    failures.splice(0..0, problems);
    failures
}

/// Applies a case's events in order with a fresh identity memory and compares each outcome.
pub(super) fn run_case(plan: &Plan, case: &Case, now_ms: i64) -> Vec<Failure> {
    let mut memory = MemoryStore::default();
    let mut failures = Vec::new();
    for (index, step) in case.events.iter().enumerate() {
        let event = Some(index + 1);
        let mut invalid = |message: String| failures.push(Failure { event, mismatch: Mismatch::InvalidCase(message) });
        let input = &step.input;
        for path in expectation_paths(&step.expect) {
            if let Err(message) = check_target_path(plan, path) {
                invalid(message);
            }
        }
        let input = input.to_string();
        let explanation = explain(plan, &input, &mut Context::with_identity(now_ms, &mut memory));
        failures.extend(compare(&step.expect, &explanation).into_iter().map(|mismatch| Failure { event, mismatch }));
    }
    failures
}

/// `track "Order Completed"`, `page`: what an input event is, without any of its values.
pub(super) fn event_label(input: &Value) -> String {
    let kind = input.get("type").and_then(Value::as_str);
    let name = input.get("event").and_then(Value::as_str);
    match (kind, name) {
        (Some("track"), Some(name)) => format!("track {name:?}"),
        (Some(kind), _) => kind.to_string(),
        (None, _) => "no type".to_string(),
    }
}

/// The output fields an expectation names, which must exist in the target schema.
pub(super) fn expectation_paths(expect: &Expectation) -> Vec<&str> {
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
pub(super) fn target_paths(target: &TargetSchema) -> Vec<String> {
    let mut out = Vec::new();
    target.walk(&mut |keys, _| out.push(keys.join(".")));
    out.sort();
    out.dedup();
    out
}

/// `data.contents[0].id` and `data.contents[*].id` → `data.contents.id`; `None` when brackets are malformed.
pub(super) fn without_indexes(path: &str) -> Option<String> {
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

pub(super) fn check_target_path(plan: &Plan, path: &str) -> Result<(), String> {
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
pub(super) fn compare(expect: &Expectation, explanation: &Explanation) -> Vec<Mismatch> {
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

pub(super) fn with_rule(message: &str, rule: Option<&str>) -> String {
    match rule {
        Some(rule) => format!("{message} (rule {rule})"),
        None => message.to_string(),
    }
}

pub(super) fn compare_warnings(expected: &[ExpectedWarning], actual: &[Warning], mismatches: &mut Vec<Mismatch>) {
    let matches = expected.len() == actual.len()
        && expected
            .iter()
            .zip(actual)
            .all(|(e, a)| e.field == a.field && e.message.as_ref().is_none_or(|m| a.message.contains(m.as_str())));
    if !matches {
        mismatches.push(Mismatch::Warnings { expected: expected.to_vec(), actual: actual.to_vec() });
    }
}

pub(super) fn reason_name(reason: &impl serde::Serialize) -> String {
    serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

pub(super) fn describe_rejection(reason: RejectReason, field: Option<&str>) -> String {
    match field {
        Some(field) => format!("rejected: {} at `{field}`", reason_name(&reason)),
        None => format!("rejected: {}", reason_name(&reason)),
    }
}

pub(super) fn describe_expectation(expect: &Expectation) -> String {
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
pub(super) fn ordered_leaves(json: &str) -> Vec<(String, Value)> {
    let mut leaves = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_str(json);
    // The engine wrote this JSON itself: it always parses.
    let _ = Leaves { path: String::new(), out: &mut leaves }.deserialize(&mut deserializer);
    leaves
}

/// The leaves of an expected value below `prefix`.
pub(super) fn value_leaves(prefix: &str, value: &Value) -> Vec<(String, Value)> {
    let mut leaves = Vec::new();
    let _ = Leaves { path: prefix.to_string(), out: &mut leaves }.deserialize(value);
    leaves
}

/// Collects `(path, leaf)` pairs while deserialising, which keeps the order of object keys.
pub(super) struct Leaves<'a> {
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
pub(super) fn is_under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// The differences between the expected value at `path` (`None`: absent) and the output, leaf by leaf, in the
/// output's order and then the expectation's.
pub(super) fn diff_at(path: &str, expected: Option<&Value>, actual: &[(String, Value)]) -> Vec<FieldDiff> {
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
pub(super) fn provenance(explanation: &Explanation, field: &str) -> Option<String> {
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
