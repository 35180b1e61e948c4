//! Logic functions: negation, fallbacks for missing values, and table lookups that translate a source's
//! vocabulary into the API's.

use serde_json::Value;

use super::text::render;
use super::{
    arg, constant, kind, lookup as get, present, Arg, Category, Example, Function, Outcome, Param, Pii, Ty, Val,
};

pub(super) const NOT: Function = Function {
    name: "not",
    category: Category::Logic,
    summary: "Negates a boolean.",
    doc: r#"
        Only booleans are negated: the strings `"true"` and `"false"`, numbers and everything else give up
        with the warning `expected a boolean, got a string` (or `a number`, …). Its common use is turning
        consent into the API's opt-out: `consent($consent_category) -> opt_out | not`.

        A missing or null input yields nothing.
    "#,
    input: Ty::BOOL,
    params: &[],
    variadic: false,
    output: Ty::BOOL,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: Some("true"), args: &[], output: Some("false") },
        Example { input: Some("false"), args: &[], output: Some("true") },
        Example { input: None, args: &[], output: None },
    ],
    check_constants: None,
    eval: not,
};

pub(super) const DEFAULT: Function = Function {
    name: "default",
    category: Category::Logic,
    summary: "Uses a fallback when the input is missing or null; an empty string is a value and is kept.",
    doc: r#"
        Passes any present value through unchanged, `""`, `0`, `false` and empty arrays included; only a
        missing or null input is replaced. The fallback may be a literal, a `$parameter` or another path;
        when it is missing or null as well, the result is nothing.

        `x | default(y)` works like `x ?? y`, written as a pipe so that it can follow other functions:
        `url_param("plan") | default("basic")`. A function earlier in the pipeline that gives up with a
        warning ends the pipeline before `default` runs; to fall back past a value a function cannot use,
        put the call in a `??` chain instead: `to_number(price) ?? 0`.
    "#,
    input: Ty::ANY,
    params: &[Param {
        name: "value",
        ty: Ty::ANY,
        optional: false,
        constant: false,
        doc: "The fallback: a literal, a `$parameter` or another path into the event.",
    }],
    variadic: false,
    output: Ty::ANY,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example { input: None, args: &["\"USD\""], output: Some("\"USD\"") },
        Example { input: Some("null"), args: &["0"], output: Some("0") },
        Example { input: Some("\"EUR\""), args: &["\"USD\""], output: Some("\"EUR\"") },
        Example { input: Some("\"\""), args: &["\"USD\""], output: Some("\"\"") },
        Example { input: Some("false"), args: &["true"], output: Some("false") },
    ],
    check_constants: None,
    eval: default,
};

pub(super) const LOOKUP: Function = Function {
    name: "lookup",
    category: Category::Logic,
    summary: "Translates a value through a table, such as a source's event names into the API's event types.",
    doc: r#"
        The input is looked up by its text: strings as they are, numbers as `to_string` writes them (`2` and
        `2.0` find the key `"2"`), booleans as `"true"` and `"false"`. Keys match exactly, case and spaces
        included. The value found is returned as it is, whatever its type. In a mapping the table is written
        like a JSON object whose keys may also be bare names and whose values are literals: `lookup({ "Order
        Completed": "purchase", Signup: "sign_up" })`.

        A key the table lacks gives the fallback, or nothing without one. A missing or null input gives
        nothing, even when there is a fallback. An array or object input gives up with the warning `expected
        a lookup key, got an array` (or `an object`). The table and the fallback must be literals or
        `$parameter`s, and the table must be an object.
    "#,
    input: Ty::SCALAR,
    params: &[
        Param {
            name: "table",
            ty: Ty::OBJECT,
            optional: false,
            constant: true,
            doc: "An object from keys to results. Numbers and booleans are looked up by their text: 2 finds \
                  the key \"2\", true the key \"true\".",
        },
        Param {
            name: "fallback",
            ty: Ty::ANY,
            optional: true,
            constant: true,
            doc: "The result for a key the table lacks; without it such a key yields nothing.",
        },
    ],
    variadic: false,
    output: Ty::ANY,
    pii: Pii::Keeps,
    source_input: None,
    examples: &[
        Example {
            input: Some("\"Order Completed\""),
            args: &["{\"Order Completed\": \"purchase\", \"Signed Up\": \"sign_up\"}"],
            output: Some("\"purchase\""),
        },
        Example { input: Some("\"Page Viewed\""), args: &["{\"Order Completed\": \"purchase\"}"], output: None },
        Example {
            input: Some("\"Page Viewed\""),
            args: &["{\"Order Completed\": \"purchase\"}", "\"custom\""],
            output: Some("\"custom\""),
        },
        Example { input: Some("2"), args: &["{\"1\": \"basic\", \"2\": \"pro\"}"], output: Some("\"pro\"") },
        Example { input: Some("true"), args: &["{\"true\": 1, \"false\": 0}"], output: Some("1") },
        Example { input: None, args: &["{\"Order Completed\": \"purchase\"}", "\"custom\""], output: None },
    ],
    check_constants: Some(check_table),
    eval: lookup,
};

fn not<'a>(input: Option<Val<'a>>, _args: &[Arg<'a>]) -> Outcome<'a> {
    match present(input) {
        None => Ok(None),
        Some(Val::Bool(b)) => Ok(Some(Val::Bool(!b))),
        Some(other) => Err(format!("expected a boolean, got {}", other.kind())),
    }
}

fn default<'a>(input: Option<Val<'a>>, args: &[Arg<'a>]) -> Outcome<'a> {
    match present(input) {
        Some(value) => Ok(Some(value)),
        None => Ok(args.first().cloned().flatten()),
    }
}

fn lookup<'a>(input: Option<Val<'a>>, args: &[Arg<'a>]) -> Outcome<'a> {
    let Some(value) = present(input) else {
        return Ok(None);
    };
    let key = render(&value).ok_or_else(|| format!("expected a lookup key, got {}", value.kind()))?;
    let table = match arg(args, 0) {
        Some(Val::Object(table)) => table,
        Some(other) => return Err(format!("the lookup table is {}, not an object", other.kind())),
        None => return Ok(None),
    };
    let found = get(table, &key).or_else(|| args.get(1).and_then(Option::as_ref));
    Ok(found.cloned())
}

fn check_table(args: &[Option<&Value>]) -> Result<(), (usize, String)> {
    match constant(args, 0) {
        Some(Value::Object(_)) | None => Ok(()),
        Some(other) => Err((0, format!("the lookup table must be an object, not {}", kind(other)))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::eval_json;
    use super::*;

    fn owned(values: &[Value]) -> Vec<Option<Value>> {
        values.iter().cloned().map(Some).collect()
    }

    #[test]
    fn not_accepts_only_booleans() {
        assert_eq!(eval_json(&NOT, Some(json!(true)), &[]), Ok(Some(json!(false))));
        assert_eq!(eval_json(&NOT, Some(json!(null)), &[]), Ok(None));
        for bad in [json!("true"), json!(0), json!([]), json!({})] {
            assert!(eval_json(&NOT, Some(bad.clone()), &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_replaces_only_missing_and_null() {
        let usd = owned(&[json!("USD")]);
        assert_eq!(eval_json(&DEFAULT, None, &usd), Ok(Some(json!("USD"))));
        assert_eq!(eval_json(&DEFAULT, Some(json!(null)), &usd), Ok(Some(json!("USD"))));
        assert_eq!(eval_json(&DEFAULT, Some(json!("")), &usd), Ok(Some(json!(""))));
        assert_eq!(eval_json(&DEFAULT, Some(json!(0)), &usd), Ok(Some(json!(0))));
        assert_eq!(eval_json(&DEFAULT, Some(json!([])), &usd), Ok(Some(json!([]))));
        assert_eq!(eval_json(&DEFAULT, None, &[None]), Ok(None));
        assert_eq!(eval_json(&DEFAULT, None, &[]), Ok(None));
        let borrowed = json!({"a": 1});
        assert_eq!(eval_json(&DEFAULT, None, &[Some(borrowed.clone())]), Ok(Some(borrowed.clone())));
    }

    #[test]
    fn lookup_by_text_key() {
        let table = json!({"1": "one", "1.5": "one and a half", "true": "yes", "": "empty", "x": null});
        let call = |input: Value, fallback: Option<Value>| {
            let mut args = owned(std::slice::from_ref(&table));
            args.extend(fallback.map(Some));
            eval_json(&LOOKUP, Some(input), &args)
        };
        assert_eq!(call(json!(1), None), Ok(Some(json!("one"))));
        assert_eq!(call(json!(1.0), None), Ok(Some(json!("one"))));
        assert_eq!(call(json!("1"), None), Ok(Some(json!("one"))));
        assert_eq!(call(json!(1.5), None), Ok(Some(json!("one and a half"))));
        assert_eq!(call(json!(true), None), Ok(Some(json!("yes"))));
        assert_eq!(call(json!(""), None), Ok(Some(json!("empty"))));
        assert_eq!(call(json!("x"), Some(json!("fb"))), Ok(Some(json!(null))));
        assert_eq!(call(json!("X"), None), Ok(None));
        assert_eq!(call(json!("X"), Some(json!({"k": 1}))), Ok(Some(json!({"k": 1}))));
        assert_eq!(call(json!(null), Some(json!("fb"))), Ok(None));
        assert!(call(json!([1]), Some(json!("fb"))).is_err());
        assert!(call(json!({}), None).is_err());
        assert!(eval_json(&LOOKUP, Some(json!("a")), &owned(&[json!(["a"])])).is_err());
        assert_eq!(eval_json(&LOOKUP, Some(json!("a")), &[]), Ok(None));
    }

    #[test]
    fn lookup_tables_are_checked() {
        assert!(check_table(&[Some(&json!({}))]).is_ok());
        assert!(check_table(&[Some(&json!([]))]).is_err());
        assert!(check_table(&[Some(&json!("a")), Some(&json!(1))]).is_err());
    }
}
