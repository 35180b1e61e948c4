//! Targets: output fields resolved against the OpenAI schema, element blocks, and the output layout in the schema's
//! order.

use super::*;

impl Compiler<'_> {
    /// `unknown_target_field`, suggesting the closest field of the schema, else `fallback_help`.
    pub(super) fn unknown_target_field(&mut self, dotted: &str, span: Span, fallback_help: String) {
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

    pub(super) fn target_field(&mut self, target: &ast::TargetPath, scope: &Scope) -> Option<TargetInfo> {
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

    /// The output layout: the schema's fields in order, keeping only those some rule or route writes.
    pub(super) fn layout(&self) -> Vec<LayoutNode> {
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
                nodes.push(LayoutNode::Object { quoted: quoted_key("data"), children });
            } else if let Some(node) = self.leaf(def, &def.name) {
                nodes.push(node);
            }
        }
        nodes
    }

    pub(super) fn leaf(&self, def: &FieldDef, dotted: &str) -> Option<LayoutNode> {
        if def.ty == Ty::OBJECT {
            let children: Vec<LayoutNode> =
                def.fields.iter().filter_map(|f| self.leaf(f, &format!("{dotted}.{}", f.name))).collect();
            return (!children.is_empty()).then(|| LayoutNode::Object { quoted: quoted_key(&def.name), children });
        }
        let slot = *self.out_slots.get(dotted)?;
        if def.ty == Ty::ARRAY {
            let items = def.items.clone().unwrap_or_default();
            return Some(LayoutNode::Elements {
                quoted: quoted_key(&def.name),
                path: dotted.into(),
                slot,
                def: Box::new(def.clone()),
                item_keys: items.iter().map(|item| quoted_key(&item.name)).collect(),
                items,
            });
        }
        Some(LayoutNode::Leaf {
            key: def.name.clone(),
            quoted: quoted_key(&def.name),
            path: dotted.into(),
            slot,
            check: LeafCheck::of(def),
            def: Box::new(def.clone()),
        })
    }
}

/// Every writable target field, dotted, for did-you-mean.
pub(super) fn target_names(target: &TargetSchema) -> Vec<String> {
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
