//! The final checks across rules (required fields per route, fields written twice, remembered fields) and the plan
//! they produce: input paths resolved to slots.

use std::sync::Arc;

use super::*;

impl Compiler<'_> {
    pub(super) fn remember_lines(&mut self, items: &[Item]) -> Vec<Remembered> {
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
                    def: None,
                });
            }
        }
        remembered
    }

    pub(super) fn per_route_checks(&mut self, _remembered: &[Remembered]) {
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

    pub(super) fn finish(&mut self, mut remembered: Vec<Remembered>) -> Option<Plan> {
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
        for rule in &mut self.rules {
            add_member_rules(rule, &mut self.paths);
        }
        let (input, resolved) = std::mem::take(&mut self.paths).build();
        let mut rules = std::mem::take(&mut self.rules);
        for rule in &mut rules {
            resolve_rule_paths(rule, &resolved);
            rule.text.finish(&rule.location, &rule.target_name, &rule.expr, &rule.pipes, &input);
            if let RuleTarget::Elements { rules, .. } = &mut rule.target {
                for element in rules {
                    element.text.finish(&element.location, &element.target_name, &element.expr, &element.pipes, &input);
                }
            }
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
            let untraced = containers_read_untraced(&input, &rules, &info.rules);
            routes.push(PlanRoute {
                label: info.label.as_str().into(),
                location: self.sources.location(info.span).into(),
                event_type: info.event_type.as_str().into(),
                shape: info.shape.as_str().into(),
                custom_event_name: info.custom_event_name.clone(),
                rules: info.rules.clone(),
                required,
                containers: containers_read(&input, &rules, &info.rules),
                containers_untraced: untraced.0,
                read_by_members: untraced.1,
                unselected: unselected(&rules, &info.rules, &info.label),
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
        let mut optional_leaves = Vec::new();
        crate::plan::optional_leaves(&output, &mut optional_leaves);
        for remembered in &mut remembered {
            remembered.def = crate::plan::leaf_def(&output, remembered.slot).cloned();
        }
        let quality_slots = crate::quality::quality_slots(&output);
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
            optional_leaves,
            routes_location: self.routes_location.as_deref().map(Into::into),
            slot_count: self.slot_count,
            slots: SpecialSlots { event_type, custom_event_name, data_type, timestamp_ms, id },
            quality_slots,
        })
    }
}

/// The rules a route leaves out, with why, as explanations of its events say it.
fn unselected(rules: &[PlanRule], selected: &[usize], label: &str) -> Vec<(usize, Arc<str>)> {
    let left_out = rules.iter().enumerate().filter(|(index, _)| !selected.contains(index));
    left_out
        .map(|(index, rule)| {
            let scope = rule.text.scope.as_deref().unwrap_or_default();
            (index, format!("out of scope: `{scope}` does not select {label}").into())
        })
        .collect()
}

/// The input slots `rules` read that the fast reader may leave unbuilt, and the runtime's own (routing, visitor
/// keys), which it reads whatever the rules.
pub(super) fn containers_read(input: &InputLayout, rules: &[PlanRule], applied: &[usize]) -> Vec<usize> {
    let mut read: Vec<usize> = input.envelope.slots().to_vec();
    applied.iter().for_each(|&rule| rules[rule].input_slots(&mut read));
    let mut containers: Vec<usize> = input.containers().iter().copied().filter(|slot| read.contains(slot)).collect();
    containers.sort_unstable();
    containers
}

/// [`containers_read`] for an untraced run, and the sources it reads only by their members
/// ([`PlanRule::input_slots_untraced`]): those it leaves unbuilt unless a rule also reads them whole.
fn containers_read_untraced(input: &InputLayout, rules: &[PlanRule], applied: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let (mut read, mut by_members) = (input.envelope.slots().to_vec(), Vec::new());
    applied.iter().for_each(|&rule| rules[rule].input_slots_untraced(&mut read, &mut by_members));
    let containers = |slots: &[usize]| {
        let mut found: Vec<usize> = input.containers().iter().copied().filter(|slot| slots.contains(slot)).collect();
        found.sort_unstable();
        found
    };
    let built = containers(&read);
    let only_by_members = containers(&by_members).into_iter().filter(|slot| !built.contains(slot)).collect();
    (built, only_by_members)
}

/// Gives a block whose source is one object of the event (`properties -> data.contents[*] { … }`) the
/// [`MemberRule`]s that read the object's members where the reader captures them, registering those paths. A
/// block that reads its element whole (`@`), or whose source is not a path of keys, keeps only its element rules.
fn add_member_rules(rule: &mut PlanRule, paths: &mut InputPaths) {
    let RuleTarget::Elements { each: false, rules, by_members, .. } = &mut rule.target else { return };
    let Expr::Input { slot: id, rest } = &rule.expr else { return };
    let source = paths.path(*id).to_vec();
    if !rest.is_empty() || source.is_empty() || !source.iter().all(|step| matches!(step, Step::Key(_))) {
        return;
    }
    let reads_members = |steps: &[Step]| matches!(steps.first(), Some(Step::Key(_)));
    // Checked before any path is registered: a path registered for nothing would still be read from every event.
    let mut every_read_a_member = |steps: &[Step]| reads_members(steps).then_some(Expr::Const(Value::Null));
    let rewritable = rules.iter().all(|rule| {
        rule.expr.with_element_reads(&mut every_read_a_member).is_some()
            && args_rewritable(&rule.pipes, &mut every_read_a_member)
    });
    if !rewritable {
        return;
    }
    let mut member = |steps: &[Step]| {
        let path = source.iter().chain(steps).cloned().collect();
        Some(Expr::Input { slot: paths.add(path), rest: Vec::new() })
    };
    *by_members = rules
        .iter()
        .map(|rule| {
            let expr = rule.expr.with_element_reads(&mut member)?;
            let pipes = rule
                .pipes
                .iter()
                .map(|pipe| {
                    let args = crate::plan::args_with_element_reads(&pipe.args, &mut member)?;
                    Some(BoundCall { function: pipe.function, args })
                })
                .collect::<Option<_>>()?;
            Some(MemberRule { expr, pipes })
        })
        .collect();
}

fn args_rewritable(pipes: &[BoundCall], member: &mut dyn FnMut(&[Step]) -> Option<Expr>) -> bool {
    pipes.iter().all(|pipe| crate::plan::args_with_element_reads(&pipe.args, member).is_some())
}

pub(super) fn resolve_rule_paths(rule: &mut PlanRule, resolved: &[(usize, Vec<Step>)]) {
    resolve_expr(&mut rule.expr, resolved);
    for pipe in &mut rule.pipes {
        resolve_args(&mut pipe.args, resolved);
    }
    if let RuleTarget::Elements { rules, by_members, .. } = &mut rule.target {
        for element in rules {
            resolve_expr(&mut element.expr, resolved);
            for pipe in &mut element.pipes {
                resolve_args(&mut pipe.args, resolved);
            }
        }
        for member in by_members.iter_mut().flatten() {
            resolve_expr(&mut member.expr, resolved);
            for pipe in &mut member.pipes {
                resolve_args(&mut pipe.args, resolved);
            }
        }
    }
}

pub(super) fn resolve_args(args: &mut [ArgExpr], resolved: &[(usize, Vec<Step>)]) {
    for arg in args {
        if let ArgExpr::Dynamic(expr) = arg {
            resolve_expr(expr, resolved);
        }
    }
}

pub(super) fn resolve_expr(expr: &mut Expr, resolved: &[(usize, Vec<Step>)]) {
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
