//! The one evaluator: a rule's source (paths, constants, function calls, `??`) and its pipes, evaluated against an
//! event's captured input, each step reported to an [`Observer`]. It reads the input and produces values; what
//! becomes of them (output slots, validation, identity memory, the JSON written) is the runtime's (`run`).

use crate::functions::{Arg, Function, Val};
use crate::input::walk;
use crate::observe::Observer;
use crate::plan::{ArgExpr, BoundCall, Expr};

/// What an expression produced: a reference into the event where it read a path, which costs nothing to pass
/// on, or a value computed or taken from the plan.
pub(crate) enum Got<'v> {
    Ref(&'v Val<'v>),
    Owned(Val<'v>),
}

impl<'v> Got<'v> {
    pub(crate) fn is_null(&self) -> bool {
        match self {
            Got::Ref(value) => value.is_null(),
            Got::Owned(value) => value.is_null(),
        }
    }

    /// The value, borrowed.
    pub(crate) fn as_val(&self) -> &Val<'v> {
        match self {
            Got::Ref(value) => value,
            Got::Owned(value) => value,
        }
    }

    pub(crate) fn into_val(self) -> Val<'v> {
        match self {
            Got::Ref(value) => value.reborrow(),
            Got::Owned(value) => value,
        }
    }
}

/// A function's note about a value read from personal data may quote it (`to_number: expected a number, got
/// "jane@example.com"`); such notes keep only the function's name, since reports leave the process too. Notes
/// quote values in double quotes and only then; notes that describe the value (`not an email address (no @)`)
/// stay as they are.
pub(crate) fn withhold_personal(message: String, personal: bool) -> String {
    if !personal || !message.contains('"') {
        return message;
    }
    let function = message.split(':').next().unwrap_or_default();
    format!("{function}: the value could not be used (personal data, not shown)")
}

/// Evaluates a source and its pipes. `Err` carries the note of the function that gave up.
pub(crate) fn evaluate<'v, 'p, O: Observer<'p>>(
    expr: &'v Expr,
    pipes: &'v [BoundCall],
    input: &'v [Option<Val<'v>>],
    element: Option<&'v Val<'v>>,
    observer: &mut O,
) -> Result<Option<Val<'v>>, String> {
    let source = match expr {
        Expr::Coalesce(terms) if O::TRACING => coalesce(terms, input, element, &mut |index, result| {
            observer.term(index, result.map(|got| got.map(Got::as_val)));
        }),
        single => {
            let result = eval_ref(single, input, element);
            if O::TRACING {
                observer.term(0, result.as_ref().map(|got| got.as_ref().map(Got::as_val)).map_err(String::as_str));
            }
            result
        }
    };
    let mut value = source?.map(Got::into_val);
    for (index, pipe) in pipes.iter().enumerate() {
        let result = call(pipe.function, value, &pipe.args, input, element);
        if O::TRACING {
            observer.pipe(index, result.as_ref().map(Option::as_ref).map_err(String::as_str));
        }
        value = result?;
    }
    Ok(value)
}

/// Calls a function with its piped input, evaluating its arguments.
pub(crate) fn call<'v>(
    function: &'static Function,
    value: Option<Val<'v>>,
    args: &'v [ArgExpr],
    input: &'v [Option<Val<'v>>],
    element: Option<&'v Val<'v>>,
) -> Result<Option<Val<'v>>, String> {
    // Most calls have at most one argument: those are evaluated without allocating.
    let outcome = match args {
        [] => (function.eval)(value, &[]),
        [arg] => (function.eval)(value, &[eval_arg(arg, input, element)?]),
        _ => {
            let evaluated = args.iter().map(|arg| eval_arg(arg, input, element)).collect::<Result<Vec<_>, _>>()?;
            (function.eval)(value, &evaluated)
        }
    };
    outcome.map_err(|note| format!("{}: {note}", function.name))
}

/// An argument: constants as the plan holds them, sources unless missing or null.
fn eval_arg<'v>(
    arg: &'v ArgExpr,
    input: &'v [Option<Val<'v>>],
    element: Option<&'v Val<'v>>,
) -> Result<Arg<'v>, String> {
    match arg {
        ArgExpr::Const(value) => Ok(Some(Val::from_json(value))),
        ArgExpr::Dynamic(expr) => Ok(eval_ref(expr, input, element)?.map(Got::into_val).filter(|v| !v.is_null())),
    }
}

/// Reads of the event, most of what rules evaluate, are made inline where the expression is evaluated: out of line,
/// the reference they find came back through memory from a call, which took longer than finding it. Constants,
/// calls and `??` go through [`eval_computed`].
#[inline]
pub(crate) fn eval_ref<'v>(
    expr: &'v Expr,
    input: &'v [Option<Val<'v>>],
    element: Option<&'v Val<'v>>,
) -> Result<Option<Got<'v>>, String> {
    match expr {
        Expr::Input { slot, rest } => Ok(input[*slot].as_ref().and_then(|v| walk(v, rest)).map(Got::Ref)),
        Expr::Element { rest } => Ok(element.and_then(|v| walk(v, rest)).map(Got::Ref)),
        _ => eval_computed(expr, input, element),
    }
}

#[inline(never)]
fn eval_computed<'v>(
    expr: &'v Expr,
    input: &'v [Option<Val<'v>>],
    element: Option<&'v Val<'v>>,
) -> Result<Option<Got<'v>>, String> {
    Ok(match expr {
        Expr::Const(value) => Some(Got::Owned(Val::from_json(value))),
        Expr::Input { .. } | Expr::Element { .. } => return eval_ref(expr, input, element),
        Expr::Call { function, input: source, args } => {
            let value = eval_ref(source, input, element)?.map(Got::into_val);
            call(function, value, args, input, element)?.map(Got::Owned)
        }
        Expr::Coalesce(terms) => coalesce(terms, input, element, &mut |_, _| {})?,
    })
}

/// The first term with a value that is not null. A term whose function gives up counts as absent, so
/// `to_unix_ms(timestamp) ?? to_unix_ms(sentAt)` falls back past a broken timestamp; its note is reported only when
/// no later term has a value. `on_term` sees each term evaluated, in order.
fn coalesce<'v>(
    terms: &'v [Expr],
    input: &'v [Option<Val<'v>>],
    element: Option<&'v Val<'v>>,
    on_term: &mut impl FnMut(usize, Result<Option<&Got<'v>>, &str>),
) -> Result<Option<Got<'v>>, String> {
    let mut first_note = None;
    for (index, term) in terms.iter().enumerate() {
        match eval_ref(term, input, element) {
            Ok(Some(got)) if !got.is_null() => {
                on_term(index, Ok(Some(&got)));
                return Ok(Some(got));
            }
            Ok(got) => on_term(index, Ok(got.as_ref())),
            Err(note) => {
                on_term(index, Err(&note));
                first_note.get_or_insert(note);
            }
        }
    }
    match first_note {
        Some(note) => Err(note),
        None => Ok(None),
    }
}
