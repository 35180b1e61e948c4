//! The spanned syntax tree of a mapping file, and its canonical text form. Every node carries the span of the
//! text it came from, so that every later diagnostic can point at it. Nothing here knows about pest.

use std::fmt;

use serde_json::Value;

/// Which loaded file a span belongs to (an index into [`crate::source::Sources`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FileId(pub u32);

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Span {
        Span { file, start, end }
    }

    /// The smallest span covering both (same file assumed).
    pub fn to(self, other: Span) -> Span {
        Span { file: self.file, start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

/// A whole mapping file.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    pub items: Vec<Item>,
    /// Every comment, in file order. They mean nothing to the compiler; the formatter puts them back.
    pub comments: Vec<Comment>,
}

/// `# …` to the end of its line.
#[derive(Clone, Debug, PartialEq)]
pub struct Comment {
    /// The comment as written, from `#` to the end of its line, without trailing whitespace.
    pub text: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Target(TargetDecl),
    Param(ParamDecl),
    Include(Include),
    Property(PropertyDecl),
    Routes(Routes),
    Remember(Remember),
    When(When),
    Rule(Rule),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StringLit {
    pub value: String,
    pub span: Span,
}

/// `target openai_ads_developer_docs`: which target schema the mapping writes.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetDecl {
    pub name: Ident,
    pub span: Span,
}

/// `param consent_category: string = "marketing"`.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: Ident,
    pub ty: Ident,
    pub default: Option<Literal>,
    pub span: Span,
}

/// `property lead_score, "Plan Tier"`: properties the mapping's events carry that the Segment specs do not list.
#[derive(Clone, Debug, PartialEq)]
pub struct PropertyDecl {
    pub names: Vec<StringLit>,
    pub span: Span,
}

/// `include "common.map"`: the included file's items take this item's place.
#[derive(Clone, Debug, PartialEq)]
pub struct Include {
    pub path: StringLit,
    pub span: Span,
}

/// `routes { … }`: the table from Signal events to OpenAI event types.
#[derive(Clone, Debug, PartialEq)]
pub struct Routes {
    pub routes: Vec<Route>,
    pub span: Span,
}

/// `"Order Completed" -> order_created (contents)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub matcher: Matcher,
    pub event_type: RouteType,
    pub shape: Option<Ident>,
    pub span: Span,
}

/// Which Signal events a route takes.
#[derive(Clone, Debug, PartialEq)]
pub enum Matcher {
    /// A track event by name: `"Order Completed"`.
    Event(StringLit),
    /// An event kind: `page`, `screen`, or `track` (any track event no named route takes).
    Kind(Ident),
}

#[derive(Clone, Debug, PartialEq)]
pub enum RouteType {
    /// A standard OpenAI event type: `order_created`.
    Standard(Ident),
    /// `custom("button_clicked")`.
    Custom { name: StringLit, span: Span },
}

/// `remember user.email, user.phone_number for 365d`.
#[derive(Clone, Debug, PartialEq)]
pub struct Remember {
    pub targets: Vec<TargetPath>,
    pub lifetime: Option<Duration>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Duration {
    pub text: String,
    pub millis: i64,
    pub span: Span,
}

/// `when order_created, "Signed Up" { rules }`: rules that apply only to some routes.
#[derive(Clone, Debug, PartialEq)]
pub struct When {
    pub selectors: Vec<Selector>,
    pub rules: Vec<Rule>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Selector {
    /// A Signal track event name: `"Order Completed"`.
    Event(StringLit),
    /// An OpenAI event type, a data shape, or an event kind (`page`).
    Name(Ident),
}

/// `revenue ?? value -> data.amount | minor_units(currency)`, optionally with element rules in braces.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub source: Source,
    pub target: TargetPath,
    pub pipes: Vec<Call>,
    pub block: Option<Vec<Rule>>,
    pub span: Span,
}

/// One or more terms joined by `??`: the first that is present and not null.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub terms: Vec<Term>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Term {
    Literal(Literal),
    Param(Ident),
    Call(Call),
    Path(Path),
}

impl Term {
    pub fn span(&self) -> Span {
        match self {
            Term::Literal(l) => l.span,
            Term::Param(p) => p.span,
            Term::Call(c) => c.span,
            Term::Path(p) => p.span,
        }
    }
}

/// `minor_units(currency)`, or `sha256` in a pipe (no parentheses).
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub name: Ident,
    pub args: Vec<Arg>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Source(Source),
    Table(Table),
}

impl Arg {
    pub fn span(&self) -> Span {
        match self {
            Arg::Source(s) => s.span,
            Arg::Table(t) => t.span,
        }
    }
}

/// `{ "US": "usd", other: 1 }`: a constant object, for `lookup`.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub entries: Vec<(StringLit, Literal)>,
    pub span: Span,
}

/// A path into the event (or, after `@`, into the current array element).
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    /// `true` when the path starts with `@`, the current element.
    pub element: bool,
    pub segments: Vec<Segment>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Segment {
    Key { name: String, span: Span },
    Index { index: usize, span: Span },
    Each { span: Span },
}

impl Segment {
    pub fn span(&self) -> Span {
        match self {
            Segment::Key { span, .. } | Segment::Index { span, .. } | Segment::Each { span } => *span,
        }
    }
}

/// A path into the OpenAI event: `user.email`, `data.contents[*]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetPath {
    pub segments: Vec<Segment>,
    pub span: Span,
}

impl TargetPath {
    /// The field names along the path, without indexes: `["data", "contents"]` for `data.contents[*]`.
    pub fn keys(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Key { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// `user.email`, `data.contents[*]`, as written.
    pub fn dotted(&self) -> String {
        segments_text(&self.segments, false)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Literal {
    pub value: Value,
    pub span: Span,
}

fn is_plain_key(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn segments_text(segments: &[Segment], element: bool) -> String {
    let mut out = String::new();
    if element {
        out.push('@');
    }
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Key { name, .. } => {
                if i > 0 || element {
                    out.push('.');
                }
                if is_plain_key(name) {
                    out.push_str(name);
                } else {
                    out.push_str(&quote_string(name.clone()).to_string());
                }
            }
            Segment::Index { index, .. } => out.push_str(&format!("[{index}]")),
            Segment::Each { .. } => out.push_str("[*]"),
        }
    }
    out
}

// ---- canonical text: what parser snapshots show, and the basis of the formatter ----

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            writeln!(f, "{item}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Target(t) => write!(f, "target {}", t.name.name),
            Item::Param(p) => {
                write!(f, "param {}: {}", p.name.name, p.ty.name)?;
                if let Some(default) = &p.default {
                    write!(f, " = {}", literal_text(&default.value))?;
                }
                Ok(())
            }
            Item::Include(i) => write!(f, "include {}", quote_string(i.path.value.clone())),
            Item::Property(p) => {
                let names: Vec<String> = p
                    .names
                    .iter()
                    .map(|n| if is_plain_key(&n.value) { n.value.clone() } else { quote_string(n.value.clone()) })
                    .collect();
                write!(f, "property {}", names.join(", "))
            }
            Item::Routes(r) => {
                writeln!(f, "routes {{")?;
                for route in &r.routes {
                    writeln!(f, "  {route}")?;
                }
                write!(f, "}}")
            }
            Item::Remember(r) => {
                let targets: Vec<String> = r.targets.iter().map(TargetPath::dotted).collect();
                write!(f, "remember {}", targets.join(", "))?;
                if let Some(d) = &r.lifetime {
                    write!(f, " for {}", d.text)?;
                }
                Ok(())
            }
            Item::When(w) => {
                let selectors: Vec<String> = w.selectors.iter().map(ToString::to_string).collect();
                writeln!(f, "when {} {{", selectors.join(", "))?;
                for rule in &w.rules {
                    write_rule(f, rule, 1)?;
                }
                write!(f, "}}")
            }
            Item::Rule(rule) => {
                write_rule(f, rule, 0)?;
                Ok(())
            }
        }
    }
}

fn write_rule(f: &mut fmt::Formatter<'_>, rule: &Rule, depth: usize) -> fmt::Result {
    let indent = "  ".repeat(depth);
    write!(f, "{indent}{} -> {}", rule.source, rule.target.dotted())?;
    for pipe in &rule.pipes {
        write!(f, " | {pipe}")?;
    }
    match &rule.block {
        Some(rules) => {
            writeln!(f, " {{")?;
            for inner in rules {
                write_rule(f, inner, depth + 1)?;
            }
            writeln!(f, "{indent}}}")
        }
        None if depth == 0 => Ok(()),
        None => writeln!(f),
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.matcher, self.event_type)?;
        if let Some(shape) = &self.shape {
            write!(f, " ({})", shape.name)?;
        }
        Ok(())
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Event(s) => f.write_str(&quote_string(s.value.clone())),
            Matcher::Kind(k) => f.write_str(&k.name),
        }
    }
}

impl fmt::Display for RouteType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteType::Standard(t) => f.write_str(&t.name),
            RouteType::Custom { name, .. } => write!(f, "custom({})", quote_string(name.value.clone())),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Event(s) => write!(f, "{}", quote_string(s.value.clone())),
            Selector::Name(n) => f.write_str(&n.name),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, term) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(" ?? ")?;
            }
            match term {
                Term::Literal(l) => write!(f, "{}", literal_text(&l.value))?,
                Term::Param(p) => write!(f, "${}", p.name)?,
                Term::Call(c) if c.args.is_empty() => write!(f, "{}()", c.name.name)?,
                Term::Call(c) => write!(f, "{c}")?,
                Term::Path(p) => write!(f, "{p}")?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&segments_text(&self.segments, self.element))
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name.name)?;
        if self.args.is_empty() {
            return Ok(());
        }
        f.write_str("(")?;
        for (i, arg) in self.args.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match arg {
                Arg::Source(s) => write!(f, "{s}")?,
                Arg::Table(t) => {
                    f.write_str("{")?;
                    for (j, (key, value)) in t.entries.iter().enumerate() {
                        if j > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{}: {}", quote_string(key.value.clone()), literal_text(&value.value))?;
                    }
                    f.write_str("}")?;
                }
            }
        }
        f.write_str(")")
    }
}

/// A string literal as the grammar reads it back: only `\"`, `\\`, `\n`, `\t` and `\r` are escapes, every
/// other character stands as itself.
fn quote_string(text: String) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            other => out.push(other),
        }
    }
    out.push('"');
    out
}

fn literal_text(value: &Value) -> String {
    match value {
        Value::String(text) => quote_string(text.clone()),
        other => other.to_string(),
    }
}
