//! Checking and compiling: from parsed mapping files to a [`Plan`]. Resolves includes, parameters, routes,
//! source paths, functions and targets against the two schemas; infers types; tracks personal data from the
//! Signal input to the OpenAI output; and reports every problem found, in one pass, as diagnostics. A plan is
//! produced only when there are no errors.

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
            if let Item::Param(param) = item {
                self.param_decl(param);
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

    fn target_decl(&mut self, items: &[Item]) {
        let mut seen: Option<Span> = None;
        for item in items {
            let Item::Target(decl) = item else { continue };
            if let Some(first) = seen {
                self.error(
                    Diagnostic::error(
                        codes::DUPLICATE_TARGET_DECL,
                        "`target` is declared twice",
                        decl.span,
                        "second declaration",
                    )
                    .with_context(first, "first declared here")
                    .with_help("a mapping writes one target schema; keep one `target` line"),
                );
                continue;
            }
            seen = Some(decl.span);
            match schema::target(&decl.name.name) {
                Some(target) => self.target = target,
                None => {
                    let names: Vec<&str> = schema::targets().iter().map(|t| t.name.as_str()).collect();
                    let help = suggestion(&decl.name.name, &names)
                        .unwrap_or_else(|| format!("the target schemas are: {}", names.join(", ")));
                    self.error(
                        Diagnostic::error(
                            codes::UNKNOWN_TARGET_SCHEMA,
                            format!("unknown target schema `{}`", decl.name.name),
                            decl.name.span,
                            "no such target schema",
                        )
                        .with_help(help),
                    );
                }
            }
        }
    }

    fn param_decl(&mut self, decl: &ast::ParamDecl) {
        let name = &decl.name.name;
        if let Some(first) = self.params.get(name) {
            let first = first.span;
            self.error(
                Diagnostic::error(
                    codes::DUPLICATE_PARAM,
                    format!("parameter `{name}` is declared twice"),
                    decl.name.span,
                    "declared again here",
                )
                .with_context(first, "first declared here")
                .with_help("remove one of the declarations"),
            );
            return;
        }
        let ty = match decl.ty.name.as_str() {
            "string" => Some(Ty::STRING),
            "number" => Some(Ty::NUMBER),
            "integer" => Some(Ty::INTEGER),
            "boolean" => Some(Ty::BOOL),
            other => {
                let help = suggestion(other, &["string", "number", "integer", "boolean"])
                    .unwrap_or_else(|| "parameter types are string, number, integer and boolean".to_string());
                self.error(
                    Diagnostic::error(
                        codes::UNKNOWN_PARAM_TYPE,
                        format!("unknown parameter type `{other}`"),
                        decl.ty.span,
                        "not a parameter type",
                    )
                    .with_help(help),
                );
                None
            }
        };
        if let (Some(ty), Some(default)) = (ty, &decl.default) {
            if !ty.intersects(Ty::of(&default.value)) {
                self.error(
                    Diagnostic::error(
                        codes::PARAM_TYPE,
                        format!("default of `{name}` is not {}", an(ty)),
                        default.span,
                        format!("this is {}", an(Ty::of(&default.value))),
                    )
                    .with_context(decl.ty.span, format!("declared as {ty} here"))
                    .with_help(format!("give {} default, or change the declared type", an(ty))),
                );
            }
        }
        let given = self.options.params.get(name).cloned();
        if let (Some(ty), Some(value)) = (ty, &given) {
            if !ty.intersects(Ty::of(value)) {
                self.error(
                    Diagnostic::error(
                        codes::PARAM_TYPE,
                        format!("the value given for `{name}` is {}, not {}", an(Ty::of(value)), an(ty)),
                        decl.name.span,
                        format!("declared as {ty}"),
                    )
                    .with_help(format!("give `{name}` {} value in the parameters file", an(ty))),
                );
            }
        }
        let value = given.or_else(|| decl.default.as_ref().map(|d| d.value.clone()));
        if value.is_none() {
            self.error(
                Diagnostic::error(
                    codes::MISSING_PARAM,
                    format!("parameter `{name}` has no value"),
                    decl.span,
                    "no default and no value given",
                )
                .with_help(format!("give a default (`param {name}: {} = …`) or a value with --params", decl.ty.name)),
            );
        }
        // A value of the wrong type is reported above, once: its uses are not checked against it again, which
        // would blame the rules for the parameter's mistake.
        let value = value.filter(|value| ty.is_none_or(|ty| ty.intersects(Ty::of(value))));
        self.param_order.push(name.clone());
        self.params.insert(name.clone(), ParamInfo { value, span: decl.name.span, used: false });
    }

    fn undeclared_params(&mut self) {
        let mut names: Vec<&String> = self.options.params.keys().filter(|k| !self.params.contains_key(*k)).collect();
        names.sort();
        let declared: Vec<&str> = self.param_order.iter().map(String::as_str).collect();
        let mut found = Vec::new();
        for name in names {
            let help = suggestion(name, &declared).unwrap_or_else(|| {
                "declare it with `param name: type = default`, or remove it from the parameters file".to_string()
            });
            found.push(
                Diagnostic::warning(
                    codes::UNDECLARED_PARAM_VALUE,
                    format!("a value is given for `{name}`, which the mapping does not declare"),
                    Span::new(self.root, 0, 0),
                    "this mapping",
                )
                .with_help(help),
            );
        }
        self.diagnostics.extend(found);
    }

    fn unused_params(&mut self) {
        let mut unused: Vec<(String, Span)> =
            self.params.iter().filter(|(_, p)| !p.used).map(|(n, p)| (n.clone(), p.span)).collect();
        unused.sort_by_key(|(_, span)| (span.file, span.start));
        for (name, span) in unused {
            self.error(
                Diagnostic::warning(
                    codes::UNUSED_PARAM,
                    format!("parameter `{name}` is never used"),
                    span,
                    "declared but never read",
                )
                .with_help(format!("use it as `${name}` or remove the declaration")),
            );
        }
    }

    // ---- routes ----

    fn route(&mut self, route: &ast::Route) {
        let (kind, label_left, event_name) = match &route.matcher {
            Matcher::Event(name) => ("track", Value::String(name.value.clone()).to_string(), Some(name.value.clone())),
            Matcher::Kind(kind) => match kind.name.as_str() {
                "page" => ("page", "page".to_string(), None),
                "screen" => ("screen", "screen".to_string(), None),
                "track" => ("track", "track".to_string(), None),
                "identify" | "group" => {
                    self.error(
                        Diagnostic::error(
                            codes::IDENTIFY_ROUTE,
                            format!("`{}` events cannot be routed", kind.name),
                            kind.span,
                            "these events produce no conversion",
                        )
                        .with_help("identify traits reach later events through identity memory: `remember user.email, user.phone_number`"),
                    );
                    return;
                }
                other => {
                    let help = match did_you_mean(other, ["page", "screen", "track"]) {
                        Some(kind) => format!("did you mean `{kind}`?"),
                        None => format!("to route a track event by name, quote it: \"{other}\""),
                    };
                    self.error(
                        Diagnostic::error(
                            codes::UNKNOWN_EVENT_KIND,
                            format!("unknown event kind `{other}`"),
                            kind.span,
                            "not page, screen or track",
                        )
                        .with_help(help),
                    );
                    return;
                }
            },
        };
        let duplicate = self.routes.iter().find(|r| r.kind == kind && r.event_name == event_name);
        if let Some(first) = duplicate {
            let first_span = first.span;
            self.error(
                Diagnostic::error(
                    codes::DUPLICATE_ROUTE,
                    format!("`{label_left}` is routed twice"),
                    route.span,
                    "second route for the same events",
                )
                .with_context(first_span, "first routed here")
                .with_help("an event takes one route; remove one of them"),
            );
            return;
        }
        let (event_type, custom_event_name, type_span) = match &route.event_type {
            RouteType::Standard(ident) if ident.name == "custom" => {
                self.error(
                    Diagnostic::error(
                        codes::INVALID_CUSTOM_EVENT_NAME,
                        "custom events need a name",
                        ident.span,
                        "no custom_event_name",
                    )
                    .with_help("write `custom(\"button_clicked\")`"),
                );
                return;
            }
            RouteType::Standard(ident) => {
                if self.target.shape_of(&ident.name).is_none() {
                    let names = self.target.event_type_names();
                    let help = suggestion(&ident.name, &names).unwrap_or_else(|| {
                        format!("OpenAI event types are: {}; or use custom(\"name\")", names.join(", "))
                    });
                    self.error(
                        Diagnostic::error(
                            codes::UNKNOWN_EVENT_TYPE,
                            format!("unknown OpenAI event type `{}`", ident.name),
                            ident.span,
                            "not an OpenAI event type",
                        )
                        .with_help(help),
                    );
                    return;
                }
                (ident.name.clone(), None, ident.span)
            }
            RouteType::Custom { name, span } => {
                if let Some(problem) = custom_event_name_problem(&name.value, self.target) {
                    self.error(
                        Diagnostic::error(codes::INVALID_CUSTOM_EVENT_NAME, format!("invalid custom event name {:?}", name.value), name.span, problem)
                            .with_help("1 to 64 letters, digits, `_` or `-`, starting and ending with a letter or digit, not a standard event type; lowercase is recommended"),
                    );
                    return;
                }
                ("custom".to_string(), Some(name.value.clone()), *span)
            }
        };
        let shape = self.target.shape_of(&event_type).expect("checked above").to_string();
        if let Some(written) = &route.shape {
            if written.name != shape {
                self.error(
                    Diagnostic::error(
                        codes::SHAPE_MISMATCH,
                        format!("`{event_type}` events do not carry `{}` data", written.name),
                        written.span,
                        format!("`{event_type}` carries `{shape}`"),
                    )
                    .with_context(type_span, "event type")
                    .with_help(format!("write `({shape})`, or route to an event type with `{}` data", written.name)),
                );
            }
        }
        let right = match &custom_event_name {
            Some(name) => format!("custom({name:?})"),
            None => event_type.clone(),
        };
        self.routes.push(RouteInfo {
            label: format!("{label_left} -> {right}"),
            kind,
            event_name,
            event_type,
            shape,
            custom_event_name,
            span: route.span,
            rules: Vec::new(),
        });
    }

    // ---- when blocks ----

    fn when_block(&mut self, when: &ast::When) {
        let mut routes = BTreeSet::new();
        let mut unknown_selector = false;
        for selector in &when.selectors {
            match selector {
                Selector::Event(name) => {
                    routes.extend(
                        self.routes
                            .iter()
                            .enumerate()
                            .filter(|(_, r)| r.event_name.as_deref() == Some(name.value.as_str()))
                            .map(|(i, _)| i),
                    );
                }
                Selector::Name(ident) => {
                    let name = ident.name.as_str();
                    let is_type = self.target.shape_of(name).is_some();
                    let is_shape = self.target.shape(name).is_some();
                    let is_kind = matches!(name, "page" | "screen" | "track");
                    if !(is_type || is_shape || is_kind) {
                        let mut candidates = self.target.event_type_names();
                        candidates.extend(self.target.shape_names());
                        candidates.extend(["page", "screen", "track"]);
                        let help = suggestion(name, &candidates).unwrap_or_else(|| {
                            "a `when` selector is an OpenAI event type, a data shape, page/screen/track, or a quoted Signal event name".to_string()
                        });
                        self.error(
                            Diagnostic::error(
                                codes::UNKNOWN_SELECTOR,
                                format!("`{name}` is not an event type, shape or event kind"),
                                ident.span,
                                "selects nothing",
                            )
                            .with_help(help),
                        );
                        unknown_selector = true;
                        continue;
                    }
                    routes.extend(
                        self.routes
                            .iter()
                            .enumerate()
                            .filter(|(_, r)| {
                                (is_type && r.event_type == name)
                                    || (is_shape && r.shape == name)
                                    || (is_kind && r.kind == name)
                            })
                            .map(|(i, _)| i),
                    );
                }
            }
        }
        // With a selector already reported as unknown, "can never run" would say the same again.
        if routes.is_empty() && !when.selectors.is_empty() && !unknown_selector {
            let span = when.selectors.first().map(selector_span).unwrap_or(when.span);
            let span = span.to(when.selectors.last().map(selector_span).unwrap_or(span));
            self.error(
                Diagnostic::warning(
                    codes::UNREACHABLE_RULE,
                    "the rules of this block can never run",
                    span,
                    "no route matches these selectors",
                )
                .with_help("add a route for these events to `routes { … }`, or remove the block"),
            );
        }
        let scope = Scope {
            element_taint: None,
            kinds: routes.iter().map(|&r| self.routes[r].kind).collect(),
            routes: routes.into_iter().collect(),
            element: false,
            label: Some(format!(
                "when {}",
                when.selectors.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )),
        };
        for rule in &when.rules {
            self.rule(rule, &scope, false);
        }
    }

    // ---- rules ----

    fn rule(&mut self, rule: &ast::Rule, scope: &Scope, global: bool) {
        let Some(target) = self.target_field(&rule.target, scope) else {
            // Keep checking the source so that its problems are reported too.
            let _ = self.source_with_pipes(rule, scope);
            return;
        };
        let is_array = target.def.ty == Ty::ARRAY;
        if is_array {
            self.element_rule(rule, target, scope, global);
            return;
        }
        if let Some(block) = &rule.block {
            let span = block.first().map_or(rule.span, |r| r.span);
            self.error(
                Diagnostic::error(
                    codes::BLOCK_TARGET,
                    format!("`{}` is not an array of objects", target.dotted),
                    rule.target.span,
                    "element rules need an array target",
                )
                .with_context(span, "element rules")
                .with_help("element blocks map each element of a source array to `data.contents[*]`"),
            );
            return;
        }
        let Some((typed, pipes, personal)) = self.source_with_pipes(rule, scope) else {
            self.failed_writes.push((target.dotted, scope.routes.clone()));
            return;
        };
        self.check_output(&typed, &target, rule.target.span);
        let slot = self.slot(&target.dotted);
        let expr = typed.expr;
        let constant = match &expr {
            Expr::Const(v) if pipes.is_empty() => Some(v.clone()),
            _ => None,
        };
        self.push_rule(
            PlanRule {
                target: RuleTarget::Slot(slot),
                target_name: target.dotted.clone(),
                expr,
                pipes,
                location: self.location(rule.span),
                personal,
                text: rule_text(rule, scope),
            },
            RuleMeta {
                target: target.dotted,
                target_span: rule.target.span,
                routes: scope.routes.clone(),
                global,
                constant,
                element_fields: Vec::new(),
            },
        );
    }

    fn push_rule(&mut self, rule: PlanRule, meta: RuleMeta) {
        let index = self.rules.len();
        for &route in &meta.routes {
            self.routes[route].rules.push(index);
        }
        self.rules.push(rule);
        self.meta.push(meta);
    }

    /// Type and personal-data checks of a value about to be written to `target`.
    fn check_output(&mut self, typed: &Typed, target: &TargetInfo, target_span: Span) {
        let ty = typed.ty.intersection(Ty::ANY.without_null());
        if ty != Ty::NOTHING && !ty.intersects(target.def.ty) {
            self.error(
                Diagnostic::error(
                    codes::TARGET_TYPE,
                    format!("`{}` holds {}, but this rule writes {}", target.dotted, an(&target.def.type_name), an(ty)),
                    target_span,
                    format!("expects {}", an(&target.def.type_name)),
                )
                .with_help(type_help(ty, &target.def)),
            );
        }
        if let Some(taint) = &typed.taint {
            // A mapping that declares its phones' region (`param default_region`) is shown the call that uses it.
            let mut regions: Vec<&String> =
                self.params.keys().filter(|name| name.to_ascii_lowercase().contains("region")).collect();
            regions.sort();
            let e164 = match regions.first() {
                Some(name) => format!("e164(${name})"),
                None => "e164(\"US\")".to_string(),
            };
            self.error(
                Diagnostic::error(
                    codes::RAW_PII,
                    format!("personal data from `{}` reaches `{}` unhashed", taint.path, target.dotted),
                    taint.span,
                    "personal data read here",
                )
                .with_context(target_span, "written here without a hash")
                .with_help(format!(
                    "hash it before it leaves: end the pipeline with `| sha256` (after `| normalize_email` for \
                     emails, `| {e164}` for phones)"
                )),
            );
        }
    }

    /// A rule's compiled source with the value's final type and taint, its bound pipe functions, and whether
    /// personal data flows anywhere through it (so that the runtime never quotes its values in warnings).
    fn source_with_pipes(&mut self, rule: &ast::Rule, scope: &Scope) -> Option<(Typed, Vec<BoundCall>, bool)> {
        let source = self.source(&rule.source, scope)?;
        self.pipes(source, &rule.pipes, rule.source.span, scope)
    }

    /// Binds a rule's pipe functions to its compiled source; the type and taint become those after the last.
    fn pipes(
        &mut self,
        mut typed: Typed,
        pipes: &[ast::Call],
        source_span: Span,
        scope: &Scope,
    ) -> Option<(Typed, Vec<BoundCall>, bool)> {
        let mut bound_calls = Vec::new();
        let mut personal = typed.taint.is_some();
        let mut failed = false;
        let mut input_span = source_span;
        for call in pipes {
            match self.bind(call, Some((typed.ty, input_span)), scope) {
                Some((bound, ty, args_taint)) => {
                    personal |= args_taint.is_some();
                    typed.taint = match bound.function.pii {
                        Pii::Hashes => None,
                        Pii::Keeps => typed.taint.take().or(args_taint),
                    };
                    typed.ty = ty;
                    bound_calls.push(bound);
                }
                None => failed = true,
            }
            input_span = call.span;
        }
        (!failed).then_some((typed, bound_calls, personal))
    }

    fn source(&mut self, source: &ast::Source, scope: &Scope) -> Option<Typed> {
        let mut terms = Vec::new();
        let mut ok = true;
        for term in &source.terms {
            match self.term(term, scope) {
                Some(t) => terms.push(t),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        if terms.len() == 1 {
            return terms.pop();
        }
        let ty = terms.iter().fold(Ty::NOTHING, |acc, t| acc.union(t.ty));
        let taint = terms.iter().find_map(|t| t.taint.clone());
        Some(Typed { expr: Expr::Coalesce(terms.into_iter().map(|t| t.expr).collect()), ty, taint })
    }

    fn term(&mut self, term: &Term, scope: &Scope) -> Option<Typed> {
        match term {
            Term::Literal(literal) => {
                Some(Typed { ty: Ty::of(&literal.value), expr: Expr::Const(literal.value.clone()), taint: None })
            }
            Term::Param(name) => self.param_ref(name),
            Term::Path(path) => self.path(path, scope, false),
            Term::Call(call) => {
                let function = self.function(&call.name)?;
                let Some(input_path) = function.source_input else {
                    // Called as a source, a function takes its input as the first argument:
                    // `concat("ORD-", order_id)` is `"ORD-" | concat(order_id)`.
                    let Some(ast::Arg::Source(first)) = call.args.first() else {
                        self.error(
                            Diagnostic::error(
                                codes::NOT_A_SOURCE,
                                format!("`{}` needs an input", function.name),
                                call.span,
                                "called without an input",
                            )
                            .with_help(format!(
                                "give the input as the first argument, `{}(x, …)`, or pipe it: `x -> target | {}`",
                                function.name,
                                call_text(call)
                            )),
                        );
                        return None;
                    };
                    let input = self.source(first, scope)?;
                    let rest = ast::Call { args: call.args[1..].to_vec(), ..call.clone() };
                    let (bound, ty, args_taint) = self.bind(&rest, Some((input.ty, first.span)), scope)?;
                    let taint = match function.pii {
                        Pii::Hashes => None,
                        Pii::Keeps => input.taint.or(args_taint),
                    };
                    let expr = Expr::Call { function: bound.function, input: Box::new(input.expr), args: bound.args };
                    return Some(Typed { expr, ty, taint });
                };
                let (input_expr, _, input_taint) = self.envelope_path(input_path, call.span);
                let (bound, ty, args_taint) = self.bind(call, None, scope)?;
                let taint = match function.pii {
                    Pii::Hashes => None,
                    Pii::Keeps => input_taint.or(args_taint),
                };
                Some(Typed {
                    expr: Expr::Call { function: bound.function, input: Box::new(input_expr), args: bound.args },
                    ty,
                    taint,
                })
            }
        }
    }

    fn param_ref(&mut self, name: &ast::Ident) -> Option<Typed> {
        match self.params.get_mut(&name.name) {
            Some(param) => {
                param.used = true;
                let value = param.value.clone().unwrap_or(Value::Null);
                Some(Typed { ty: Ty::of(&value), expr: Expr::Const(value), taint: None })
            }
            None => {
                let declared: Vec<&str> = self.param_order.iter().map(String::as_str).collect();
                let meant = did_you_mean(&name.name, declared.iter().copied()).map(str::to_string);
                let help = meant
                    .as_ref()
                    .map(|s| format!("did you mean `${s}`?"))
                    .unwrap_or_else(|| format!("declare it: `param {}: string = \"…\"`", name.name));
                // A misspelt use is still a use: "never used, remove it" would be the wrong advice.
                if let Some(param) = meant.and_then(|s| self.params.get_mut(&s)) {
                    param.used = true;
                }
                self.error(
                    Diagnostic::error(
                        codes::UNKNOWN_PARAM,
                        format!("unknown parameter `${}`", name.name),
                        name.span,
                        "not declared",
                    )
                    .with_help(help),
                );
                None
            }
        }
    }

    fn function(&mut self, name: &ast::Ident) -> Option<&'static Function> {
        let found = functions::find(&name.name);
        if found.is_none() {
            let names: Vec<&str> = functions::all().iter().map(|f| f.name).collect();
            let help = suggestion(&name.name, &names)
                .unwrap_or_else(|| "the function library is listed in docs/language.md".to_string());
            self.error(
                Diagnostic::error(
                    codes::UNKNOWN_FUNCTION,
                    format!("unknown function `{}`", name.name),
                    name.span,
                    "no such function",
                )
                .with_help(help),
            );
        }
        found
    }

    /// Binds a call: arity, input and argument types, constant arguments. `input` is the piped value's type and
    /// span, or `None` when the function is called as a source.
    fn bind(
        &mut self,
        call: &ast::Call,
        input: Option<(Ty, Span)>,
        scope: &Scope,
    ) -> Option<(BoundCall, Ty, Option<Taint>)> {
        let function = self.function(&call.name)?;
        let mut ok = true;
        let (min, max) = function.arity();
        let count = call.args.len();
        if count < min || max.is_some_and(|max| count > max) {
            let expected = match max {
                Some(max) if max == min => format!("{min}"),
                Some(max) => format!("{min} to {max}"),
                None => format!("at least {min}"),
            };
            self.error(
                Diagnostic::error(
                    codes::WRONG_ARITY,
                    format!(
                        "`{}` takes {expected} argument{}, but {count} {} given",
                        function.name,
                        if expected == "1" { "" } else { "s" },
                        if count == 1 { "is" } else { "are" }
                    ),
                    call.span,
                    format!("{count} argument{}", if count == 1 { "" } else { "s" }),
                )
                .with_help(format!("the signature is `{}`", function.signature())),
            );
            ok = false;
        }
        if let Some((ty, span)) = input {
            let ty = ty.intersection(Ty::ANY.without_null());
            if ty != Ty::NOTHING && !ty.intersects(function.input) {
                self.error(
                    Diagnostic::error(
                        codes::INPUT_TYPE,
                        format!("`{}` takes {}, but receives {}", function.name, an(function.input), an(ty)),
                        call.name.span,
                        format!("expects {}", an(function.input)),
                    )
                    .with_context(span, format!("this is {}", an(ty)))
                    .with_help(format!("the signature is `{}`", function.signature())),
                );
                ok = false;
            }
        }
        let mut args = Vec::new();
        let mut constants: Vec<Option<Value>> = Vec::new();
        let mut taint = None;
        for (index, arg) in call.args.iter().enumerate() {
            let Some(param) = function.param(index) else { break };
            let typed = match arg {
                ast::Arg::Table(table) => {
                    let mut map = Map::new();
                    for (key, value) in &table.entries {
                        map.insert(key.value.clone(), value.value.clone());
                    }
                    Some(Typed { expr: Expr::Const(Value::Object(map)), ty: Ty::OBJECT, taint: None })
                }
                ast::Arg::Source(source) => self.source(source, scope),
            };
            let Some(typed) = typed else {
                ok = false;
                continue;
            };
            let arg_ty = typed.ty.intersection(Ty::ANY.without_null());
            if arg_ty != Ty::NOTHING && !arg_ty.intersects(param.ty) {
                self.error(
                    Diagnostic::error(
                        codes::ARGUMENT_TYPE,
                        format!(
                            "argument `{}` of `{}` must be {}, not {}",
                            param.name,
                            function.name,
                            an(param.ty),
                            an(arg_ty)
                        ),
                        arg.span(),
                        format!("this is {}", an(arg_ty)),
                    )
                    .with_help(format!("the signature is `{}`", function.signature())),
                );
                ok = false;
            }
            if taint.is_none() {
                taint = typed.taint.clone();
            }
            match typed.expr {
                Expr::Const(value) => {
                    constants.push(Some(value.clone()));
                    args.push(ArgExpr::Const(value));
                }
                expr => {
                    if param.constant {
                        self.error(
                            Diagnostic::error(
                                codes::CONSTANT_REQUIRED,
                                format!(
                                    "argument `{}` of `{}` must be known before events arrive",
                                    param.name, function.name
                                ),
                                arg.span(),
                                "this reads the event",
                            )
                            .with_help(format!("write a literal or a `$parameter` for `{}`", param.name)),
                        );
                        ok = false;
                    }
                    constants.push(None);
                    args.push(ArgExpr::Dynamic(expr));
                }
            }
        }
        if ok {
            if let Some(check) = function.check_constants {
                let refs: Vec<Option<&Value>> = constants.iter().map(Option::as_ref).collect();
                if let Err((index, message)) = check(&refs) {
                    let span = call.args.get(index).map_or(call.span, ast::Arg::span);
                    self.error(
                        Diagnostic::error(
                            codes::INVALID_ARGUMENT,
                            format!("invalid argument for `{}`: {message}", function.name),
                            span,
                            message.clone(),
                        )
                        .with_help(format!("the signature is `{}`", function.signature())),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some((BoundCall { function, args }, function.output, taint))
    }

    // ---- source paths ----

    fn path(&mut self, path: &ast::Path, scope: &Scope, allow_each: bool) -> Option<Typed> {
        let mut steps = Vec::new();
        for (i, segment) in path.segments.iter().enumerate() {
            match segment {
                Segment::Key { name, .. } => steps.push(Step::Key(name.clone())),
                Segment::Index { index, .. } => steps.push(Step::Index(*index)),
                Segment::Each { span } => {
                    if !(allow_each && i + 1 == path.segments.len()) {
                        self.error(
                            Diagnostic::error(codes::MISPLACED_WILDCARD, "`[*]` selects every element, but one value is expected here", *span, "every element")
                                .with_help("read one element with an index (`products[0].price`), or map every element with a block: `products[*] -> data.contents[*] { … }`"),
                        );
                        return None;
                    }
                }
            }
        }
        if path.element {
            if !scope.element {
                self.error(
                    Diagnostic::error(
                        codes::ELEMENT_OUTSIDE_BLOCK,
                        "`@` is the current element, but this rule is not in an element block",
                        path.span,
                        "no current element",
                    )
                    .with_help("`@` is used inside `source[*] -> target[*] { … }`"),
                );
                return None;
            }
            let taint = self.element_taint(path, &steps, scope);
            return Some(Typed { expr: Expr::Element { rest: steps }, ty: Ty::ANY, taint });
        }
        let first = match path.segments.first() {
            Some(Segment::Key { name, .. }) => name.as_str(),
            _ => return None,
        };
        // Inside an element block a bare name is the element's field; a dotted path from an envelope root
        // (`properties.currency`) still reads the event.
        let envelope = self.input.field(first).filter(|_| !(scope.element && path.segments.len() == 1));
        if envelope.is_none() && scope.element {
            let taint = self.element_taint(path, &steps, scope);
            return Some(Typed { expr: Expr::Element { rest: steps }, ty: Ty::ANY, taint });
        }
        let Some(root) = envelope else {
            // Bare names read the event's properties.
            let taint = self.names_pii(&steps).then(|| Taint { span: path.span, path: path.to_string() });
            let mut full = vec![Step::Key("properties".to_string())];
            full.extend(steps);
            let id = self.paths.add(full);
            return Some(Typed { expr: Expr::Input { slot: id, rest: Vec::new() }, ty: Ty::ANY, taint });
        };
        if path.segments.len() == 1 {
            self.ambiguity(first, root, path.span, scope);
        }
        let (ty, taint) = self.envelope_type(root, path, &steps);
        let id = self.paths.add(steps);
        Some(Typed { expr: Expr::Input { slot: id, rest: Vec::new() }, ty, taint })
    }

    fn ambiguity(&mut self, name: &str, field: &InputField, span: Span, scope: &Scope) {
        let Some(on) = &field.on else { return };
        let missing: Vec<&str> = scope.kinds.iter().copied().filter(|k| !on.iter().any(|o| o == k)).collect();
        if missing.is_empty() {
            return;
        }
        self.error(
            Diagnostic::warning(
                codes::AMBIGUOUS_NAME,
                format!("`{name}` reads the envelope field, which {} events do not have", missing.join(" and ")),
                span,
                format!("the envelope's `{name}`, only on {} events", on.join(" and ")),
            )
            .with_help(format!(
                "write `properties.{name}` to read the event property, or move the rule into `when {} {{ … }}`",
                on.join(", ")
            )),
        );
    }

    /// Reads of an element are personal data when the element's source is, or when they name a PII key.
    fn element_taint(&self, path: &ast::Path, steps: &[Step], scope: &Scope) -> Option<Taint> {
        if let Some(taint) = &scope.element_taint {
            return Some(Taint { span: path.span, path: format!("{path} (an element of {})", taint.path) });
        }
        self.names_pii(steps).then(|| Taint { span: path.span, path: path.to_string() })
    }

    /// Whether any key of a free-form path is one of the input schema's personal-data key names
    /// (`email`, `phoneNumber`, `first_name`, … in any case or spelling with `_` and `-`).
    fn names_pii(&self, steps: &[Step]) -> bool {
        steps.iter().any(|step| matches!(step, Step::Key(key) if self.input.is_pii_key(key)))
    }

    /// The static type and personal-data taint of an envelope path, with a warning for unknown fields.
    fn envelope_type(&mut self, root: &'static InputField, path: &ast::Path, steps: &[Step]) -> (Ty, Option<Taint>) {
        let mut field = root;
        let mut pii = root.pii;
        let mut known = true;
        for (i, step) in steps.iter().enumerate().skip(1) {
            let Step::Key(key) = step else {
                known = false;
                break;
            };
            match field.field(key) {
                Some(child) => {
                    field = child;
                    pii |= child.pii;
                }
                None => {
                    known = false;
                    // Free-form members are personal data when their names say so.
                    pii |= field.open && self.names_pii(&steps[i..]);
                    if !field.open && !field.fields.is_empty() {
                        let names: Vec<&str> = field.fields.iter().map(|f| f.name.as_str()).collect();
                        let prefix = steps[..i].iter().map(step_text).collect::<Vec<_>>().join(".");
                        let help =
                            suggestion(key, &names).unwrap_or_else(|| format!("`{prefix}` has: {}", names.join(", ")));
                        let span = path.segments[i].span();
                        self.error(
                            Diagnostic::warning(
                                codes::UNKNOWN_SOURCE_FIELD,
                                format!("Signal events have no `{prefix}.{key}`"),
                                span,
                                "unknown field",
                            )
                            .with_help(help),
                        );
                    }
                    break;
                }
            }
        }
        let ty = if known { field.ty } else { Ty::ANY };
        let reaches_pii = pii || (known && contains_pii(field));
        let taint = reaches_pii.then(|| Taint { span: path.span, path: path.to_string() });
        (ty, taint)
    }

    /// The implicit input of a function called as a source, e.g. `context.consent` for `consent(…)`.
    fn envelope_path(&mut self, dotted: &str, span: Span) -> (Expr, Ty, Option<Taint>) {
        let steps: Vec<Step> = dotted.split('.').map(|k| Step::Key(k.to_string())).collect();
        let id = self.paths.add(steps);
        let _ = span;
        (Expr::Input { slot: id, rest: Vec::new() }, Ty::ANY, None)
    }

    // ---- targets ----

    /// `unknown_target_field`, suggesting the closest field of the schema, else `fallback_help`.
    fn unknown_target_field(&mut self, dotted: &str, span: Span, fallback_help: String) {
        let candidates = target_names(self.target);
        let refs: Vec<&str> = candidates.iter().map(String::as_str).collect();
        let help = suggestion(dotted, &refs).unwrap_or(fallback_help);
        self.error(
            Diagnostic::error(
                codes::UNKNOWN_TARGET_FIELD,
                format!("OpenAI events have no field `{dotted}`"),
                span,
                "unknown target field",
            )
            .with_help(help),
        );
    }

    fn target_field(&mut self, target: &ast::TargetPath, scope: &Scope) -> Option<TargetInfo> {
        let keys = target.keys();
        let dotted = keys.join(".");
        let unknown = |this: &mut Self| {
            let help = format!("`{}` has no such field; see mappings/schema/openai_ads.yaml", this.target.name);
            this.unknown_target_field(&dotted, target.span, help);
            None
        };
        // Which data shapes have `data.<name>`: a rule in scope of a route of another shape cannot write it.
        if keys.first() == Some(&"data") && keys.len() >= 2 && keys[1] != "type" {
            let name = keys[1];
            let in_schema = self.target.shapes_with(name);
            if in_schema.is_empty() {
                return unknown(self);
            }
            let lacking: Vec<usize> =
                scope.routes.iter().copied().filter(|&r| !in_schema.contains(&self.routes[r].shape.as_str())).collect();
            if !lacking.is_empty() {
                let shapes: BTreeSet<&str> = lacking.iter().map(|&r| self.routes[r].shape.as_str()).collect();
                let shapes: Vec<&str> = shapes.into_iter().collect();
                let mut diagnostic = Diagnostic::error(
                    codes::FIELD_NOT_IN_SHAPE,
                    format!("`data.{name}` is not part of the `{}` data shape", shapes.join("` or `")),
                    target.span,
                    format!("not in `{}` data", shapes.join("`, `")),
                )
                .with_help(format!(
                    "move the rule into `when {} {{ … }}`; `data.{name}` belongs to {}",
                    in_schema.join(", "),
                    in_schema.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
                ));
                for &r in lacking.iter().take(3) {
                    diagnostic = diagnostic.with_context(
                        self.routes[r].span,
                        format!("this route's events carry `{}` data", self.routes[r].shape),
                    );
                }
                self.error(diagnostic);
                return None;
            }
        }
        // A rule names the elements of an array only through an element block, never as `array.field`.
        let Some((def, _)) = self.target.resolve(&keys, false) else { return unknown(self) };
        let def = def.clone();
        if def.set_by_route {
            self.error(
                Diagnostic::error(
                    codes::SET_BY_ROUTE,
                    format!("`{dotted}` is set by the route table"),
                    target.span,
                    "rules cannot write it",
                )
                .with_help("change the event type or shape in `routes { … }` instead"),
            );
            return None;
        }
        if def.ty == Ty::OBJECT {
            let members: Vec<String> = def.fields.iter().map(|f| format!("{dotted}.{}", f.name)).collect();
            self.error(
                Diagnostic::error(
                    codes::NOT_A_LEAF,
                    format!("`{dotted}` is an object"),
                    target.span,
                    "write its fields, not the object",
                )
                .with_help(format!("write one of: {}", members.join(", "))),
            );
            return None;
        }
        let last_is_each = matches!(target.segments.last(), Some(Segment::Each { .. }));
        let has_index = target.segments.iter().any(|s| matches!(s, Segment::Index { .. }));
        if has_index || (def.ty != Ty::ARRAY && target.segments.iter().any(|s| matches!(s, Segment::Each { .. }))) {
            self.error(
                Diagnostic::error(codes::BLOCK_TARGET, format!("`{}` cannot be indexed", target.dotted()), target.span, "not an array of elements")
                    .with_help("only array fields take `[*]`, as the target of an element block: `products[*] -> data.contents[*] { … }`"),
            );
            return None;
        }
        if def.ty == Ty::ARRAY && !last_is_each {
            self.error(
                Diagnostic::error(
                    codes::MISSING_BLOCK,
                    format!("`{dotted}` is an array of objects"),
                    target.span,
                    "written as a whole",
                )
                .with_help(format!(
                    "map each element with a block: `products[*] -> {dotted}[*] {{ product_id -> id }}`"
                )),
            );
            return None;
        }
        Some(TargetInfo { dotted, def })
    }

    fn element_rule(&mut self, rule: &ast::Rule, target: TargetInfo, scope: &Scope, global: bool) {
        let Some(block) = &rule.block else {
            self.error(
                Diagnostic::error(
                    codes::MISSING_BLOCK,
                    format!("`{}` needs element rules", target.dotted),
                    rule.target.span,
                    "no `{ … }` block",
                )
                .with_help(format!(
                    "add element rules: `{} -> {}[*] {{ product_id -> id }}`",
                    rule.source, target.dotted
                )),
            );
            return;
        };
        let [ast::Term::Path(path)] = rule.source.terms.as_slice() else {
            self.error(
                Diagnostic::error(
                    codes::BLOCK_TARGET,
                    "an element block's source must be a path",
                    rule.source.span,
                    "not a path",
                )
                .with_help("write the array to map, e.g. `products[*] -> data.contents[*] { … }`"),
            );
            return;
        };
        if !rule.pipes.is_empty() {
            self.error(
                Diagnostic::error(
                    codes::BLOCK_TARGET,
                    "an element block cannot have functions",
                    rule.pipes[0].span,
                    "applies to the whole array",
                )
                .with_help("apply functions inside the block, to each element's fields"),
            );
            return;
        }
        let each = matches!(path.segments.last(), Some(Segment::Each { .. }));
        let Some(source) = self.path(path, scope, true) else { return };
        let source_taint = source.taint.clone();
        if let Some(ty) = Some(source.ty).filter(|t| *t != Ty::ANY) {
            let expected = if each { Ty::ARRAY } else { Ty::OBJECT };
            if !ty.intersects(expected) {
                self.error(
                    Diagnostic::error(
                        codes::BLOCK_TARGET,
                        format!("`{path}` is {}, not an {}", an(ty), if each { "array" } else { "object" }),
                        path.span,
                        "cannot be mapped element by element",
                    )
                    .with_help("an element block's source is an array (`products[*]`) or one object (`properties`)"),
                );
                return;
            }
        }
        let items = target.def.items.clone().unwrap_or_default();
        let element_scope = Scope { element: true, element_taint: source_taint.clone(), ..scope.clone() };
        let mut rules = Vec::new();
        let mut fields_written = Vec::new();
        let mut first_writer: HashMap<String, Span> = HashMap::new();
        for inner in block {
            let keys = inner.target.keys();
            let name = keys.join(".");
            let Some(index) = items
                .iter()
                .position(|f| f.name == name)
                .filter(|_| keys.len() == 1 && inner.target.segments.len() == 1)
            else {
                let names: Vec<&str> = items.iter().map(|f| f.name.as_str()).collect();
                let help = suggestion(&name, &names)
                    .unwrap_or_else(|| format!("elements of `{}` have: {}", target.dotted, names.join(", ")));
                self.error(
                    Diagnostic::error(
                        codes::UNKNOWN_TARGET_FIELD,
                        format!("elements of `{}` have no field `{name}`", target.dotted),
                        inner.target.span,
                        "unknown element field",
                    )
                    .with_help(help),
                );
                let _ = self.source_with_pipes(inner, &element_scope);
                continue;
            };
            if inner.block.is_some() {
                self.error(
                    Diagnostic::error(
                        codes::BLOCK_TARGET,
                        "element blocks cannot be nested",
                        inner.target.span,
                        "a block inside a block",
                    )
                    .with_help("map nested arrays in a separate rule"),
                );
                continue;
            }
            let Some((typed, pipes, personal)) = self.source_with_pipes(inner, &element_scope) else { continue };
            let info = TargetInfo { dotted: format!("{}[*].{name}", target.dotted), def: items[index].clone() };
            self.check_output(&typed, &info, inner.target.span);
            if let Some(first) = first_writer.get(&name) {
                self.diagnostics.push(
                    Diagnostic::warning(
                        codes::DUPLICATE_TARGET,
                        format!("`{}` is written by two rules", info.dotted),
                        inner.target.span,
                        "written again here",
                    )
                    .with_context(*first, "first written here")
                    .with_help(
                        "when the later rule produces a value it replaces the earlier one's; join them with `??` if one is a fallback",
                    ),
                );
            } else {
                first_writer.insert(name.clone(), inner.target.span);
            }
            fields_written.push(name.clone());
            let expr = typed.expr;
            rules.push(ElementRule {
                field: index,
                target_name: info.dotted,
                expr,
                pipes,
                location: self.location(inner.span),
                personal,
                text: rule_text(inner, &element_scope),
            });
        }
        let source_expr = source.expr;
        let slot = self.slot(&target.dotted);
        // The element source is an input path; element rules read from each element.
        let plan_rule = PlanRule {
            target: RuleTarget::Elements { slot, each, rules },
            target_name: target.dotted.clone(),
            expr: source_expr,
            pipes: Vec::new(),
            location: self.location(rule.span),
            personal: source_taint.is_some(),
            text: rule_text(rule, scope),
        };
        self.push_rule(
            plan_rule,
            RuleMeta {
                target: target.dotted,
                target_span: rule.target.span,
                routes: scope.routes.clone(),
                global,
                constant: None,
                element_fields: fields_written,
            },
        );
    }

    // ---- identity memory ----

    fn remember_lines(&mut self, items: &[Item]) -> Vec<Remembered> {
        let mut remembered: Vec<Remembered> = Vec::new();
        for item in items {
            let Item::Remember(line) = item else { continue };
            for target in &line.targets {
                let dotted = target.dotted();
                let def = self.target.field(dotted.split('.').next().unwrap_or_default()).cloned();
                let def = dotted.split('.').skip(1).fold(def, |d, key| d.and_then(|d| d.field(key).cloned()));
                if def.is_none() && !dotted.starts_with("data.") {
                    let help = "remember identity signals such as `user.email`, `user.phone_number` and `oppref`";
                    self.unknown_target_field(&dotted, target.span, help.to_string());
                    continue;
                }
                let usable = def.as_ref().is_some_and(|d| d.ty != Ty::OBJECT && d.ty != Ty::ARRAY && !d.set_by_route)
                    && !dotted.starts_with("data.")
                    && !matches!(dotted.as_str(), "id" | "timestamp_ms");
                if !usable {
                    self.error(
                        Diagnostic::error(
                            codes::REMEMBER_TARGET,
                            format!("`{dotted}` cannot be remembered"),
                            target.span,
                            "not a visitor attribute",
                        )
                        .with_help("remember identity signals such as `user.email`, `user.phone_number` and `oppref`"),
                    );
                    continue;
                }
                let produced = self.meta.iter().any(|m| m.global && m.target == dotted);
                if !produced {
                    self.error(
                        Diagnostic::error(codes::REMEMBER_NOT_PRODUCED, format!("no rule outside `when` blocks writes `{dotted}`"), target.span, "nothing to remember")
                            .with_help(format!("add a rule for `{dotted}` outside any `when` block, so that identify and every routed event produce it")),
                    );
                    continue;
                }
                let slot = self.slot(&dotted);
                remembered.push(Remembered {
                    slot,
                    field: dotted,
                    lifetime_ms: line.lifetime.as_ref().map(|d| d.millis),
                });
            }
        }
        remembered
    }

    // ---- checks across rules ----

    fn per_route_checks(&mut self, _remembered: &[Remembered]) {
        let mut reported_duplicates: BTreeSet<(usize, usize)> = BTreeSet::new();
        for route_index in 0..self.routes.len() {
            let route = &self.routes[route_index];
            let rules = route.rules.clone();
            let route_span = route.span;
            let label = route.label.clone();
            let shape = route.shape.clone();
            let failed = self.failed_writes.iter().filter(|(_, routes)| routes.contains(&route_index));
            let writes: BTreeSet<&str> = rules
                .iter()
                .map(|&r| self.meta[r].target.as_str())
                .chain(failed.map(|(target, _)| target.as_str()))
                .collect();
            let mut found = Vec::new();
            for def in &self.target.fields {
                if def.set_by_route {
                    continue;
                }
                let required = def.required
                    || def.required_when.as_ref().is_some_and(|(field, value)| {
                        rules.iter().any(|&r| {
                            self.meta[r].target == *field
                                && self.meta[r].constant.as_ref().and_then(Value::as_str) == Some(value)
                        })
                    });
                if required && !writes.contains(def.name.as_str()) {
                    found.push(
                        Diagnostic::error(
                            codes::MISSING_REQUIRED_FIELD,
                            format!("events of route `{label}` would have no `{}`", def.name),
                            route_span,
                            format!("no rule writes `{}`", def.name),
                        )
                        .with_help(match (&def.required_when, def.required) {
                            (Some((field, value)), false) => format!(
                                "OpenAI requires `{}` when `{field}` is {value:?}: add a rule such as `… -> {}`",
                                def.name, def.name
                            ),
                            _ => format!("OpenAI requires `{}`: add a rule such as `… -> {}`", def.name, def.name),
                        }),
                    );
                }
            }
            for (name, def) in
                self.target.shape(&shape).unwrap_or_default().iter().map(|d| (format!("data.{}", d.name), d))
            {
                // Not `let … else { continue }`: an array without `requires` of its own (`data.contents`) still
                // has element fields that do.
                let needed = def.requires.as_ref().map(|requires| format!("data.{requires}"));
                if let (Some(needed), Some(&writer)) = (needed, rules.iter().find(|&&r| self.meta[r].target == name)) {
                    if !writes.contains(needed.as_str()) {
                        found.push(
                            Diagnostic::error(codes::AMOUNT_WITHOUT_CURRENCY, format!("`{name}` is written without `{needed}` on route `{label}`"), self.meta[writer].target_span, format!("needs `{needed}`"))
                                .with_context(route_span, "on this route")
                                .with_help(format!("OpenAI requires `{needed}` whenever `{name}` is sent: add a rule such as `currency -> {needed} | uppercase`")),
                        );
                    }
                }
                if let Some(items) = &def.items {
                    for item in items.iter().filter(|i| i.requires.is_some()) {
                        let item_requires = item.requires.as_deref().unwrap_or_default();
                        for &r in rules.iter().filter(|&&r| self.meta[r].target == name) {
                            let meta = &self.meta[r];
                            if meta.element_fields.contains(&item.name)
                                && !meta.element_fields.iter().any(|f| f == item_requires)
                                && !writes.contains(format!("data.{item_requires}").as_str())
                            {
                                found.push(
                                    Diagnostic::error(
                                        codes::AMOUNT_WITHOUT_CURRENCY,
                                        format!(
                                            "`{name}[*].{}` is written without a currency on route `{label}`",
                                            item.name
                                        ),
                                        meta.target_span,
                                        "elements carry amounts but no currency",
                                    )
                                    .with_context(route_span, "on this route")
                                    .with_help(format!(
                                        "write `data.{item_requires}` or each element's `{item_requires}`"
                                    )),
                                );
                            }
                        }
                    }
                }
            }
            for (i, &a) in rules.iter().enumerate() {
                for &b in &rules[i + 1..] {
                    if self.meta[a].target == self.meta[b].target && reported_duplicates.insert((a, b)) {
                        found.push(
                            Diagnostic::warning(codes::DUPLICATE_TARGET, format!("`{}` is written by two rules on route `{label}`", self.meta[b].target), self.meta[b].target_span, "written again here")
                                .with_context(self.meta[a].target_span, "first written here")
                                .with_help("when the later rule produces a value it replaces the earlier one's; join them with `??` if one is a fallback, or scope one with `when`"),
                        );
                    }
                }
            }
            self.diagnostics.extend(found);
        }
    }

    // ---- plan ----

    fn finish(&mut self, remembered: Vec<Remembered>) -> Option<Plan> {
        if self.diagnostics.iter().any(Diagnostic::is_error) {
            return None;
        }
        let event_type = self.slot("type");
        let data_type = self.slot("data.type");
        let custom_event_name =
            self.routes.iter().any(|r| r.custom_event_name.is_some()).then(|| self.slot("custom_event_name"));
        let timestamp_ms = self.out_slots.get("timestamp_ms").copied();
        let id = self.out_slots.get("id").copied();
        // Required fields get a slot even when no rule writes them, so the runtime can reject an event that
        // lacks one (`source_url` when `action_source` is computed from the event and turns out `web`).
        for def in &self.target.fields {
            if (def.required || def.required_when.is_some()) && !def.set_by_route {
                self.slot(&def.name);
            }
        }
        let (input, resolved) = std::mem::take(&mut self.paths).build();
        let mut rules = std::mem::take(&mut self.rules);
        for rule in &mut rules {
            resolve_rule_paths(rule, &resolved);
        }
        let mut router = Router::default();
        let mut routes = Vec::new();
        for (index, info) in self.routes.iter().enumerate() {
            match (&info.event_name, info.kind) {
                (Some(name), _) => {
                    router.named.insert(name.clone(), index);
                }
                (None, "page") => router.page = Some(index),
                (None, "screen") => router.screen = Some(index),
                (None, _) => router.any_track = Some(index),
            }
            let mut required = Vec::new();
            for def in &self.target.fields {
                let Some(&slot) = self.out_slots.get(&def.name) else {
                    continue;
                };
                if def.required {
                    required.push(Requirement { slot, field: def.name.clone(), when: None });
                } else if let Some((field, value)) = &def.required_when {
                    if let Some(&when_slot) = self.out_slots.get(field) {
                        let when = Some((when_slot, value.clone()));
                        required.push(Requirement { slot, field: def.name.clone(), when });
                    }
                }
            }
            routes.push(PlanRoute {
                label: info.label.clone(),
                location: self.sources.location(info.span),
                event_type: info.event_type.clone(),
                shape: info.shape.clone(),
                custom_event_name: info.custom_event_name.clone(),
                rules: info.rules.clone(),
                required,
                containers: containers_read(&input, &rules, &info.rules),
            });
        }
        let identity_rules: Vec<usize> = self
            .meta
            .iter()
            .enumerate()
            .filter(|(_, m)| m.global && (m.target == "timestamp_ms" || remembered.iter().any(|r| r.field == m.target)))
            .map(|(i, _)| i)
            .collect();
        let identity_containers = containers_read(&input, &rules, &identity_rules);
        let output = self.layout();
        Some(Plan {
            target: self.target,
            input,
            router,
            routes,
            rules,
            identity_rules,
            identity_containers,
            remembered,
            output,
            routes_location: self.routes_location.clone(),
            slot_count: self.slot_count,
            slots: SpecialSlots { event_type, custom_event_name, data_type, timestamp_ms, id },
        })
    }

    /// The output layout: the schema's fields in order, keeping only those some rule or route writes.
    fn layout(&self) -> Vec<LayoutNode> {
        let mut nodes = Vec::new();
        for def in &self.target.fields {
            if def.name == "data" {
                let mut children = Vec::new();
                let mut seen = BTreeSet::new();
                let data_fields = def.fields.iter().chain(self.target.shapes.iter().flat_map(|(_, f)| f.iter()));
                for field in data_fields {
                    if seen.insert(field.name.clone()) {
                        if let Some(node) = self.leaf(field, &format!("data.{}", field.name)) {
                            children.push(node);
                        }
                    }
                }
                nodes.push(LayoutNode::Object { key: "data".to_string(), children });
            } else if let Some(node) = self.leaf(def, &def.name) {
                nodes.push(node);
            }
        }
        nodes
    }

    fn leaf(&self, def: &FieldDef, dotted: &str) -> Option<LayoutNode> {
        if def.ty == Ty::OBJECT {
            let children: Vec<LayoutNode> =
                def.fields.iter().filter_map(|f| self.leaf(f, &format!("{dotted}.{}", f.name))).collect();
            return (!children.is_empty()).then(|| LayoutNode::Object { key: def.name.clone(), children });
        }
        let slot = *self.out_slots.get(dotted)?;
        if def.ty == Ty::ARRAY {
            return Some(LayoutNode::Elements {
                key: def.name.clone(),
                path: dotted.to_string(),
                slot,
                def: def.clone(),
                items: def.items.clone().unwrap_or_default(),
            });
        }
        Some(LayoutNode::Leaf { key: def.name.clone(), path: dotted.to_string(), slot, def: def.clone() })
    }
}

fn rule_text(rule: &ast::Rule, scope: &Scope) -> RuleText {
    RuleText {
        terms: rule.source.terms.iter().map(term_text).collect(),
        pipes: rule.pipes.iter().map(ToString::to_string).collect(),
        scope: scope.label.clone(),
    }
}

fn term_text(term: &Term) -> String {
    ast::Source { terms: vec![term.clone()], span: term.span() }.to_string()
}

fn selector_span(selector: &Selector) -> Span {
    match selector {
        Selector::Event(s) => s.span,
        Selector::Name(n) => n.span,
    }
}

fn step_text(step: &Step) -> String {
    match step {
        Step::Key(k) => k.clone(),
        Step::Index(i) => format!("[{i}]"),
    }
}

fn call_text(call: &ast::Call) -> String {
    call.to_string()
}

fn contains_pii(field: &InputField) -> bool {
    field.pii || field.fields.iter().any(contains_pii)
}

/// A type in words with its indefinite article: `a string`, `an integer`, `a string or number`.
fn an(ty: impl std::fmt::Display) -> String {
    let words = ty.to_string();
    let article = if words.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {words}")
}

fn type_help(ty: Ty, def: &FieldDef) -> String {
    if def.ty == Ty::INTEGER && ty.intersects(Ty::STRING) {
        if def.name.contains("timestamp") {
            return "convert it: `| to_unix_ms`".to_string();
        }
        return "convert it: `| to_number`, or `| minor_units(currency)` for money".to_string();
    }
    if def.ty == Ty::STRING && ty.intersects(Ty::NUMBER) {
        return "convert it: `| to_string`".to_string();
    }
    if def.ty == Ty::BOOL {
        return "write a boolean, e.g. `consent($consent_category) -> opt_out | not`".to_string();
    }
    format!("write {} here", an(&def.type_name))
}

/// Every writable target field, dotted, for did-you-mean.
fn target_names(target: &TargetSchema) -> Vec<String> {
    fn collect(prefix: &str, defs: &[FieldDef], out: &mut Vec<String>) {
        for def in defs {
            let name = if prefix.is_empty() { def.name.clone() } else { format!("{prefix}.{}", def.name) };
            if def.ty == Ty::OBJECT {
                collect(&name, &def.fields, out);
            } else if !def.set_by_route {
                out.push(name);
            }
        }
    }
    let mut out = Vec::new();
    collect("", &target.fields, &mut out);
    for (_, fields) in &target.shapes {
        collect("data", fields, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

fn custom_event_name_problem(name: &str, target: &TargetSchema) -> Option<&'static str> {
    let chars: Vec<char> = name.chars().collect();
    if chars.is_empty() || chars.len() > 64 {
        return Some("must be 1 to 64 characters");
    }
    if !chars.iter().all(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-') {
        return Some("only letters, digits, `_` and `-` are allowed");
    }
    if !chars[0].is_ascii_alphanumeric() || !chars[chars.len() - 1].is_ascii_alphanumeric() {
        return Some("must start and end with a letter or digit");
    }
    if target.shape_of(name).is_some() {
        return Some("is a standard event type");
    }
    None
}

/// The input slots `rules` read that the fast reader may leave unbuilt, and the runtime's own (routing, visitor
/// keys), which it reads whatever the rules.
fn containers_read(input: &InputLayout, rules: &[PlanRule], applied: &[usize]) -> Vec<usize> {
    let mut read: Vec<usize> = input.envelope.slots().to_vec();
    applied.iter().for_each(|&rule| rules[rule].input_slots(&mut read));
    let mut containers: Vec<usize> = input.containers().iter().copied().filter(|slot| read.contains(slot)).collect();
    containers.sort_unstable();
    containers
}

fn resolve_rule_paths(rule: &mut PlanRule, resolved: &[(usize, Vec<Step>)]) {
    resolve_expr(&mut rule.expr, resolved);
    for pipe in &mut rule.pipes {
        resolve_args(&mut pipe.args, resolved);
    }
    if let RuleTarget::Elements { rules, .. } = &mut rule.target {
        for element in rules {
            resolve_expr(&mut element.expr, resolved);
            for pipe in &mut element.pipes {
                resolve_args(&mut pipe.args, resolved);
            }
        }
    }
}

fn resolve_args(args: &mut [ArgExpr], resolved: &[(usize, Vec<Step>)]) {
    for arg in args {
        if let ArgExpr::Dynamic(expr) = arg {
            resolve_expr(expr, resolved);
        }
    }
}

fn resolve_expr(expr: &mut Expr, resolved: &[(usize, Vec<Step>)]) {
    match expr {
        Expr::Input { slot, rest } => {
            let (real, inside) = &resolved[*slot];
            *slot = *real;
            *rest = inside.clone();
        }
        Expr::Call { input, args, .. } => {
            resolve_expr(input, resolved);
            resolve_args(args, resolved);
        }
        Expr::Coalesce(terms) => terms.iter_mut().for_each(|t| resolve_expr(t, resolved)),
        Expr::Const(_) | Expr::Element { .. } => {}
    }
}
