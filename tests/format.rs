//! The formatter (`engine fmt`): one messy mapping per file under `fixtures/fmt/`, formatted and snapshotted; over
//! every mapping the repository holds, the promises a user relies on (formatting again changes nothing, the
//! meaning is the same, every comment survives in order, files with syntax errors are refused with the
//! diagnostics `engine check` gives); and the command line: `--check`, rewriting in place, stdin.

use std::path::{Path, PathBuf};
use std::process::Output;

use proptest::prelude::*;
use signal_engine::format::{format, FILE};
use signal_engine::source::MemoryLoader;
use signal_engine::{compile, syntax, CompileOptions};

use crate::support::text;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.map` file under `tests/fixtures` and `mappings`, sorted.
fn every_mapping() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("a readable folder") {
            let path = entry.expect("a readable folder entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "map") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&root().join("tests/fixtures"), &mut paths);
    walk(&root().join("mappings"), &mut paths);
    paths.sort();
    paths
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The meaning of a mapping: its canonical form, which prints no spans and no comments.
fn canonical(text: &str) -> String {
    syntax::parse(FILE, text).expect("parses").to_string()
}

fn comments(text: &str) -> Vec<String> {
    syntax::parse(FILE, text).expect("parses").comments.into_iter().map(|c| c.text).collect()
}

/// What a user relies on when the formatter accepts `original`.
fn assert_formatted_faithfully(name: &str, original: &str, formatted: &str) {
    let again = format(formatted).unwrap_or_else(|e| panic!("{name}: the formatted text does not parse: {e:?}"));
    assert_eq!(again, formatted, "{name}: formatting the formatted text changed it");
    assert_eq!(canonical(formatted), canonical(original), "{name}: formatting changed the meaning");
    assert_eq!(comments(formatted), comments(original), "{name}: comments lost, added or reordered");
    assert!(formatted.ends_with('\n') || formatted.is_empty(), "{name}: no final newline");
    assert!(!formatted.contains("\n\n\n") && !formatted.starts_with('\n'), "{name}: runs of blank lines");
    assert!(formatted.lines().all(|l| l == l.trim_end()), "{name}: trailing whitespace");
}

#[test]
fn fixtures() {
    insta::glob!("fixtures/fmt/*.map", |path| {
        let name = path.display().to_string();
        let original = read(path);
        let formatted = format(&original).unwrap_or_else(|e| panic!("{name} does not parse: {e:?}"));
        assert_formatted_faithfully(&name, &original, &formatted);
        insta::assert_snapshot!(formatted);
    });
}

#[test]
fn every_mapping_formats_faithfully_or_is_refused_with_the_diagnostics_of_check() {
    let (mut formatted_count, mut refused_count) = (0, 0);
    for path in every_mapping() {
        let name = path.display().to_string();
        let original = read(&path);
        match format(&original) {
            Ok(formatted) => {
                formatted_count += 1;
                assert_formatted_faithfully(&name, &original, &formatted);
            }
            Err(diagnostics) => {
                refused_count += 1;
                assert!(!diagnostics.is_empty(), "{name}: refused without a reason");
                let checked = compile(&name, &original, &MemoryLoader::default(), &CompileOptions::default());
                let of_this_file: Vec<_> = checked.diagnostics.iter().filter(|d| d.primary.span.file == FILE).collect();
                assert_eq!(of_this_file, diagnostics.iter().collect::<Vec<_>>(), "{name}: not what check says");
            }
        }
    }
    // The fixtures hold both kinds; a walk that found neither would prove nothing.
    assert!(formatted_count >= 70, "only {formatted_count} mappings formatted");
    assert!(refused_count >= 5, "only {refused_count} mappings with syntax errors refused");
}

#[test]
fn the_shipped_mappings_are_formatted() {
    for path in every_mapping().iter().filter(|p| p.starts_with(root().join("mappings"))) {
        let text = read(path);
        let formatted = format(&text).expect("a shipped mapping parses");
        let first_difference = text.lines().zip(formatted.lines()).position(|(a, b)| a != b);
        assert!(formatted == text, "{} is not formatted (line {first_difference:?})", path.display());
    }
}

#[test]
fn a_source_more_than_thirty_columns_wider_than_the_next_does_not_stretch_the_column() {
    let row = |source: &str, pad: usize, target: &str| format!("{source}{} -> {target}\n", " ".repeat(pad));
    let next = "n".repeat(10);
    for (wide, pads) in [("w".repeat(40), [0, 30, 39]), ("w".repeat(41), [0, 0, 9])] {
        let input = [row(&wide, 0, "id"), row(&next, 0, "action_source"), row("b", 0, "opt_out")].concat();
        let expected = [row(&wide, pads[0], "id"), row(&next, pads[1], "action_source"), row("b", pads[2], "opt_out")];
        assert_eq!(format(&input).unwrap(), expected.concat(), "widest source {} columns", wide.len());
    }
}

#[test]
fn line_endings_and_a_byte_order_mark_become_plain_newlines() {
    let text = "\u{feff}# top\r\nmessageId   -> id # trailing\r\n\r\n\"web\" -> action_source\r\n";
    assert_eq!(format(text).unwrap(), "# top\nmessageId -> id # trailing\n\n\"web\" -> action_source\n");
}

#[test]
fn a_hash_inside_a_string_is_not_a_comment() {
    let text = "properties.\"#tag\" -> data.order_id # a real one\n\"a # b\" -> action_source\n";
    let formatted = format(text).unwrap();
    assert_eq!(comments(&formatted), vec!["# a real one"]);
    assert!(formatted.contains("\"a # b\""), "{formatted}");
}

#[test]
fn an_empty_file_and_a_file_of_comments_format() {
    assert_eq!(format("").unwrap(), "");
    assert_eq!(format("\n\n  \n").unwrap(), "");
    assert_eq!(format("\n  # one\n\n\n# two   \n\n").unwrap(), "# one\n\n# two\n");
}

/// Shipped mappings and formatter fixtures that parse, to scatter comments and line breaks through.
fn parsable_mappings() -> Vec<String> {
    every_mapping()
        .iter()
        .filter(|p| p.starts_with(root().join("mappings")) || p.starts_with(root().join("tests/fixtures/fmt")))
        .map(|p| read(p))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    /// Comments, line breaks and spaces at arbitrary places: whenever the result still parses, the formatter
    /// keeps every comment in order, keeps the meaning, and is idempotent.
    #[test]
    fn comments_and_line_breaks_anywhere_are_kept(
        which in any::<prop::sample::Index>(),
        insertions in prop::collection::vec(
            (any::<prop::sample::Index>(), prop::sample::select(vec![" # note\n", "\n# own line\n", "\n", "\n\n", "  ", "\t"])),
            1..8,
        ),
    ) {
        let mappings = parsable_mappings();
        let mut text = which.get(&mappings).clone();
        for (at, piece) in insertions {
            // Next to existing whitespace, where a token rarely continues, so that most mutations still parse.
            let boundaries: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .filter(|&i| text[..i].ends_with(char::is_whitespace) || text[i..].starts_with(char::is_whitespace))
                .collect();
            text.insert_str(*at.get(&boundaries), piece);
        }
        if let Ok(formatted) = format(&text) {
            assert_formatted_faithfully("mutated", &text, &formatted);
        }
    }
}

// ---- the command line ----

fn engine(dir: &Path, args: &[&str], stdin: &str) -> Output {
    crate::support::engine_in(dir, args, stdin)
}

const MESSY: &str = "messageId->id\n\"web\"   ->   action_source # where\n";
const TIDY: &str = "messageId -> id\n\"web\"     -> action_source # where\n";
const BROKEN: &str = "messageId => id\n";

/// A temporary folder with a formatted, an unformatted and a broken mapping (in a subfolder), and a non-mapping.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tidy.map"), TIDY).unwrap();
    std::fs::write(dir.path().join("messy.map"), MESSY).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/broken.map"), BROKEN).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not -> a mapping {").unwrap();
    dir
}

#[test]
fn check_names_the_files_that_would_change_shows_how_and_changes_nothing() {
    let dir = workspace();
    let output = engine(dir.path(), &["fmt", "--check", "tidy.map", "messy.map"], "");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stdout), "messy.map\n");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("-messageId->id\n") && stderr.contains("+messageId -> id\n"), "{stderr}");
    assert!(stderr.contains("engine fmt: 2 files, 1 would be reformatted"), "{stderr}");
    assert_eq!(read(&dir.path().join("messy.map")), MESSY);

    let clean = engine(dir.path(), &["fmt", "--check", "tidy.map"], "");
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stderr));
    assert_eq!(text(&clean.stdout), "");
}

#[test]
fn fmt_rewrites_changed_files_in_place_and_leaves_broken_ones_alone() {
    let dir = workspace();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let messy = dir.path().join("messy.map");
        std::fs::set_permissions(&messy, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let output = engine(dir.path(), &["fmt", "."], "");
    // The broken file makes the run fail, but does not stop the others being formatted.
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stdout), "./messy.map\n");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("engine::parse::syntax") && stderr.contains("broken.map:1:11"), "{stderr}");
    assert!(stderr.contains("engine fmt: 3 files, 1 reformatted, 1 with syntax errors left alone"), "{stderr}");
    assert_eq!(read(&dir.path().join("messy.map")), TIDY);
    assert_eq!(read(&dir.path().join("sub/broken.map")), BROKEN);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("messy.map")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640, "the rewrite kept the file's permissions");
    }
    // Only the mappings remain: no temporary file was left behind.
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["messy.map", "notes.txt", "sub", "tidy.map"]);

    std::fs::remove_file(dir.path().join("sub/broken.map")).unwrap();
    let again = engine(dir.path(), &["fmt", "--check", "."], "");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
}

#[test]
fn a_dash_formats_stdin_to_stdout() {
    let dir = workspace();
    let output = engine(dir.path(), &["fmt", "-"], MESSY);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), TIDY);

    let check = engine(dir.path(), &["fmt", "--check", "-"], MESSY);
    assert_eq!(check.status.code(), Some(1));
    assert_eq!(text(&check.stdout), "<stdin>\n");
    assert_eq!(engine(dir.path(), &["fmt", "--check", "-"], TIDY).status.code(), Some(0));

    // An editor must not replace its text with nothing: a broken input gives diagnostics and no output.
    let broken = engine(dir.path(), &["fmt", "-"], BROKEN);
    assert_eq!(broken.status.code(), Some(1));
    assert_eq!(text(&broken.stdout), "");
    assert!(text(&broken.stderr).contains("<stdin>:1:11"), "{}", text(&broken.stderr));
}

#[test]
fn fmt_usage_and_io_errors_exit_2() {
    let dir = workspace();
    let cases: [&[&str]; 3] = [&["fmt"], &["fmt", "-", "tidy.map"], &["fmt", "missing.map"]];
    for args in cases {
        let output = engine(dir.path(), args, "");
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output.stderr));
    }
    assert!(text(&engine(dir.path(), &["fmt", "missing.map"], "").stderr).contains("cannot read missing.map"));
}

#[test]
fn the_shipped_mappings_pass_fmt_check() {
    let output = engine(root(), &["fmt", "--check", "mappings"], "");
    assert_eq!(output.status.code(), Some(0), "{}{}", text(&output.stdout), text(&output.stderr));
}

/// The README and the language docs quote rule locations such as `mappings/openai_ads.map:25:1` (and the route
/// table's, in `explain` output); reformatting or editing the preset must not leave them pointing at a comment
/// or a blank line.
#[test]
fn documented_rule_locations_point_at_rules() {
    let preset = read(&root().join("mappings/openai_ads.map"));
    let lines: Vec<&str> = preset.lines().collect();
    let mut quoted = 0;
    for doc in ["README.md", "docs/language.md"] {
        let text = read(&root().join(doc));
        for (at, _) in text.match_indices("mappings/openai_ads.map:") {
            let location = &text[at + "mappings/openai_ads.map:".len()..];
            let numbers: Vec<usize> =
                location.split(|c: char| !c.is_ascii_digit()).take(2).map(|n| n.parse().unwrap_or(0)).collect();
            let [line, column] = numbers[..] else { continue };
            if line == 0 || column == 0 {
                continue;
            }
            quoted += 1;
            let code = lines.get(line - 1).map(|l| l.chars().skip(column - 1).collect::<String>()).unwrap_or_default();
            assert!(
                (code.contains("->") || code.starts_with("routes {")) && !code.starts_with(['#', ' ']),
                "{doc} quotes mappings/openai_ads.map:{line}:{column}, which is not the start of a rule: {code:?}"
            );
        }
    }
    assert!(quoted >= 3, "only {quoted} quoted locations found");
}
