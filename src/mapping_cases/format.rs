//! The test-file format: YAML cases of input events and the outcome each must have, parsed strictly (unknown keys
//! and malformed expectations are errors naming the line).

use super::*;

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
    #[serde(default, rename = "templates")]
    pub _templates: Option<de::IgnoredAny>,
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
    /// The Signal event, with merge keys (`<<: *template`) already applied by the YAML reader.
    pub input: Value,
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
pub(super) struct RawExpectation {
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
pub(super) struct OrderedFields(Vec<(String, Value)>);

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
    let file: TestFile = crate::yaml::from_str(text).map_err(|error| FileError {
        file: name.to_string(),
        line: error.line.map(|l| l as usize),
        column: error.column.map(|c| c as usize),
        message: error.message,
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
