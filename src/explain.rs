//! Field provenance for one event: which rule produced each output field, what it read and what each function of
//! its pipeline made of the value; why every other rule produced nothing; which rule or check dropped or rejected
//! the event. `engine explain` renders it and the relay's debugger reuses it. Synchronous and free of I/O.

use std::fmt;
use std::fmt::Write as _;
use std::ops::Deref;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::eval::withhold_personal;
use crate::functions::{write_json, write_json_string, write_number};
use crate::functions::{Pii, Val};
use crate::observe::Observer;
use crate::personal::{masked_text, MASKED};
use crate::plan::*;
use crate::run::{invalid_input, Context, DropReason, Out, Outcome, RejectReason, Routing, Warning};

/// Why one event came out as it did, field by field.
#[derive(Clone, Debug)]
pub struct Explanation<'a> {
    /// Exactly what [`Plan::apply_str`] gives for the event.
    pub outcome: Outcome,
    /// The route the event took; `None` for identify events and events no route takes.
    pub route: Option<RouteTrace<'a>>,
    /// `file:line:col` of the route table, named when it routes the event nowhere.
    pub routes_table: Option<Text<'a>>,
    /// The output fields in the schema's order, each with where its value came from. For a rejected event:
    /// what the rules produced before the check that rejected it.
    pub fields: Vec<FieldTrace<'a>>,
    /// The rules that apply to the event but produced nothing, were replaced by a later rule, or were left out,
    /// and the rules of other routes, each with why.
    pub silent: Vec<RuleTrace<'a>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RouteTrace<'a> {
    /// `"Order Completed" -> order_created (contents)`.
    pub route: Text<'a>,
    /// `file:line:col` of the route's line in the route table.
    pub location: Text<'a>,
    pub event_type: Text<'a>,
    pub shape: Text<'a>,
}

/// One output field and where its value came from.
#[derive(Clone, Debug, Serialize)]
pub struct FieldTrace<'a> {
    /// The field's path in the output: `data.amount`, `data.contents[0].id`.
    pub field: Text<'a>,
    pub value: TraceValue<'a>,
    pub origin: Origin<'a>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Origin<'a> {
    /// A rule of the mapping.
    Rule(RuleTrace<'a>),
    /// The route table: event type, data shape, custom event name.
    Route,
    /// Identity memory: an earlier event of the same visitor taught it.
    Memory,
}

/// One rule's evaluation: each step with its value, and why it produced nothing when it did not.
#[derive(Clone, Debug, Serialize)]
pub struct RuleTrace<'a> {
    /// `file:line:col` of the rule.
    pub rule: Text<'a>,
    /// The output field it writes (`data.contents[*].id` for element rules).
    pub target: Text<'a>,
    /// The `when` block the rule sits in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<Text<'a>>,
    pub steps: Vec<TraceStep<'a>>,
    /// Why the rule contributed nothing; `None` when it produced the field's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<Text<'a>>,
    /// Personal data flows through the rule: its values and notes are masked unless asked for.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub personal: bool,
}

impl RouteTrace<'_> {
    /// The same trace, owning its text.
    pub fn into_owned(self) -> RouteTrace<'static> {
        RouteTrace {
            route: self.route.into_owned(),
            location: self.location.into_owned(),
            event_type: self.event_type.into_owned(),
            shape: self.shape.into_owned(),
        }
    }
}

impl FieldTrace<'_> {
    /// The same trace, owning its text and values.
    pub fn into_owned(self) -> FieldTrace<'static> {
        let origin = match self.origin {
            Origin::Rule(rule) => Origin::Rule(rule.into_owned()),
            Origin::Route => Origin::Route,
            Origin::Memory => Origin::Memory,
        };
        FieldTrace { field: self.field.into_owned(), value: self.value.into_owned(), origin }
    }
}

impl RuleTrace<'_> {
    /// The same trace, owning its text and values.
    pub fn into_owned(self) -> RuleTrace<'static> {
        RuleTrace {
            rule: self.rule.into_owned(),
            target: self.target.into_owned(),
            scope: self.scope.map(Text::into_owned),
            steps: self.steps.into_iter().map(TraceStep::into_owned).collect(),
            why: self.why.map(Text::into_owned),
            personal: self.personal,
        }
    }
}

impl TraceStep<'_> {
    /// The same step, owning its text and value.
    pub fn into_owned(self) -> TraceStep<'static> {
        TraceStep {
            expression: self.expression.into_owned(),
            read: self.read.map(Text::into_owned),
            value: self.value.map(TraceValue::into_owned),
            note: self.note,
            personal: self.personal,
            set_by_relay: self.set_by_relay,
        }
    }
}

impl<'a> RuleTrace<'a> {
    /// A rule's trace before its steps are evaluated, with room for every step it can take.
    fn start(text: &'a RuleText, scope: Option<&'a str>, personal: bool) -> RuleTrace<'a> {
        RuleTrace {
            rule: Text::borrowed(&text.location),
            target: Text::borrowed(&text.target),
            scope: scope.map(Text::borrowed),
            steps: Vec::with_capacity(text.term_steps.len() + text.pipe_steps.len()),
            why: None,
            personal,
        }
    }

    /// The value of a rule that produced one: its last step's, since evaluation stops at the term that gave a
    /// value and each pipe's value is the next one's input.
    fn value(&self) -> TraceValue<'a> {
        self.steps.last().and_then(|step| step.value.clone()).unwrap_or(TraceValue(ValueRepr::Null))
    }
}

/// A source term or a pipe call, and what it gave.
#[derive(Clone, Debug, Serialize)]
pub struct TraceStep<'a> {
    /// As written, canonically: `revenue`, `to_unix_ms(timestamp)`, `| minor_units(currency)`.
    pub expression: Text<'a>,
    /// The event path it read, when that says more than the expression (`properties.revenue`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<Text<'a>>,
    /// `None`: nothing (a missing path, or a function that gave nothing).
    pub value: Option<TraceValue<'a>>,
    /// The note of a function that gave up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The value is personal data (before any hashing).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub personal: bool,
    /// The relay added this value to the event, and how (`the connection's address`): from the event's `_relay`
    /// notes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_by_relay: Option<String>,
}

/// The key under which the relay notes, in an event, the values it added and how (`{"context.ip": "the
/// connection's address"}`); explanations show each such value as set by the relay.
pub const RELAY_NOTES: &str = "_relay";

/// [`RELAY_NOTES`] as a key in an event's text.
const QUOTED_RELAY_NOTES: &str = "\"_relay\"";

/// A value in an explanation: what a step read or made, the value of a field. Text read from the event is borrowed
/// from the event's text instead of being copied for each step that shows it, and an object or an array is kept as
/// its JSON, not as a tree: recording values was most of what explaining cost over applying.
/// [`TraceValue::to_json`] gives it as serde_json's value; it serialises and prints as that value does.
#[derive(Clone)]
pub struct TraceValue<'a>(ValueRepr<'a>);

#[derive(Clone)]
enum ValueRepr<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Text(String),
    /// A string as it stands in the event's text (without escapes), borrowed from it.
    InEvent(&'a str),
    /// An array or an object: compact JSON, keys in order.
    Json(Box<str>),
}

impl<'a> TraceValue<'a> {
    fn text(text: String) -> TraceValue<'a> {
        TraceValue(ValueRepr::Text(text))
    }

    /// The same value, owning its text.
    pub fn into_owned(self) -> TraceValue<'static> {
        TraceValue(match self.0 {
            ValueRepr::Null => ValueRepr::Null,
            ValueRepr::Bool(b) => ValueRepr::Bool(b),
            ValueRepr::Number(n) => ValueRepr::Number(n),
            ValueRepr::Text(text) => ValueRepr::Text(text),
            ValueRepr::InEvent(text) => ValueRepr::Text(text.to_string()),
            ValueRepr::Json(json) => ValueRepr::Json(json),
        })
    }

    /// The value as serde_json's.
    pub fn to_json(&self) -> Value {
        match &self.0 {
            ValueRepr::Null => Value::Null,
            ValueRepr::Bool(b) => Value::Bool(*b),
            ValueRepr::Number(n) => Value::Number(n.clone()),
            ValueRepr::Text(_) | ValueRepr::InEvent(..) => Value::String(self.as_str().unwrap_or_default().to_string()),
            ValueRepr::Json(json) => serde_json::from_str(json).unwrap_or(Value::Null),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.0, ValueRepr::Null)
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match &self.0 {
            ValueRepr::Text(text) => Some(text),
            ValueRepr::InEvent(text) => Some(text),
            _ => None,
        }
    }

    /// How many elements an array value has.
    pub fn array_len(&self) -> Option<usize> {
        match &self.0 {
            ValueRepr::Json(json) if json.starts_with('[') => self.to_json().as_array().map(Vec::len),
            _ => None,
        }
    }

    /// The value with its content withheld, as personal data is shown: see [`crate::personal::mask`].
    fn masked(&self) -> TraceValue<'a> {
        match (&self.0, self.as_str()) {
            (ValueRepr::Null, _) => TraceValue(ValueRepr::Null),
            (_, Some(text)) => TraceValue::text(masked_text(text)),
            _ => TraceValue::text(MASKED.to_string()),
        }
    }

    /// Writes the value as compact JSON.
    fn write_json(&self, out: &mut String) {
        match &self.0 {
            ValueRepr::Null => out.push_str("null"),
            ValueRepr::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            ValueRepr::Number(n) => write_number(n, out),
            ValueRepr::Text(_) | ValueRepr::InEvent(..) => write_json_string(self.as_str().unwrap_or_default(), out),
            ValueRepr::Json(json) => out.push_str(json),
        }
    }
}

impl From<&str> for TraceValue<'_> {
    fn from(text: &str) -> Self {
        TraceValue::text(text.to_string())
    }
}

impl Serialize for TraceValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            ValueRepr::Null => serializer.serialize_unit(),
            ValueRepr::Bool(b) => serializer.serialize_bool(*b),
            ValueRepr::Number(n) => n.serialize(serializer),
            ValueRepr::Text(_) | ValueRepr::InEvent(..) => serializer.serialize_str(self.as_str().unwrap_or_default()),
            // Written from a value by `write_json`: it is JSON.
            ValueRepr::Json(json) => match serde_json::from_str::<&serde_json::value::RawValue>(json) {
                Ok(raw) => raw.serialize(serializer),
                Err(_) => serializer.serialize_unit(),
            },
        }
    }
}

/// Compact JSON, as serde_json prints the same value.
impl fmt::Display for TraceValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut json = String::new();
        self.write_json(&mut json);
        f.write_str(&json)
    }
}

impl fmt::Debug for TraceValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PartialEq for TraceValue<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.to_json() == other.to_json()
    }
}

impl PartialEq<Value> for TraceValue<'_> {
    fn eq(&self, other: &Value) -> bool {
        self.to_json() == *other
    }
}

/// Makes the explanation's values: a string that is a part of the event's text is borrowed from it, anything else
/// is copied.
struct Values<'a> {
    /// The event's text, when the explanation is of a text.
    event: Option<&'a str>,
}

impl<'a> Values<'a> {
    fn of(&self, value: &Val<'_>) -> TraceValue<'a> {
        TraceValue(match value {
            Val::Null => ValueRepr::Null,
            Val::Bool(b) => ValueRepr::Bool(*b),
            Val::Number(n) => ValueRepr::Number(n.clone()),
            Val::Str(text) => match self.place(text) {
                Some(in_event) => ValueRepr::InEvent(in_event),
                None => ValueRepr::Text(text.to_string()),
            },
            Val::Array(_) | Val::Object(_) => {
                let mut json = String::new();
                write_json(value, &mut json);
                ValueRepr::Json(json.into())
            }
        })
    }

    /// `text` as a part of the event's text, when it is one: two live allocations never overlap, so a string
    /// starting inside the event's text and ending within it is a slice of it. The event's text outlives the
    /// explanation, while `text` may be a value evaluation made and drops.
    fn place(&self, text: &str) -> Option<&'a str> {
        let event = self.event?;
        let start = (text.as_ptr() as usize).checked_sub(event.as_ptr() as usize)?;
        let end = start.checked_add(text.len())?;
        event.get(start..end)
    }
}

/// Text in an explanation: borrowed from the plan when the plan holds it (a rule's location, a step as written, the
/// path it read, why a rule produced nothing), owned when the event made it. Explaining an event then copies none
/// of the plan's text, and counts no references to it: sharing it by reference counts took an eighth of the time
/// explaining took. [`Explanation::into_owned`] gives an explanation that keeps nothing borrowed. Reads, compares,
/// prints and serialises as a `str`.
#[derive(Clone)]
pub struct Text<'a>(Repr<'a>);

#[derive(Clone)]
enum Repr<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl<'a> Text<'a> {
    const fn borrowed(text: &'a str) -> Text<'a> {
        Text(Repr::Borrowed(text))
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Borrowed(text) => text,
            Repr::Owned(text) => text,
        }
    }

    /// The same text, owned.
    pub fn into_owned(self) -> Text<'static> {
        match self.0 {
            Repr::Borrowed(text) => Text(Repr::Owned(text.to_string())),
            Repr::Owned(text) => Text(Repr::Owned(text)),
        }
    }
}

impl Default for Text<'_> {
    fn default() -> Self {
        Text(Repr::Owned(String::new()))
    }
}

impl Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text<'_> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for Text<'_> {
    fn from(text: String) -> Self {
        Text(Repr::Owned(text))
    }
}

impl From<&str> for Text<'_> {
    fn from(text: &str) -> Self {
        Text(Repr::Owned(text.to_string()))
    }
}

impl PartialEq for Text<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text<'_> {}

impl PartialEq<str> for Text<'_> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text<'_> {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Text<'_>> for str {
    fn eq(&self, other: &Text<'_>) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text<'_>> for &str {
    fn eq(&self, other: &Text<'_>) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Text<'_>> for String {
    fn eq(&self, other: &Text<'_>) -> bool {
        self == other.as_str()
    }
}

impl std::hash::Hash for Text<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Applies `plan` to `event` exactly as [`Plan::apply_str`] does (identity memory included) and explains the result.
pub fn explain<'a>(plan: &'a Plan, event: &'a str, context: &mut Context<'_>) -> Explanation<'a> {
    match plan.input.read_str(event) {
        Ok(mut input) => {
            plan.build_read_whole(&plan.routing(&input.values), &mut input);
            // Only an event the relay enriched carries notes; the text is parsed again just for those.
            let notes = event
                .contains(QUOTED_RELAY_NOTES)
                .then(|| serde_json::from_str::<Value>(event).ok())
                .flatten()
                .and_then(|mut event| event.get_mut(RELAY_NOTES).map(Value::take));
            let values = Values { event: Some(event) };
            explain_input(plan, &input.values, context, notes.as_ref().and_then(Value::as_object), values)
        }
        Err(error) => Explanation::unexplained(plan, invalid_input(error.0)),
    }
}

/// [`explain`] for an event already parsed, as [`Plan::apply`] applies it: the relay explains the events it
/// enriched without writing them out and reading them again.
pub fn explain_value<'a>(plan: &'a Plan, event: &Value, context: &mut Context<'_>) -> Explanation<'a> {
    match plan.input.read_value(event) {
        Ok(mut input) => {
            plan.build_read_whole(&plan.routing(&input.values), &mut input);
            let notes = event.get(RELAY_NOTES).and_then(Value::as_object);
            explain_input(plan, &input.values, context, notes, Values { event: None })
        }
        Err(error) => Explanation::unexplained(plan, invalid_input(error.0)),
    }
}

fn explain_input<'a>(
    plan: &'a Plan,
    input: &[Option<Val<'_>>],
    context: &mut Context<'_>,
    notes: Option<&serde_json::Map<String, Value>>,
    values: Values<'a>,
) -> Explanation<'a> {
    // One evaluation: the runtime applies the plan and reports each step to the recorder.
    let mut recorder = Recorder::new(plan, values);
    let outcome = plan.apply_input(input, context, &mut recorder);
    let Recorder { produced, silent, .. } = recorder;
    let mut explanation = Explanation { silent, ..Explanation::unexplained(plan, outcome) };
    let tracer = Tracer { plan };
    match plan.routing(input) {
        Routing::Unmapped(_) | Routing::Alias => {}
        Routing::Identify => {
            explanation.fields = tracer.fields(produced, None, None, &mut explanation.silent);
        }
        Routing::Route(index) => {
            let route = &plan.routes[index];
            explanation.route = Some(RouteTrace {
                route: Text::borrowed(&route.label),
                location: Text::borrowed(&route.location),
                event_type: Text::borrowed(&route.event_type),
                shape: Text::borrowed(&route.shape),
            });
            let sent = match &explanation.outcome {
                Outcome::Mapped(mapped) => Some(Sent { warnings: &mapped.warnings }),
                _ => None,
            };
            explanation.fields = tracer.fields(produced, Some(route), sent.as_ref(), &mut explanation.silent);
            for (rule_index, why) in &route.unselected {
                let rule = &plan.rules[*rule_index];
                explanation.silent.push(RuleTrace {
                    rule: Text::borrowed(&rule.text.location),
                    target: Text::borrowed(&rule.text.target),
                    why: Some(Text::borrowed(why)),
                    scope: rule.text.scope.as_deref().map(Text::borrowed),
                    steps: Vec::new(),
                    personal: false,
                });
            }
        }
    }
    if let Some(notes) = notes {
        note_relay_additions(&mut explanation, notes);
    }
    explanation
}

/// Marks the steps that read a value the relay added to the event (its [`RELAY_NOTES`], see the relay's `enrich`).
fn note_relay_additions(explanation: &mut Explanation, notes: &serde_json::Map<String, Value>) {
    let mark = |steps: &mut Vec<TraceStep>| {
        for step in steps {
            // A function call as source (`to_unix_ms(timestamp)`) reads the path inside it.
            let expression = step.expression.as_str();
            let inner = expression
                .split_once('(')
                .and_then(|(_, rest)| rest.strip_suffix(')'))
                .filter(|inner| !inner.contains(['(', ',', '"']));
            let path = step.read.as_deref().or(inner).unwrap_or(expression);
            if let Some(Value::String(how)) = notes.get(path) {
                step.set_by_relay = Some(how.clone());
            }
        }
    };
    for field in &mut explanation.fields {
        if let Origin::Rule(trace) = &mut field.origin {
            mark(&mut trace.steps);
        }
    }
    for trace in &mut explanation.silent {
        mark(&mut trace.steps);
    }
}

/// The runtime's warnings about an event it sent: a field the rules produced but the output lacks was left out,
/// and its warning says why.
struct Sent<'o> {
    warnings: &'o [Warning],
}

impl Sent<'_> {
    fn left_out<'p>(&self, field: &str) -> Text<'p> {
        match self.warnings.iter().find(|w| w.field == field) {
            Some(warning) => format!("left out of the output: {}", warning.message).into(),
            None => Text::borrowed("left out of the output"),
        }
    }
}

/// What the rules of the event's route produced, and what was sent, per output slot.
struct Produced<'p> {
    slots: Vec<Slot<'p>>,
    /// Per array slot a block wrote: its trace and the traces of each element's fields.
    blocks: Vec<(usize, BlockTrace<'p>)>,
}

#[derive(Default)]
struct Slot<'p> {
    /// The trace of the rule whose value the slot kept (the last rule with a value wins); it ends with the value.
    trace: Option<RuleTrace<'p>>,
    /// The value written out, when the event was mapped: what reading the event's JSON back would give, without
    /// writing and reading it.
    sent: Option<SentValue<'p>>,
}

/// What a mapped event carried in one output slot.
enum SentValue<'p> {
    Leaf(TraceValue<'p>),
    /// The array, and each element's fields by name.
    Elements {
        array: TraceValue<'p>,
        fields: Vec<Vec<(&'p str, TraceValue<'p>)>>,
    },
}

impl<'p> Produced<'p> {
    /// Keeps the output slots of a mapped event as values, read through the layout as the runtime writes them.
    fn keep_sent(&mut self, nodes: &'p [LayoutNode], out: &[Option<Out<'_>>], values: &Values<'p>) {
        for node in nodes {
            match node {
                LayoutNode::Object { children, .. } => self.keep_sent(children, out, values),
                LayoutNode::Leaf { slot, .. } => {
                    if let Some(Out::Value(value)) = &out[*slot] {
                        self.slots[*slot].sent = Some(SentValue::Leaf(values.of(value)));
                    }
                }
                LayoutNode::Elements { slot, items, .. } => {
                    if let Some(Out::Elements(elements)) = &out[*slot] {
                        let fields: Vec<Vec<(&'p str, TraceValue<'p>)>> = elements
                            .iter()
                            .map(|element| {
                                let present = element
                                    .iter()
                                    .zip(items)
                                    .filter_map(|(value, item)| Some((item.name.as_str(), values.of(value.as_ref()?))));
                                present.collect()
                            })
                            .collect();
                        let array = elements_json(&fields);
                        self.slots[*slot].sent = Some(SentValue::Elements { array, fields });
                    }
                }
            }
        }
    }
}

/// An array of objects made of named values, as JSON with each object's keys in order, as serde_json writes them.
fn elements_json<'p, N: AsRef<str>>(elements: &[Vec<(N, TraceValue<'p>)>]) -> TraceValue<'p> {
    let mut json = String::from("[");
    for (index, element) in elements.iter().enumerate() {
        if index > 0 {
            json.push(',');
        }
        let mut members: Vec<&(N, TraceValue<'_>)> = element.iter().collect();
        members.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        json.push('{');
        for (position, (name, value)) in members.into_iter().enumerate() {
            if position > 0 {
                json.push(',');
            }
            write_json_string(name.as_ref(), &mut json);
            json.push(':');
            value.write_json(&mut json);
        }
        json.push('}');
    }
    json.push(']');
    TraceValue(ValueRepr::Json(json.into()))
}

struct BlockTrace<'p> {
    trace: RuleTrace<'p>,
    /// Per output element: (element field name, field trace).
    elements: Vec<Vec<(&'p str, RuleTrace<'p>)>>,
}

struct Tracer<'p> {
    plan: &'p Plan,
}

/// The rule being evaluated, and the trace of its steps so far.
struct Current<'p> {
    trace: RuleTrace<'p>,
    expr: &'p Expr,
    pipes: &'p [BoundCall],
    text: &'p RuleText,
    personal: bool,
    /// Personal data not yet hashed by a pipe.
    tainted: bool,
    /// How many of `trace.steps` are the source's terms.
    source_steps: usize,
}

/// An element block being built: its trace, the finished elements and the fields of the element in progress.
struct Block<'p> {
    trace: RuleTrace<'p>,
    scope: Option<&'p str>,
    /// The source was usable element by element.
    usable: bool,
    elements: Vec<Vec<(&'p str, RuleTrace<'p>)>>,
    element: usize,
    fields: Vec<(&'p str, RuleTrace<'p>)>,
}

/// Records what the runtime reports while it applies the plan: each rule's steps, which rule's value each output
/// slot kept (the last rule with a value wins, as in the runtime), and the rules that produced nothing and why.
struct Recorder<'p> {
    plan: &'p Plan,
    values: Values<'p>,
    produced: Produced<'p>,
    silent: Vec<RuleTrace<'p>>,
    current: Option<Current<'p>>,
    block: Option<Block<'p>>,
}

impl<'p> Recorder<'p> {
    fn new(plan: &'p Plan, values: Values<'p>) -> Recorder<'p> {
        let slots = plan.slot_count;
        Recorder {
            plan,
            values,
            produced: Produced { slots: (0..slots).map(|_| Slot::default()).collect(), blocks: Vec::new() },
            // Most rules end up here: those of the route that produced nothing and those of other routes.
            silent: Vec::with_capacity(plan.rules.len()),
            current: None,
            block: None,
        }
    }

    fn start(
        &mut self,
        trace: RuleTrace<'p>,
        expr: &'p Expr,
        pipes: &'p [BoundCall],
        text: &'p RuleText,
        personal: bool,
    ) {
        self.current = Some(Current { trace, expr, pipes, text, personal, tainted: personal, source_steps: 0 });
    }

    /// Ends the current rule: its trace, and whether it produced a value (else the trace says why).
    fn finish(&mut self, result: Result<Option<&Val<'_>>, &str>) -> Option<(RuleTrace<'p>, bool)> {
        let Current { mut trace, source_steps, text, .. } = self.current.take()?;
        let produced = match result {
            Ok(Some(value)) if !value.is_null() => true,
            Ok(value) => {
                let (source, pipes) = trace.steps.split_at(source_steps);
                trace.why = Some(why_nothing(&text.source_why, &text.pipe_whys, source, pipes, value.is_some()));
                false
            }
            Err(note) => {
                trace.why = Some(note.to_string().into());
                false
            }
        };
        Some((trace, produced))
    }

    /// Closes the element in progress of the current block.
    fn close_element(block: &mut Block<'p>) {
        let fields = std::mem::take(&mut block.fields);
        if !fields.is_empty() {
            block.elements.push(fields);
        }
    }
}

impl<'p> Observer<'p> for Recorder<'p> {
    const TRACING: bool = true;

    fn rule_start(&mut self, rule: &'p PlanRule) {
        let trace = RuleTrace::start(&rule.text, rule.text.scope.as_deref(), rule.personal);
        self.start(trace, &rule.expr, &rule.pipes, &rule.text, rule.personal);
    }

    fn term(&mut self, index: usize, result: Result<Option<&Val<'_>>, &str>) {
        let values = &self.values;
        let Some(current) = self.current.as_mut() else { return };
        let term = match current.expr {
            Expr::Coalesce(terms) => &terms[index],
            single => single,
        };
        let (value, note) = match result {
            Ok(value) => (value.map(|value| values.of(value)), None),
            Err(note) => (None, Some(note.to_string())),
        };
        let text = current.text.term_steps.get(index);
        current.trace.steps.push(TraceStep {
            expression: text.map(|text| Text::borrowed(&text.expression)).unwrap_or_default(),
            read: text.and_then(|text| text.read.as_deref()).map(Text::borrowed),
            value,
            note,
            personal: current.personal && !matches!(term, Expr::Const(_)),
            set_by_relay: None,
        });
        current.source_steps = current.trace.steps.len();
    }

    fn pipe(&mut self, index: usize, result: Result<Option<&Val<'_>>, &str>) {
        let values = &self.values;
        let Some(current) = self.current.as_mut() else { return };
        let Some(pipe) = current.pipes.get(index) else { return };
        if matches!(pipe.function.pii, Pii::Hashes) {
            current.tainted = false;
        }
        let expression = current.text.pipe_steps.get(index).map(|step| Text::borrowed(step)).unwrap_or_default();
        let (value, note) = match result {
            Ok(value) => (value.map(|value| values.of(value)), None),
            Err(note) => (None, Some(note.to_string())),
        };
        current.trace.steps.push(TraceStep {
            expression,
            read: None,
            value,
            note,
            personal: current.tainted,
            set_by_relay: None,
        });
    }

    fn rule_end(&mut self, rule: &'p PlanRule, result: Result<Option<&Val<'_>>, &str>) {
        let Some((trace, produced)) = self.finish(result) else { return };
        let RuleTarget::Slot(slot) = &rule.target else { return };
        match produced {
            true => {
                if let Some(mut replaced) = self.produced.slots[*slot].trace.replace(trace) {
                    replaced.why = Some(format!("replaced by the rule at {}", rule.location).into());
                    self.silent.push(replaced);
                }
            }
            false => self.silent.push(trace),
        }
    }

    fn block_source(&mut self, rule: &'p PlanRule, result: Result<Option<&Val<'_>>, &str>) {
        let mut trace = RuleTrace::start(&rule.text, rule.text.scope.as_deref(), rule.personal);
        let mut usable = false;
        match result {
            Err(note) => trace.why = Some(note.to_string().into()),
            Ok(value) => {
                let text = &rule.text.source_step;
                trace.steps.push(TraceStep {
                    expression: Text::borrowed(&text.expression),
                    read: text.read.as_deref().map(Text::borrowed),
                    value: value.map(|value| self.values.of(value)),
                    note: None,
                    personal: rule.personal,
                    set_by_relay: None,
                });
                if value.is_none_or(Val::is_null) {
                    trace.why = Some(why_nothing(&rule.text.block_why, &[], &trace.steps, &[], false));
                } else {
                    usable = true;
                }
            }
        }
        let scope = rule.text.scope.as_deref();
        self.block = Some(Block { trace, scope, usable, elements: Vec::new(), element: 0, fields: Vec::new() });
    }

    fn block_unusable(&mut self, why: &str) {
        if let Some(block) = self.block.as_mut() {
            block.trace.why = Some(why.to_string().into());
            block.usable = false;
        }
    }

    fn element_rule_start(&mut self, element: usize, rule: &'p ElementRule) {
        let Some(block) = self.block.as_mut() else { return };
        if element != block.element {
            Self::close_element(block);
            block.element = element;
        }
        let trace = RuleTrace::start(&rule.text, block.scope, rule.personal);
        self.start(trace, &rule.expr, &rule.pipes, &rule.text, rule.personal);
    }

    fn element_rule_end(&mut self, element: usize, rule: &'p ElementRule, result: Result<Option<&Val<'_>>, &str>) {
        let Some((mut trace, produced)) = self.finish(result) else { return };
        let Some(block) = self.block.as_mut() else { return };
        let name = rule.target_name.rsplit('.').next().unwrap_or_default();
        match produced {
            true => {
                if let Some(position) = block.fields.iter().position(|(n, _)| *n == name) {
                    let (_, mut replaced) = block.fields.remove(position);
                    replaced.why = Some(format!("replaced by the rule at {}", rule.location).into());
                    self.silent.push(replaced);
                }
                block.fields.push((name, trace));
            }
            false => {
                trace.why = trace.why.map(|why| format!("element {element}: {why}").into());
                self.silent.push(trace);
            }
        }
    }

    fn block_end(&mut self, rule: &'p PlanRule) {
        let Some(mut block) = self.block.take() else { return };
        Self::close_element(&mut block);
        if block.usable && block.elements.is_empty() {
            block.trace.why = Some(Text::borrowed("no element produced a field"));
        }
        let RuleTarget::Elements { slot, .. } = &rule.target else { return };
        let built = BlockTrace { trace: block.trace, elements: block.elements };
        if built.elements.is_empty() {
            self.silent.push(built.trace);
        } else if let Some((_, kept)) = self.produced.blocks.iter_mut().find(|(s, _)| s == slot) {
            let mut replaced = std::mem::replace(kept, built);
            replaced.trace.why = Some(format!("replaced by the rule at {}", rule.location).into());
            self.silent.push(replaced.trace);
        } else {
            self.produced.blocks.push((*slot, built));
        }
    }

    fn sent(&mut self, out: &[Option<Out<'_>>]) {
        self.produced.keep_sent(&self.plan.output, out, &self.values);
    }
}

/// Why a rule produced nothing: its source had no value, or the first pipe that turned a value into nothing.
/// `null_result`: the rule ended with null rather than with nothing. The reasons were made with the plan: `source`
/// holds every term of the source when none gave a value, as evaluation tries each in turn.
fn why_nothing<'p>(
    source_why: &'p Why,
    pipe_whys: &'p [Why],
    source: &[TraceStep<'_>],
    pipes: &[TraceStep<'_>],
    null_result: bool,
) -> Text<'p> {
    let source_gave = source.last().is_some_and(|s| s.value.as_ref().is_some_and(|v| !v.is_null()));
    if !source_gave {
        let null = source.last().is_some_and(|s| s.value.is_some());
        return match (source.is_empty(), null) {
            (true, _) => Text::borrowed("the source gave nothing"),
            (false, true) => Text::borrowed(&source_why.null),
            (false, false) => Text::borrowed(&source_why.nothing),
        };
    }
    let gave_nothing = pipes.iter().position(|p| p.value.as_ref().is_none_or(TraceValue::is_null));
    match gave_nothing.and_then(|index| pipe_whys.get(index)) {
        Some(why) if null_result => Text::borrowed(&why.null),
        Some(why) => Text::borrowed(&why.nothing),
        None => Text::borrowed("it produced nothing"),
    }
}

impl<'p> Tracer<'p> {
    /// The output fields in the schema's order. With the mapped output at hand, values are the ones sent and a
    /// field the rules produced but the output lacks is reported as left out. Takes the traces out of `produced`.
    fn fields(
        &self,
        mut produced: Produced<'p>,
        route: Option<&'p PlanRoute>,
        sent: Option<&Sent<'_>>,
        silent: &mut Vec<RuleTrace<'p>>,
    ) -> Vec<FieldTrace<'p>> {
        let mut fields = Vec::with_capacity(self.plan.slot_count);
        self.collect(&self.plan.output, &mut produced, route, sent, silent, &mut fields);
        fields
    }

    /// What the route writes into `slot`, if it is one of the route's own slots.
    fn route_value<'r>(&self, route: Option<&'r PlanRoute>, slot: usize) -> Option<&'r str> {
        let route = route?;
        let special = &self.plan.slots;
        if slot == special.event_type {
            Some(&route.event_type)
        } else if slot == special.data_type {
            Some(&route.shape)
        } else if Some(slot) == special.custom_event_name {
            route.custom_event_name.as_deref()
        } else {
            None
        }
    }

    /// Takes the traces and values sent out of `produced`: each slot is read once.
    fn collect(
        &self,
        nodes: &'p [LayoutNode],
        produced: &mut Produced<'p>,
        route: Option<&'p PlanRoute>,
        sent_event: Option<&Sent<'_>>,
        silent: &mut Vec<RuleTrace<'p>>,
        fields: &mut Vec<FieldTrace<'p>>,
    ) {
        let mapped = sent_event.is_some();
        for node in nodes {
            match node {
                LayoutNode::Object { children, .. } => {
                    self.collect(children, produced, route, sent_event, silent, fields)
                }
                LayoutNode::Leaf { path, slot, .. } => {
                    let Slot { trace, sent } = std::mem::take(&mut produced.slots[*slot]);
                    let sent = match sent {
                        Some(SentValue::Leaf(value)) => Some(value),
                        _ => None,
                    };
                    if let Some(value) = self.route_value(route, *slot) {
                        let value = sent.unwrap_or_else(|| TraceValue::from(value));
                        fields.push(FieldTrace { field: Text::borrowed(path), value, origin: Origin::Route });
                        continue;
                    }
                    match (trace, sent) {
                        (Some(mut trace), None) if mapped => {
                            trace.why = sent_event.map(|s| s.left_out(path));
                            silent.push(trace);
                        }
                        (Some(trace), sent) => fields.push(FieldTrace {
                            field: Text::borrowed(path),
                            value: sent.unwrap_or_else(|| trace.value()),
                            origin: Origin::Rule(trace),
                        }),
                        (None, Some(value)) => {
                            fields.push(FieldTrace { field: Text::borrowed(path), value, origin: Origin::Memory })
                        }
                        (None, None) => {}
                    }
                }
                LayoutNode::Elements { path, slot, .. } => {
                    let Some(index) = produced.blocks.iter().position(|(s, _)| s == slot) else { continue };
                    let (_, block) = produced.blocks.swap_remove(index);
                    let sent = match produced.slots[*slot].sent.take() {
                        Some(SentValue::Elements { array, fields }) => Some((array, fields)),
                        _ => None,
                    };
                    if sent.is_none() {
                        if let Some(event) = sent_event {
                            let mut trace = block.trace;
                            trace.why = Some(event.left_out(path));
                            silent.push(trace);
                            continue;
                        }
                    }
                    let (array, sent_fields) = match sent {
                        Some((array, fields)) => (array, fields),
                        None => {
                            let produced: Vec<Vec<(&str, TraceValue<'_>)>> = block
                                .elements
                                .iter()
                                .map(|element| element.iter().map(|(name, trace)| (*name, trace.value())).collect())
                                .collect();
                            (elements_json(&produced), Vec::new())
                        }
                    };
                    let mut element_fields = Vec::new();
                    for (index, element) in block.elements.into_iter().enumerate() {
                        for (name, trace) in element {
                            let sent = sent_fields.get(index).and_then(|e| e.iter().find(|(n, _)| *n == name));
                            element_fields.push(FieldTrace {
                                field: element_field(path, index, name).into(),
                                value: sent.map(|(_, value)| value.clone()).unwrap_or_else(|| trace.value()),
                                origin: Origin::Rule(trace),
                            });
                        }
                    }
                    fields.push(FieldTrace {
                        field: Text::borrowed(path),
                        value: array,
                        origin: Origin::Rule(block.trace),
                    });
                    fields.extend(element_fields);
                }
            }
        }
    }
}

/// `data.contents[3].id`: a field of one output element. Written by hand, as `format!` costs about ten times as
/// much and every element field of every explained event is named.
fn element_field(array: &str, index: usize, name: &str) -> String {
    let mut field = String::with_capacity(array.len() + name.len() + 24);
    field.push_str(array);
    field.push('[');
    crate::functions::write_u64(index as u64, &mut field);
    field.push_str("].");
    field.push_str(name);
    field
}

/// `data.contents[3].id` → `data.contents[*].id`, the form element rules are named by.
fn element_pattern(field: &str) -> String {
    let mut pattern = String::with_capacity(field.len());
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => {
                in_index = true;
                pattern.push_str("[*");
            }
            ']' => {
                in_index = false;
                pattern.push(']');
            }
            _ if in_index => {}
            _ => pattern.push(c),
        }
    }
    pattern
}

impl<'a> Explanation<'a> {
    /// An outcome with nothing traced yet: an event that could not be read, or the start of an explanation.
    fn unexplained(plan: &'a Plan, outcome: Outcome) -> Explanation<'a> {
        Explanation {
            outcome,
            route: None,
            routes_table: plan.routes_location.as_deref().map(Text::borrowed),
            fields: Vec::new(),
            silent: Vec::new(),
        }
    }

    /// The explanation with nothing borrowed from the plan or the event, to keep beyond them (as the relay's
    /// debugger keeps the events it samples).
    pub fn into_owned(self) -> Explanation<'static> {
        Explanation {
            outcome: self.outcome,
            route: self.route.map(RouteTrace::into_owned),
            routes_table: self.routes_table.map(Text::into_owned),
            fields: self.fields.into_iter().map(FieldTrace::into_owned).collect(),
            silent: self.silent.into_iter().map(RuleTrace::into_owned).collect(),
        }
    }

    /// The field's trace, by its output path (`data.amount`, `data.contents[0].id`).
    pub fn field(&self, field: &str) -> Option<&FieldTrace<'a>> {
        self.fields.iter().find(|f| f.field == field)
    }

    /// `file:line:col` of the rule that produced an output field or, when the field is absent, of the rule of
    /// this event's route that was meant to produce it (the last one, as the last value wins). `None` for fields
    /// set by the route or recalled from identity memory, and for fields no rule of the route writes.
    pub fn rule_for(&self, field: &str) -> Option<&str> {
        if let Some(trace) = self.field(field) {
            return match &trace.origin {
                Origin::Rule(rule) => Some(rule.rule.as_str()),
                Origin::Route | Origin::Memory => None,
            };
        }
        let pattern = element_pattern(field);
        self.silent
            .iter()
            .rev()
            .filter(|r| !r.why.as_deref().is_some_and(|w| w.starts_with("out of scope")))
            .find(|r| r.target == field || r.target == pattern)
            .map(|r| r.rule.as_str())
    }

    /// The explanation with personal values and notes masked, as every report outside a debugging session shows it.
    pub fn masked(&self) -> Explanation<'a> {
        let mut masked = self.clone();
        masked.mask();
        masked
    }

    /// Masks personal values and notes in place: [`Explanation::masked`] for an explanation the caller owns.
    pub fn mask(&mut self) {
        let mask_rule = |rule: &mut RuleTrace| {
            for step in &mut rule.steps {
                if step.personal {
                    step.value = step.value.as_ref().map(TraceValue::masked);
                    step.note = step.note.take().map(|note| withhold_personal(note, true));
                }
            }
            if rule.personal {
                // `withhold_personal` keeps a reason without quotes as it is: only the others are rewritten.
                rule.why = rule.why.take().map(|why| match why.contains('"') {
                    true => withhold_personal(why.to_string(), true).into(),
                    false => why,
                });
            }
        };
        for field in &mut self.fields {
            if let Origin::Rule(rule) = &mut field.origin {
                mask_rule(rule);
            }
        }
        self.silent.iter_mut().for_each(mask_rule);
    }

    /// The explanation for tools: one JSON object.
    pub fn to_json(&self, show_pii: bool) -> Value {
        let to_value = |explanation: &Explanation| serde_json::to_value(explanation.json(None)).unwrap_or_default();
        if show_pii {
            to_value(self)
        } else {
            to_value(&self.masked())
        }
    }

    /// [`Explanation::to_json`]'s object as it stands (unmasked: see [`Explanation::mask`]), serialised without
    /// being built, and numbered `event` when given. Its members come in the order of their names, as in
    /// `to_json`'s.
    pub fn json(&self, event: Option<usize>) -> impl Serialize + '_ {
        ExplanationJson { explanation: self, event }
    }

    fn unmapped(&self) -> bool {
        matches!(&self.outcome, Outcome::Dropped(d) if d.reason == DropReason::Unmapped)
    }

    /// The explanation for people: a tree, personal values masked unless `show_pii`.
    pub fn render_text(&self, show_pii: bool) -> String {
        let mut out = String::new();
        let _ = match show_pii {
            true => self.write_text(&mut out),
            false => self.masked().write_text(&mut out),
        };
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        match &self.outcome {
            Outcome::Mapped(mapped) => writeln!(out, "mapped: {}", mapped.event_type)?,
            Outcome::Dropped(dropped) => {
                let reason = serde_json::to_value(dropped.reason).unwrap_or_default();
                writeln!(out, "dropped ({}): {}", reason.as_str().unwrap_or_default(), dropped.message)?;
                if self.unmapped() {
                    match &self.routes_table {
                        Some(table) => writeln!(out, "  decided by the route table at {table}")?,
                        None => writeln!(out, "  decided by the mapping: it has no route table")?,
                    }
                }
            }
            Outcome::Rejected(rejected) => {
                let reason = serde_json::to_value(rejected.reason).unwrap_or_default();
                writeln!(out, "rejected ({}): {}", reason.as_str().unwrap_or_default(), rejected.message)?;
                let missing = rejected.reason == RejectReason::MissingRequiredField;
                match (&rejected.field, &rejected.rule) {
                    (Some(field), Some(rule)) if missing => {
                        writeln!(out, "  decided by the check of `{field}`; the rule meant to produce it is {rule}")?
                    }
                    (Some(field), Some(rule)) => {
                        writeln!(out, "  decided by the check of `{field}`, written by {rule}")?
                    }
                    (Some(field), None) => writeln!(out, "  decided by the check of `{field}`")?,
                    _ => {}
                }
            }
        }
        if let Some(route) = &self.route {
            writeln!(out, "route: {}  ({})", route.route, route.location)?;
        }
        if !self.fields.is_empty() {
            let heading = match &self.outcome {
                Outcome::Mapped(_) => "fields",
                Outcome::Rejected(_) => "fields, as produced before the rejection",
                Outcome::Dropped(_) => "fields read for identity memory",
            };
            writeln!(out, "{heading}")?;
            let count = self.fields.len();
            for (i, field) in self.fields.iter().enumerate() {
                let last = i + 1 == count;
                let (branch, indent) = if last { ("└─ ", "   ") } else { ("├─ ", "│  ") };
                let value = match field.value.array_len() {
                    Some(n) => format!("{n} element{}", if n == 1 { "" } else { "s" }),
                    None => short(&field.value),
                };
                match &field.origin {
                    Origin::Route => writeln!(out, "{branch}{} = {value}  ← the route", field.field)?,
                    Origin::Memory => writeln!(
                        out,
                        "{branch}{} = {value}  ← identity memory (an earlier event of this visitor)",
                        field.field
                    )?,
                    Origin::Rule(rule) => {
                        writeln!(out, "{branch}{} = {value}  ← {}", field.field, rule_label(rule))?;
                        write_steps(out, indent, &rule.steps)?;
                    }
                }
            }
        }
        let silent: Vec<&RuleTrace> = self.silent.iter().collect();
        if !silent.is_empty() {
            writeln!(out, "rules that produced nothing")?;
            for (i, rule) in silent.iter().enumerate() {
                let last = i + 1 == silent.len();
                let (branch, indent) = if last { ("└─ ", "   ") } else { ("├─ ", "│  ") };
                writeln!(
                    out,
                    "{branch}{}  ← {}: {}",
                    rule.target,
                    rule_label(rule),
                    rule.why.as_deref().unwrap_or("")
                )?;
                write_steps(out, indent, &rule.steps)?;
            }
        }
        Ok(())
    }
}

struct ExplanationJson<'e> {
    explanation: &'e Explanation<'e>,
    event: Option<usize>,
}

impl Serialize for ExplanationJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let explanation = self.explanation;
        let mut map = serializer.serialize_map(None)?;
        if explanation.unmapped() {
            map.serialize_entry("decided_by", &explanation.routes_table)?;
        }
        if let Some(event) = self.event {
            map.serialize_entry("event", &event)?;
        }
        map.serialize_entry("fields", &explanation.fields)?;
        map.serialize_entry("outcome", &OutcomeJson(&explanation.outcome))?;
        map.serialize_entry("route", &explanation.route)?;
        map.serialize_entry("silent", &explanation.silent)?;
        map.end()
    }
}

/// An outcome in an explanation's JSON: what [`Plan::apply_str`] gave, with the event sent as an object.
struct OutcomeJson<'e>(&'e Outcome);

impl Serialize for OutcomeJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self.0 {
            Outcome::Mapped(mapped) => {
                // The runtime wrote this text: it is JSON, shown as it was sent.
                let event: Option<&serde_json::value::RawValue> = serde_json::from_str(&mapped.json).ok();
                map.serialize_entry("event", &event)?;
                map.serialize_entry("event_type", &*mapped.event_type)?;
                map.serialize_entry("outcome", "mapped")?;
                map.serialize_entry("warnings", &mapped.warnings)?;
            }
            Outcome::Dropped(dropped) => {
                map.serialize_entry("message", &dropped.message)?;
                map.serialize_entry("outcome", "dropped")?;
                map.serialize_entry("reason", &dropped.reason)?;
            }
            Outcome::Rejected(rejected) => {
                if let Some(field) = &rejected.field {
                    map.serialize_entry("field", field)?;
                }
                map.serialize_entry("message", &rejected.message)?;
                map.serialize_entry("outcome", "rejected")?;
                map.serialize_entry("reason", &rejected.reason)?;
                if let Some(rule) = &rejected.rule {
                    map.serialize_entry("rule", rule)?;
                }
                if !rejected.warnings.is_empty() {
                    map.serialize_entry("warnings", &rejected.warnings)?;
                }
            }
        }
        map.end()
    }
}

fn rule_label(rule: &RuleTrace) -> String {
    match &rule.scope {
        Some(scope) => format!("{} ({scope})", rule.rule),
        None => rule.rule.to_string(),
    }
}

fn write_steps(out: &mut String, indent: &str, steps: &[TraceStep]) -> std::fmt::Result {
    for (i, step) in steps.iter().enumerate() {
        let branch = if i + 1 == steps.len() { "└─ " } else { "├─ " };
        let read = step.read.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
        let result = match (&step.value, &step.note) {
            (_, Some(note)) => format!("gave up: {note}"),
            (Some(value), None) => format!("= {}", short(value)),
            (None, None) if step.expression.starts_with('|') => "gave nothing".to_string(),
            (None, None) => "not in the event".to_string(),
        };
        let relay = step.set_by_relay.as_ref().map(|how| format!("  [set by the relay: {how}]")).unwrap_or_default();
        writeln!(out, "{indent}{branch}{}{read} {result}{relay}", step.expression)?;
    }
    Ok(())
}

/// A value on one line, cut short when long (the JSON output has it whole).
fn short(value: &TraceValue) -> String {
    const MAX: usize = 100;
    let text = value.to_string();
    if text.chars().count() <= MAX {
        return text;
    }
    let cut: String = text.chars().take(MAX).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let keys = vec!["a", "b", "id", "name", "é", "quantity", "\"q\"", "k\u{1}"];
        let key = prop::sample::select(keys).prop_map(str::to_string).boxed();
        crate::testing::json_value(key, "[a-z\"\\\\/\u{0}-\u{1f}é😀]{0,6}")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// However a value is kept (text, a place in the event, JSON), it reads, prints, serialises and masks as
        /// serde_json's value does, which is what explanations showed before values were kept that way.
        #[test]
        fn a_trace_value_is_the_value_it_was_made_from(value in json_value()) {
            let text = serde_json::to_string(&value).unwrap();
            let read = crate::input::scan_value(&text).expect("the fast reader reads JSON it wrote");
            let values = Values { event: Some(text.as_str()) };
            let kept = values.of(&read);
            prop_assert_eq!(kept.to_json(), value.clone());
            prop_assert_eq!(kept.to_string(), text.clone());
            prop_assert_eq!(serde_json::to_string(&kept).unwrap(), text.clone());
            prop_assert_eq!(serde_json::to_value(&kept).unwrap(), value.clone());
            prop_assert_eq!(kept.masked().to_json(), crate::personal::mask(&value));
            prop_assert_eq!(kept.array_len(), value.as_array().map(Vec::len));
            // Outside the event: copied, the same value.
            let apart = Values { event: None }.of(&Val::from_json(&value));
            prop_assert_eq!(apart.to_json(), value);
        }
    }

    #[test]
    fn strings_of_the_event_are_kept_by_their_place_in_it() {
        let event = r#"{"a":"plain","b":"esc\"aped"}"#;
        let values = Values { event: Some(event) };
        let plain = values.of(&Val::Str(std::borrow::Cow::Borrowed(&event[6..11])));
        assert!(matches!(&plain.0, ValueRepr::InEvent(text) if std::ptr::eq(*text, &event[6..11])), "{plain:?}");
        assert_eq!(plain.as_str(), Some("plain"));
        // An unescaped string is the reader's own text, not a part of the event's.
        let unescaped = values.of(&Val::Str(std::borrow::Cow::Owned("esc\"aped".to_string())));
        assert!(matches!(&unescaped.0, ValueRepr::Text(text) if text == "esc\"aped"));
        let elsewhere = values.of(&Val::Str(std::borrow::Cow::Borrowed("plain")));
        assert!(matches!(&elsewhere.0, ValueRepr::Text(_)), "a string outside the event is copied");
    }

    #[test]
    fn element_fields_are_named_as_format_names_them() {
        for index in [0, 1, 9, 10, 99, 100, 123_456, usize::MAX] {
            assert_eq!(element_field("data.contents", index, "id"), format!("data.contents[{index}].id"));
        }
        assert_eq!(element_pattern(&element_field("data.contents", 42, "quantity")), "data.contents[*].quantity");
    }
}
