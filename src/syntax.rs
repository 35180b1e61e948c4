//! Parsing: mapping text to the spanned syntax tree. This is the only module that knows pest; its types never
//! leave it. Syntax errors become diagnostics that name the expected tokens in plain words, and parsing resumes
//! at the next line that starts an item, so one run reports every syntax error.

use std::ops::ControlFlow;

use pest::iterators::Pair;
use pest::Parser;
use serde_json::Value;

use crate::ast::*;
use crate::diagnostic::{codes, Diagnostic};

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/mapping.pest"]
struct MappingParser;

/// Parses one mapping file. On syntax errors, returns every one found, together with nothing else: a file that
/// does not parse is not checked further.
pub fn parse(file: FileId, text: &str) -> Result<Mapping, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut items = Vec::new();
    // Editors on Windows start files with a byte order mark; it is not part of the mapping.
    let start = if text.starts_with('\u{feff}') { '\u{feff}'.len_utf8() } else { 0 };
    if let Some(at) = too_deep(text, start) {
        return Err(vec![nested_too_deeply(Span::new(file, at, at + 1), &format!("more than {MAX_NESTING} levels"))]);
    }
    let mut offset = start;
    loop {
        match MappingParser::parse(Rule::file, &text[offset..]) {
            Ok(mut pairs) => {
                let lowering = Lowering { file, offset, errors: &mut errors };
                items.extend(lowering.file(pairs.next().expect("the file rule always yields one pair")));
                break;
            }
            Err(error) => {
                let diagnostic = syntax_error(file, offset, text, &error);
                let at = diagnostic.primary.span.start;
                errors.push(diagnostic);
                match resume_point(text, at) {
                    Some(next) => offset = next,
                    None => break,
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(Mapping { items, comments: comments(file, text, start) })
    } else {
        Err(errors)
    }
}

/// How deeply brackets, braces and parentheses may nest. Parsing, lowering and compiling each go one call deeper per
/// level; pest stops at a stack limit of its own, but a release build's frames are small enough to pass it, and
/// 20,000 nested blocks then overflowed the stack in a later stage. No mapping a person writes comes near this.
const MAX_NESTING: usize = 128;

/// Where nesting first goes past [`MAX_NESTING`], outside strings and comments; `None` when it never does.
fn too_deep(text: &str, start: usize) -> Option<usize> {
    let mut depth = 0usize;
    outside_strings(text, start, |at, met| match met {
        Met::Code(b'{' | b'(' | b'[') => {
            depth += 1;
            if depth > MAX_NESTING {
                return ControlFlow::Break(at);
            }
            ControlFlow::Continue(())
        }
        Met::Code(b'}' | b')' | b']') => {
            depth = depth.saturating_sub(1);
            ControlFlow::Continue(())
        }
        Met::Code(_) | Met::Comment(_) => ControlFlow::Continue(()),
    })
}

/// What [`outside_strings`] meets.
enum Met {
    /// A byte of code.
    Code(u8),
    /// A comment, up to the end of its line.
    Comment(usize),
}

/// Walks a mapping's text from `start` past its strings (which end at a quote or, unterminated, at the line's end),
/// telling `visit` where each byte of code and each comment is, until it breaks. Byte-wise: the bytes looked for are
/// ASCII, and no byte of a multi-byte character equals an ASCII byte.
fn outside_strings<B>(text: &str, start: usize, mut visit: impl FnMut(usize, Met) -> ControlFlow<B>) -> Option<B> {
    let bytes = text.as_bytes();
    let mut at = start;
    let mut in_string = false;
    while at < bytes.len() {
        match (in_string, bytes[at]) {
            (true, b'\\') => at += 1,
            (true, b'"' | b'\n') | (false, b'"') => in_string = !in_string,
            (true, _) => {}
            (false, b'#') => {
                let line_end = memchr::memchr(b'\n', &bytes[at..]).map_or(bytes.len(), |i| at + i);
                if let ControlFlow::Break(found) = visit(at, Met::Comment(line_end)) {
                    return Some(found);
                }
                at = line_end;
                continue;
            }
            (false, byte) => {
                if let ControlFlow::Break(found) = visit(at, Met::Code(byte)) {
                    return Some(found);
                }
            }
        }
        at += 1;
    }
    None
}

/// The diagnostic for a mapping nested past what is read: `why` says which limit.
fn nested_too_deeply(span: Span, why: &str) -> Diagnostic {
    Diagnostic::error(
        codes::SYNTAX,
        format!("the mapping is nested too deeply to read here ({why})"),
        span,
        "nested too deeply",
    )
    .with_help("nest fewer calls, blocks or parentheses: a chain of pipes (`x | f | g`) reads the same as `g(f(x))`")
}

/// The comments of a file that parsed, in order. The grammar skips them silently; outside comments, `#` can only
/// stand inside a string, and strings never span lines, so a scan that steps over strings finds exactly the
/// comments the parser skipped.
fn comments(file: FileId, text: &str, start: usize) -> Vec<Comment> {
    let mut comments = Vec::new();
    outside_strings::<()>(text, start, |at, met| {
        if let Met::Comment(line_end) = met {
            let comment = text[at..line_end].trim_end();
            comments.push(Comment { text: comment.to_string(), span: Span::new(file, at, at + comment.len()) });
        }
        ControlFlow::Continue(())
    });
    comments
}

/// Parses a single pipe call such as `multiply(100)` or `sha256`, for function examples and tools.
pub fn parse_call(file: FileId, text: &str) -> Result<Call, Vec<Diagnostic>> {
    if let Some(at) = too_deep(text, 0) {
        return Err(vec![nested_too_deeply(Span::new(file, at, at + 1), &format!("more than {MAX_NESTING} levels"))]);
    }
    let mut errors = Vec::new();
    match MappingParser::parse(Rule::pipe, &format!("|{text}")) {
        Ok(mut pairs) => {
            let mut lowering = Lowering { file, offset: 0, errors: &mut errors };
            let call = lowering.pipe(pairs.next().expect("pipe yields one pair"));
            if errors.is_empty() {
                Ok(call)
            } else {
                Err(errors)
            }
        }
        Err(error) => Err(vec![syntax_error(file, 0, text, &error)]),
    }
}

/// After an error at byte `at`, the start of the next line that begins like a top-level item (not indented,
/// not a comment, not a closing brace), where parsing can sensibly start again.
fn resume_point(text: &str, at: usize) -> Option<usize> {
    let mut position = text[at..].find('\n')? + at + 1;
    loop {
        let line_end = text[position..].find('\n').map_or(text.len(), |i| position + i);
        let line = &text[position..line_end];
        let starts_item = line.chars().next().is_some_and(|c| !c.is_whitespace() && c != '#' && c != '}');
        if starts_item {
            return Some(position);
        }
        if line_end >= text.len() {
            return None;
        }
        position = line_end + 1;
    }
}

fn syntax_error(file: FileId, offset: usize, text: &str, error: &pest::error::Error<Rule>) -> Diagnostic {
    let position = match error.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((start, _)) => start,
    } + offset;
    let found = describe_found(&text[position..]);
    if let Some(diagnostic) = unterminated_string(file, text, position) {
        return diagnostic;
    }
    // At the end of the file, point just after the last token rather than past the final newline, where no
    // snippet line can show the label.
    let position = if position >= text.len() { text.trim_end().len() } else { position };
    let end = (position + found.1).min(text.len()).max(position);
    let expected = match &error.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut words: Vec<&str> = positives.iter().filter_map(|r| rule_words(*r)).collect();
            // At an item boundary pest lists every way an item can start; say it in one phrase.
            let item_starts =
                ["`include`", "`param`", "`property`", "`remember`", "`routes`", "`target`", "`when`", "a rule"];
            let source = "a source (path, literal, `$param` or function call)";
            if words.iter().any(|w| item_starts.contains(w)) {
                words.retain(|w| !item_starts.contains(w) && *w != source);
                words.push("a new rule or declaration");
            }
            words.sort_unstable();
            words.dedup();
            words
        }
        pest::error::ErrorVariant::CustomError { .. } => Vec::new(),
    };
    if let pest::error::ErrorVariant::CustomError { message } = &error.variant {
        // The parser's own limits (pest refuses input nested past its stack limit rather than overflow the stack).
        return nested_too_deeply(Span::new(file, position, end), message);
    }
    let expected_text = match expected.len() {
        0 => "something else".to_string(),
        1 => expected[0].to_string(),
        n => format!("{} or {}", expected[..n - 1].join(", "), expected[n - 1]),
    };
    let span = Span::new(file, position, end);
    let mut diagnostic = Diagnostic::error(
        codes::SYNTAX,
        format!("expected {expected_text}, found {}", found.0),
        span,
        // The message lists everything that would fit; the label stays short enough to sit under the code.
        match (expected.len(), found.0.as_str()) {
            (0..=2, _) => format!("expected {expected_text} here"),
            (_, "the end of the file") => "the file ends here".to_string(),
            (_, "the end of the line") => "the line ends here".to_string(),
            (_, token) => format!("unexpected {token}"),
        },
    );
    diagnostic = diagnostic.with_help(syntax_help(&text[position..], &expected));
    diagnostic
}

/// A `"` that opens a string no `"` closes on its line: pest only sees an unexpected quote.
fn unterminated_string(file: FileId, text: &str, position: usize) -> Option<Diagnostic> {
    let rest = text[position..].strip_prefix('"')?;
    let line = rest.split('\n').next().unwrap_or_default();
    let mut escaped = false;
    for c in line.chars() {
        match (escaped, c) {
            (false, '\\') => escaped = true,
            (false, '"') => return None,
            _ => escaped = false,
        }
    }
    let end = position + 1 + line.len();
    Some(
        Diagnostic::error(
            codes::SYNTAX,
            "unterminated string",
            Span::new(file, position, end),
            "this string has no closing `\"`",
        )
        .with_help("close the string on the same line; write a quote inside a string as \\\""),
    )
}

/// What the parser stumbled on, in words, and how many bytes of it to underline.
fn describe_found(rest: &str) -> (String, usize) {
    let Some(first) = rest.chars().next() else {
        return ("the end of the file".to_string(), 0);
    };
    if first == '\n' {
        return ("the end of the line".to_string(), 1);
    }
    let token_len = if first.is_alphanumeric() || first == '_' {
        rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len())
    } else if rest.starts_with("->") || rest.starts_with("??") || rest.starts_with("||") {
        2
    } else {
        first.len_utf8()
    };
    let token = &rest[..token_len];
    (format!("`{token}`"), token_len)
}

fn syntax_help(rest: &str, expected: &[&str]) -> String {
    if rest.starts_with('=') && !rest.starts_with("=>") && expected.contains(&"`->`") {
        return "rules are written `source -> target`, with an arrow".to_string();
    }
    if rest.starts_with("=>") {
        return "rules and routes use `->`, not `=>`".to_string();
    }
    if rest.starts_with('\'') {
        return "strings are written in double quotes: \"…\"".to_string();
    }
    if expected.contains(&"a closing `}`") {
        return "every `{` needs a matching `}`".to_string();
    }
    if expected.contains(&"a closing `)`") {
        return "every `(` needs a matching `)`".to_string();
    }
    "a mapping is a list of rules `source -> target | function(args)`, `routes { … }`, `when … { … }`, \
     `param`, `property`, `remember`, `include` and `target` lines; see docs/language.md"
        .to_string()
}

/// Plain words for the grammar rules that can appear in "expected …" (hidden helper rules return `None`).
fn rule_words(grammar_rule: Rule) -> Option<&'static str> {
    Some(match grammar_rule {
        Rule::EOI => "the end of the file",
        Rule::item | Rule::rule => "a rule",
        Rule::target_decl | Rule::kw_target => "`target`",
        Rule::param_decl | Rule::kw_param => "`param`",
        Rule::include_decl | Rule::kw_include => "`include`",
        Rule::property_decl | Rule::kw_property => "`property`",
        Rule::routes | Rule::kw_routes => "`routes`",
        Rule::remember | Rule::kw_remember => "`remember`",
        Rule::when_block | Rule::kw_when => "`when`",
        Rule::kw_for => "`for`",
        Rule::kw_custom | Rule::custom_type => "`custom(\"name\")`",
        Rule::route => "a route `event -> event_type`",
        Rule::matcher => "a Signal event (`page` or \"Event Name\")",
        Rule::route_type => "an OpenAI event type",
        Rule::shape => "a data shape in parentheses",
        Rule::duration => "a lifetime such as `30d`",
        Rule::selector => "an event type, shape or \"Event Name\"",
        Rule::source => "a source (path, literal, `$param` or function call)",
        Rule::pipe | Rule::bar => "`|`",
        Rule::block => "`{`",
        Rule::call => "a function call",
        Rule::call_args => "`(`",
        Rule::table => "a table `{ key: value }`",
        Rule::entry => "a table entry `key: value`",
        Rule::param_ref => "a parameter `$name`",
        Rule::path => "a path",
        Rule::element => "`@`",
        Rule::target => "a target field such as `user.email`",
        Rule::index => "an index",
        Rule::each => "`*`",
        Rule::boolean => "`true` or `false`",
        Rule::number => "a number",
        Rule::string => "a string",
        Rule::ident | Rule::key => "a name",
        Rule::arrow => "`->`",
        Rule::coalesce => "`??`",
        Rule::colon => "`:`",
        Rule::comma => "`,`",
        Rule::equals => "`=`",
        Rule::open_brace => "`{`",
        Rule::close_brace => "a closing `}`",
        Rule::open_paren => "`(`",
        Rule::close_paren => "a closing `)`",
        _ => return None,
    })
}

/// Turns pest pairs into syntax tree nodes: one method per grammar rule.
struct Lowering<'e> {
    file: FileId,
    /// Where the parsed text starts in the file (non-zero after error recovery).
    offset: usize,
    errors: &'e mut Vec<Diagnostic>,
}

impl Lowering<'_> {
    fn span(&self, pair: &Pair<'_, Rule>) -> Span {
        Span::new(self.file, pair.as_span().start() + self.offset, code_end(pair) + self.offset)
    }

    fn file(mut self, pair: Pair<'_, Rule>) -> Vec<Item> {
        pair.into_inner().filter(|p| p.as_rule() != Rule::EOI).map(|p| self.item(p)).collect()
    }

    fn item(&mut self, pair: Pair<'_, Rule>) -> Item {
        let span = self.span(&pair);
        match pair.as_rule() {
            Rule::target_decl => {
                let name = self.ident(pair.into_inner().nth(1).expect("target name"));
                Item::Target(TargetDecl { name, span })
            }
            Rule::param_decl => {
                let mut inner = pair.into_inner().filter(|p| !is_punct(p.as_rule()));
                let name = self.ident(inner.next().expect("param name"));
                let ty = self.ident(inner.next().expect("param type"));
                let default = inner.next().map(|p| self.literal(p));
                Item::Param(ParamDecl { name, ty, default, span })
            }
            Rule::include_decl => {
                let path = self.string(pair.into_inner().nth(1).expect("include path"));
                Item::Include(Include { path, span })
            }
            Rule::property_decl => {
                let mut names = Vec::new();
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::key => names.push(StringLit { value: p.as_str().to_string(), span: self.span(&p) }),
                        Rule::string => names.push(self.string(p)),
                        _ => {}
                    }
                }
                Item::Property(PropertyDecl { names, span })
            }
            Rule::routes => {
                let routes = pair.into_inner().filter(|p| p.as_rule() == Rule::route).map(|p| self.route(p)).collect();
                Item::Routes(Routes { routes, span })
            }
            Rule::remember => {
                let mut targets = Vec::new();
                let mut lifetime = None;
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::target => targets.push(self.target(p)),
                        Rule::duration => lifetime = Some(self.duration(p)),
                        _ => {}
                    }
                }
                Item::Remember(Remember { targets, lifetime, span })
            }
            Rule::when_block => {
                let mut selectors = Vec::new();
                let mut rules = Vec::new();
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::selector => selectors.push(self.selector(p)),
                        Rule::rule => rules.push(self.rule(p)),
                        _ => {}
                    }
                }
                Item::When(When { selectors, rules, span })
            }
            Rule::rule => Item::Rule(self.rule(pair)),
            other => unreachable!("the grammar has no item {other:?}"),
        }
    }

    fn route(&mut self, pair: Pair<'_, Rule>) -> Route {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().filter(|p| !is_punct(p.as_rule()));
        let matcher_pair = inner.next().expect("route matcher").into_inner().next().expect("matcher content");
        let matcher = match matcher_pair.as_rule() {
            Rule::string => Matcher::Event(self.string(matcher_pair)),
            _ => Matcher::Kind(self.ident(matcher_pair)),
        };
        let type_pair = inner.next().expect("route type").into_inner().next().expect("route type content");
        let event_type = match type_pair.as_rule() {
            Rule::custom_type => {
                let type_span = self.span(&type_pair);
                let name = type_pair.into_inner().find(|p| p.as_rule() == Rule::string).expect("custom name");
                RouteType::Custom { name: self.string(name), span: type_span }
            }
            _ => RouteType::Standard(self.ident(type_pair)),
        };
        let shape = inner.next().map(|p| {
            let ident = p.into_inner().find(|p| p.as_rule() == Rule::ident).expect("shape name");
            self.ident(ident)
        });
        Route { matcher, event_type, shape, span }
    }

    fn selector(&mut self, pair: Pair<'_, Rule>) -> Selector {
        let inner = pair.into_inner().next().expect("selector content");
        match inner.as_rule() {
            Rule::string => Selector::Event(self.string(inner)),
            _ => Selector::Name(self.ident(inner)),
        }
    }

    fn rule(&mut self, pair: Pair<'_, Rule>) -> crate::ast::Rule {
        let span = self.span(&pair);
        let mut source = None;
        let mut target = None;
        let mut pipes = Vec::new();
        let mut block = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::source => source = Some(self.source(p)),
                Rule::target => target = Some(self.target(p)),
                Rule::pipe => pipes.push(self.pipe(p)),
                Rule::block => {
                    block = Some(p.into_inner().filter(|p| p.as_rule() == Rule::rule).map(|p| self.rule(p)).collect())
                }
                _ => {}
            }
        }
        crate::ast::Rule {
            source: source.expect("a rule has a source"),
            target: target.expect("a rule has a target"),
            pipes,
            block,
            span,
        }
    }

    fn pipe(&mut self, pair: Pair<'_, Rule>) -> Call {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().filter(|p| p.as_rule() != Rule::bar);
        let name = self.ident(inner.next().expect("pipe function name"));
        let args = inner.next().map(|p| self.call_args(p)).unwrap_or_default();
        // The call's span starts at the function name, not at the bar.
        Call { span: Span { start: name.span.start, ..span }, name, args }
    }

    fn call_args(&mut self, pair: Pair<'_, Rule>) -> Vec<Arg> {
        pair.into_inner()
            .filter_map(|p| match p.as_rule() {
                Rule::source => Some(Arg::Source(self.source(p))),
                Rule::table => Some(Arg::Table(self.table(p))),
                _ => None,
            })
            .collect()
    }

    fn table(&mut self, pair: Pair<'_, Rule>) -> Table {
        let span = self.span(&pair);
        let mut entries = Vec::new();
        for entry in pair.into_inner().filter(|p| p.as_rule() == Rule::entry) {
            let mut inner = entry.into_inner().filter(|p| p.as_rule() != Rule::colon);
            let key_pair = inner.next().expect("entry key");
            let key = match key_pair.as_rule() {
                Rule::string => self.string(key_pair),
                _ => {
                    let ident = self.ident(key_pair);
                    StringLit { value: ident.name, span: ident.span }
                }
            };
            let value = self.literal(inner.next().expect("entry value"));
            entries.push((key, value));
        }
        Table { entries, span }
    }

    fn source(&mut self, pair: Pair<'_, Rule>) -> Source {
        let span = self.span(&pair);
        let terms = pair.into_inner().filter(|p| p.as_rule() != Rule::coalesce).map(|p| self.term(p)).collect();
        Source { terms, span }
    }

    fn term(&mut self, pair: Pair<'_, Rule>) -> Term {
        let span = self.span(&pair);
        match pair.as_rule() {
            Rule::string | Rule::number | Rule::boolean => Term::Literal(self.literal(pair)),
            Rule::param_ref => Term::Param(self.ident(pair.into_inner().next().expect("param name"))),
            Rule::call => {
                let mut inner = pair.into_inner();
                let name = self.ident(inner.next().expect("call name"));
                let args = self.call_args(inner.next().expect("call args"));
                Term::Call(Call { name, args, span })
            }
            Rule::path => Term::Path(self.path(pair)),
            other => unreachable!("the grammar has no term {other:?}"),
        }
    }

    fn path(&mut self, pair: Pair<'_, Rule>) -> Path {
        let span = self.span(&pair);
        let mut element = false;
        let mut segments = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::element => element = true,
                _ => segments.push(self.segment(p)),
            }
        }
        Path { element, segments, span }
    }

    fn target(&mut self, pair: Pair<'_, Rule>) -> TargetPath {
        let span = self.span(&pair);
        let segments = pair.into_inner().map(|p| self.segment(p)).collect();
        TargetPath { segments, span }
    }

    fn segment(&mut self, pair: Pair<'_, Rule>) -> Segment {
        let span = self.span(&pair);
        match pair.as_rule() {
            Rule::ident | Rule::key => Segment::Key { name: pair.as_str().to_string(), span },
            Rule::string => Segment::Key { name: self.string(pair).value, span },
            Rule::each => Segment::Each { span },
            Rule::index => match pair.as_str().parse::<usize>() {
                Ok(index) => Segment::Index { index, span },
                Err(_) => {
                    self.errors.push(
                        Diagnostic::error(codes::INVALID_NUMBER, "array index is too large", span, "this index")
                            .with_help("use an index below 2^64"),
                    );
                    Segment::Index { index: 0, span }
                }
            },
            other => unreachable!("the grammar has no path segment {other:?}"),
        }
    }

    fn ident(&mut self, pair: Pair<'_, Rule>) -> Ident {
        Ident { name: pair.as_str().to_string(), span: self.span(&pair) }
    }

    fn literal(&mut self, pair: Pair<'_, Rule>) -> Literal {
        let span = self.span(&pair);
        let value = match pair.as_rule() {
            Rule::string => Value::String(self.string(pair).value),
            Rule::boolean => Value::Bool(pair.as_str() == "true"),
            Rule::number => self.number(pair.as_str(), span),
            other => unreachable!("the grammar has no literal {other:?}"),
        };
        Literal { value, span }
    }

    fn number(&mut self, text: &str, span: Span) -> Value {
        let is_integer = !text.contains(['.', 'e', 'E']);
        if is_integer {
            if let Ok(i) = text.parse::<i64>() {
                return Value::from(i);
            }
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() && !is_integer => Value::from(f),
            _ => {
                self.errors.push(
                    Diagnostic::error(
                        codes::INVALID_NUMBER,
                        format!("number `{text}` is out of range"),
                        span,
                        "too large",
                    )
                    .with_help("integers must fit in 64 bits; numbers with a fraction in a double"),
                );
                Value::from(0)
            }
        }
    }

    fn string(&mut self, pair: Pair<'_, Rule>) -> StringLit {
        let span = self.span(&pair);
        let inner = pair.into_inner().next().expect("string content");
        let raw = inner.as_str();
        let content_start = self.span(&inner).start;
        let mut value = String::with_capacity(raw.len());
        let mut chars = raw.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '\\' {
                value.push(c);
                continue;
            }
            let escape = chars.next().map(|(_, e)| e);
            match escape {
                Some('"') => value.push('"'),
                Some('\\') => value.push('\\'),
                Some('n') => value.push('\n'),
                Some('t') => value.push('\t'),
                Some('r') => value.push('\r'),
                other => {
                    let len = 1 + other.map_or(0, char::len_utf8);
                    let at = Span::new(self.file, content_start + i, content_start + i + len);
                    self.errors.push(
                        Diagnostic::error(
                            codes::INVALID_ESCAPE,
                            "unknown escape sequence in string",
                            at,
                            "not a known escape",
                        )
                        .with_help(r#"the escapes are \" \\ \n \t \r; write other characters as they are"#),
                    );
                }
            }
        }
        StringLit { value, span }
    }

    fn duration(&mut self, pair: Pair<'_, Rule>) -> Duration {
        let span = self.span(&pair);
        let text = pair.as_str().to_string();
        let (digits, unit) = text.split_at(text.len() - 1);
        let unit_ms: i64 = match unit {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            _ => 1_000,
        };
        const MAX_MS: i64 = 10 * 365 * 86_400_000;
        let millis =
            digits.parse::<i64>().ok().and_then(|n| n.checked_mul(unit_ms)).filter(|ms| (1..=MAX_MS).contains(ms));
        let millis = millis.unwrap_or_else(|| {
            self.errors.push(
                Diagnostic::error(
                    codes::INVALID_DURATION,
                    format!("lifetime `{text}` is out of range"),
                    span,
                    "this lifetime",
                )
                .with_help("a lifetime is at least one second and at most 3650d"),
            );
            1
        });
        Duration { text, millis, span }
    }
}

/// Where a pair's code ends. A rule that ends in an optional or repeated part (`shape?`, `pipe*`, `block?`) has
/// already skipped the whitespace and comments before it when that part is absent; they are not part of the node,
/// nor of the nodes that end with it.
fn code_end(pair: &Pair<'_, Rule>) -> usize {
    let span = pair.as_span();
    match pair.clone().into_inner().last() {
        Some(last) => {
            let last_end = code_end(&last);
            if is_trivia(&span.as_str()[last_end - span.start()..]) {
                last_end
            } else {
                span.end()
            }
        }
        None => span.end(),
    }
}

/// Whether `text` is only whitespace and comments.
fn is_trivia(mut text: &str) -> bool {
    loop {
        text = text.trim_start();
        match text.strip_prefix('#') {
            Some(comment) => text = comment.find('\n').map_or("", |i| &comment[i..]),
            None => return text.is_empty(),
        }
    }
}

fn is_punct(grammar_rule: Rule) -> bool {
    matches!(
        grammar_rule,
        Rule::arrow
            | Rule::coalesce
            | Rule::bar
            | Rule::colon
            | Rule::comma
            | Rule::equals
            | Rule::open_brace
            | Rule::close_brace
            | Rule::open_paren
            | Rule::close_paren
            | Rule::kw_target
            | Rule::kw_param
            | Rule::kw_include
            | Rule::kw_routes
            | Rule::kw_remember
            | Rule::kw_when
            | Rule::kw_for
            | Rule::kw_custom
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemoryLoader;

    fn calls(levels: usize) -> String {
        format!("{}messageId{} -> id\n", "to_string(".repeat(levels), ")".repeat(levels))
    }

    fn blocks(levels: usize) -> String {
        format!(
            "{}quantity -> quantity\n{}",
            "products[*] -> data.contents[*] {\n".repeat(levels),
            "}\n".repeat(levels)
        )
    }

    #[test]
    fn nesting_past_the_limit_is_refused_where_it_goes_past() {
        for (text, opener) in
            [(calls(MAX_NESTING + 1), "to_string("), (blocks(MAX_NESTING + 1), "products[*] -> data.contents[*] {\n")]
        {
            let errors = parse(FileId(0), &text).expect_err("too deep");
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].message.contains("nested too deeply"), "{}", errors[0].message);
            // The opening that goes one level past: `[` of `products[*]` counts too, so blocks reach it sooner.
            let at = errors[0].primary.span.start;
            assert!(at < opener.len() * (MAX_NESTING + 1), "{at}");
            assert!(matches!(text.as_bytes()[at], b'(' | b'{' | b'['), "{at}");
        }
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_nest() {
        let deep = "{([".repeat(MAX_NESTING);
        let text = format!("\"{deep}\" -> action_source # {deep}\n\"a \\\" {deep}\" -> id\n");
        assert_eq!(too_deep(&text, 0), None);
        assert!(parse(FileId(0), &text).is_ok());
        // After the comment and its line break, the opening at index MAX_NESTING is one too many.
        assert_eq!(too_deep(&format!("# {deep}\n{deep}"), 0), Some("# \n".len() + deep.len() + MAX_NESTING));
    }

    #[test]
    fn a_mapping_nested_to_the_limit_is_checked_on_a_small_stack() {
        // The relay's workers and other threads a mapping is compiled on have stacks of 2 MiB.
        for text in [calls(MAX_NESTING), blocks(MAX_NESTING - 2)] {
            let compiled = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || crate::compile("m.map", &text, &MemoryLoader::default(), &Default::default()))
                .expect("a thread")
                .join()
                .expect("checked without overflowing the stack");
            let messages: Vec<&str> = compiled.diagnostics.iter().map(|d| d.message.as_str()).collect();
            assert!(!messages.iter().any(|m| m.contains("nested too deeply")), "{messages:?}");
        }
    }
}
