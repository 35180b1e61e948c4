//! Paths into the event: resolved against the Signal schema (the envelope, `properties` for bare names, array
//! elements), typed, and marked when they read personal data.

use super::*;

impl Compiler<'_> {
    pub(super) fn path(&mut self, path: &ast::Path, scope: &Scope, allow_each: bool) -> Option<Typed> {
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
            if let Some(Segment::Key { name, span }) = path.segments.first() {
                self.element_member_read(name, *span, scope);
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
            self.element_member_read(first, path.segments[0].span(), scope);
            let taint = self.element_taint(path, &steps, scope);
            return Some(Typed { expr: Expr::Element { rest: steps }, ty: Ty::ANY, taint });
        }
        let Some(root) = envelope else {
            // Bare names read the event's properties.
            self.property_read(first, path.segments[0].span(), scope);
            let taint = self.names_pii(&steps).then(|| Taint { span: path.span, path: path.to_string() });
            let mut full = vec![Step::Key("properties".to_string())];
            full.extend(steps);
            let id = self.paths.add(full);
            return Some(Typed { expr: Expr::Input { slot: id, rest: Vec::new() }, ty: Ty::ANY, taint });
        };
        if path.segments.len() == 1 {
            self.ambiguity(first, root, path.span, scope);
        }
        if let (true, Some(Segment::Key { name, span })) = (root.name == "properties", path.segments.get(1)) {
            self.property_read(name, *span, scope);
        }
        let (ty, taint) = self.envelope_type(root, path, &steps);
        let id = self.paths.add(steps);
        Some(Typed { expr: Expr::Input { slot: id, rest: Vec::new() }, ty, taint })
    }

    /// A warning when no event the rule applies to is known to carry the property `key` (the Segment specs in
    /// `signal.yaml`, and the mapping's own `property` declarations): most often a misspelling that would
    /// silently leave the field out. Silent when any of those events may carry anything.
    pub(super) fn property_read(&mut self, key: &str, span: Span, scope: &Scope) {
        if scope.routes.is_empty() || self.custom_properties.contains(key) {
            return;
        }
        let known = &self.input.event_properties;
        let mut carried: BTreeSet<&'static str> = BTreeSet::new();
        let mut events: Vec<String> = Vec::new();
        for &route in &scope.routes {
            let info = &self.routes[route];
            let Some(properties) = known.carried_by(info.kind, info.event_name.as_deref()) else { return };
            carried.extend(properties);
            let event = match &info.event_name {
                Some(name) => format!("{name:?}"),
                None => info.kind.to_string(),
            };
            if !events.contains(&event) {
                events.push(event);
            }
        }
        if carried.contains(key) {
            return;
        }
        let label = match events.as_slice() {
            [one] => format!("{one} events are not known to carry it"),
            _ => "none of the routed events is known to carry it".to_string(),
        };
        let diagnostic = Diagnostic::warning(
            codes::UNKNOWN_PROPERTY,
            format!("no event this rule applies to ({}) is known to carry the property `{key}`", events.join(", ")),
            span,
            label,
        );
        self.error(diagnostic.with_help(unknown_property_help(key, &carried)));
    }

    /// Inside an element block over the event's `properties` or its `products`, the same check for the names read
    /// from each element.
    pub(super) fn element_member_read(&mut self, key: &str, span: Span, scope: &Scope) {
        match scope.element_of {
            Some(ElementOf::EventProperties) => self.property_read(key, span, scope),
            Some(ElementOf::Products) => {
                let known = &self.input.event_properties.product;
                if self.custom_properties.contains(key) || known.iter().any(|name| name == key) {
                    return;
                }
                let carried: BTreeSet<&'static str> = known.iter().map(String::as_str).collect();
                let diagnostic = Diagnostic::warning(
                    codes::UNKNOWN_PROPERTY,
                    format!("products are not known to carry the member `{key}`"),
                    span,
                    "not a product member in the Segment specs",
                );
                self.error(diagnostic.with_help(unknown_property_help(key, &carried)));
            }
            None => {}
        }
    }

    pub(super) fn ambiguity(&mut self, name: &str, field: &InputField, span: Span, scope: &Scope) {
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
    pub(super) fn element_taint(&self, path: &ast::Path, steps: &[Step], scope: &Scope) -> Option<Taint> {
        if let Some(taint) = &scope.element_taint {
            return Some(Taint { span: path.span, path: format!("{path} (an element of {})", taint.path) });
        }
        self.names_pii(steps).then(|| Taint { span: path.span, path: path.to_string() })
    }

    /// Whether any key of a free-form path is one of the input schema's personal-data key names
    /// (`email`, `phoneNumber`, `first_name`, … in any case or spelling with `_` and `-`).
    pub(super) fn names_pii(&self, steps: &[Step]) -> bool {
        steps.iter().any(|step| matches!(step, Step::Key(key) if self.input.is_pii_key(key)))
    }

    /// The static type and personal-data taint of an envelope path, with a warning for unknown fields.
    pub(super) fn envelope_type(
        &mut self,
        root: &'static InputField,
        path: &ast::Path,
        steps: &[Step],
    ) -> (Ty, Option<Taint>) {
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
    pub(super) fn envelope_path(&mut self, dotted: &str, span: Span) -> (Expr, Ty, Option<Taint>) {
        let steps: Vec<Step> = dotted.split('.').map(|k| Step::Key(k.to_string())).collect();
        let id = self.paths.add(steps);
        let _ = span;
        (Expr::Input { slot: id, rest: Vec::new() }, Ty::ANY, None)
    }
}

fn unknown_property_help(key: &str, carried: &BTreeSet<&str>) -> String {
    let declare = if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        format!("`property {key}`")
    } else {
        format!("`property {key:?}`")
    };
    match did_you_mean(key, carried.iter().copied()) {
        Some(name) => format!("did you mean `{name}`? If the events do carry `{key}`, declare it: {declare}"),
        None => {
            let names: Vec<&str> = carried.iter().copied().collect();
            format!("they are known to carry {}; if they also carry `{key}`, declare it: {declare}", names.join(", "))
        }
    }
}

pub(super) fn step_text(step: &Step) -> String {
    match step {
        Step::Key(k) => k.clone(),
        Step::Index(i) => format!("[{i}]"),
    }
}

pub(super) fn contains_pii(field: &InputField) -> bool {
    field.pii || field.fields.iter().any(contains_pii)
}
