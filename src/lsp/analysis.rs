//! What the editor's cursor is on: a parse that survives the syntax errors of a file being typed, the syntax
//! node under an offset, the block a position is in (read from the text, so it works on broken files too), and
//! the files and declarations a mapping reaches through its includes.

use std::collections::HashSet;

use signal_engine::ast::{
    Arg, Call, FileId, Ident, Include, Item, Mapping, ParamDecl, Path, Route, RouteType, Rule, Selector, Source,
    TargetPath, Term,
};
use signal_engine::schema::{self, TargetSchema};
use signal_engine::source::SourceLoader;
use signal_engine::syntax;

use super::text::{floor_char_boundary, LineIndex};

/// The items of a file, as many as can be read. A file that parses yields all of them; otherwise every
/// top-level item that parses on its own is kept, and inside an item that does not, every line that parses on
/// its own (typically the rules of a `when` block around the line being typed).
pub fn parse_recovering(text: &str) -> Vec<Item> {
    if let Ok(Mapping { items, .. }) = syntax::parse(FileId(0), text) {
        return items;
    }
    let mut items = Vec::new();
    for (start, end) in item_chunks(text) {
        match syntax::parse(FileId(0), &blank_outside(text, start, end)) {
            Ok(mapping) => items.extend(mapping.items),
            Err(_) => {
                let mut line_start = start;
                for line in text[start..end].split_inclusive('\n') {
                    let line_end = line_start + line.len();
                    if let Ok(mapping) = syntax::parse(FileId(0), &blank_outside(text, line_start, line_end)) {
                        items.extend(mapping.items);
                    }
                    line_start = line_end;
                }
            }
        }
    }
    items
}

/// Byte ranges of the top-level items: each starts at a line that begins like an item (not indented, not a
/// comment, not a closing brace), as the parser's own error recovery assumes.
fn item_chunks(text: &str) -> Vec<(usize, usize)> {
    let mut starts = vec![0];
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if offset > 0 && line.chars().next().is_some_and(|c| !c.is_whitespace() && c != '#' && c != '}') {
            starts.push(offset);
        }
        offset += line.len();
    }
    starts.iter().enumerate().map(|(i, &start)| (start, starts.get(i + 1).copied().unwrap_or(text.len()))).collect()
}

/// The text with every byte outside `start..end` turned into a space (line breaks kept), so that a part of a
/// file parses alone with its spans still pointing into the whole file.
fn blank_outside(text: &str, start: usize, end: usize) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for (i, byte) in bytes.iter_mut().enumerate() {
        if (i < start || i >= end) && *byte != b'\n' {
            *byte = b' ';
        }
    }
    // Only whole characters are blanked or kept (chunks start and end at line breaks), so this stays UTF-8.
    String::from_utf8(bytes).unwrap_or_default()
}

/// A syntax node under the cursor that the server knows something about.
#[derive(Debug)]
pub enum Hit<'a> {
    /// A function name, in a pipe or a call.
    Function(&'a Ident),
    /// `$name` in a source.
    ParamRef(&'a Ident),
    /// The name in `param name: type`.
    ParamDecl(&'a ParamDecl),
    /// A source path, with the index of the segment under the cursor.
    SourcePath(&'a Path, usize),
    /// A target path (of a rule or a `remember` line), with the index of the segment under the cursor.
    TargetPath(&'a TargetPath, usize),
    /// The file name of an `include`.
    Include(&'a Include),
    /// The name in `target openai_ads`.
    TargetSchema(&'a Ident),
    /// An OpenAI event type in a route, or a name in a `when` selector.
    EventType(&'a Ident),
    /// A data shape in a route.
    Shape(&'a Ident),
}

/// The innermost node at `offset` (the end of a word counts as on it, where editors put the cursor).
pub fn hit_at(items: &[Item], offset: usize) -> Option<Hit<'_>> {
    items.iter().find_map(|item| item_hit(item, offset))
}

fn on(span: signal_engine::ast::Span, offset: usize) -> bool {
    span.start <= offset && offset <= span.end
}

fn item_hit(item: &Item, offset: usize) -> Option<Hit<'_>> {
    match item {
        Item::Target(t) => on(t.name.span, offset).then_some(Hit::TargetSchema(&t.name)),
        Item::Param(p) => on(p.name.span, offset).then_some(Hit::ParamDecl(p)),
        Item::Include(i) => on(i.path.span, offset).then_some(Hit::Include(i)),
        Item::Property(_) => None,
        Item::Routes(r) => r.routes.iter().find_map(|route| route_hit(route, offset)),
        Item::Remember(r) => r.targets.iter().find_map(|t| target_hit(t, offset)),
        Item::When(w) => w
            .selectors
            .iter()
            .find_map(|s| match s {
                Selector::Name(name) if on(name.span, offset) => Some(Hit::EventType(name)),
                _ => None,
            })
            .or_else(|| w.rules.iter().find_map(|r| rule_hit(r, offset))),
        Item::Rule(r) => rule_hit(r, offset),
    }
}

fn route_hit(route: &Route, offset: usize) -> Option<Hit<'_>> {
    if let RouteType::Standard(name) = &route.event_type {
        if on(name.span, offset) {
            return Some(Hit::EventType(name));
        }
    }
    route.shape.as_ref().filter(|s| on(s.span, offset)).map(Hit::Shape)
}

fn rule_hit(rule: &Rule, offset: usize) -> Option<Hit<'_>> {
    if !on(rule.span, offset) {
        return None;
    }
    source_hit(&rule.source, offset)
        .or_else(|| target_hit(&rule.target, offset))
        .or_else(|| rule.pipes.iter().find_map(|c| call_hit(c, offset)))
        .or_else(|| rule.block.as_ref()?.iter().find_map(|r| rule_hit(r, offset)))
}

fn target_hit(target: &TargetPath, offset: usize) -> Option<Hit<'_>> {
    let index = target.segments.iter().position(|s| on(s.span(), offset))?;
    Some(Hit::TargetPath(target, index))
}

fn source_hit(source: &Source, offset: usize) -> Option<Hit<'_>> {
    if !on(source.span, offset) {
        return None;
    }
    source.terms.iter().find_map(|term| match term {
        Term::Param(name) => on(name.span, offset).then_some(Hit::ParamRef(name)),
        Term::Call(call) => call_hit(call, offset),
        Term::Path(path) => {
            path.segments.iter().position(|s| on(s.span(), offset)).map(|index| Hit::SourcePath(path, index))
        }
        Term::Literal(_) => None,
    })
}

fn call_hit(call: &Call, offset: usize) -> Option<Hit<'_>> {
    if on(call.name.span, offset) {
        return Some(Hit::Function(&call.name));
    }
    call.args.iter().find_map(|arg| match arg {
        Arg::Source(source) => source_hit(source, offset),
        Arg::Table(_) => None,
    })
}

/// The blocks enclosing a position, read from the text before it.
#[derive(Debug, Default, PartialEq)]
pub struct Blocks {
    /// Inside `routes { … }`.
    pub routes: bool,
    /// Inside element blocks: the target keys of each, outermost first, e.g. `[["data", "contents"]]`.
    pub elements: Vec<Vec<String>>,
}

impl Blocks {
    /// The keys of the current element's target from the event's root: `["data", "contents"]`; empty outside
    /// element blocks.
    pub fn element_keys(&self) -> Vec<String> {
        self.elements.iter().flatten().cloned().collect()
    }
}

/// Which blocks `offset` is inside, found by matching braces outside strings and comments. Each opening brace
/// is classified by the text before it on its line: `routes {`, or `source[*] -> target[*] {` for an element
/// block.
pub fn blocks_at(text: &str, offset: usize) -> Blocks {
    let before = &text[..floor_char_boundary(text, offset)];
    let mut stack: Vec<Option<BlockKind>> = Vec::new();
    let mut line_start = 0;
    let mut chars = before.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\n' => line_start = i + 1,
            '#' => {
                while chars.peek().is_some_and(|&(_, c)| c != '\n') {
                    chars.next();
                }
            }
            '"' => {
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' | '\n' => break,
                        _ => {}
                    }
                }
            }
            '{' => stack.push(block_kind(&before[line_start..i])),
            '}' => {
                stack.pop();
            }
            _ => {}
        }
    }
    let mut blocks = Blocks::default();
    for kind in stack.into_iter().flatten() {
        match kind {
            BlockKind::Routes => blocks.routes = true,
            BlockKind::Element(keys) => blocks.elements.push(keys),
        }
    }
    blocks
}

enum BlockKind {
    Routes,
    Element(Vec<String>),
}

fn block_kind(header: &str) -> Option<BlockKind> {
    let header = header.trim();
    if header == "routes" {
        return Some(BlockKind::Routes);
    }
    let (_, target) = header.rsplit_once("->")?;
    let target = target.split('|').next()?.trim();
    let path = target.strip_suffix("[*]")?;
    Some(BlockKind::Element(path.split('.').map(|k| k.trim_end_matches("[*]").to_string()).collect()))
}

/// One file a mapping reaches: itself or an included file.
pub struct File {
    /// The file's name as the compiler knows it (its path for files on disk).
    pub name: String,
    pub text: String,
    pub items: Vec<Item>,
}

impl File {
    /// `` `name.map` line 3 ``: where an offset of this file is, for hover text.
    pub fn location(&self, offset: usize) -> String {
        let line = LineIndex::new(&self.text).position(offset).line + 1;
        let short = std::path::Path::new(&self.name)
            .file_name()
            .map_or(self.name.clone(), |n| n.to_string_lossy().into_owned());
        format!("`{short}` line {line}")
    }
}

/// A mapping and every file it includes, directly or not, root first; each read once.
pub struct Workspace {
    pub files: Vec<File>,
}

impl Workspace {
    pub fn load(name: &str, text: &str, loader: &dyn SourceLoader) -> Workspace {
        let mut workspace = Workspace { files: Vec::new() };
        let mut seen = HashSet::new();
        workspace.add(name.to_string(), text.to_string(), loader, &mut seen);
        workspace
    }

    fn add(&mut self, name: String, text: String, loader: &dyn SourceLoader, seen: &mut HashSet<String>) {
        if !seen.insert(name.clone()) {
            return;
        }
        let items = parse_recovering(&text);
        let includes: Vec<String> = items
            .iter()
            .filter_map(|item| match item {
                Item::Include(include) => Some(include.path.value.clone()),
                _ => None,
            })
            .collect();
        self.files.push(File { name: name.clone(), text, items });
        for path in includes {
            if let Ok((included, text)) = loader.load(&name, &path) {
                self.add(included, text, loader, seen);
            }
        }
    }

    pub fn root(&self) -> &File {
        &self.files[0]
    }

    /// Every `param` declaration with the file it is in.
    pub fn params(&self) -> Vec<(&File, &ParamDecl)> {
        self.files
            .iter()
            .flat_map(|file| {
                file.items.iter().filter_map(move |item| match item {
                    Item::Param(decl) => Some((file, decl)),
                    _ => None,
                })
            })
            .collect()
    }

    pub fn param(&self, name: &str) -> Option<(&File, &ParamDecl)> {
        self.params().into_iter().find(|(_, decl)| decl.name.name == name)
    }

    /// The target schema the mapping declares, or the default one.
    pub fn target_schema(&self) -> &'static TargetSchema {
        let declared = self.files.iter().flat_map(|f| &f.items).find_map(|item| match item {
            Item::Target(decl) => schema::target(&decl.name.name),
            _ => None,
        });
        declared.or_else(|| schema::target(schema::DEFAULT_TARGET)).unwrap_or(&schema::targets()[0])
    }

    /// The Signal event names the route tables take, for completing `when` selectors.
    pub fn route_event_names(&self) -> Vec<String> {
        self.files
            .iter()
            .flat_map(|f| &f.items)
            .filter_map(|item| match item {
                Item::Routes(routes) => Some(&routes.routes),
                _ => None,
            })
            .flatten()
            .filter_map(|route| match &route.matcher {
                signal_engine::ast::Matcher::Event(name) => Some(name.value.clone()),
                signal_engine::ast::Matcher::Kind(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_line_leaves_the_other_items_readable() {
        let text = "param region: string = \"US\"\nwhen contents {\n  revenue -> data.amount | minor_units(\n  currency -> data.currency\n}\nmessageId -> id | to_strin(\n";
        let items = parse_recovering(text);
        assert!(matches!(&items[0], Item::Param(p) if p.name.name == "region"));
        let currency = text.find("currency ->").unwrap();
        assert!(matches!(hit_at(&items, currency + 2), Some(Hit::SourcePath(_, 0))));
    }

    #[test]
    fn blocks_are_found_from_the_text() {
        let text = "routes {\n  page -> \n}\nproducts[*] -> data.contents[*] {\n  price -> # {\n  \"}\" -> x\n";
        let in_routes = text.find("page").unwrap();
        assert_eq!(blocks_at(text, in_routes), Blocks { routes: true, elements: vec![] });
        let blocks = blocks_at(text, text.len());
        assert!(!blocks.routes);
        assert_eq!(blocks.element_keys(), vec!["data".to_string(), "contents".to_string()]);
    }

    #[test]
    fn hits_find_the_segment_under_the_cursor() {
        let text = "context.page.url -> source_url | strip_query\n";
        let items = parse_recovering(text);
        let page = text.find("page").unwrap();
        assert!(matches!(hit_at(&items, page + 1), Some(Hit::SourcePath(_, 1))));
        let strip = text.find("strip").unwrap();
        assert!(matches!(hit_at(&items, strip), Some(Hit::Function(f)) if f.name == "strip_query"));
        assert!(matches!(hit_at(&items, text.find("source_url").unwrap()), Some(Hit::TargetPath(_, 0))));
    }
}
