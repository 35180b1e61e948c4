//! The route table and `when` blocks: which Signal events become which OpenAI event types, and which rules apply to
//! which routes.

use super::*;

impl Compiler<'_> {
    pub(super) fn route(&mut self, route: &ast::Route) {
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

    pub(super) fn when_block(&mut self, when: &ast::When) {
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
            element_of: None,
            label: Some(format!(
                "when {}",
                when.selectors.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )),
        };
        for rule in &when.rules {
            self.rule(rule, &scope, false);
        }
    }
}

pub(super) fn custom_event_name_problem(name: &str, target: &TargetSchema) -> Option<&'static str> {
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
