//! Declarations: the `target` line and `param`s (types, defaults, values given from outside, unused and undeclared
//! ones).

use super::*;

impl Compiler<'_> {
    pub(super) fn target_decl(&mut self, items: &[Item]) {
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

    pub(super) fn param_decl(&mut self, decl: &ast::ParamDecl) {
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

    pub(super) fn undeclared_params(&mut self) {
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

    pub(super) fn unused_params(&mut self) {
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

    pub(super) fn param_ref(&mut self, name: &ast::Ident) -> Option<Typed> {
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
}
