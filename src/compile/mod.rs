//! Checking and compiling: from parsed mapping files to a [`Plan`]. Resolves includes, parameters, routes,
//! source paths, functions and targets against the two schemas; infers types; tracks personal data from the
//! Signal input to the OpenAI output; and reports every problem found, in one pass, as diagnostics. A plan is
//! produced only when there are no errors.
//!
//! This module holds the entry point, the compiler's state and the order of the passes; each pass is a room of its
//! own: `declarations` (target, parameters), `routes` (the route table, `when` blocks), `rules` (sources, pipes,
//! functions bound and type-checked, what reaches the output), `paths` (event paths against the Signal schema),
//! `targets` (output fields against the OpenAI schema, the output layout) and `finish` (checks across rules, and
//! the plan).

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

use crate::ast::{self, FileId, Item, Matcher, RouteType, Segment, Selector, Span, Term};
use crate::diagnostic::{codes, did_you_mean, suggestion, Diagnostic};
use crate::functions::{self, Function, Pii, Ty};
use crate::input::{InputLayout, InputPaths};
use crate::plan::*;
use crate::schema::{self, FieldDef, InputField, TargetSchema};
use crate::source::{SourceLoader, Sources};
use crate::syntax;

mod declarations;
mod finish;
mod paths;
mod routes;
mod rules;
mod targets;

// Helpers the rooms share.
use rules::{an, selector_span};

/// What the caller supplies besides the mapping text.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Values for the mapping's `param`s (from `--params params.yaml`).
    pub params: Map<String, Value>,
}

/// The result of compiling: a plan when there were no errors, and every diagnostic with the sources they point
/// into.
#[derive(Debug)]
pub struct Compiled {
    pub plan: Option<Plan>,
    pub diagnostics: Vec<Diagnostic>,
    pub sources: Sources,
}

impl Compiled {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Compiles the mapping `text` (named `name` in diagnostics), reading included files through `loader`.
pub fn compile(name: &str, text: &str, loader: &dyn SourceLoader, options: &CompileOptions) -> Compiled {
    let mut sources = Sources::default();
    let mut diagnostics = Vec::new();
    let root = sources.add(name, text);
    let mut items = Vec::new();
    let mut stack = vec![name.to_string()];
    load_items(root, loader, &mut sources, &mut diagnostics, &mut items, &mut stack);
    if diagnostics.iter().any(Diagnostic::is_error) {
        return Compiled { plan: None, diagnostics, sources };
    }
    let mut compiler = Compiler::new(&sources, root, options);
    let plan = compiler.mapping(&items);
    diagnostics.extend(compiler.diagnostics);
    sort_diagnostics(&mut diagnostics);
    let plan = if diagnostics.iter().any(Diagnostic::is_error) { None } else { plan };
    Compiled { plan, diagnostics, sources }
}

fn sort_diagnostics(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by_key(|d| (d.primary.span.file, d.primary.span.start, d.severity));
}

/// Parses a file and splices in the items of the files it includes, in place of each `include`.
fn load_items(
    file: FileId,
    loader: &dyn SourceLoader,
    sources: &mut Sources,
    diagnostics: &mut Vec<Diagnostic>,
    items: &mut Vec<Item>,
    stack: &mut Vec<String>,
) {
    let text = sources.get(file).text.clone();
    let mapping = match syntax::parse(file, &text) {
        Ok(mapping) => mapping,
        Err(errors) => {
            diagnostics.extend(errors);
            return;
        }
    };
    for item in mapping.items {
        let Item::Include(include) = &item else {
            items.push(item);
            continue;
        };
        let from = sources.get(file).name.clone();
        let loaded = loader.load(&from, &include.path.value);
        // Names are compared lexically normalised: `sub/../a.map` is `a.map`, or a cycle through `..` would never
        // close and the names would grow until the file system refuses them.
        let cycle_start = loaded.as_ref().ok().and_then(|(name, _)| {
            let name = normalized(name);
            stack.iter().position(|s| normalized(s) == name)
        });
        match (loaded, cycle_start) {
            (Ok((name, _)), Some(start)) => {
                let message = match stack.get(start + 1..).filter(|rest| !rest.is_empty()) {
                    Some(rest) => format!("`{}` includes itself through `{}`", stack[start], rest.join("` and `")),
                    None => format!("`{}` includes itself", stack[start]),
                };
                diagnostics.push(
                    Diagnostic::error(codes::INCLUDE_CYCLE, message, include.path.span, "this include closes a cycle")
                        .with_help(format!("include chain: {} -> {name}", stack.join(" -> "))),
                )
            }
            (Ok((name, text)), None) => {
                let included = sources.add(name.clone(), text);
                stack.push(name);
                load_items(included, loader, sources, diagnostics, items, stack);
                stack.pop();
            }
            (Err(reason), _) => diagnostics.push(
                Diagnostic::error(
                    codes::INCLUDE_NOT_FOUND,
                    format!("cannot read included file `{}`: {reason}", include.path.value),
                    include.path.span,
                    "this file cannot be read",
                )
                .with_help("include paths are relative to the file that includes them"),
            ),
        }
    }
}

/// A file name with `.` and `..` components resolved lexically, to recognise a file reached by two paths.
fn normalized(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split(['/', '\\']) {
        match part {
            "." => {}
            "" if !parts.is_empty() => {}
            ".." if parts.last().is_some_and(|p| *p != ".." && !p.is_empty()) => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join("/")
}

/// Personal data flowing through an expression: where it came from.
#[derive(Clone, Debug)]
struct Taint {
    span: Span,
    path: String,
}

/// A compiled expression with its static type and personal-data taint.
struct Typed {
    expr: Expr,
    ty: Ty,
    taint: Option<Taint>,
}

/// Where a rule applies: which routes, which Signal event kinds, and whether it is inside an element block.
#[derive(Clone)]
struct Scope {
    routes: Vec<usize>,
    kinds: BTreeSet<&'static str>,
    element: bool,
    /// Inside an element block whose source holds personal data, every read of the element is tainted.
    element_taint: Option<Taint>,
    /// `when …` as written, for explanations.
    label: Option<String>,
    /// Inside an element block, what its elements are, when the schema knows their members.
    element_of: Option<ElementOf>,
}

/// What the elements of an element block are, for checking the names read from them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ElementOf {
    /// `properties -> data.contents[*] { … }`: the event's own properties, one element.
    EventProperties,
    /// `products[*] -> … { … }`: the items of a `products` array.
    Products,
}

struct ParamInfo {
    value: Option<Value>,
    span: Span,
    used: bool,
}

struct RouteInfo {
    label: String,
    kind: &'static str,
    /// The track event name for a named route; `None` for `page`, `screen` and the `track` catch-all.
    event_name: Option<String>,
    event_type: String,
    shape: String,
    custom_event_name: Option<String>,
    span: Span,
    rules: Vec<usize>,
}

/// What the compiler knows of a rule after compiling it, for the checks across rules.
struct RuleMeta {
    target: String,
    target_span: Span,
    routes: Vec<usize>,
    global: bool,
    constant: Option<Value>,
    /// Element fields written, for array targets.
    element_fields: Vec<String>,
}

/// The target a rule writes, resolved against the schema.
struct TargetInfo {
    dotted: String,
    def: FieldDef,
}

struct Compiler<'s> {
    sources: &'s Sources,
    root: FileId,
    options: &'s CompileOptions,
    diagnostics: Vec<Diagnostic>,
    target: &'static TargetSchema,
    input: &'static schema::InputSchema,
    params: HashMap<String, ParamInfo>,
    param_order: Vec<String>,
    paths: InputPaths,
    routes: Vec<RouteInfo>,
    rules: Vec<PlanRule>,
    meta: Vec<RuleMeta>,
    /// The targets and routes of rules whose source failed to compile: they count as written in the checks across
    /// rules, so that one mistake is not reported again as a missing field.
    failed_writes: Vec<(String, Vec<usize>)>,
    out_slots: HashMap<String, usize>,
    slot_count: usize,
    routes_location: Option<String>,
    /// Properties the mapping declares with `property`, beyond those the specs list.
    custom_properties: BTreeSet<String>,
}

impl<'s> Compiler<'s> {
    fn new(sources: &'s Sources, root: FileId, options: &'s CompileOptions) -> Self {
        let paths = InputPaths::default();
        Compiler {
            sources,
            root,
            options,
            diagnostics: Vec::new(),
            target: schema::target(schema::DEFAULT_TARGET).expect("the default target schema exists"),
            input: schema::input(),
            params: HashMap::new(),
            param_order: Vec::new(),
            paths,
            routes: Vec::new(),
            rules: Vec::new(),
            meta: Vec::new(),
            failed_writes: Vec::new(),
            out_slots: HashMap::new(),
            slot_count: 0,
            routes_location: None,
            custom_properties: BTreeSet::new(),
        }
    }

    fn error(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    fn slot(&mut self, dotted: &str) -> usize {
        if let Some(slot) = self.out_slots.get(dotted) {
            return *slot;
        }
        self.out_slots.insert(dotted.to_string(), self.slot_count);
        self.slot_count += 1;
        self.slot_count - 1
    }

    fn location(&self, span: Span) -> String {
        self.sources.location(span)
    }

    fn mapping(&mut self, items: &[Item]) -> Option<Plan> {
        self.target_decl(items);
        for item in items {
            match item {
                Item::Param(param) => self.param_decl(param),
                Item::Property(declared) => {
                    self.custom_properties.extend(declared.names.iter().map(|name| name.value.clone()))
                }
                _ => {}
            }
        }
        self.undeclared_params();
        for item in items {
            if let Item::Routes(routes) = item {
                self.routes_location.get_or_insert_with(|| self.sources.location(routes.span));
                for route in &routes.routes {
                    self.route(route);
                }
            }
        }
        if !items.iter().any(|i| matches!(i, Item::Routes(_))) {
            let span = Span::new(self.root, 0, 0);
            self.error(
                Diagnostic::warning(codes::NO_ROUTES, "the mapping has no routes", span, "no `routes { … }` table")
                    .with_help("add a table such as `routes { \"Order Completed\" -> order_created }`; unrouted events are dropped as `unmapped`"),
            );
        }
        let all_routes = Scope {
            element_taint: None,
            routes: (0..self.routes.len()).collect(),
            kinds: self.routes.iter().map(|r| r.kind).collect(),
            element: false,
            label: None,
            element_of: None,
        };
        for item in items {
            match item {
                Item::Rule(rule) => self.rule(rule, &all_routes, true),
                Item::When(when) => self.when_block(when),
                _ => {}
            }
        }
        let remembered = self.remember_lines(items);
        self.per_route_checks(&remembered);
        self.unused_params();
        self.finish(remembered)
    }

    // ---- declarations ----

    // ---- routes ----

    // ---- when blocks ----

    // ---- rules ----

    // ---- source paths ----

    // ---- targets ----

    // ---- identity memory ----

    // ---- checks across rules ----

    // ---- plan ----
}
