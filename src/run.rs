//! Running a plan on one event: route it, apply the rules that apply (their expressions are evaluated by `eval`),
//! consult and feed identity memory, validate the result against the target schema (including the timestamp window
//! around the caller's `now`) and write the OpenAI event as JSON. Synchronous and free of I/O; no input panics it.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::eval::{eval_ref, evaluate, withhold_personal, Got};
use crate::functions::{write_json, Ty, Val};
use crate::identity::{IdentityStore, Profile};
use crate::input::Captured;
use crate::observe::{Observer, Untraced};
use crate::plan::*;
use crate::quality::{Observed, QualityWatch};
use crate::schema::{FieldDef, Format};
use crate::spare::{self, Spare};

/// How far back and ahead of `now` OpenAI accepts `timestamp_ms`.
pub const WINDOW_PAST_MS: i64 = 7 * 24 * 3_600_000;
pub const WINDOW_FUTURE_MS: i64 = 10 * 60_000;

/// What applying a plan needs besides the event.
pub struct Context<'a> {
    /// The time the timestamp window is checked against, epoch ms.
    pub now_ms: i64,
    /// Identity memory, or `None` to map each event alone.
    pub identity: Option<&'a mut dyn IdentityStore>,
}

impl<'a> Context<'a> {
    pub fn stateless(now_ms: i64) -> Self {
        Context { now_ms, identity: None }
    }

    pub fn with_identity(now_ms: i64, identity: &'a mut dyn IdentityStore) -> Self {
        Context { now_ms, identity: Some(identity) }
    }
}

/// The result of applying a plan to one event. New outcomes may come: match with a wildcard arm.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    Mapped(Mapped),
    Dropped(Dropped),
    Rejected(Rejected),
}

/// An OpenAI event, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapped {
    /// Shared with the plan: every event of a route names its type without a copy.
    pub event_type: Arc<str>,
    /// The event's `id` and `timestamp_ms` as sent, so that a caller storing the event need not parse it back.
    pub id: Option<String>,
    pub timestamp_ms: Option<i64>,
    /// The event as compact JSON, fields in the schema's order.
    pub json: String,
    pub warnings: Vec<Warning>,
}

/// An event that produces no output by design.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dropped {
    pub reason: DropReason,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DropReason {
    /// No route takes this event.
    Unmapped,
    /// An identify event: it fed identity memory and produces no conversion.
    Identify,
    /// An alias event: it linked `previousId` to the visitor in identity memory and produces no conversion.
    Alias,
}

/// An event that cannot become a valid OpenAI event, with the field and rule responsible.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rejected {
    pub reason: RejectReason,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `file:line:col` of the rule responsible.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    /// The input is not a JSON object.
    InvalidInput,
    /// A field OpenAI requires was not produced.
    MissingRequiredField,
    /// A produced value breaks the target schema (type, format, allowed values).
    InvalidField,
    /// `timestamp_ms` is outside the window OpenAI accepts.
    TimestampOutOfWindow,
}

/// A rule that produced nothing although its source was there, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Warning {
    pub field: String,
    pub rule: String,
    pub message: String,
}

/// Where an event goes.
pub(crate) enum Routing {
    Route(usize),
    Identify,
    Alias,
    /// No route takes it; the message says what the event was.
    Unmapped(String),
}

/// A visitor's identity memory while one event is applied.
struct Memory {
    profile: Profile,
    /// The profile differs from what the store holds: a new link or a new value.
    changed: bool,
    /// Slots filled from memory, which are not news to remember again.
    recalled: smallvec::SmallVec<[usize; 4]>,
}

/// What a rule produced for an output slot. Values borrow from the plan and the event (`'v`).
pub(crate) enum Out<'v> {
    Value(Val<'v>),
    Elements(Vec<Vec<Option<Val<'v>>>>),
}

struct State<'v> {
    input: &'v [Option<Val<'v>>],
    out: Vec<Option<Out<'v>>>,
    /// Which rule last wrote each slot, to name it in rejections.
    writer: Vec<Option<&'v str>>,
    warnings: Vec<Warning>,
}

thread_local! {
    static SPARE_OUT: Spare<Option<Out<'static>>> = const { Spare::new() };
    static SPARE_WRITER: Spare<Option<&'static str>> = const { Spare::new() };
}

impl Drop for State<'_> {
    fn drop(&mut self) {
        spare::give_back(&SPARE_OUT, std::mem::take(&mut self.out));
        spare::give_back(&SPARE_WRITER, std::mem::take(&mut self.writer));
    }
}

impl Plan {
    /// Applies the plan to one event given as JSON text; reads only the paths the plan uses.
    pub fn apply_str(&self, event: &str, context: &mut Context<'_>) -> Outcome {
        self.apply_str_observed(event, context, &mut Untraced)
    }

    /// [`Plan::apply_str`], and what a mapped event says about its match quality, noted from its output as it is
    /// written (the same as [`crate::quality::Observation::of_text`] reads from the event's text, for less).
    pub fn apply_str_noting_quality(&self, event: &str, context: &mut Context<'_>) -> (Outcome, Option<Observed>) {
        let mut watch = QualityWatch::new(&self.quality_slots);
        // The runtime reports what it sends only for an event it maps.
        let outcome = self.apply_str_observed(event, context, &mut watch);
        (outcome, watch.observed)
    }

    fn apply_str_observed<'p, O: Observer<'p>>(
        &'p self,
        event: &str,
        context: &mut Context<'_>,
        observer: &mut O,
    ) -> Outcome {
        match self.input.read_str(event) {
            Ok(mut input) => {
                let routing = self.routing(&input.values);
                if O::TRACING {
                    self.build_read_whole(&routing, &mut input);
                } else {
                    self.build_read_untraced(&routing, &mut input);
                }
                self.apply_routed(&input.values, routing, context, observer)
            }
            Err(error) => invalid_input(error.0),
        }
    }

    /// Applies the plan to one parsed event.
    pub fn apply(&self, event: &Value, context: &mut Context<'_>) -> Outcome {
        match self.input.read_value(event) {
            Ok(mut input) => {
                let routing = self.routing(&input.values);
                self.build_read_untraced(&routing, &mut input);
                self.apply_routed(&input.values, routing, context, &mut Untraced)
            }
            Err(error) => invalid_input(error.0),
        }
    }

    /// Builds the objects the event's route reads whole that the reader only took apart.
    pub(crate) fn build_read_whole(&self, routing: &Routing, input: &mut Captured<'_>) {
        match routing {
            Routing::Route(index) => input.build(&self.routes[*index].containers),
            Routing::Identify => input.build(&self.identity_containers),
            Routing::Alias | Routing::Unmapped(_) => {}
        }
    }

    /// [`Plan::build_read_whole`] for an untraced run, whose blocks read a source object by its members: such a
    /// source is only marked as there, unless a rule of the route reads it whole.
    fn build_read_untraced(&self, routing: &Routing, input: &mut Captured<'_>) {
        match routing {
            Routing::Route(index) => {
                let route = &self.routes[*index];
                input.build(&route.containers_untraced);
                input.mark_objects(&route.read_by_members);
            }
            _ => self.build_read_whole(routing, input),
        }
    }

    /// Applies the plan to an event's captured input, reporting each step of evaluation to `observer`.
    pub(crate) fn apply_input<'p: 'v, 'v, O: Observer<'p>>(
        &'p self,
        input: &'v [Option<Val<'v>>],
        context: &mut Context<'_>,
        observer: &mut O,
    ) -> Outcome {
        self.apply_routed(input, self.routing(input), context, observer)
    }

    /// [`Plan::apply_input`] for an event already routed.
    fn apply_routed<'p: 'v, 'v, O: Observer<'p>>(
        &'p self,
        input: &'v [Option<Val<'v>>],
        routing: Routing,
        context: &mut Context<'_>,
        observer: &mut O,
    ) -> Outcome {
        let mut state = State {
            input,
            out: spare::take(&SPARE_OUT, self.slot_count, || None),
            writer: spare::take(&SPARE_WRITER, self.slot_count, || None),
            warnings: Vec::new(),
        };
        let route_index = match routing {
            Routing::Route(index) => index,
            Routing::Identify => return self.identify(&mut state, context, observer),
            Routing::Alias => return self.alias(&state, context),
            Routing::Unmapped(message) => {
                return Outcome::Dropped(Dropped { reason: DropReason::Unmapped, message });
            }
        };
        let route = &self.routes[route_index];
        // The visitor is recalled after the rules run; its keys are known now, so memory can start fetching it
        // while they run, a step at a time spread among them.
        let keys = match &context.identity {
            Some(_) if !self.remembered.is_empty() => self.visitor_keys(&state),
            _ => VisitorKeys::none(),
        };
        let steps = match (&context.identity, keys.is_empty()) {
            (Some(store), false) => store.prefetch_steps(),
            _ => 0,
        };
        let mut step = 0;
        for (position, &rule) in route.rules.iter().enumerate() {
            while step < steps && step * route.rules.len() <= position * steps {
                if let Some(store) = context.identity.as_deref_mut() {
                    store.prefetch_visitor(&keys, step);
                }
                step += 1;
            }
            self.run_rule(&self.rules[rule], &mut state, observer);
        }
        self.set(&mut state, self.slots.event_type, Val::from(&*route.event_type));
        self.set(&mut state, self.slots.data_type, Val::from(&*route.shape));
        if let (Some(slot), Some(name)) = (self.slots.custom_event_name, &route.custom_event_name) {
            self.set(&mut state, slot, Val::from(name.as_str()));
        }
        let event_ms = self.event_time(&state, context.now_ms);
        let memory = context.identity.as_deref_mut().and_then(|store| self.recall(&mut state, store, &keys, event_ms));
        let rejected = self.validate(route, &mut state, context.now_ms);
        // What an event teaches about its visitor holds even when the event itself cannot be sent (a landing
        // page older than the window still carries a click id valid for 30 days); `remember` keeps only values
        // that pass the schema on their own.
        if let (Some(store), Some(memory)) = (context.identity.as_deref_mut(), memory) {
            self.remember(&state, store, memory, event_ms, rejected.is_none());
        }
        if let Some(rejected) = rejected {
            return Outcome::Rejected(rejected);
        }
        if O::WATCHES_SENT {
            observer.sent(&state.out);
        }
        let mut json = String::with_capacity(1024);
        write_object(&self.output, &state.out, &mut json);
        let read = |slot: Option<usize>| match slot.and_then(|slot| state.out[slot].as_ref()) {
            Some(Out::Value(value)) => Some(value),
            _ => None,
        };
        let id = read(self.slots.id).and_then(|v| v.as_str().map(str::to_string));
        let timestamp_ms = read(self.slots.timestamp_ms).and_then(Val::as_i64);
        Outcome::Mapped(Mapped {
            event_type: Arc::clone(&route.event_type),
            id,
            timestamp_ms,
            json,
            warnings: std::mem::take(&mut state.warnings),
        })
    }

    /// Which route an event takes, from the captured `type` and `event`.
    pub(crate) fn routing(&self, input: &[Option<Val<'_>>]) -> Routing {
        let envelope = &self.input.envelope;
        let kind = input[envelope.kind].as_ref().and_then(Val::as_str).unwrap_or_default();
        let event_name = input[envelope.event].as_ref().and_then(Val::as_str);
        let route = match kind {
            "track" => match event_name {
                Some(name) => self.router.named.get(name).copied().or(self.router.any_track),
                None => self.router.any_track,
            },
            "page" => self.router.page,
            "screen" => self.router.screen,
            "identify" => return Routing::Identify,
            "alias" => return Routing::Alias,
            _ => None,
        };
        match route {
            Some(index) => Routing::Route(index),
            None => {
                let what = match (kind, event_name) {
                    ("", _) => "an event without `type`".to_string(),
                    ("track", Some(name)) => format!("track event {name:?}"),
                    ("track", None) => "a track event without `event` name".to_string(),
                    (other, _) => format!("`{other}` event"),
                };
                Routing::Unmapped(format!("no route for {what}"))
            }
        }
    }

    fn set<'v>(&self, state: &mut State<'v>, slot: usize, value: Val<'v>) {
        state.out[slot] = Some(Out::Value(value));
    }

    fn event_time(&self, state: &State<'_>, now_ms: i64) -> i64 {
        self.slots
            .timestamp_ms
            .and_then(|slot| match &state.out[slot] {
                Some(Out::Value(v)) => v.as_i64(),
                _ => None,
            })
            .unwrap_or(now_ms)
    }

    fn identify<'p: 'v, 'v, O: Observer<'p>>(
        &'p self,
        state: &mut State<'v>,
        context: &mut Context<'_>,
        observer: &mut O,
    ) -> Outcome {
        for &rule in &self.identity_rules {
            self.run_rule(&self.rules[rule], state, observer);
        }
        let event_ms = self.event_time(state, context.now_ms);
        let mut learned = 0;
        if let Some(store) = context.identity.as_deref_mut() {
            if let Some(memory) = self.load_memory(state, store) {
                learned = self.remember(state, store, memory, event_ms, false);
            }
        }
        Outcome::Dropped(Dropped {
            reason: DropReason::Identify,
            message: format!("identify: {learned} identity field(s) remembered"),
        })
    }

    /// An alias event says that `previousId` (an anonymous id, or an earlier user id) and the event's own ids are one
    /// visitor: their identity memories are linked, so what one learned reaches conversions under the others.
    fn alias(&self, state: &State<'_>, context: &mut Context<'_>) -> Outcome {
        let previous =
            state.input[self.input.envelope.previous_id].as_ref().and_then(Val::as_str).filter(|s| !s.is_empty());
        let mut message = match previous {
            None => "alias: nothing to link (no `previousId`)",
            Some(_) => "alias: nothing linked (no identity memory)",
        }
        .to_string();
        if let (Some(previous), Some(store)) = (previous, context.identity.as_deref_mut()) {
            // Which kind of id `previousId` is cannot be told from the event: both are linked.
            let mut keys = self.visitor_keys(state);
            keys.push("anon:", previous);
            keys.push("user:", previous);
            if let Some(memory) = self.load_memory_of(&keys, store) {
                let event_ms = self.event_time(state, context.now_ms);
                self.remember(state, store, memory, event_ms, false);
            }
            message = "alias: previousId linked to the visitor in identity memory".to_string();
        }
        Outcome::Dropped(Dropped { reason: DropReason::Alias, message })
    }

    /// The identity-memory keys of the event's visitor: its anonymous id and its user id.
    fn visitor_keys(&self, state: &State<'_>) -> VisitorKeys {
        let mut keys = VisitorKeys::spare();
        let envelope = &self.input.envelope;
        if let Some(anonymous) =
            state.input[envelope.anonymous_id].as_ref().and_then(Val::as_str).filter(|s| !s.is_empty())
        {
            keys.push("anon:", anonymous);
        }
        if let Some(user) = state.input[envelope.user_id].as_ref().and_then(Val::as_str).filter(|s| !s.is_empty()) {
            keys.push("user:", user);
        }
        keys
    }

    /// The visitor's keys and what is remembered under any of them.
    fn load_memory(&self, state: &State<'_>, store: &mut dyn IdentityStore) -> Option<Memory> {
        self.load_memory_of(&self.visitor_keys(state), store)
    }

    fn load_memory_of(&self, keys: &[String], store: &mut dyn IdentityStore) -> Option<Memory> {
        if self.remembered.is_empty() {
            return None;
        }
        if keys.is_empty() {
            return None;
        }
        let mut profile = store.recall_visitor(keys);
        // Linking moves each key to the end in turn: nothing changes when they end the list in that order already.
        let changed = !profile.keys.ends_with(keys);
        if changed {
            for key in keys {
                profile.link(key);
            }
        }
        Some(Memory { changed, profile, recalled: smallvec::SmallVec::new() })
    }

    /// Fills the remembered fields the event lacks from what the visitor's earlier events taught.
    fn recall(
        &self,
        state: &mut State<'_>,
        store: &mut dyn IdentityStore,
        keys: &[String],
        event_ms: i64,
    ) -> Option<Memory> {
        let mut memory = self.load_memory_of(keys, store)?;
        for remembered in &self.remembered {
            if state.out[remembered.slot].is_some() {
                continue;
            }
            if let Some(field) = memory.profile.get(&remembered.field, event_ms) {
                state.out[remembered.slot] = Some(Out::Value(Val::from_json(&field.value).into_owned()));
                memory.recalled.push(remembered.slot);
            }
        }
        Some(memory)
    }

    /// Records the remembered fields this event produced itself; returns how many. `validated`: every value the
    /// event produced passed the schema's checks already (it is about to be sent).
    fn remember(
        &self,
        state: &State<'_>,
        store: &mut dyn IdentityStore,
        mut memory: Memory,
        event_ms: i64,
        validated: bool,
    ) -> usize {
        let mut learned = 0;
        for remembered in &self.remembered {
            if memory.recalled.contains(&remembered.slot) {
                continue;
            }
            let Some(Out::Value(value)) = &state.out[remembered.slot] else { continue };
            // Only values fit to send are kept: memory never holds what the schema would refuse (raw email).
            let fit = |def: &FieldDef| check_value(&LeafCheck::of(def), def, &remembered.field, value, 0).is_ok();
            if !validated && !remembered.def.as_ref().is_none_or(fit) {
                continue;
            }
            let expires_ms = remembered.lifetime_ms.map(|l| event_ms.saturating_add(l));
            memory.changed |= memory.profile.observe(&remembered.field, value, event_ms, expires_ms);
            learned += 1;
        }
        // A new link or a new value is stored under every key of the visitor. A visitor known by one key that
        // taught nothing has nothing to remember: most visitors never identify nor land from an ad, and memory
        // stays free of them.
        let nothing_to_keep = memory.profile.fields.is_empty() && memory.profile.keys.len() < 2;
        store.keep_visitor(memory.profile, memory.changed && !nothing_to_keep);
        learned
    }

    fn run_rule<'p: 'v, 'v, O: Observer<'p>>(&'p self, rule: &'p PlanRule, state: &mut State<'v>, observer: &mut O) {
        match &rule.target {
            RuleTarget::Slot(slot) => {
                if O::TRACING {
                    observer.rule_start(rule);
                }
                let result = evaluate(&rule.expr, &rule.pipes, state.input, None, observer);
                if O::TRACING {
                    observer.rule_end(rule, result.as_ref().map(Option::as_ref).map_err(String::as_str));
                }
                match result {
                    Ok(Some(value)) if !value.is_null() => {
                        state.out[*slot] = Some(Out::Value(value));
                        state.writer[*slot] = Some(&rule.location);
                    }
                    Ok(_) => {}
                    Err(message) => state.warnings.push(Warning {
                        field: rule.target_name.clone(),
                        rule: rule.location.clone(),
                        message: withhold_personal(message, rule.personal),
                    }),
                }
            }
            RuleTarget::Elements { slot, .. } => {
                let source = eval_ref(&rule.expr, state.input, None);
                if O::TRACING {
                    let shown = source.as_ref().map(|got| got.as_ref().map(Got::as_val)).map_err(String::as_str);
                    observer.block_source(rule, shown);
                }
                let built = match source {
                    // Elements read from the event borrow from it.
                    Ok(Some(Got::Ref(source))) => build_elements(rule, source, state.input, state, observer),
                    // A computed source lives only here: its elements' values are copied out of it.
                    Ok(Some(Got::Owned(source))) => {
                        build_elements(rule, &source, state.input, state, observer).map(|built| {
                            built
                                .into_iter()
                                .map(|fields| fields.into_iter().map(|f| f.map(Val::into_owned)).collect())
                                .collect()
                        })
                    }
                    _ => None,
                };
                if O::TRACING {
                    observer.block_end(rule);
                }
                if let Some(built) = built.filter(|built| !built.is_empty()) {
                    state.out[*slot] = Some(Out::Elements(built));
                    state.writer[*slot] = Some(&rule.location);
                }
            }
        }
    }

    /// Checks every produced field against the schema and the route's required fields.
    fn validate(&self, route: &PlanRoute, state: &mut State<'_>, now_ms: i64) -> Option<Rejected> {
        for requirement in &route.required {
            if state.out[requirement.slot].is_some() {
                continue;
            }
            if let Some((when_slot, value)) = &requirement.when {
                let holds =
                    matches!(&state.out[*when_slot], Some(Out::Value(Val::Str(s))) if s.as_ref() == value.as_str());
                if !holds {
                    continue;
                }
            }
            let warning = state.warnings.iter().find(|w| w.field == requirement.field);
            let rule = warning.map(|w| w.rule.clone()).or_else(|| self.writer_of(route, &requirement.field));
            let message = match warning {
                Some(w) => format!("`{}` is required, but its rule produced nothing: {}", requirement.field, w.message),
                None => format!("`{}` is required, but the event has no value for it", requirement.field),
            };
            return Some(self.reject(state, RejectReason::MissingRequiredField, message, &requirement.field, rule));
        }
        self.omit_blank_optionals(state);
        self.validate_nodes(&self.output, state, now_ms, None)
    }

    fn validate_nodes(
        &self,
        nodes: &[LayoutNode],
        state: &mut State<'_>,
        now_ms: i64,
        parent: Option<&[LayoutNode]>,
    ) -> Option<Rejected> {
        for node in nodes {
            match node {
                LayoutNode::Object { children, .. } => {
                    if let Some(rejected) = self.validate_nodes(children, state, now_ms, Some(children)) {
                        return Some(rejected);
                    }
                }
                LayoutNode::Leaf { path, slot, check, def, .. } => {
                    let Some(Out::Value(value)) = &mut state.out[*slot] else { continue };
                    normalise_integer(check.ty, value);
                    if let Err((reason, message)) = check_value(check, def, path, value, now_ms) {
                        let rule = state.writer[*slot].map(str::to_string);
                        return Some(self.reject(state, reason, message, path, rule));
                    }
                    if let Some(needed) = check.requires.then_some(&def.requires).and_then(Option::as_ref) {
                        let siblings = parent.unwrap_or(nodes);
                        if !sibling_present(siblings, needed, state) {
                            let rule = state.writer[*slot].map(str::to_string);
                            let message =
                                format!("`{path}` is present without `{needed}`, which OpenAI requires with it");
                            return Some(self.reject(state, RejectReason::MissingRequiredField, message, path, rule));
                        }
                    }
                }
                LayoutNode::Elements { path, slot, def, items, .. } => {
                    let event_currency = sibling_present(parent.unwrap_or(nodes), "currency", state);
                    let Some(Out::Elements(elements)) = &mut state.out[*slot] else { continue };
                    let mut problem = None;
                    if def.max_items.is_some_and(|max| elements.len() > max) {
                        problem = Some((
                            RejectReason::InvalidField,
                            format!(
                                "`{path}` has {} elements, more than {}",
                                elements.len(),
                                def.max_items.unwrap_or_default()
                            ),
                        ));
                    }
                    let own_currency = items.iter().position(|i| i.name == "currency");
                    let mut failing_field = None;
                    'elements: for (index, element) in elements.iter_mut().enumerate() {
                        let has_own = own_currency.is_some_and(|c| element.get(c).is_some_and(Option::is_some));
                        for (field, value) in element.iter_mut().enumerate() {
                            let (Some(value), Some(item)) = (value.as_mut(), items.get(field)) else { continue };
                            normalise_integer(item.ty, value);
                            let (check, at) = (LeafCheck::of(item), format_args!("{path}[{index}].{}", item.name));
                            if let Err((reason, message)) = check_value(&check, item, &at, value, now_ms) {
                                problem = Some((reason, message));
                                failing_field = Some(field);
                                break 'elements;
                            }
                            if item.requires.as_deref() == Some("currency") && !event_currency && !has_own {
                                problem = Some((
                                    RejectReason::MissingRequiredField,
                                    format!("element {index}: `{}` is present without a currency", item.name),
                                ));
                                failing_field = Some(field);
                                break 'elements;
                            }
                        }
                    }
                    if let Some((reason, message)) = problem {
                        let block = state.writer[*slot];
                        // Name the element rule that wrote the failing field, not the block around it.
                        let rule = failing_field
                            .and_then(|field| self.element_rule_location(*slot, block, field))
                            .or_else(|| block.map(str::to_string));
                        return Some(self.reject(state, reason, message, path, rule));
                    }
                }
            }
        }
        None
    }

    /// The location of the element rule writing element field `field` in the block at `block` (which filled
    /// output slot `slot`).
    fn element_rule_location(&self, slot: usize, block: Option<&str>, field: usize) -> Option<String> {
        self.rules.iter().filter(|r| Some(r.location.as_str()) == block).find_map(|r| match &r.target {
            RuleTarget::Elements { slot: s, rules, .. } if *s == slot => {
                rules.iter().rev().find(|e| e.field == field).map(|e| e.location.clone())
            }
            _ => None,
        })
    }

    fn writer_of(&self, route: &PlanRoute, field: &str) -> Option<String> {
        route.rules.iter().rev().map(|&r| &self.rules[r]).find(|r| r.target_name == field).map(|r| r.location.clone())
    }

    /// A blank string in an optional field is left out with a warning rather than rejecting the whole event: it
    /// carries no information, and OpenAI would refuse the batch over it.
    fn omit_blank_optionals(&self, state: &mut State<'_>) {
        for (slot, path) in &self.optional_leaves {
            if matches!(&state.out[*slot], Some(Out::Value(Val::Str(text))) if is_blank(text)) {
                state.out[*slot] = None;
                state.warnings.push(Warning {
                    field: path.to_string(),
                    rule: state.writer[*slot].unwrap_or_default().to_string(),
                    message: "blank value left out".to_string(),
                });
            }
        }
    }

    fn reject(
        &self,
        state: &mut State<'_>,
        reason: RejectReason,
        message: String,
        field: &str,
        rule: Option<String>,
    ) -> Rejected {
        Rejected {
            reason,
            message,
            field: Some(field.to_string()),
            rule,
            warnings: std::mem::take(&mut state.warnings),
        }
    }
}

/// Empty or only whitespace; most text starts with a visible character and is decided by it.
fn is_blank(text: &str) -> bool {
    match text.as_bytes().first() {
        None => true,
        Some(byte) if byte.is_ascii_graphic() => false,
        Some(_) => text.trim().is_empty(),
    }
}

thread_local! {
    static SPARE_KEYS: Cell<Vec<String>> = const { Cell::new(Vec::new()) };
}

/// The identity-memory keys of an event's visitor: `anon:<anonymousId>` and `user:<userId>`. Every event with
/// identity memory makes one or two; they are written into the strings of the thread's last event, given back when
/// this one is done with them, rather than into a vector and strings of their own.
struct VisitorKeys {
    strings: Vec<String>,
    len: usize,
}

impl VisitorKeys {
    fn none() -> Self {
        VisitorKeys { strings: Vec::new(), len: 0 }
    }

    fn spare() -> Self {
        VisitorKeys { strings: SPARE_KEYS.try_with(Cell::take).unwrap_or_default(), len: 0 }
    }

    fn push(&mut self, kind: &str, id: &str) {
        match self.strings.get_mut(self.len) {
            Some(key) => key.clear(),
            None => self.strings.push(String::with_capacity(kind.len() + id.len())),
        }
        let key = &mut self.strings[self.len];
        key.push_str(kind);
        key.push_str(id);
        self.len += 1;
    }
}

impl std::ops::Deref for VisitorKeys {
    type Target = [String];

    fn deref(&self) -> &[String] {
        &self.strings[..self.len]
    }
}

impl Drop for VisitorKeys {
    fn drop(&mut self) {
        let strings = std::mem::take(&mut self.strings);
        if strings.capacity() > 0 {
            let _ = SPARE_KEYS.try_with(|spare| spare.set(strings));
        }
    }
}

pub(crate) fn invalid_input(message: String) -> Outcome {
    Outcome::Rejected(Rejected {
        reason: RejectReason::InvalidInput,
        message,
        field: None,
        rule: None,
        warnings: Vec::new(),
    })
}

fn sibling_present(nodes: &[LayoutNode], name: &str, state: &State<'_>) -> bool {
    nodes.iter().any(|n| match n {
        LayoutNode::Leaf { key, slot, .. } => key == name && state.out[*slot].is_some(),
        _ => false,
    })
}

/// Integer fields get integers: 12999.0 from arithmetic is written as 12999.
fn normalise_integer(ty: Ty, value: &mut Val<'_>) {
    if ty != Ty::INTEGER {
        return;
    }
    let Val::Number(n) = value else { return };
    if let Some(f) = n.as_f64().filter(|_| !n.is_i64() && !n.is_u64()) {
        if f.fract() == 0.0 && f.abs() < 9.0e15 {
            *value = Val::from(f as i64);
        }
    }
}

/// Checks one value against its field definition: `check` ([`LeafCheck::of`] the definition) decides, and `def` is
/// read only to name what a value failed or to match it against the values listed.
/// `path` names the field in messages; it is only rendered for a value that fails.
fn check_value(
    check: &LeafCheck,
    def: &FieldDef,
    path: &dyn fmt::Display,
    value: &Val<'_>,
    now_ms: i64,
) -> Result<(), (RejectReason, String)> {
    let invalid = |message: String| Err((RejectReason::InvalidField, message));
    if !check.ty.contains(value.ty()) {
        // Numbers are shown (`got 1234.5`): an amount is never personal data and the value explains the problem.
        let got = match value {
            Val::Number(number) => number.to_string(),
            _ => value.kind().to_string(),
        };
        return invalid(format!("`{}` must be {} {}, got {}", path, article(&def.type_name), def.type_name, got));
    }
    if let Val::Str(text) = value {
        let text: &str = text;
        if check.non_empty && is_blank(text) {
            return invalid(format!("`{}` must not be empty", path));
        }
        // No text has more characters than bytes: only long text needs counting.
        if check.max_length.is_some_and(|max| text.len() > max && text.chars().count() > max) {
            return invalid(format!("`{}` is longer than {} characters", path, check.max_length.unwrap_or_default()));
        }
        if let Some(allowed) = check.listed.then_some(&def.enum_values).and_then(Option::as_ref) {
            if !allowed.iter().any(|a| a == text) {
                return invalid(format!("`{}` must be one of {}, got {:?}", path, allowed.join(", "), text));
            }
        }
        match check.format {
            Some(Format::Sha256) if !is_sha256(text) => {
                return invalid(format!("`{}` must be a SHA-256 hash (64 lowercase hex characters)", path));
            }
            Some(Format::Iso4217)
                if !(text.len() == 3
                    && text.chars().all(|c| c.is_ascii_uppercase())
                    && crate::functions::currency(text).is_some()) =>
            {
                return invalid(format!("`{}` must be an ISO 4217 currency code, got {:?}", path, text));
            }
            Some(Format::Iso3166Alpha2) if !(text.len() == 2 && text.chars().all(|c| c.is_ascii_uppercase())) => {
                return invalid(format!("`{}` must be an ISO 3166-1 alpha-2 country code, got {:?}", path, text));
            }
            Some(Format::Url) if !is_url(text) => {
                return invalid(format!("`{}` must be an absolute http(s) URL", path));
            }
            _ => {}
        }
    }
    if check.format == Some(Format::TimestampWindow) {
        if let Some(message) = value.as_i64().and_then(|ms| outside_window(ms, now_ms)) {
            return Err((RejectReason::TimestampOutOfWindow, format!("`{path}` {message}")));
        }
    }
    Ok(())
}

/// Why OpenAI would refuse an event timed `ms` at `now_ms` (more than 7 days old, or more than 10 minutes ahead);
/// `None` when it would take it. The one check of the window, for mapping and for the relay's delivery.
pub fn outside_window(ms: i64, now_ms: i64) -> Option<String> {
    if (now_ms - WINDOW_PAST_MS..=now_ms + WINDOW_FUTURE_MS).contains(&ms) {
        return None;
    }
    let text =
        |ms: i64| jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_else(|_| ms.to_string());
    Some(format!("{} is outside the accepted window (7 days before to 10 minutes after {})", text(ms), text(now_ms)))
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn is_sha256(text: &str) -> bool {
    // Every byte tested without stopping early, so that the 64 are tested side by side (the output's two hashes
    // are checked on every event).
    text.len() == 64 && text.bytes().fold(true, |hex, b| hex & (b.is_ascii_digit() | (b'a'..=b'f').contains(&b)))
}

fn is_url(text: &str) -> bool {
    plainly_http_url(text) || parsed_http_url(text)
}

/// The common case decided without the full parser: `http(s)://` and a lowercase host name, then anything without
/// whitespace. Every text it accepts the parser accepts too (WHATWG's path, query and fragment states never fail;
/// such a host needs no IDNA mapping and does not end in a number, so it is not read as IPv4); anything else goes to
/// [`parsed_http_url`].
fn plainly_http_url(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://")) else { return false };
    let host_end = rest.bytes().position(|b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(host_end);
    let host = host.as_bytes();
    // One pass over the host's bytes, label by label: every output URL of every event is checked.
    let mut label_start = 0;
    for (at, &byte) in host.iter().enumerate() {
        if byte == b'.' {
            if at == label_start || host[label_start..].starts_with(b"xn--") {
                return false;
            }
            label_start = at + 1;
        } else if !(byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-') {
            return false;
        }
    }
    let last = &host[label_start..];
    if last.first().is_none_or(|first| !first.is_ascii_lowercase()) || last.starts_with(b"xn--") {
        return false;
    }
    // `char::is_whitespace` on ASCII is these six; other text is decoded.
    if tail.is_ascii() {
        !tail.bytes().any(|b| matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r'))
    } else {
        !tail.contains(char::is_whitespace)
    }
}

fn parsed_http_url(text: &str) -> bool {
    // Read as browsers and OpenAI read it (WHATWG's parser, the `url` crate): an http(s) address with a host and
    // no credentials. Whitespace anywhere is refused, though the parser would trim or encode it.
    !text.contains(char::is_whitespace)
        && !text.contains(":///")
        && url::Url::parse(text).is_ok_and(|url| {
            matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some_and(|host| !host.is_empty())
                && url.username().is_empty()
                && url.password().is_none()
        })
}

/// The elements of an array target, built from its source by the element rules; `None` when the source does
/// not fit the target. A source that is an array gives one element per item (`source[*]`); any other value
/// gives one element.
fn build_elements<'v, 'p, O: Observer<'p>>(
    rule: &'p PlanRule,
    source: &'v Val<'v>,
    input: &'v [Option<Val<'v>>],
    state: &mut State<'_>,
    observer: &mut O,
) -> Option<Vec<Vec<Option<Val<'v>>>>>
where
    'p: 'v,
{
    let RuleTarget::Elements { each, rules, by_members, .. } = &rule.target else { return None };
    // Only untraced runs leave a block's source unbuilt; traced ones show it as the event has it.
    let by_members = by_members.as_deref().filter(|_| !O::TRACING);
    let elements: &[Val<'v>] = match (source, *each) {
        (Val::Array(items), true) => items,
        (Val::Null, _) => return None,
        (Val::Array(_), false) => {
            let message = "the source is an array: write `source[*]` to map each of its elements".to_string();
            if O::TRACING {
                observer.block_unusable(&message);
            }
            state.warnings.push(Warning { field: rule.target_name.clone(), rule: rule.location.clone(), message });
            return None;
        }
        (value, false) => std::slice::from_ref(value),
        (other, true) => {
            let message = format!("expected an array, got {}", other.kind());
            if O::TRACING {
                observer.block_unusable(&message);
            }
            state.warnings.push(Warning { field: rule.target_name.clone(), rule: rule.location.clone(), message });
            return None;
        }
    };
    let width = rules.iter().map(|r| r.field + 1).max().unwrap_or(0);
    let mut built = Vec::with_capacity(elements.len());
    for (index, element) in elements.iter().enumerate() {
        let mut fields: Vec<Option<Val<'v>>> = (0..width).map(|_| None).collect();
        for (rule_index, element_rule) in rules.iter().enumerate() {
            if O::TRACING {
                observer.element_rule_start(index, element_rule);
            }
            let result = match by_members.and_then(|members| members.get(rule_index)) {
                Some(member) => evaluate(&member.expr, &member.pipes, input, None, observer),
                None => evaluate(&element_rule.expr, &element_rule.pipes, input, Some(element), observer),
            };
            if O::TRACING {
                observer.element_rule_end(
                    index,
                    element_rule,
                    result.as_ref().map(Option::as_ref).map_err(String::as_str),
                );
            }
            match result {
                Ok(Some(value)) if !value.is_null() => fields[element_rule.field] = Some(value),
                Ok(_) => {}
                Err(message) => state.warnings.push(Warning {
                    field: element_rule.target_name.clone(),
                    rule: element_rule.location.clone(),
                    message: withhold_personal(message, element_rule.personal),
                }),
            }
        }
        if fields.iter().any(Option::is_some) {
            built.push(fields);
        }
    }
    Some(built)
}

/// Writes the present fields of `nodes` as a JSON object; an object with no present field is left out.
fn write_object(nodes: &[LayoutNode], out: &[Option<Out<'_>>], json: &mut String) -> bool {
    let start = json.len();
    json.push('{');
    let mut first = true;
    for node in nodes {
        let mark = json.len();
        let separate = |json: &mut String, quoted: &str| {
            if !first {
                json.push(',');
            }
            json.push_str(quoted);
        };
        let wrote = match node {
            LayoutNode::Leaf { slot, quoted, .. } => match &out[*slot] {
                Some(Out::Value(value)) => {
                    separate(json, quoted);
                    write_json(value, json);
                    true
                }
                _ => false,
            },
            LayoutNode::Object { children, quoted, .. } => {
                separate(json, quoted);
                write_object(children, out, json)
            }
            LayoutNode::Elements { slot, item_keys, quoted, .. } => match &out[*slot] {
                Some(Out::Elements(elements)) => {
                    separate(json, quoted);
                    json.push('[');
                    for (i, element) in elements.iter().enumerate() {
                        if i > 0 {
                            json.push(',');
                        }
                        json.push('{');
                        let mut first_field = true;
                        for (value, key) in element.iter().zip(item_keys) {
                            let Some(value) = value else { continue };
                            if !first_field {
                                json.push(',');
                            }
                            first_field = false;
                            json.push_str(key);
                            write_json(value, json);
                        }
                        json.push('}');
                    }
                    json.push(']');
                    true
                }
                _ => false,
            },
        };
        if wrote {
            first = false;
        } else {
            json.truncate(mark);
        }
    }
    if first {
        json.truncate(start);
        return false;
    }
    json.push('}');
    true
}

#[cfg(test)]
mod tests {
    use super::{is_url, parsed_http_url, plainly_http_url};

    /// The shortcut as first written, with `str`'s searches: the one-pass version must decide alike.
    fn plainly_http_url_by_splitting(text: &str) -> bool {
        let Some(rest) = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://")) else { return false };
        let host_end = rest.bytes().position(|b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
        let (host, tail) = rest.split_at(host_end);
        let label_ok = |label: &str| {
            !label.is_empty()
                && !label.starts_with("xn--")
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        host.split('.').all(label_ok)
            && host.rsplit('.').next().is_some_and(|last| last.as_bytes()[0].is_ascii_lowercase())
            && !tail.contains(char::is_whitespace)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]

        #[test]
        fn the_one_pass_shortcut_decides_as_splitting_did(
            scheme in proptest::sample::select(vec!["https://", "http://", "ftp://", ""]),
            labels in proptest::collection::vec(
                proptest::sample::select(vec!["xn--a", "shop", "b1", "1a", "a-", "-", "", "Ab", "é", "a_b"]),
                0..4,
            ),
            tail in "(:[0-9]{0,3})?([/?#@ \t\u{b}\u{a0}\u{2028}%a-zA-Z0-9é.-]{0,12})?",
        ) {
            let text = format!("{scheme}{}{tail}", labels.join("."));
            proptest::prop_assert_eq!(plainly_http_url(&text), plainly_http_url_by_splitting(&text), "{:?}", text);
        }

        /// The shortcut accepts nothing the parser refuses.
        #[test]
        fn plain_urls_are_urls_to_the_parser(
            text in "(https?://)?[a-z0-9.x-]{0,12}(:[0-9]{0,6})?([/?#@\\\\ \t%:a-zA-Z0-9é\u{1}.-]{0,16})?"
        ) {
            if plainly_http_url(&text) {
                proptest::prop_assert!(parsed_http_url(&text), "{text:?}");
            }
        }
    }

    #[test]
    fn a_url_is_an_http_address_with_a_host_and_no_credentials() {
        for url in ["https://shop.example.com/thanks", "HTTPS://Shop.Example.com/", "http://127.0.0.1:8080/x?y#z"] {
            assert!(is_url(url), "{url}");
        }
        for not in [
            "https://user:secret@shop.example.com/",
            "https://:secret@shop.example.com/",
            "https://",
            "https:///path",
            "ftp://shop.example.com/",
            "shop.example.com/thanks",
            "https://shop example.com/",
            "https://[::1/",
        ] {
            assert!(!is_url(not), "{not}");
        }
        for common in ["https://shop.example.com/thanks?oppref=x#top", "http://a-b.example/", "https://example.com"] {
            assert!(plainly_http_url(common), "{common}");
        }
    }
}
