//! Diagnostics: one broken mapping per file under `fixtures/diagnostics/`, compiled and rendered as a user sees
//! them, snapshotted with insta.
//!
//! A fixture's name says what it tests: its stem starts with the short name of a diagnostic code
//! (`raw_pii_through_lowercase.map` tests `engine::check::raw_pii`), and the harness asserts that this code is
//! reported. Leading comment lines may carry directives:
//!
//! - `# params: {"name": value}`: parameter values, as `--params` would give them (JSON);
//! - `# expect: code, code`: further codes the fixture must report; a fixture whose stem names no code (such as
//!   `many_errors.map`) lists all of them here.
//!
//! Every diagnostic a fixture reports must have one of its expected codes, so that a fixture shows the mistake it
//! is about and nothing else. Includes are read from `fixtures/diagnostics/includes/`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use signal_engine::diagnostic::{self, codes, Diagnostic, RenderOptions};
use signal_engine::source::SourceLoader;
use signal_engine::{compile, CompileOptions, Compiled};

const FIXTURES: &str = "fixtures/diagnostics";

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// Reads included files relative to the including file, like the CLI's `FileLoader`, but names them relative to
/// `tests/` so that snapshots are the same on every machine. Read errors are reduced to their kind for the same
/// reason.
struct FixtureLoader;

impl SourceLoader for FixtureLoader {
    fn load(&self, from: &str, path: &str) -> Result<(String, String), String> {
        let name = Path::new(from).parent().unwrap_or(Path::new("")).join(path);
        let name = name.to_string_lossy().replace('\\', "/");
        std::fs::read_to_string(tests_dir().join(&name)).map(|text| (name, text)).map_err(|e| e.kind().to_string())
    }
}

/// The short name of a code: `raw_pii` for `engine::check::raw_pii`.
fn short(code: &str) -> &str {
    code.rsplit("::").next().unwrap_or(code)
}

fn code_by_short_name(name: &str) -> Option<&'static str> {
    codes::ALL.iter().map(|(code, _)| code.0).find(|code| short(code) == name)
}

/// A fixture's directives, from its leading comment lines.
#[derive(Default)]
struct Header {
    params: Map<String, Value>,
    expect: Vec<&'static str>,
}

fn header(name: &str, text: &str) -> Header {
    let mut header = Header::default();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let line = line.trim_start_matches('#').trim();
        if let Some(json) = line.strip_prefix("params:") {
            header.params = serde_json::from_str(json).unwrap_or_else(|e| panic!("{name}: bad `# params:` line: {e}"));
        } else if let Some(list) = line.strip_prefix("expect:") {
            for code in list.split(',').map(str::trim) {
                let full = code_by_short_name(code).unwrap_or_else(|| panic!("{name}: `# expect: {code}` is no code"));
                header.expect.push(full);
            }
        }
    }
    header
}

/// The code a fixture is named after: the longest short code name that its stem is or starts with (`_…`).
fn named_code(stem: &str) -> Option<&'static str> {
    codes::ALL
        .iter()
        .map(|(code, _)| code.0)
        .filter(|code| {
            let short = short(code);
            stem == short || stem.strip_prefix(short).is_some_and(|rest| rest.starts_with('_'))
        })
        .max_by_key(|code| short(code).len())
}

struct Fixture {
    /// Relative to `tests/`, as diagnostics show it.
    name: String,
    stem: String,
    header: Header,
    compiled: Compiled,
}

fn compile_fixture(path: &Path) -> Fixture {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let relative = path.strip_prefix(tests_dir()).expect("fixtures live under tests/");
    let name = relative.to_string_lossy().replace('\\', "/");
    let stem = path.file_stem().and_then(|s| s.to_str()).expect("a UTF-8 file name").to_string();
    let header = header(&name, &text);
    let options = CompileOptions { params: header.params.clone() };
    let compiled = compile(&name, &text, &FixtureLoader, &options);
    Fixture { name, stem, header, compiled }
}

fn fixture_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(tests_dir().join(FIXTURES))
        .expect("the fixture folder exists")
        .map(|entry| entry.expect("a readable folder entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "map"))
        .collect();
    paths.sort();
    paths
}

fn codes_of(diagnostics: &[Diagnostic]) -> BTreeSet<&'static str> {
    diagnostics.iter().map(|d| d.code.0).collect()
}

/// Checks that a fixture reports what it is named for and nothing else.
fn check_fixture(fixture: &Fixture) {
    let Fixture { name, stem, header, compiled } = fixture;
    assert!(!compiled.diagnostics.is_empty(), "{name}: no diagnostics");
    let mut expected: BTreeSet<&str> = header.expect.iter().copied().collect();
    if let Some(code) = named_code(stem) {
        expected.insert(code);
    }
    assert!(!expected.is_empty(), "{name}: the name starts with no code's short name and there is no `# expect:` line");
    let found = codes_of(&compiled.diagnostics);
    let missing: Vec<&&str> = expected.difference(&found).collect();
    assert!(missing.is_empty(), "{name}: expected {missing:?} among the diagnostics, found {found:?}");
    let unexpected: Vec<&&str> = found.difference(&expected).collect();
    assert!(unexpected.is_empty(), "{name}: unexpected {unexpected:?}; list them in `# expect:` if they belong");
    if compiled.has_errors() {
        assert!(compiled.plan.is_none(), "{name}: a plan despite errors");
    }
    for d in &compiled.diagnostics {
        let text = &compiled.sources.get(d.primary.span.file).text;
        assert!(d.primary.span.start <= d.primary.span.end && d.primary.span.end <= text.len(), "{name}: {d:?}");
    }
}

#[test]
fn fixtures() {
    insta::glob!("fixtures/diagnostics/*.map", |path| {
        let fixture = compile_fixture(path);
        check_fixture(&fixture);
        let rendered = diagnostic::render(
            &fixture.compiled.diagnostics,
            &fixture.compiled.sources,
            RenderOptions { color: false, width: 80 },
        );
        insta::assert_snapshot!(rendered);
    });
}

#[test]
fn fixtures_cover_at_least_thirty_codes() {
    let mut covered: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for path in fixture_paths() {
        let fixture = compile_fixture(&path);
        for code in codes_of(&fixture.compiled.diagnostics) {
            covered.entry(code).or_default().push(fixture.stem.clone());
        }
    }
    let uncovered: Vec<&str> = codes::ALL.iter().map(|(c, _)| c.0).filter(|c| !covered.contains_key(c)).collect();
    assert!(covered.len() >= 30, "only {} codes covered; no fixture reports {uncovered:?}", covered.len());
    let unknown: Vec<&&str> = covered.keys().filter(|c| code_by_short_name(short(c)).is_none()).collect();
    assert!(unknown.is_empty(), "codes missing from codes::ALL: {unknown:?}");
}

#[test]
fn codes_are_unique() {
    let mut seen = HashSet::new();
    let mut short_names = HashSet::new();
    for (code, meaning) in codes::ALL {
        assert!(seen.insert(code.0), "{code} is listed twice in codes::ALL");
        assert!(short_names.insert(short(code.0)), "two codes end in `{}`", short(code.0));
        assert!(code.0.starts_with("engine::parse::") || code.0.starts_with("engine::check::"), "{code}");
        assert!(!meaning.is_empty(), "{code} has no meaning");
    }
}

#[test]
fn json_format() {
    let fixture = compile_fixture(&tests_dir().join(FIXTURES).join("many_errors.map"));
    let json: Vec<diagnostic::JsonDiagnostic> =
        fixture.compiled.diagnostics.iter().map(|d| diagnostic::to_json(d, &fixture.compiled.sources)).collect();
    insta::assert_json_snapshot!(json);
}

/// The warnings a mapping gets, as `code: message`.
fn warnings_of(text: &str) -> Vec<String> {
    let compiled = compile("m.map", text, &FixtureLoader, &CompileOptions::default());
    assert!(!compiled.has_errors(), "{:#?}", compiled.diagnostics);
    compiled.diagnostics.iter().map(|d| format!("{}: {}", short(d.code.0), d.message)).collect()
}

#[test]
fn only_properties_no_routed_event_can_carry_are_questioned() {
    let mapping = |declarations: &str, rules: &str| {
        format!(
            "routes {{\n  \"Order Completed\" -> order_created\n  \"Lead Generated\" -> lead_created\n}}\n\
             {declarations}\nmessageId -> id\ntimestamp -> timestamp_ms | to_unix_ms\n\"web\" -> action_source\n\
             context.page.url -> source_url | strip_query\n{rules}\n"
        )
    };
    let order = |rule: &str| mapping("", &format!("when order_created {{\n  {rule}\n}}"));
    // What the spec gives Order Completed, and what every track event may carry, pass.
    let amount =
        |source: &str| order(&format!("{source} -> data.amount | minor_units(currency)\n  currency -> data.currency"));
    assert_eq!(warnings_of(&amount("revenue ?? total")), Vec::<String>::new());
    assert_eq!(warnings_of(&amount("value")), Vec::<String>::new());
    // A misspelling is questioned, with the property it was probably meant to be.
    let typo = warnings_of(&order("revnue -> data.order_id"));
    assert_eq!(typo.len(), 1, "{typo:?}");
    assert!(typo[0].starts_with("unknown_property:") && typo[0].contains("`revnue`"), "{typo:?}");
    // A declared custom property is not.
    let declared = mapping("property revnue, \"Gift Wrap\"", "when order_created {\n  revnue -> data.order_id\n}");
    assert_eq!(warnings_of(&declared), Vec::<String>::new());
    // A rule that also applies to an event the specs do not describe (Lead Generated) may read anything.
    assert_eq!(warnings_of(&mapping("", "lead_score -> user.external_id")), Vec::<String>::new());
    // A track catch-all may carry anything too.
    let catch_all = "routes {\n  track -> custom(\"any\")\n}\nmessageId -> id\ntimestamp -> timestamp_ms | to_unix_ms\n\
                     \"web\" -> action_source\ncontext.page.url -> source_url | strip_query\nrevnue -> user.external_id\n";
    assert!(!warnings_of(catch_all).iter().any(|w| w.starts_with("unknown_property")));
}
