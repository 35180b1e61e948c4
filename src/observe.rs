//! What the runtime reports while it applies a plan, for whoever wants to watch: `engine explain` records every
//! step, `apply` watches nothing. Observers are chosen at compile time (a type parameter), so the untraced path
//! ([`Untraced`]) compiles to the same code as before observers existed and pays nothing for them.

use crate::functions::Val;
use crate::plan::{ElementRule, PlanRule};
use crate::run::Out;

/// The steps of one evaluation, in order. A scalar rule reports `rule_start`, one `term` per term of its source
/// that was evaluated (a `??` stops at the first with a value), one `pipe` per function applied, and `rule_end`.
/// An element block reports `block_source`, then either `block_unusable` or, for each element and each of its
/// rules, `element_rule_start`, the rule's terms and pipes, and `element_rule_end`; then `block_end`.
pub(crate) trait Observer<'p> {
    /// Whether this observer looks at all; `false` lets the runtime skip the work of reporting.
    const TRACING: bool;
    /// Whether [`Observer::sent`] is wanted: by every tracing observer, and by one that only looks at what is sent.
    const WATCHES_SENT: bool = Self::TRACING;

    fn rule_start(&mut self, _rule: &'p PlanRule) {}
    /// Term `index` of the current source: its value (`None`: missing) or the note of a function that gave up.
    fn term(&mut self, _index: usize, _result: Result<Option<&Val<'_>>, &str>) {}
    /// Pipe `index` of the current rule, applied: its value or note.
    fn pipe(&mut self, _index: usize, _result: Result<Option<&Val<'_>>, &str>) {}
    /// The current scalar rule's final value or note.
    fn rule_end(&mut self, _rule: &'p PlanRule, _result: Result<Option<&Val<'_>>, &str>) {}
    /// An element block's source, read as a whole.
    fn block_source(&mut self, _rule: &'p PlanRule, _result: Result<Option<&Val<'_>>, &str>) {}
    /// The block's source cannot be mapped element by element, and why.
    fn block_unusable(&mut self, _why: &str) {}
    fn element_rule_start(&mut self, _element: usize, _rule: &'p ElementRule) {}
    fn element_rule_end(&mut self, _element: usize, _rule: &'p ElementRule, _result: Result<Option<&Val<'_>>, &str>) {}
    fn block_end(&mut self, _rule: &'p PlanRule) {}
    /// The output slots of an event about to be sent, exactly as they are written out.
    fn sent(&mut self, _out: &[Option<Out<'_>>]) {}
}

/// Watches nothing: the runtime as `apply` runs it.
pub(crate) struct Untraced;

impl Observer<'_> for Untraced {
    const TRACING: bool = false;
}
