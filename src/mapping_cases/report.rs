//! The result model: per file, per case, each failure and the mismatches behind it (field diffs with the rule that
//! produced each value).

use super::*;

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
