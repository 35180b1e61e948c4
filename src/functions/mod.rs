//! The function library of the mapping language: every function's signature, documentation, examples and
//! evaluation, declared once. The compiler type-checks calls against these declarations and their examples run
//! as tests.

use serde_json::Value;

mod consent;
mod docs;
mod logic;
mod numeric;
mod text;
mod time;
mod url;
mod value;

pub use docs::{reference_json, reference_markdown, reference_text};
pub(crate) use numeric::currency;
pub use time::{text_timestamp_ms, timestamp_ms};
#[cfg(feature = "relay")]
pub(crate) use value::json_string_len;
pub(crate) use value::{lookup, next_escape, write_json, write_json_string, write_number, write_u64};
pub use value::{Slice, Val};

/// A set of JSON value kinds, used for static type checking. Numbers are split into integers and numbers
/// with a fraction so that an integer-only target field can be checked.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ty(u8);

impl Ty {
    pub const NOTHING: Ty = Ty(0);
    pub const NULL: Ty = Ty(1);
    pub const BOOL: Ty = Ty(1 << 1);
    pub const INTEGER: Ty = Ty(1 << 2);
    pub const FRACTION: Ty = Ty(1 << 3);
    pub const STRING: Ty = Ty(1 << 4);
    pub const ARRAY: Ty = Ty(1 << 5);
    pub const OBJECT: Ty = Ty(1 << 6);
    pub const NUMBER: Ty = Ty(Self::INTEGER.0 | Self::FRACTION.0);
    pub const SCALAR: Ty = Ty(Self::BOOL.0 | Self::NUMBER.0 | Self::STRING.0);
    pub const ANY: Ty = Ty(0x7f);

    pub const fn union(self, other: Ty) -> Ty {
        Ty(self.0 | other.0)
    }

    pub const fn intersects(self, other: Ty) -> bool {
        self.0 & other.0 != 0
    }

    pub const fn intersection(self, other: Ty) -> Ty {
        Ty(self.0 & other.0)
    }

    /// The same set without `null`: static checks look at what a present value can be.
    pub const fn without_null(self) -> Ty {
        Ty(self.0 & !Self::NULL.0)
    }

    pub const fn contains(self, other: Ty) -> bool {
        self.0 & other.0 == other.0
    }

    /// The kind of one runtime value.
    pub fn of(value: &Value) -> Ty {
        match value {
            Value::Null => Ty::NULL,
            Value::Bool(_) => Ty::BOOL,
            Value::Number(n) if n.is_i64() || n.is_u64() => Ty::INTEGER,
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.fract() == 0.0 => Ty::INTEGER,
                _ => Ty::FRACTION,
            },
            Value::String(_) => Ty::STRING,
            Value::Array(_) => Ty::ARRAY,
            Value::Object(_) => Ty::OBJECT,
        }
    }
}

impl std::fmt::Display for Ty {
    /// Plain words for diagnostics and docs: `string`, `number`, `string or number`, `any`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == Ty::ANY {
            return f.write_str("any");
        }
        let mut words: Vec<&str> = Vec::new();
        if self.contains(Ty::STRING) {
            words.push("string");
        }
        if self.contains(Ty::NUMBER) {
            words.push("number");
        } else if self.contains(Ty::INTEGER) {
            words.push("integer");
        } else if self.contains(Ty::FRACTION) {
            words.push("fractional number");
        }
        if self.contains(Ty::BOOL) {
            words.push("boolean");
        }
        if self.contains(Ty::ARRAY) {
            words.push("array");
        }
        if self.contains(Ty::OBJECT) {
            words.push("object");
        }
        if self.contains(Ty::NULL) {
            words.push("null");
        }
        match words.len() {
            0 => f.write_str("nothing"),
            1 => f.write_str(words[0]),
            n => write!(f, "{} or {}", words[..n - 1].join(", "), words[n - 1]),
        }
    }
}

impl std::fmt::Debug for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ty({self})")
    }
}

/// What a function does to personal data flowing through it. The compiler's raw-PII check relies on this:
/// only a function that `Hashes` makes a value derived from PII safe to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pii {
    /// The output carries whatever personal data the input and arguments carried.
    Keeps,
    /// The output is a one-way hash: personal data does not survive it.
    Hashes,
}

/// The part of the library a function belongs to: the reference groups functions by it, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    Numeric,
    Text,
    Url,
    Time,
    Logic,
    Consent,
}

impl Category {
    pub const ALL: [Category; 6] =
        [Category::Numeric, Category::Text, Category::Url, Category::Time, Category::Logic, Category::Consent];

    /// The section heading in the reference; distinct from every function name, so anchors do not collide.
    pub fn title(self) -> &'static str {
        match self {
            Category::Numeric => "Number functions",
            Category::Text => "Text functions",
            Category::Url => "URL functions",
            Category::Time => "Time functions",
            Category::Logic => "Logic functions",
            Category::Consent => "Consent functions",
        }
    }

    /// The stable name tools see (`--format json`).
    pub fn key(self) -> &'static str {
        match self {
            Category::Numeric => "numeric",
            Category::Text => "text",
            Category::Url => "url",
            Category::Time => "time",
            Category::Logic => "logic",
            Category::Consent => "consent",
        }
    }

    /// One sentence introducing the section.
    pub fn intro(self) -> &'static str {
        match self {
            Category::Numeric => {
                "Arithmetic on amounts, exact in decimal: multiply, divide and round, ISO 4217 minor units, and \
                 reading numbers from text. Each accepts a number or a numeric string (`\"12.50\"`, `\" 1e3 \"`); \
                 a blank string counts as no value."
            }
            Category::Text => {
                "Case and whitespace, joining and rendering text, and the normalisation and hashing that the \
                 Conversions API's matching keys (email, phone) need."
            }
            Category::Url => {
                "Reading a query parameter, such as the click id `oppref`, and cutting a URL down to its page."
            }
            Category::Time => {
                "Turning the timestamps sources send (ISO 8601 text, RFC 2822 text, epoch seconds or \
                 milliseconds) into the Unix milliseconds the Conversions API expects."
            }
            Category::Logic => {
                "Negation, fallbacks for missing values, and tables that translate a source's vocabulary into \
                 the API's."
            }
            Category::Consent => {
                "Whether the visitor granted a consent category, across the shapes consent tools write."
            }
        }
    }
}

/// One parameter of a function.
#[derive(Debug)]
pub struct Param {
    pub name: &'static str,
    pub ty: Ty,
    /// May be left out of a call.
    pub optional: bool,
    /// Must be known when the mapping is compiled: a literal or a `$parameter`, never a path into the event.
    pub constant: bool,
    pub doc: &'static str,
}

/// A worked example; every example runs as a test and is shown in the docs.
#[derive(Debug)]
pub struct Example {
    /// The piped input as JSON, or `None` when the input is missing.
    pub input: Option<&'static str>,
    /// The arguments as JSON texts, in order.
    pub args: &'static [&'static str],
    /// The expected output as JSON, or `None` when the function yields nothing.
    pub output: Option<&'static str>,
}

/// An evaluated argument: `None` when its source was missing. Arguments borrow from the plan and the event.
pub type Arg<'a> = Option<Val<'a>>;

/// The result of one call: a value, nothing (`Ok(None)`: the target is omitted silently, as for a missing
/// source), or a note saying why nothing was produced (`Err`: the target is omitted and the note is reported as
/// a warning with the rule that produced it). The value may borrow from the input and the arguments.
pub type Outcome<'a> = Result<Option<Val<'a>>, String>;

/// A function's evaluation: the piped input and the arguments to the result.
pub type Eval = for<'a> fn(Option<Val<'a>>, &[Arg<'a>]) -> Outcome<'a>;

/// A function of the mapping language.
pub struct Function {
    pub name: &'static str,
    pub category: Category,
    /// One line for listings and hover.
    pub summary: &'static str,
    /// The full description in markdown, after the summary: what the function does with edge inputs (missing,
    /// null, blank, the wrong kind of value), when it gives up with a warning, and what it does to personal
    /// data. Paragraphs are separated by a blank line.
    pub doc: &'static str,
    /// The piped input types the function accepts; anything else is a compile-time error when known statically.
    pub input: Ty,
    pub params: &'static [Param],
    /// The last parameter repeats (for `concat`).
    pub variadic: bool,
    pub output: Ty,
    pub pii: Pii,
    /// When the function is called as a source (`consent($consent_category)`) rather than piped, its input is
    /// read from this event path.
    pub source_input: Option<&'static str>,
    pub examples: &'static [Example],
    /// Validates constant arguments at compile time: `Err((argument index, message))`.
    // Spelled out rather than aliased so the compiler's side reads the contract without a detour.
    #[allow(clippy::type_complexity)]
    pub check_constants: Option<fn(&[Option<&Value>]) -> Result<(), (usize, String)>>,
    pub eval: Eval,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Function {
    /// The signature as shown to users: `minor_units(currency: string) : number or string -> integer`.
    pub fn signature(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| {
                let mut s = format!("{}{}: {}", p.name, if p.optional { "?" } else { "" }, p.ty);
                if self.variadic && std::ptr::eq(p, self.params.last().unwrap()) {
                    s.push_str("...");
                }
                s
            })
            .collect();
        format!("{}({}) : {} -> {}", self.name, params.join(", "), self.input, self.output)
    }

    /// How many arguments a call may have.
    pub fn arity(&self) -> (usize, Option<usize>) {
        let required = self.params.iter().filter(|p| !p.optional).count();
        if self.variadic {
            (required, None)
        } else {
            (required, Some(self.params.len()))
        }
    }

    /// The declaration of parameter `index`, following a variadic tail.
    pub fn param(&self, index: usize) -> Option<&'static Param> {
        match self.params.get(index) {
            Some(p) => Some(p),
            None if self.variadic => self.params.last(),
            None => None,
        }
    }
}

/// Every function, in the order the docs list them.
pub fn all() -> &'static [Function] {
    LIBRARY
}

/// The function called `name`.
pub fn find(name: &str) -> Option<&'static Function> {
    LIBRARY.iter().find(|f| f.name == name)
}

static LIBRARY: &[Function] = &[
    numeric::MULTIPLY,
    numeric::DIVIDE,
    numeric::ROUND,
    numeric::MINOR_UNITS,
    numeric::TO_NUMBER,
    text::LOWERCASE,
    text::UPPERCASE,
    text::TRIM,
    text::CONCAT,
    text::TO_STRING,
    text::SHA256,
    text::NORMALIZE_EMAIL,
    text::E164,
    url::URL_PARAM,
    url::STRIP_QUERY,
    time::TO_UNIX_MS,
    logic::NOT,
    logic::DEFAULT,
    logic::LOOKUP,
    consent::CONSENT,
];

/// The value inside `input` unless it is missing or null: most functions yield nothing for both.
pub(crate) fn present(input: Option<Val<'_>>) -> Option<Val<'_>> {
    input.filter(|v| !v.is_null())
}

/// Argument `index` unless it was left out of the call, its source is missing, or it is null: like `present`
/// for the piped input.
pub(crate) fn arg<'v, 'a>(args: &'v [Arg<'a>], index: usize) -> Option<&'v Val<'a>> {
    args.get(index).and_then(Option::as_ref).filter(|v| !v.is_null())
}

/// Constant argument `index` as handed to `check_constants`, unless it is not a constant or was left out.
pub(crate) fn constant<'v>(args: &[Option<&'v Value>], index: usize) -> Option<&'v Value> {
    args.get(index).copied().flatten().filter(|v| !v.is_null())
}

/// The kind of a value in words, for notes: [`Val::kind`] for a `serde_json::Value`.
pub(crate) fn kind(value: &Value) -> &'static str {
    Val::from_json(value).kind()
}

/// A value's text quoted for a note, cut short so one huge field cannot flood the warnings. Only for values
/// that are not personal data (amounts, codes, timestamps).
pub(crate) fn quoted(text: &str) -> String {
    const LIMIT: usize = 40;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{:?}", format!("{}…", &text[..cut])),
        None => format!("{text:?}"),
    }
}

/// Calls a function on `serde_json` values, for tests and for the outcomes of examples shown in the docs.
pub(crate) fn eval_json(f: &Function, input: Option<Value>, args: &[Option<Value>]) -> Result<Option<Value>, String> {
    let args: Vec<Arg<'_>> = args.iter().map(|a| a.as_ref().map(Val::from_json)).collect();
    (f.eval)(input.as_ref().map(Val::from_json), &args).map(|out| out.map(|v| v.to_json()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn parse(text: &str, what: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: {text} is not JSON: {e}"))
    }

    fn label(f: &Function, index: usize) -> String {
        format!("{} example {}", f.name, index + 1)
    }

    #[test]
    fn every_example_holds() {
        for f in all() {
            for (i, example) in f.examples.iter().enumerate() {
                let what = label(f, i);
                let input = example.input.map(|text| parse(text, &what));
                let args: Vec<Option<Value>> = example.args.iter().map(|text| Some(parse(text, &what))).collect();
                let outcome = eval_json(f, input, &args);
                match example.output {
                    Some(expected) => {
                        assert_eq!(outcome, Ok(Some(parse(expected, &what))), "{what}")
                    }
                    None => assert!(matches!(outcome, Ok(None) | Err(_)), "{what}: expected nothing, got {outcome:?}"),
                }
            }
        }
    }

    #[test]
    fn every_function_has_examples_and_a_summary() {
        for f in all() {
            assert!(f.examples.len() >= 2, "{} needs at least two examples", f.name);
            assert!(!f.summary.is_empty() && !f.summary.contains('\n'), "{} summary", f.name);
            for p in f.params {
                assert!(!p.doc.is_empty(), "{}({}) has no doc", f.name, p.name);
            }
        }
    }

    #[test]
    fn names_are_unique_and_findable() {
        let mut seen = HashSet::new();
        for f in all() {
            assert!(seen.insert(f.name), "{} is declared twice", f.name);
            assert!(std::ptr::eq(find(f.name).unwrap(), f));
        }
        assert_eq!(all().len(), 20);
        assert!(find("no_such_function").is_none());
    }

    #[test]
    fn examples_fit_the_arity() {
        for f in all() {
            let (min, max) = f.arity();
            for (i, example) in f.examples.iter().enumerate() {
                let n = example.args.len();
                assert!(n >= min && max.is_none_or(|max| n <= max), "{}: {n} arguments", label(f, i));
            }
        }
    }

    #[test]
    fn examples_fit_the_declared_types() {
        for f in all() {
            for (i, example) in f.examples.iter().enumerate() {
                let what = label(f, i);
                if let Some(input) = example.input {
                    let ty = Ty::of(&parse(input, &what));
                    assert!(f.input.union(Ty::NULL).contains(ty), "{what}: input is {ty}, not {}", f.input);
                }
                for (j, text) in example.args.iter().enumerate() {
                    let ty = Ty::of(&parse(text, &what));
                    let param = f.param(j).unwrap();
                    assert!(param.ty.union(Ty::NULL).contains(ty), "{what}: {} is {ty}", param.name);
                }
                if let Some(output) = example.output {
                    let ty = Ty::of(&parse(output, &what));
                    assert!(f.output.contains(ty), "{what}: output is {ty}, not {}", f.output);
                }
            }
        }
    }

    #[test]
    fn example_arguments_pass_the_compile_time_checks() {
        for f in all() {
            let Some(check) = f.check_constants else {
                continue;
            };
            for (i, example) in f.examples.iter().enumerate() {
                let what = label(f, i);
                let values: Vec<Value> = example.args.iter().map(|text| parse(text, &what)).collect();
                let args: Vec<Option<&Value>> = values.iter().map(Some).collect();
                assert_eq!(check(&args), Ok(()), "{what}");
                assert_eq!(check(&[]), Ok(()), "{}: no arguments", f.name);
            }
        }
    }

    #[test]
    fn signatures_render() {
        let minor_units = find("minor_units").unwrap();
        assert_eq!(minor_units.signature(), "minor_units(currency: string) : string or number -> integer");
        assert_eq!(
            find("concat").unwrap().signature(),
            "concat(parts?: string or number...) : string or number -> string"
        );
        assert_eq!(find("consent").unwrap().source_input, Some("context.consent"));
        assert_eq!(find("sha256").unwrap().pii, Pii::Hashes);
        assert!(all().iter().filter(|f| f.pii == Pii::Hashes).all(|f| f.name == "sha256"));
    }

    #[test]
    fn nothing_panics_on_odd_values() {
        let odd = [
            Value::Null,
            Value::Bool(false),
            serde_json::json!([]),
            serde_json::json!([null, {}]),
            serde_json::json!({}),
            serde_json::json!({"marketing": [true]}),
            serde_json::json!(1e300),
            serde_json::json!(-1e-300),
            serde_json::json!(u64::MAX),
            serde_json::json!(i64::MIN),
            serde_json::json!("NaN"),
            serde_json::json!("-Infinity"),
            serde_json::json!(""),
            serde_json::json!("\u{0}"),
            serde_json::json!("9".repeat(400)),
        ];
        for f in all() {
            for input in odd.iter().cloned().map(Some).chain([None]) {
                let _ = eval_json(f, input.clone(), &[]);
                let _ = eval_json(f, input.clone(), &[None, None, None]);
                for a in &odd {
                    let args = [Some(a.clone()), Some(a.clone())];
                    let _ = eval_json(f, input.clone(), &args);
                    let _ = eval_json(f, input.clone(), &args[..1]);
                }
            }
            if let Some(check) = f.check_constants {
                for a in &odd {
                    let _ = check(&[Some(a), Some(a)]);
                    let _ = check(&[None, Some(a)]);
                }
            }
        }
    }
}
