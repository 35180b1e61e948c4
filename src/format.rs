//! Formatting: the one canonical layout of a mapping file (`engine fmt`). Expressions print in the canonical form
//! of [`crate::ast`]; blocks indent by two spaces; the author's blank lines between items and rules stay (one at
//! most); the `->` of consecutive rules and routes line up; every comment is kept. A file that does not parse is
//! refused with the diagnostics `engine check` gives, never half formatted.
//!
//! The layout works on output lines. Each line knows the byte range of the source it prints, and each comment is
//! placed by where it stood: after the last code of a line, it trails that line; on a line of its own, it leads the
//! next line at that line's indent (inside a block when the next line closes it); inside a construct that prints
//! on one line (a rule written over several lines), it moves to its own line just above the construct, so no
//! comment is ever dropped and their order never changes.

use crate::ast::{Comment, FileId, Item, Rule, Selector, Span};
use crate::diagnostic::Diagnostic;
use crate::syntax;

/// The file id the diagnostics of [`format()`] point into: render them with a [`crate::source::Sources`] whose first
/// file is the formatted text.
pub const FILE: FileId = FileId(0);

/// A line of a column wider than the next widest of its run by more than this many columns is set apart: it
/// keeps a single space and does not push the rest of the run out to its width.
const OUTLIER_GAP: usize = 30;

/// Formats a mapping file. Errors are the syntax diagnostics of `engine check`, pointing into [`FILE`].
pub fn format(text: &str) -> Result<String, Vec<Diagnostic>> {
    let mapping = syntax::parse(FILE, text)?;
    let mut layout = Layout { text, comments: &mapping.comments, lines: Vec::new() };
    for item in &mapping.items {
        layout.item(item);
    }
    Ok(render(layout.place_comments()))
}

/// One line of code in the output, before comments and alignment.
struct CodeLine {
    depth: usize,
    /// The source bytes the line prints: from its first to just past its last code byte.
    start: usize,
    end: usize,
    content: Content,
    /// Ends in `{` that the next lines are inside of.
    opens: bool,
    /// Is the `}` of a block.
    closes: bool,
}

/// The text of a line, split into the columns that line up with the lines around it.
enum Content {
    Plain(String),
    /// `source` and the rest from `->` on.
    Rule {
        source: String,
        rest: String,
    },
    /// `matcher`, `-> event_type` and the optional `(shape)`.
    Route {
        matcher: String,
        event_type: String,
        shape: Option<String>,
    },
}

struct Layout<'t> {
    text: &'t str,
    comments: &'t [Comment],
    lines: Vec<CodeLine>,
}

impl Layout<'_> {
    fn push(&mut self, depth: usize, start: usize, end: usize, content: Content) {
        self.lines.push(CodeLine { depth, start, end, content, opens: false, closes: false });
    }

    fn item(&mut self, item: &Item) {
        match item {
            Item::Target(_) | Item::Param(_) | Item::Include(_) | Item::Property(_) | Item::Remember(_) => {
                let span = item_span(item);
                self.push(0, span.start, span.end, Content::Plain(item.to_string()));
            }
            Item::Routes(routes) => {
                let open = self.brace_after(routes.span.start + "routes".len());
                let close = routes.span.end - 1;
                let header = |brace: &str| Content::Plain(format!("routes{brace}"));
                self.block(0, header, routes.span.start, open, close, |layout| {
                    for route in &routes.routes {
                        let content = Content::Route {
                            matcher: route.matcher.to_string(),
                            event_type: format!("-> {}", route.event_type),
                            shape: route.shape.as_ref().map(|s| format!("({})", s.name)),
                        };
                        layout.push(1, route.span.start, route.span.end, content);
                    }
                });
            }
            Item::When(when) => {
                let last_selector = when.selectors.last().map_or(when.span.start, selector_end);
                let open = self.brace_after(last_selector);
                let selectors: Vec<String> = when.selectors.iter().map(ToString::to_string).collect();
                let header = |brace: &str| Content::Plain(format!("when {}{brace}", selectors.join(", ")));
                self.block(0, header, when.span.start, open, when.span.end - 1, |layout| {
                    for rule in &when.rules {
                        layout.rule(rule, 1);
                    }
                });
            }
            Item::Rule(rule) => self.rule(rule, 0),
        }
    }

    fn rule(&mut self, rule: &Rule, depth: usize) {
        let mut rest = format!("-> {}", rule.target.dotted());
        for pipe in &rule.pipes {
            rest.push_str(&format!(" | {pipe}"));
        }
        let source = rule.source.to_string();
        let Some(inner) = &rule.block else {
            self.push(depth, rule.span.start, rule.span.end, Content::Rule { source, rest });
            return;
        };
        let head_end = rule.pipes.last().map_or(rule.target.span.end, |p| p.span.end);
        let open = self.brace_after(head_end);
        let close = rule.span.end - 1;
        // The header keeps its columns, to line up with the rules around it.
        let header = |brace: &str| Content::Rule { source: source.clone(), rest: format!("{rest}{brace}") };
        self.block(depth, header, rule.span.start, open, close, |layout| {
            for r in inner {
                layout.rule(r, depth + 1);
            }
        });
    }

    /// A header line ending in ` {`, the lines `inside` adds, and `}`; or the header ending in ` {}` when the block
    /// holds nothing, not even a comment. `header` makes the header line from its ending.
    fn block(
        &mut self,
        depth: usize,
        header: impl Fn(&str) -> Content,
        start: usize,
        open: usize,
        close: usize,
        inside: impl FnOnce(&mut Self),
    ) {
        let first = self.lines.len();
        self.push(depth, start, open + 1, header(" {"));
        inside(self);
        let has_comment = self.comments.iter().any(|c| c.span.start > open && c.span.start < close);
        if self.lines.len() == first + 1 && !has_comment {
            self.lines[first].end = close + 1;
            self.lines[first].content = header(" {}");
            return;
        }
        self.lines[first].opens = true;
        self.push(depth, close, close + 1, Content::Plain("}".to_string()));
        self.lines.last_mut().expect("just pushed").closes = true;
    }

    /// The `{` after `from`, past whitespace and comments (the grammar puts it there).
    fn brace_after(&self, from: usize) -> usize {
        let mut at = from;
        loop {
            let rest = &self.text[at..];
            let trimmed = rest.trim_start();
            at += rest.len() - trimmed.len();
            match trimmed.strip_prefix('#') {
                Some(comment) => at += 1 + comment.find('\n').unwrap_or(comment.len()),
                None => break,
            }
        }
        debug_assert_eq!(self.text.as_bytes().get(at), Some(&b'{'), "a block opens with `{{` at {at}");
        at
    }

    /// Where each comment goes: leading a line, inside it (printed just above), trailing it, or at the end.
    fn place_comments(self) -> Vec<Out> {
        let Layout { text, comments, lines } = self;
        let mut leading: Vec<Vec<&Comment>> = lines.iter().map(|_| Vec::new()).collect();
        let mut interior = leading.clone();
        let mut trailing: Vec<Option<&Comment>> = lines.iter().map(|_| None).collect();
        let mut at_end = Vec::new();
        // The last line that starts at or before `at` (lines are in source order and do not overlap).
        let line_at = |at: usize| lines.partition_point(|l| l.start <= at).checked_sub(1);
        for comment in comments {
            let start = comment.span.start;
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let code_before = text[line_start..start].trim_start_matches('\u{feff}').trim_end();
            if !code_before.is_empty() {
                let code_end = line_start + text[line_start..start].trim_end().len();
                let index = line_at(code_end - 1).expect("code before a comment belongs to a line");
                if lines[index].end == code_end {
                    trailing[index] = Some(comment);
                } else {
                    interior[index].push(comment);
                }
                continue;
            }
            match line_at(start) {
                Some(index) if start < lines[index].end => interior[index].push(comment),
                before => match leading.get_mut(before.map_or(0, |i| i + 1)) {
                    Some(next_line) => next_line.push(comment),
                    None => at_end.push(comment),
                },
            }
        }

        let mut out = Output::default();
        for (index, line) in lines.into_iter().enumerate() {
            let comment_depth = if line.closes { line.depth + 1 } else { line.depth };
            for comment in &leading[index] {
                out.push(blank_before(text, comment.span.start), Out::comment(comment_depth, comment));
            }
            let blank = blank_before(text, line.start);
            for (i, comment) in interior[index].iter().enumerate() {
                out.push(blank && i == 0, Out::comment(line.depth, comment));
            }
            let blank = blank && interior[index].is_empty();
            let trailing = trailing[index].map(|c| c.text.clone());
            out.push(blank, Out::Code { line, trailing });
        }
        for comment in at_end {
            out.push(blank_before(text, comment.span.start), Out::comment(0, comment));
        }
        out.lines
    }
}

/// A line of the output.
enum Out {
    Blank,
    Comment { depth: usize, text: String },
    Code { line: CodeLine, trailing: Option<String> },
}

impl Out {
    fn code(&self) -> Option<&CodeLine> {
        match self {
            Out::Code { line, .. } => Some(line),
            _ => None,
        }
    }

    fn comment(depth: usize, comment: &Comment) -> Out {
        Out::Comment { depth, text: comment.text.clone() }
    }
}

#[derive(Default)]
struct Output {
    lines: Vec<Out>,
}

impl Output {
    /// Adds a line, after one blank line if the author left one there; never at the start of the file or of a
    /// block, nor before a block's `}`.
    fn push(&mut self, blank: bool, line: Out) {
        let after_open = matches!(self.lines.last(), None | Some(Out::Code { line: CodeLine { opens: true, .. }, .. }));
        let before_close = matches!(&line, Out::Code { line: CodeLine { closes: true, .. }, .. });
        if blank && !after_open && !before_close {
            self.lines.push(Out::Blank);
        }
        self.lines.push(line);
    }
}

/// Whether a blank line stands right before byte `at` (only whitespace between them).
fn blank_before(text: &str, at: usize) -> bool {
    let before = &text[..at];
    before[before.trim_end().len()..].matches('\n').count() >= 2
}

/// Lines out: runs of rules and routes aligned at `->` (and routes at their shape), then trailing comments
/// aligned among consecutive lines that have one (block braces aside).
fn render(lines: Vec<Out>) -> String {
    let code: Vec<Option<&CodeLine>> = lines.iter().map(Out::code).collect();
    // A run: consecutive code lines at one depth, no blank or comment line between, for which `together` holds.
    let run_end = |start: usize, together: &dyn Fn(&CodeLine, &CodeLine) -> bool| {
        let mut end = start + 1;
        while let (Some(Some(next)), Some(previous)) = (code.get(end), code[end - 1]) {
            if next.depth != previous.depth || !together(previous, next) {
                break;
            }
            end += 1;
        }
        end
    };

    let mut texts: Vec<String> = vec![String::new(); lines.len()];
    let mut start = 0;
    while start < lines.len() {
        if code[start].is_none() {
            start += 1;
            continue;
        }
        let end = run_end(start, &|a, b| same_columns(&a.content, &b.content));
        let run: Vec<&Content> = code[start..end].iter().flatten().map(|line| &line.content).collect();
        for (text, aligned) in texts[start..end].iter_mut().zip(align_columns(&run)) {
            *text = aligned;
        }
        start = end;
    }

    // A block's `{` and `}` lines are not table rows: their comments stay one space after the code.
    let has_trailing =
        |i: usize| matches!(&lines[i], Out::Code { trailing: Some(_), line } if !line.opens && !line.closes);
    let mut comment_pads = vec![0; lines.len()];
    let mut start = 0;
    while start < lines.len() {
        if !has_trailing(start) {
            start += 1;
            continue;
        }
        let mut end = run_end(start, &|_, _| true);
        end = (start..end).find(|&i| !has_trailing(i)).unwrap_or(end);
        let widths: Vec<usize> = texts[start..end].iter().map(|t| width(t)).collect();
        comment_pads[start..end].copy_from_slice(&aligned_pads(&widths));
        start = end;
    }

    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        match line {
            Out::Blank => {}
            Out::Comment { depth, text } => {
                out.push_str(&"  ".repeat(*depth));
                out.push_str(text);
            }
            Out::Code { line, trailing } => {
                out.push_str(&"  ".repeat(line.depth));
                out.push_str(&texts[i]);
                if let Some(comment) = trailing {
                    out.push_str(&" ".repeat(comment_pads[i] + 1));
                    out.push_str(comment);
                }
            }
        }
        out.push('\n');
    }
    out
}

/// Whether two lines share columns: both rules, or both routes.
fn same_columns(a: &Content, b: &Content) -> bool {
    matches!((a, b), (Content::Rule { .. }, Content::Rule { .. }) | (Content::Route { .. }, Content::Route { .. }))
}

/// The text of each line of a run, its columns padded to line up.
fn align_columns(run: &[&Content]) -> Vec<String> {
    let firsts: Vec<usize> = run
        .iter()
        .map(|c| match c {
            Content::Plain(text) => width(text),
            Content::Rule { source, .. } => width(source),
            Content::Route { matcher, .. } => width(matcher),
        })
        .collect();
    let pads = aligned_pads(&firsts);
    let mut texts: Vec<String> = run
        .iter()
        .zip(&pads)
        .map(|(c, pad)| match c {
            Content::Plain(text) => text.clone(),
            Content::Rule { source, rest } => format!("{source}{} {rest}", " ".repeat(*pad)),
            Content::Route { matcher, event_type, .. } => format!("{matcher}{} {event_type}", " ".repeat(*pad)),
        })
        .collect();
    // Shapes line up among the routes that have one.
    let with_shape: Vec<usize> =
        (0..run.len()).filter(|&i| matches!(run[i], Content::Route { shape: Some(_), .. })).collect();
    let widths: Vec<usize> = with_shape.iter().map(|&i| width(&texts[i])).collect();
    for (&i, pad) in with_shape.iter().zip(aligned_pads(&widths)) {
        if let Content::Route { shape: Some(shape), .. } = run[i] {
            texts[i] = format!("{}{} {shape}", texts[i], " ".repeat(pad));
        }
    }
    texts
}

/// The padding that brings every width of a column to the widest, except outliers: while the widest is more
/// than [`OUTLIER_GAP`] columns wider than the next widest, it is set apart (no padding, and it does not count).
fn aligned_pads(widths: &[usize]) -> Vec<usize> {
    let mut sorted = widths.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut column = sorted.first().copied().unwrap_or(0);
    for pair in sorted.windows(2) {
        if pair[0] - pair[1] > OUTLIER_GAP {
            column = pair[1];
        } else {
            break;
        }
    }
    widths.iter().map(|&w| column.saturating_sub(w)).collect()
}

fn width(text: &str) -> usize {
    text.chars().count()
}

fn item_span(item: &Item) -> Span {
    match item {
        Item::Target(t) => t.span,
        Item::Param(p) => p.span,
        Item::Include(i) => i.span,
        Item::Property(p) => p.span,
        Item::Routes(r) => r.span,
        Item::Remember(r) => r.span,
        Item::When(w) => w.span,
        Item::Rule(r) => r.span,
    }
}

fn selector_end(selector: &Selector) -> usize {
    match selector {
        Selector::Event(s) => s.span.end,
        Selector::Name(n) => n.span.end,
    }
}
