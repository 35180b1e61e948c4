//! The compiled transform plan: what the compiler produces and the runtime executes. Paths are resolved to
//! input slots, functions are bound, targets are resolved to output slots laid out in the order OpenAI's schema
//! lists them, and each route knows exactly which rules apply to it. Nothing here refers back to the syntax tree.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::Value;

use crate::functions::{Function, Ty};
use crate::input::InputLayout;
pub(crate) use crate::input::Step;
use crate::schema::{FieldDef, Format, TargetSchema};

/// A compiled mapping, ready to apply to any number of events. Cheap to share between threads.
#[derive(Debug)]
pub struct Plan {
    pub(crate) target: &'static TargetSchema,
    pub(crate) input: InputLayout,
    pub(crate) router: Router,
    pub(crate) routes: Vec<PlanRoute>,
    pub(crate) rules: Vec<PlanRule>,
    /// Rules evaluated for identify events: those that produce remembered fields, and the timestamp.
    pub(crate) identity_rules: Vec<usize>,
    /// Input slots the identity rules read whole that the fast reader may leave unbuilt.
    pub(crate) identity_containers: Vec<usize>,
    pub(crate) remembered: Vec<Remembered>,
    pub(crate) output: Vec<LayoutNode>,
    /// The optional scalar fields of `output`, in its order, as (slot, path): blank text in them is left out. Read
    /// for every event, so kept apart from the layout's large nodes, which it would otherwise walk.
    pub(crate) optional_leaves: Vec<(usize, Arc<str>)>,
    /// `file:line:col` of the route table, to name it when it routes an event nowhere.
    pub(crate) routes_location: Option<Arc<str>>,
    pub(crate) slot_count: usize,
    pub(crate) slots: SpecialSlots,
    /// The output slots match quality reads ([`crate::quality::QualityWatch`]).
    pub(crate) quality_slots: crate::quality::QualitySlots,
}

/// Output slots the runtime itself reads or fills.
#[derive(Debug, Default)]
pub(crate) struct SpecialSlots {
    pub event_type: usize,
    pub custom_event_name: Option<usize>,
    pub data_type: usize,
    pub timestamp_ms: Option<usize>,
    /// The event's `id`, which a caller storing the event reads back from [`crate::run::Mapped`].
    pub id: Option<usize>,
}

/// Which route a Signal event takes.
#[derive(Debug, Default)]
pub(crate) struct Router {
    pub named: HashMap<String, usize>,
    pub page: Option<usize>,
    pub screen: Option<usize>,
    pub any_track: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct PlanRoute {
    // The texts are shared with every explanation of an event the route takes.
    /// `"Order Completed" -> order_created`, for reports.
    pub label: Arc<str>,
    /// `file:line:col` of the route's own line in the route table.
    pub location: Arc<str>,
    pub event_type: Arc<str>,
    pub shape: Arc<str>,
    pub custom_event_name: Option<String>,
    /// Rules that apply, in file order; a later rule's value replaces an earlier one's.
    pub rules: Vec<usize>,
    /// Output slots that must be present, with their field names.
    pub required: Vec<Requirement>,
    /// Input slots the route's rules read whole that the fast reader may leave unbuilt.
    pub containers: Vec<usize>,
    /// The same for an untraced run, where blocks read their source's members ([`MemberRule`]).
    pub containers_untraced: Vec<usize>,
    /// Sources an untraced run reads only by members, left unbuilt: marked as objects, which they are.
    pub read_by_members: Vec<usize>,
    /// The rules of other routes, each with why an explanation says this route leaves it out.
    pub unselected: Vec<(usize, Arc<str>)>,
}

#[derive(Debug)]
pub(crate) struct Requirement {
    pub slot: usize,
    pub field: String,
    /// Required only when another slot holds this string (`source_url` when `action_source` is `web`).
    pub when: Option<(usize, String)>,
}

#[derive(Debug)]
pub(crate) struct Remembered {
    pub slot: usize,
    pub field: String,
    pub lifetime_ms: Option<i64>,
    /// The output field's definition, which a value must pass to be remembered; set once the layout is made.
    pub def: Option<FieldDef>,
}

#[derive(Debug)]
pub(crate) struct PlanRule {
    pub target: RuleTarget,
    pub target_name: String,
    pub expr: Expr,
    pub pipes: Vec<BoundCall>,
    /// `file:line:col`, for warnings and rejections.
    pub location: String,
    /// Personal data flows through the rule: its warnings name the function, never the value.
    pub personal: bool,
    /// Boxed: applying never reads it, and the rules stay small enough that the ones an event runs share fewer
    /// cache lines.
    pub text: Box<RuleText>,
}

/// A rule as the analyst wrote it, for explanations: nothing on the hot path reads it. Each text an explanation
/// shows is made once, when the plan is finished ([`RuleText::finish`]), and shared: explaining an event copies
/// none of it.
#[derive(Debug, Default)]
pub(crate) struct RuleText {
    /// Each `??` term of the source, in the canonical form; one entry for a source without `??`.
    pub terms: Vec<Arc<str>>,
    /// Each pipe call, canonical: `minor_units(currency)`.
    pub pipes: Vec<String>,
    /// The `when` block the rule sits in (`when order_created, "Lead Generated"`), if any.
    pub scope: Option<Arc<str>>,
    /// `file:line:col`.
    pub location: Arc<str>,
    /// The output field, as the rule names it.
    pub target: Arc<str>,
    /// One step per term of the compiled source (a source without `??` is one term).
    pub term_steps: Vec<StepText>,
    /// One step per bound pipe: `| minor_units(currency)`.
    pub pipe_steps: Vec<Arc<str>>,
    /// The whole source as one step, as an element block shows its source.
    pub source_step: StepText,
    /// Why the rule produced nothing when its source gave nothing (or null).
    pub source_why: Why,
    /// The same for an element block, whose source is one step.
    pub block_why: Why,
    /// Per bound pipe, why the rule produced nothing when that pipe was the first to give nothing (or null).
    pub pipe_whys: Vec<Why>,
}

/// Why a rule produced nothing, one way, as an explanation says it: when the value was missing, and when it was
/// null.
#[derive(Debug, Default)]
pub(crate) struct Why {
    pub nothing: Arc<str>,
    pub null: Arc<str>,
}

impl Why {
    /// Of a source whose steps (a term or the whole source) read these paths, or are these expressions.
    fn source(paths: &[&str]) -> Why {
        match paths {
            [path] => Why {
                nothing: format!("`{path}` is not in the event").into(),
                null: format!("`{path}` is null").into(),
            },
            _ => {
                let quoted: Vec<String> = paths.iter().map(|path| format!("`{path}`")).collect();
                let none = Arc::<str>::from(format!("none of {} has a value", quoted.join(", ")));
                Why { nothing: none.clone(), null: none }
            }
        }
    }

    /// Of a pipe step (`| minor_units(currency)`).
    fn pipe(step: &str) -> Why {
        let name = step.trim_start_matches("| ");
        let name = name.split('(').next().unwrap_or(name);
        Why { nothing: format!("`{name}` gave nothing").into(), null: format!("`{name}` gave null").into() }
    }
}

/// A step of a rule as an explanation shows it.
#[derive(Debug, Default)]
pub(crate) struct StepText {
    /// As written: `revenue`, `to_unix_ms(timestamp)`.
    pub expression: Arc<str>,
    /// The event path it reads, when that says more than the expression (`properties.revenue`).
    pub read: Option<Arc<str>>,
}

impl StepText {
    /// What the step read, as a reason names it.
    fn path(&self) -> &str {
        self.read.as_deref().unwrap_or(&self.expression)
    }
}

impl RuleText {
    /// Makes the texts explanations show, once the source's paths are resolved to input slots.
    pub(crate) fn finish(
        &mut self,
        location: &str,
        target: &str,
        expr: &Expr,
        pipes: &[BoundCall],
        input: &InputLayout,
    ) {
        self.location = location.into();
        self.target = target.into();
        let terms: &[Expr] = match expr {
            Expr::Coalesce(terms) => terms,
            single => std::slice::from_ref(single),
        };
        self.term_steps = terms
            .iter()
            .enumerate()
            .map(|(index, term)| {
                let expression = self.terms.get(index).cloned().unwrap_or_default();
                let read = term.read_path(input).filter(|path| !expression.contains(path.as_str())).map(Arc::from);
                StepText { expression, read }
            })
            .collect();
        self.pipe_steps = pipes
            .iter()
            .enumerate()
            .map(|(index, pipe)| {
                format!("| {}", self.pipes.get(index).map_or(pipe.function.name, String::as_str)).into()
            })
            .collect();
        let whole = self.terms.iter().map(|term| &**term).collect::<Vec<_>>().join(" ?? ");
        self.source_step = StepText { expression: whole.into(), read: expr.read_path(input).map(Arc::from) };
        let paths: Vec<&str> = self.term_steps.iter().map(StepText::path).collect();
        self.source_why = Why::source(&paths);
        self.block_why = Why::source(&[self.source_step.path()]);
        self.pipe_whys = self.pipe_steps.iter().map(|step| Why::pipe(step)).collect();
    }
}

#[derive(Debug)]
pub(crate) enum RuleTarget {
    /// A scalar output slot.
    Slot(usize),
    /// An array of objects: the source's elements each become one element, built by the element rules.
    Elements {
        slot: usize,
        each: bool,
        rules: Vec<ElementRule>,
        /// The element rules again, reading the source's members from the slots the reader captured them in, when
        /// the source is one object (`properties -> data.contents[*]`) and the rules read only its members: then
        /// an untraced run need not build the object ([`MemberRule`]).
        by_members: Option<Vec<MemberRule>>,
    },
}

/// An element rule whose reads of the element (`product_id`) are reads of the event (`properties.product_id`),
/// the block's source being one object. The reader takes that object apart member by member; building it whole
/// only to look the same members up again was most of what a block over `properties` cost. Traced runs keep
/// [`ElementRule`]'s form, so that an explanation shows the source as the event has it, and the whole-dataset test
/// holds both forms to one outcome.
#[derive(Debug)]
pub(crate) struct MemberRule {
    pub expr: Expr,
    pub pipes: Vec<BoundCall>,
}

#[derive(Debug)]
pub(crate) struct ElementRule {
    /// Index into the element's fields (the layout's `items`).
    pub field: usize,
    pub target_name: String,
    pub expr: Expr,
    pub pipes: Vec<BoundCall>,
    pub location: String,
    /// Personal data flows through the rule: its warnings name the function, never the value.
    pub personal: bool,
    /// Boxed, as [`PlanRule::text`] is.
    pub text: Box<RuleText>,
}

#[derive(Debug)]
pub(crate) enum Expr {
    Const(Value),
    /// A path into the event: a captured input slot, then steps inside it.
    Input {
        slot: usize,
        rest: Vec<Step>,
    },
    /// A path into the current array element.
    Element {
        rest: Vec<Step>,
    },
    /// A function called as a source, reading its implicit input.
    Call {
        function: &'static Function,
        input: Box<Expr>,
        args: Vec<ArgExpr>,
    },
    /// The first present, non-null value.
    Coalesce(Vec<Expr>),
}

#[derive(Debug)]
pub(crate) enum ArgExpr {
    Const(Value),
    Dynamic(Expr),
}

#[derive(Debug)]
pub(crate) struct BoundCall {
    pub function: &'static Function,
    pub args: Vec<ArgExpr>,
}

/// The shape of the output event, in the schema's field order.
#[derive(Debug)]
#[repr(C)]
pub(crate) enum LayoutNode {
    // A path is shared with every explanation that names the field.
    // `quoted` is the key as written in the output (`"key":`), made once rather than escaped for every event.
    // In declaration order: what writing and validating every event read (the slot, the key as written, the
    // checks) comes first; the definition, read only to reject a value or to match it against a list, sits apart.
    Leaf {
        slot: usize,
        quoted: Box<str>,
        check: LeafCheck,
        def: Box<FieldDef>,
        key: String,
        path: Arc<str>,
    },
    Object {
        quoted: Box<str>,
        children: Vec<LayoutNode>,
    },
    Elements {
        quoted: Box<str>,
        path: Arc<str>,
        slot: usize,
        def: Box<FieldDef>,
        items: Vec<FieldDef>,
        /// Each item field's `"name":`.
        item_keys: Vec<Box<str>>,
    },
}

/// What validating a present scalar field reads of its definition, in a few bytes beside the field's slot. Each
/// event's fields were read from definitions of 256 bytes inside layout nodes of 344, most of them names and
/// documentation: several cache misses a field.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeafCheck {
    pub ty: Ty,
    pub non_empty: bool,
    pub format: Option<Format>,
    /// The definition lists the values allowed (`enum_values`).
    pub listed: bool,
    /// The definition names a sibling the field requires (`requires`).
    pub requires: bool,
    pub max_length: Option<usize>,
}

impl LeafCheck {
    pub(crate) fn of(def: &FieldDef) -> Self {
        LeafCheck {
            ty: def.ty,
            non_empty: def.non_empty,
            format: def.format,
            listed: def.enum_values.is_some(),
            requires: def.requires.is_some(),
            max_length: def.max_length,
        }
    }
}

/// The optional scalar fields of a layout, in its order, as [`Plan::optional_leaves`] holds them.
pub(crate) fn optional_leaves(nodes: &[LayoutNode], found: &mut Vec<(usize, Arc<str>)>) {
    for node in nodes {
        match node {
            LayoutNode::Object { children, .. } => optional_leaves(children, found),
            LayoutNode::Leaf { path, slot, def, .. } if !def.required && def.required_when.is_none() => {
                found.push((*slot, Arc::clone(path)))
            }
            _ => {}
        }
    }
}

/// The definition of the scalar field the layout writes from `slot`.
pub(crate) fn leaf_def(nodes: &[LayoutNode], slot: usize) -> Option<&FieldDef> {
    nodes.iter().find_map(|node| match node {
        LayoutNode::Leaf { slot: s, def, .. } if *s == slot => Some(&**def),
        LayoutNode::Object { children, .. } => leaf_def(children, slot),
        _ => None,
    })
}

/// A key as the output writes it: the JSON string and its colon.
pub(crate) fn quoted_key(name: &str) -> Box<str> {
    let mut text = String::with_capacity(name.len() + 3);
    crate::functions::write_json_string(name, &mut text);
    text.push(':');
    text.into_boxed_str()
}

impl Expr {
    /// The event path an expression reads, directly or as the input of a function called as a source.
    pub(crate) fn read_path(&self, input: &InputLayout) -> Option<String> {
        match self {
            Expr::Input { slot, rest } => {
                let mut path = input.path_of(*slot)?.to_string();
                push_steps(&mut path, rest);
                Some(path)
            }
            Expr::Element { rest } => {
                let mut path = "@".to_string();
                push_steps(&mut path, rest);
                Some(path)
            }
            Expr::Call { input: source, .. } => source.read_path(input),
            Expr::Const(_) | Expr::Coalesce(_) => None,
        }
    }

    /// The expression with each read of the current element (`@.product_id`, `product_id` in a block) replaced by
    /// what `member` makes of its steps; `None` when `member` gives nothing for one of them.
    pub(crate) fn with_element_reads(&self, member: &mut dyn FnMut(&[Step]) -> Option<Expr>) -> Option<Expr> {
        Some(match self {
            Expr::Const(value) => Expr::Const(value.clone()),
            Expr::Input { slot, rest } => Expr::Input { slot: *slot, rest: rest.clone() },
            Expr::Element { rest } => member(rest)?,
            Expr::Call { function, input, args } => Expr::Call {
                function,
                input: Box::new(input.with_element_reads(member)?),
                args: args_with_element_reads(args, member)?,
            },
            Expr::Coalesce(terms) => {
                Expr::Coalesce(terms.iter().map(|term| term.with_element_reads(member)).collect::<Option<_>>()?)
            }
        })
    }

    /// Adds the input slots the expression reads to `slots`.
    pub(crate) fn input_slots(&self, slots: &mut Vec<usize>) {
        match self {
            Expr::Const(_) | Expr::Element { .. } => {}
            Expr::Input { slot, .. } => slots.push(*slot),
            Expr::Call { input, args, .. } => {
                input.input_slots(slots);
                args_slots(args, slots);
            }
            Expr::Coalesce(terms) => terms.iter().for_each(|term| term.input_slots(slots)),
        }
    }
}

fn push_steps(path: &mut String, steps: &[Step]) {
    for step in steps {
        match step {
            Step::Key(key) => {
                path.push('.');
                path.push_str(&crate::input::keys_text(&[key]));
            }
            Step::Index(index) => {
                let _ = write!(path, "[{index}]");
            }
        }
    }
}

/// Arguments with their reads of the current element replaced, as [`Expr::with_element_reads`] does.
pub(crate) fn args_with_element_reads(
    args: &[ArgExpr],
    member: &mut dyn FnMut(&[Step]) -> Option<Expr>,
) -> Option<Vec<ArgExpr>> {
    args.iter()
        .map(|arg| match arg {
            ArgExpr::Const(value) => Some(ArgExpr::Const(value.clone())),
            ArgExpr::Dynamic(expr) => expr.with_element_reads(member).map(ArgExpr::Dynamic),
        })
        .collect()
}

fn args_slots(args: &[ArgExpr], slots: &mut Vec<usize>) {
    for arg in args {
        if let ArgExpr::Dynamic(expr) = arg {
            expr.input_slots(slots);
        }
    }
}

impl PlanRule {
    /// Adds the input slots the rule reads (its source, its pipes' arguments, its element rules) to `slots`.
    pub(crate) fn input_slots(&self, slots: &mut Vec<usize>) {
        self.expr.input_slots(slots);
        self.pipes.iter().for_each(|pipe| args_slots(&pipe.args, slots));
        if let RuleTarget::Elements { rules, .. } = &self.target {
            for rule in rules {
                rule.expr.input_slots(slots);
                rule.pipes.iter().for_each(|pipe| args_slots(&pipe.args, slots));
            }
        }
    }

    /// [`PlanRule::input_slots`] as an untraced run reads them: a block with [`MemberRule`]s reads its source only
    /// to learn whether it is there, adding it to `by_members` instead.
    pub(crate) fn input_slots_untraced(&self, slots: &mut Vec<usize>, by_members: &mut Vec<usize>) {
        let RuleTarget::Elements { by_members: Some(rules), .. } = &self.target else {
            return self.input_slots(slots);
        };
        self.expr.input_slots(by_members);
        self.pipes.iter().for_each(|pipe| args_slots(&pipe.args, slots));
        for rule in rules {
            rule.expr.input_slots(slots);
            rule.pipes.iter().for_each(|pipe| args_slots(&pipe.args, slots));
        }
    }
}

impl Plan {
    /// The target schema this plan writes.
    pub fn target_schema(&self) -> &'static TargetSchema {
        self.target
    }

    /// The OpenAI event types this plan can produce, with the Signal events routed to each.
    pub fn routes(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| &*r.label)
    }
}
