//! Consent: whether the event's `context.consent` grants a category, across the shapes that collectors and
//! consent tools write it in.

use std::borrow::Cow;

use serde_json::Value;

use super::{arg, constant, kind, lookup, present, Arg, Category, Example, Function, Outcome, Param, Pii, Ty, Val};

/// An object's entries.
type Entries<'v, 'a> = &'v [(Cow<'a, str>, Val<'a>)];

/// Where the collector lists granted categories in its own fixed vocabulary.
const CANONICAL: &str = "canonical";
/// Where the consent tool lists granted categories in its own codes (OneTrust's `C0004`, Cookiebot's
/// `marketing`).
const CATEGORIES: &str = "categories";
/// Where Segment's consent spec keeps one boolean per category.
const CATEGORY_PREFERENCES: &str = "categoryPreferences";

pub(super) const CONSENT: Function = Function {
    name: "consent",
    category: Category::Consent,
    summary: "Whether the event's consent grants a category; absent or unreadable consent counts as not granted.",
    doc: r#"
        Called as a source, without a piped input: `consent($consent_category)` reads the event's
        `context.consent`. The category is trimmed and matched without regard to case against every form of
        consent that collectors and consent tools write:
        - a boolean per category at the top level: `{"marketing": true}`;
        - Segment's `categoryPreferences`, an object of booleans: `{"categoryPreferences": {"Advertising":
          true}}`;
        - lists of granted categories under `canonical` (the collector's vocabulary) and `categories` (the
          consent tool's codes, such as OneTrust's `C0004`): `{"categories": ["C0002", "C0004"]}`; either
          may also be an object of booleans.

        The category is granted when some form grants it and none refuses it: a `false` anywhere outweighs a
        grant elsewhere, since sending without consent is the costlier mistake. Flags that are not booleans
        (`"true"`, `1`) count for nothing.

        It always returns a boolean, never nothing: absent, null or unreadable consent, and a missing, empty
        or non-string category, all count as not granted (`false`), because an omitted consent field
        downstream could be read as "not asked". A literal category must not be empty.
    "#,
    input: Ty::OBJECT,
    params: &[Param {
        name: "category",
        ty: Ty::STRING,
        optional: false,
        constant: false,
        doc: "The category to check, matched without regard to case: a name such as \"marketing\" or a \
              consent tool's code such as \"C0004\".",
    }],
    variadic: false,
    output: Ty::BOOL,
    pii: Pii::Keeps,
    source_input: Some("context.consent"),
    examples: &[
        Example { input: Some("{\"marketing\": true}"), args: &["\"marketing\""], output: Some("true") },
        Example { input: Some("{\"Marketing\": false}"), args: &["\"marketing\""], output: Some("false") },
        Example {
            input: Some("{\"canonical\": [\"essential\", \"marketing\"]}"),
            args: &["\"marketing\""],
            output: Some("true"),
        },
        Example { input: Some("{\"categories\": [\"C0002\", \"C0004\"]}"), args: &["\"c0004\""], output: Some("true") },
        Example {
            input: Some("{\"marketing\": false, \"categories\": [\"marketing\"]}"),
            args: &["\"marketing\""],
            output: Some("false"),
        },
        Example {
            input: Some("{\"categoryPreferences\": {\"Advertising\": true}}"),
            args: &["\"advertising\""],
            output: Some("true"),
        },
        Example { input: Some("{\"canonical\": [\"essential\"]}"), args: &["\"marketing\""], output: Some("false") },
        Example { input: Some("{\"marketing\": \"true\"}"), args: &["\"marketing\""], output: Some("false") },
        Example { input: Some("null"), args: &["\"marketing\""], output: Some("false") },
        Example { input: None, args: &["\"marketing\""], output: Some("false") },
    ],
    check_constants: Some(check_category),
    eval: consent,
};

fn consent<'a>(input: Option<Val<'a>>, args: &[Arg<'a>]) -> Outcome<'a> {
    // Consent never yields nothing: an omitted consent field downstream could be read as "not asked", which
    // is not the same as "not granted".
    let granted = match (present(input), arg(args, 0)) {
        (Some(Val::Object(consent)), Some(Val::Str(category))) => granted(&consent, category.trim()),
        _ => false,
    };
    Ok(Some(Val::Bool(granted)))
}

fn granted(consent: Entries<'_, '_>, category: &str) -> bool {
    if category.is_empty() {
        return false;
    }
    let (mut refused, mut grant) = (false, false);
    let mut decide = |decision: Option<bool>| match decision {
        Some(false) => refused = true,
        Some(true) => grant = true,
        None => {}
    };
    decide(flag(consent, category));
    if let Some(Val::Object(preferences)) = lookup(consent, CATEGORY_PREFERENCES) {
        decide(flag(preferences, category));
    }
    for list in [CANONICAL, CATEGORIES].into_iter().filter_map(|key| lookup(consent, key)) {
        match list {
            Val::Array(items) if items.iter().filter_map(Val::as_str).any(|item| names(item, category)) => {
                decide(Some(true));
            }
            Val::Object(flags) => decide(flag(flags, category)),
            _ => {}
        }
    }
    // A refusal recorded in any form outweighs a grant recorded in another: sending without consent is the
    // costlier mistake.
    !refused && grant
}

/// The boolean a map records for a category, if any. Keys that differ only in case can both be present; then
/// any refusal wins, since sending data without consent is the costlier mistake.
fn flag(map: Entries<'_, '_>, category: &str) -> Option<bool> {
    let mut decision = None;
    for (key, value) in map {
        if let Val::Bool(granted) = value {
            if names(key, category) {
                if !granted {
                    return Some(false);
                }
                decision = Some(true);
            }
        }
    }
    decision
}

/// Whether `name` (a key or a listed item) names `category` (trimmed): the same but for case and the whitespace
/// around it. Most keys of a consent object name other categories, and a first letter tells those apart without
/// trimming or comparing: where both first characters are ASCII and the name's is not whitespace, they must match.
fn names(name: &str, category: &str) -> bool {
    match (name.as_bytes().first(), category.as_bytes().first()) {
        (Some(n), Some(c)) if n.is_ascii_alphanumeric() && c.is_ascii() && !n.eq_ignore_ascii_case(c) => false,
        _ => same(name.trim(), category),
    }
}

/// Whether two names are the same but for case.
fn same(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        // What the general comparison below gives for ASCII, where lowering maps one letter to one letter.
        return a.eq_ignore_ascii_case(b);
    }
    a.chars().flat_map(char::to_lowercase).eq(b.chars().flat_map(char::to_lowercase))
}

fn check_category(args: &[Option<&Value>]) -> Result<(), (usize, String)> {
    match constant(args, 0) {
        Some(Value::String(category)) if category.trim().is_empty() => {
            Err((0, "the consent category is empty".to_string()))
        }
        Some(Value::String(_)) | None => Ok(()),
        Some(other) => Err((0, format!("expected a consent category, got {}", kind(other)))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::eval_json;
    use super::*;

    fn check(consent: Value, category: &str) -> bool {
        match eval_json(&CONSENT, Some(consent.clone()), &[Some(json!(category))]) {
            Ok(Some(Value::Bool(b))) => b,
            other => panic!("{consent} {category} gave {other:?}"),
        }
    }

    #[test]
    fn booleans_per_category() {
        assert!(check(json!({"marketing": true}), "marketing"));
        assert!(check(json!({"marketing": true}), "MARKETING"));
        assert!(check(json!({"Marketing": true}), " marketing "));
        assert!(!check(json!({"marketing": false}), "marketing"));
        assert!(!check(json!({"analytics": true}), "marketing"));
        assert!(!check(json!({"marketing": "true"}), "marketing"));
        assert!(!check(json!({"marketing": 1}), "marketing"));
        assert!(!check(json!({"marketing": true, "MARKETING": false}), "Marketing"));
    }

    #[test]
    fn canonical_vocabulary() {
        let consent = json!({"canonical": ["essential", "Marketing"]});
        assert!(check(consent.clone(), "marketing"));
        assert!(check(consent.clone(), "ESSENTIAL"));
        assert!(!check(consent, "analytics"));
        assert!(check(json!({"canonical": {"marketing": true}}), "marketing"));
        assert!(!check(json!({"canonical": {"marketing": false}}), "marketing"));
        assert!(!check(json!({"canonical": [1, null, ["marketing"]]}), "marketing"));
        assert!(!check(json!({"canonical": "marketing"}), "marketing"));
    }

    #[test]
    fn consent_tool_codes() {
        let consent = json!({"categories": ["C0001", "C0002", "statistics"]});
        assert!(check(consent.clone(), "c0002"));
        assert!(check(consent.clone(), "Statistics"));
        assert!(!check(consent, "C0004"));
        assert!(check(json!({"categories": {"C0004": true}}), "c0004"));
        assert!(!check(json!({"categories": {"C0004": false}}), "C0004"));
    }

    #[test]
    fn forms_combine() {
        // An explicit boolean decides over the lists.
        assert!(!check(json!({"marketing": false, "canonical": ["marketing"]}), "marketing"));
        assert!(check(json!({"marketing": true, "canonical": []}), "marketing"));
        // Either list grants.
        assert!(check(json!({"canonical": ["essential"], "categories": ["marketing"]}), "marketing"));
        assert!(check(json!({"canonical": ["marketing"], "categories": ["C0002"]}), "marketing"));
        assert!(check(json!({"canonical": ["marketing"], "categories": ["C0002"]}), "C0002"));
        // A refusal in one list's flags outweighs the other list.
        assert!(!check(json!({"canonical": {"marketing": false}, "categories": ["marketing"]}), "marketing"));
        // Segment's consent object.
        assert!(check(json!({"categoryPreferences": {"Advertising": true}}), "advertising"));
        assert!(!check(
            json!({"categoryPreferences": {"Advertising": false}, "canonical": ["advertising"]}),
            "advertising"
        ));
    }

    #[test]
    fn absent_consent_is_not_granted() {
        let marketing = [Some(json!("marketing"))];
        assert_eq!(eval_json(&CONSENT, None, &marketing), Ok(Some(json!(false))));
        for input in [json!(null), json!(true), json!("marketing"), json!(["marketing"]), json!(1), json!({})] {
            assert_eq!(eval_json(&CONSENT, Some(input), &marketing), Ok(Some(json!(false))));
        }
        let consent = json!({"marketing": true});
        assert_eq!(eval_json(&CONSENT, Some(consent.clone()), &[None]), Ok(Some(json!(false))));
        assert_eq!(eval_json(&CONSENT, Some(consent.clone()), &[]), Ok(Some(json!(false))));
        assert!(!check(consent.clone(), ""));
        for category in [json!(true), json!(1), json!(["marketing"]), json!({"marketing": true})] {
            assert_eq!(eval_json(&CONSENT, Some(consent.clone()), &[Some(category)]), Ok(Some(json!(false))));
        }
    }

    #[test]
    fn names_are_told_apart_as_the_full_comparison_does() {
        // The Kelvin sign lowers to an ASCII `k`: a first character that is not ASCII is compared in full.
        assert!(names("\u{212A}elvin", "kelvin") && names("kelvin", "\u{212A}ELVIN"));
        assert!(names(" Marketing\t", "marketing") && !names("analytics", "marketing"));
    }

    proptest::proptest! {
        #[test]
        fn the_first_letter_shortcut_agrees_with_trimming_and_comparing(
            name in "[ \t]?[a-zA-Z0-9\u{212A}\u{130}é ]{0,4}[ \t]?",
            category in "[a-zA-Z0-9\u{212A}\u{130}é]{1,4}",
        ) {
            proptest::prop_assert_eq!(names(&name, &category), same(name.trim(), &category));
        }
    }

    #[test]
    fn categories_are_checked() {
        assert!(check_category(&[Some(&json!("marketing"))]).is_ok());
        assert!(check_category(&[None]).is_ok());
        assert!(check_category(&[Some(&json!(" "))]).is_err());
        assert!(check_category(&[Some(&json!(4))]).is_err());
    }
}
