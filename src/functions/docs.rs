//! The function library's declarations rendered as documentation: one function's markdown (a reference entry,
//! and the language server's hover), the whole reference that is `docs/functions.md`, the terminal text of
//! `engine functions` and its JSON. Nothing here is written by hand per function: it all comes from the
//! declarations, and every example shown is one that runs as a test.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{all, eval_json, Category, Example, Function, Pii};

/// Width of the wrapped terminal text.
const TEXT_WIDTH: usize = 100;

/// What one example gives when it runs.
enum Shown {
    Value(&'static str),
    /// Nothing, silently: the target is left out as for a missing source.
    Nothing,
    /// Nothing, with the note the run reports as a warning, already prefixed with the function's name.
    Warning(String),
}

impl Example {
    /// The example's outcome. The declared output is what the example test checks; for an example declared to
    /// give nothing, the function is run to tell a silent nothing from a warning, so the docs show the very
    /// note a user will see.
    fn result(&self, function: &Function) -> Shown {
        if let Some(output) = self.output {
            return Shown::Value(output);
        }
        let parse = |text: &str| serde_json::from_str::<Value>(text).ok();
        let input = self.input.and_then(parse);
        let args: Vec<Option<Value>> = self.args.iter().map(|text| parse(text)).collect();
        match eval_json(function, input, &args) {
            Err(note) => Shown::Warning(format!("{}: {note}", function.name)),
            Ok(_) => Shown::Nothing,
        }
    }

    /// The call as a mapping writes it: `multiply(100)`, or `sha256` without arguments.
    fn call(&self, function: &Function) -> String {
        if self.args.is_empty() {
            function.name.to_string()
        } else {
            format!("{}({})", function.name, self.args.join(", "))
        }
    }

    /// One line of the terminal listing: `129.99 | multiply(100) → 12999`.
    fn text_line(&self, function: &Function) -> String {
        let result = match self.result(function) {
            Shown::Value(output) => output.to_string(),
            Shown::Nothing => "nothing".to_string(),
            Shown::Warning(note) => format!("nothing (warning: {note})"),
        };
        let call = self.call(function);
        match (function.source_input, self.input) {
            (Some(path), Some(input)) => format!("{call} → {result}   ({path} = {input})"),
            (Some(path), None) => format!("{call} → {result}   ({path} missing)"),
            (None, Some(input)) => format!("{input} | {call} → {result}"),
            (None, None) => format!("(missing) | {call} → {result}"),
        }
    }

    /// One row of the markdown example table.
    fn markdown_row(&self, function: &Function) -> String {
        let input = match self.input {
            Some(input) => cell_code(input),
            None => "*missing*".to_string(),
        };
        let result = match self.result(function) {
            Shown::Value(output) => cell_code(output),
            Shown::Nothing => "*nothing*".to_string(),
            Shown::Warning(note) => format!("*nothing*, warning {}", cell_code(&note)),
        };
        format!("| {input} | {} | {result} |", cell_code(&self.call(function)))
    }

    fn to_json(&self, function: &Function) -> Value {
        let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.into()));
        let mut example = json!({
            "call": self.call(function),
            "args": self.args.iter().map(|text| parse(text)).collect::<Vec<_>>(),
        });
        // A missing input and a result of nothing are keys left out, as the output of a mapping leaves them out;
        // `null` stays a value of its own.
        if let Some(input) = self.input {
            example["input"] = parse(input);
        }
        match self.result(function) {
            Shown::Value(output) => example["output"] = parse(output),
            Shown::Nothing => {}
            Shown::Warning(note) => example["warning"] = Value::String(note),
        }
        example
    }
}

impl Function {
    /// The declared doc as markdown: lines of a paragraph joined, `- ` items kept on lines of their own.
    pub fn doc_markdown(&self) -> String {
        let mut paragraphs: Vec<String> = Vec::new();
        for paragraph in self.doc.trim().split("\n\n") {
            let mut lines: Vec<String> = Vec::new();
            for line in paragraph.lines().map(str::trim).filter(|line| !line.is_empty()) {
                match lines.last_mut() {
                    Some(last) if !line.starts_with("- ") => {
                        last.push(' ');
                        last.push_str(line);
                    }
                    _ => lines.push(line.to_string()),
                }
            }
            paragraphs.push(lines.join("\n"));
        }
        paragraphs.join("\n\n")
    }

    /// What the function takes and gives, in words.
    fn input_output(&self) -> String {
        match self.source_input {
            Some(path) => format!("{}, read from `{path}`", self.input),
            None => self.input.to_string(),
        }
    }

    fn param_qualities(&self, index: usize) -> Vec<String> {
        let param = &self.params[index];
        let mut qualities = vec![param.ty.to_string()];
        if param.optional {
            qualities.push("optional".into());
        }
        if self.variadic && index + 1 == self.params.len() {
            qualities.push("repeats".into());
        }
        if param.constant {
            qualities.push("a literal or `$parameter`".into());
        }
        qualities
    }

    fn pii_text(&self) -> String {
        match self.pii {
            Pii::Keeps => {
                let hashing: Vec<String> =
                    all().iter().filter(|f| f.pii == Pii::Hashes).map(|f| format!("`{}`", f.name)).collect();
                format!(
                    "kept. When the input or an argument is personal data, so is the result, and it must pass \
                     through {} before it reaches an output field.",
                    hashing.join(" or ")
                )
            }
            Pii::Hashes => format!(
                "removed. The result is a one-way hash, so a value computed from personal data may be sent once \
                 it has passed through `{}`.",
                self.name
            ),
        }
    }

    /// The full documentation of one function in markdown, without a heading: signature, summary, doc,
    /// parameters, personal-data effect and examples. The reference puts it under a heading; the language
    /// server shows it on hover.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "```text\n{}\n```\n", self.signature());
        let _ = writeln!(out, "{}\n", self.summary);
        let _ = writeln!(out, "{}\n", self.doc_markdown());
        let _ = writeln!(out, "**Input:** {}. **Output:** {}.\n", self.input_output(), self.output);
        if !self.params.is_empty() {
            out.push_str("**Parameters:**\n\n");
            for (index, param) in self.params.iter().enumerate() {
                let _ = writeln!(out, "- `{}` ({}): {}", param.name, self.param_qualities(index).join(", "), param.doc);
            }
            out.push('\n');
        }
        let _ = writeln!(out, "**Personal data:** {}\n", self.pii_text());
        let input_header = match self.source_input {
            Some(path) => format!("`{path}`"),
            None => "input".to_string(),
        };
        let _ = writeln!(out, "**Examples:**\n\n| {input_header} | call | result |\n|---|---|---|");
        for example in self.examples {
            let _ = writeln!(out, "{}", example.markdown_row(self));
        }
        out
    }

    /// The compact terminal entry: signature, summary and one line per example.
    pub fn text_summary(&self) -> String {
        // The summary is one line by declaration, so it is not wrapped.
        let mut out = format!("{}\n  {}\n", self.signature(), self.summary);
        for example in self.examples {
            let _ = writeln!(out, "  {}", example.text_line(self));
        }
        out
    }

    /// The full terminal documentation of one function: what [`Function::markdown`] says, as plain text.
    pub fn text(&self) -> String {
        let mut out = format!("{}\n\n", self.signature());
        push_wrapped(&mut out, self.summary, "", "");
        out.push('\n');
        for paragraph in self.doc_markdown().split("\n\n") {
            for line in paragraph.lines() {
                let hang = if line.starts_with("- ") { "  " } else { "" };
                push_wrapped(&mut out, line, "", hang);
            }
            out.push('\n');
        }
        let _ = writeln!(out, "Input: {}. Output: {}.\n", self.input_output(), self.output);
        if !self.params.is_empty() {
            out.push_str("Parameters:\n");
            for (index, param) in self.params.iter().enumerate() {
                let line = format!("{} ({}): {}", param.name, self.param_qualities(index).join(", "), param.doc);
                push_wrapped(&mut out, &line, "  ", "    ");
            }
            out.push('\n');
        }
        push_wrapped(&mut out, &format!("Personal data: {}", self.pii_text()), "", "");
        out.push_str("\nExamples:\n");
        for example in self.examples {
            let _ = writeln!(out, "  {}", example.text_line(self));
        }
        out
    }

    /// The declaration as data for tools (`engine functions --format json`).
    pub fn to_json(&self) -> Value {
        let params: Vec<Value> = self
            .params
            .iter()
            .enumerate()
            .map(|(index, param)| {
                json!({
                    "name": param.name,
                    "type": param.ty.to_string(),
                    "optional": param.optional,
                    "repeats": self.variadic && index + 1 == self.params.len(),
                    "constant": param.constant,
                    "doc": param.doc,
                })
            })
            .collect();
        json!({
            "name": self.name,
            "category": self.category.key(),
            "signature": self.signature(),
            "summary": self.summary,
            "doc": self.doc_markdown(),
            "input": self.input.to_string(),
            "source_input": self.source_input,
            "output": self.output.to_string(),
            "params": params,
            "pii": match self.pii { Pii::Keeps => "keeps", Pii::Hashes => "hashes" },
            "examples": self.examples.iter().map(|example| example.to_json(self)).collect::<Vec<_>>(),
        })
    }
}

/// The functions of one category, in library order.
fn in_category(category: Category) -> impl Iterator<Item = &'static Function> {
    all().iter().filter(move |f| f.category == category)
}

/// The whole function reference, `docs/functions.md`: an introduction, a table of contents, and every function
/// grouped by category.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Function reference\n\n\
         <!-- Generated from the declarations in src/functions/ by `engine functions --format markdown`; do not \
         edit by hand. A test fails when this file and the declarations differ. -->\n\n",
    );
    out.push_str(REFERENCE_INTRO.trim());
    out.push_str("\n\n## Contents\n\n");
    for category in Category::ALL {
        let links: Vec<String> = in_category(category).map(|f| format!("[`{0}`](#{0})", f.name)).collect();
        let _ = writeln!(out, "- [{}](#{}): {}", category.title(), anchor(category.title()), links.join(", "));
    }
    for category in Category::ALL {
        let _ = write!(out, "\n## {}\n\n{}\n", category.title(), category.intro());
        for function in in_category(category) {
            let _ = write!(out, "\n### `{}`\n\n{}", function.name, function.markdown());
        }
    }
    out
}

/// The terminal listing of every function, as `engine functions` prints it.
pub fn reference_text() -> String {
    let mut out = String::new();
    for category in Category::ALL {
        for function in in_category(category) {
            let _ = writeln!(out, "{}", function.text_summary());
        }
    }
    let _ = writeln!(
        out,
        "{} functions. `engine functions NAME` shows one in full; docs/functions.md is the reference.",
        all().len()
    );
    out
}

/// Every declaration as a JSON array.
pub fn reference_json() -> Value {
    Value::Array(all().iter().map(Function::to_json).collect())
}

const REFERENCE_INTRO: &str = r#"
Every function of the [mapping language](language.md), with what it does to edge inputs, to personal data, and
worked examples. Each example in the tables below runs as a test of the function, so what they show is what the
engine does. `engine functions` prints the same in a terminal (`engine functions NAME` for one function,
`--format json` for tools).

**Calling.** A function is piped the value to its left, `revenue -> data.amount | multiply(100)`, or called as a
source with its input as first argument, `multiply(revenue, 100)`. Without arguments the parentheses may be left
out: `| sha256`. The signature `name(parameter: type, …) : input -> output` gives the types; `?` marks an
optional parameter and `...` one that repeats. Calls are type-checked when the mapping is compiled, wherever the
type is known. A parameter marked *a literal or `$parameter`* must be known before events arrive, and its value
is checked when the mapping is compiled.

**Results.** A function gives a value, or *nothing*: the target is left out silently, as for a missing source.
When a function cannot use a value it is given, it gives up with a note: the target is left out and `engine run`
reports the note as a warning with the field and the rule (in a `??` chain, the next term is tried first). The
tables show such a result as *nothing*, warning `note`.

**Personal data.** Values read from personal data (see [the raw-PII guarantee](language.md#the-raw-pii-guarantee))
stay personal through every function except `sha256`; a rule that writes one to an output field unhashed is a
compile error.
"#;

/// The GitHub anchor of a heading made of plain words.
fn anchor(title: &str) -> String {
    title.to_lowercase().replace(' ', "-")
}

/// `text` as inline code in a markdown table cell: a backtick fence longer than any run inside it, and `|`
/// escaped so it does not end the cell.
fn cell_code(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') { " " } else { "" };
    format!("{fence}{pad}{}{pad}{fence}", text.replace('|', "\\|"))
}

fn wrap<'t>(text: &'t str, first: &'t str, rest: &'t str) -> Vec<std::borrow::Cow<'t, str>> {
    let options = textwrap::Options::new(TEXT_WIDTH)
        .initial_indent(first)
        .subsequent_indent(rest)
        .break_words(false)
        .word_separator(textwrap::WordSeparator::AsciiSpace);
    textwrap::wrap(text, options)
}

fn push_wrapped(out: &mut String, text: &str, first: &str, rest: &str) {
    for line in wrap(text, first, rest) {
        out.push_str(&line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::super::find;
    use super::*;

    #[test]
    fn every_function_has_a_doc_of_whole_paragraphs() {
        for f in all() {
            let doc = f.doc_markdown();
            assert!(doc.len() > 100, "{} needs a doc saying what it does with edge inputs", f.name);
            assert!(!doc.contains("\n\n\n") && !doc.contains("\n "), "{}: stray spacing in {doc:?}", f.name);
            for paragraph in doc.split("\n\n") {
                let last = paragraph.trim_end().chars().last();
                assert!(matches!(last, Some('.' | ':' | ')')), "{}: unfinished paragraph {paragraph:?}", f.name);
            }
        }
    }

    #[test]
    fn functions_are_listed_by_category() {
        // The listing and the reference walk the categories in order; the library order must agree, so that
        // `all()` is the order users read.
        let by_category: Vec<&str> = Category::ALL.iter().flat_map(|c| in_category(*c)).map(|f| f.name).collect();
        let library: Vec<&str> = all().iter().map(|f| f.name).collect();
        assert_eq!(by_category, library);
        for category in Category::ALL {
            assert!(in_category(category).next().is_some(), "{} is empty", category.title());
        }
    }

    #[test]
    fn examples_that_give_up_show_the_note_users_see() {
        let multiply = find("multiply").unwrap();
        let text = multiply.text_summary();
        assert!(
            text.contains(
                r#""abc" | multiply(100) → nothing (warning: multiply: expected a number or numeric string, got "abc")"#
            ),
            "{text}"
        );
        assert!(text.contains("(missing) | multiply(100) → nothing\n"), "{text}");
        let markdown = find("minor_units").unwrap().markdown();
        assert!(
            markdown.contains(
                "| `10` | `minor_units(null)` | *nothing*, warning `minor_units: no currency: amount omitted` |"
            ),
            "{markdown}"
        );
    }

    #[test]
    fn consent_examples_name_where_the_input_comes_from() {
        let consent = find("consent").unwrap();
        assert!(consent.markdown().contains("| `context.consent` | call | result |"));
        assert!(consent
            .text_summary()
            .contains(r#"consent("marketing") → true   (context.consent = {"marketing": true})"#));
        assert!(consent.text().contains("Input: object, read from `context.consent`. Output: boolean."));
    }

    #[test]
    fn personal_data_effect_follows_the_declaration() {
        assert!(find("sha256").unwrap().markdown().contains("**Personal data:** removed."));
        let email = find("normalize_email").unwrap().markdown();
        assert!(email.contains("**Personal data:** kept.") && email.contains("through `sha256`"), "{email}");
    }

    #[test]
    fn parameters_show_their_qualities() {
        let markdown = find("round").unwrap().markdown();
        assert!(
            markdown.contains("- `digits` (integer, optional, a literal or `$parameter`): Decimal places"),
            "{markdown}"
        );
        let concat = find("concat").unwrap().to_json();
        assert_eq!(concat["params"][0]["repeats"], true);
        assert!(find("sha256").unwrap().markdown().find("**Parameters:**").is_none());
    }

    #[test]
    fn json_keeps_missing_apart_from_null() {
        let default = find("default").unwrap().to_json();
        let examples = default["examples"].as_array().unwrap();
        assert!(examples[0].get("input").is_none());
        assert_eq!(examples[1]["input"], Value::Null);
        assert_eq!(examples[1]["output"], json!(0));
        let e164 = find("e164").unwrap().to_json();
        let refused = e164["examples"].as_array().unwrap().iter().find(|e| e.get("warning").is_some()).unwrap();
        assert_eq!(refused["warning"], "e164: not a phone number");
        assert!(refused.get("output").is_none());
    }

    #[test]
    fn headings_have_distinct_anchors() {
        let mut anchors: Vec<String> = Category::ALL.iter().map(|c| anchor(c.title())).collect();
        anchors.extend(all().iter().map(|f| f.name.to_string()));
        let count = anchors.len();
        anchors.sort();
        anchors.dedup();
        assert_eq!(anchors.len(), count, "two headings share an anchor, so a contents link would go astray");
    }

    #[test]
    fn table_cells_survive_pipes_and_backticks() {
        assert_eq!(cell_code("a|b"), r"`a\|b`");
        assert_eq!(cell_code("x `y` z"), "``x `y` z``");
        assert_eq!(cell_code("`y`"), "`` `y` ``");
    }

    #[test]
    fn the_reference_links_every_function() {
        let reference = reference_markdown();
        for f in all() {
            assert!(reference.contains(&format!("[`{0}`](#{0})", f.name)), "{} is not in the contents", f.name);
            assert_eq!(reference.matches(&format!("\n### `{}`\n", f.name)).count(), 1, "{}", f.name);
        }
        assert!(reference
            .contains("- [URL functions](#url-functions): [`url_param`](#url_param), [`strip_query`](#strip_query)\n"));
    }

    #[test]
    fn terminal_prose_fits_the_width() {
        for f in all() {
            let text = f.text();
            // The signature and the examples are code, which is not wrapped; everything between is prose.
            let prose = text.lines().skip(1).take_while(|line| *line != "Examples:");
            for line in prose {
                assert!(line.chars().count() <= TEXT_WIDTH, "{}: {line}", f.name);
            }
        }
    }
}
