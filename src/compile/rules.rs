//! Rules and bindings: each rule's source, terms and pipes, functions bound and type-checked against their inputs and
//! arguments, and what reaches the output (types, personal data).

use super::*;

impl Compiler<'_> {
    pub(super) fn rule(&mut self, rule: &ast::Rule, scope: &Scope, global: bool) {
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

    pub(super) fn push_rule(&mut self, rule: PlanRule, meta: RuleMeta) {
        let index = self.rules.len();
        for &route in &meta.routes {
            self.routes[route].rules.push(index);
        }
        self.rules.push(rule);
        self.meta.push(meta);
    }

    /// Type and personal-data checks of a value about to be written to `target`.
    pub(super) fn check_output(&mut self, typed: &Typed, target: &TargetInfo, target_span: Span) {
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
    pub(super) fn source_with_pipes(
        &mut self,
        rule: &ast::Rule,
        scope: &Scope,
    ) -> Option<(Typed, Vec<BoundCall>, bool)> {
        let source = self.source(&rule.source, scope)?;
        self.pipes(source, &rule.pipes, rule.source.span, scope)
    }

    /// Binds a rule's pipe functions to its compiled source; the type and taint become those after the last.
    pub(super) fn pipes(
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

    pub(super) fn source(&mut self, source: &ast::Source, scope: &Scope) -> Option<Typed> {
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

    pub(super) fn term(&mut self, term: &Term, scope: &Scope) -> Option<Typed> {
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

    pub(super) fn function(&mut self, name: &ast::Ident) -> Option<&'static Function> {
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
    pub(super) fn bind(
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

    pub(super) fn element_rule(&mut self, rule: &ast::Rule, target: TargetInfo, scope: &Scope, global: bool) {
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
        let element_of = element_of(path);
        let element_scope = Scope { element: true, element_taint: source_taint.clone(), element_of, ..scope.clone() };
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
            target: RuleTarget::Elements { slot, each, rules, by_members: None },
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
}

pub(super) fn rule_text(rule: &ast::Rule, scope: &Scope) -> Box<RuleText> {
    Box::new(RuleText {
        terms: rule.source.terms.iter().map(|term| term_text(term).into()).collect(),
        pipes: rule.pipes.iter().map(ToString::to_string).collect(),
        scope: scope.label.as_deref().map(Into::into),
        ..RuleText::default()
    })
}

pub(super) fn term_text(term: &Term) -> String {
    ast::Source { terms: vec![term.clone()], span: term.span() }.to_string()
}

pub(super) fn selector_span(selector: &Selector) -> Span {
    match selector {
        Selector::Event(s) => s.span,
        Selector::Name(n) => n.span,
    }
}

pub(super) fn call_text(call: &ast::Call) -> String {
    call.to_string()
}

/// A type in words with its indefinite article: `a string`, `an integer`, `a string or number`.
pub(super) fn an(ty: impl std::fmt::Display) -> String {
    let words = ty.to_string();
    let article = if words.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {words}")
}

pub(super) fn type_help(ty: Ty, def: &FieldDef) -> String {
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

/// What an element block's source path holds, when the schema knows its members: the event's `properties` (read
/// as one element) or the items of its `products` array.
fn element_of(path: &ast::Path) -> Option<ElementOf> {
    let keys: Vec<&str> = path
        .segments
        .iter()
        .filter_map(|segment| match segment {
            Segment::Key { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let each = matches!(path.segments.last(), Some(Segment::Each { .. }));
    match (keys.as_slice(), each, path.element) {
        (["properties"], false, false) => Some(ElementOf::EventProperties),
        (["products"] | ["properties", "products"], true, false) if path.segments.len() == keys.len() + 1 => {
            Some(ElementOf::Products)
        }
        _ => None,
    }
}
