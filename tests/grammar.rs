//! The grammar: what parses, what the canonical form of the syntax tree is, and that parsing is stable
//! under printing (print then parse gives the same tree).

use signal_engine::ast::FileId;
use signal_engine::syntax;

fn canonical(text: &str) -> String {
    match syntax::parse(FileId(0), text) {
        Ok(mapping) => mapping.to_string(),
        Err(errors) => panic!("{text:?} does not parse: {errors:?}"),
    }
}

#[test]
fn every_construct_parses_to_its_canonical_form() {
    let text = r#"
target openai_ads   # the schema
param consent_category: string = "marketing"
param factor: number = 100
include "common.map"
routes {
  page -> page_viewed (contents)
  "Order Completed" -> order_created
  "Button Clicked" -> custom("button_clicked")
  track -> custom("other")
}
remember user.email, oppref for 30d
revenue -> data.amount | multiply(100)
revenue ?? value ?? properties."Total Value" -> data.amount | minor_units(currency)
consent($consent_category) -> opt_out | not
products[0].price -> data.amount | round(2) | multiply($factor)
country -> user.country | lookup({ "United Kingdom": "GB", US: "US" }, "ZZ")
true -> opt_out
-1.5e3 -> data.amount
when order_created, "Signed Up", contents {
  order_id -> data.order_id
  products[*] -> data.contents[*] {
    product_id -> id
    @.name ?? @ -> name
  }
}
"#;
    insta::assert_snapshot!(canonical(text));
}

#[test]
fn the_canonical_form_parses_back_to_itself() {
    for preset in signal_engine::presets::ALL {
        let once = canonical(preset.text);
        assert_eq!(canonical(&once), once, "{}", preset.name);
    }
}

#[test]
fn pipes_may_omit_parentheses_and_calls_as_sources_may_not() {
    assert_eq!(canonical("email -> user.email | sha256"), "email -> user.email | sha256\n");
    assert_eq!(canonical("consent(\"x\") -> opt_out"), "consent(\"x\") -> opt_out\n");
    // Without parentheses a name is a path, not a call.
    assert_eq!(canonical("consent -> opt_out"), "consent -> opt_out\n");
}

#[test]
fn syntax_errors_are_reported_in_plain_words_and_all_at_once() {
    let errors = syntax::parse(FileId(0), "a => b\nc -> d\ne -> f -> x\nok -> id\ng -> h | i(\n").unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:?}");
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert!(messages[0].contains("`->`") && messages[0].ends_with("found `=`"), "{messages:?}");
    assert!(!messages.iter().any(|m| m.contains("Rule::") || m.contains("ident")), "{messages:?}");
    assert!(errors.iter().all(|e| e.code.0 == "engine::parse::syntax"));
}

#[test]
fn strings_escape_and_reject_unknown_escapes() {
    assert_eq!(canonical(r#""a\"b\\c\n" -> id"#), "\"a\\\"b\\\\c\\n\" -> id\n");
    let errors = syntax::parse(FileId(0), r#""bad \q escape" -> id"#).unwrap_err();
    assert_eq!(errors[0].code.0, "engine::parse::invalid_escape");
}

#[test]
fn keywords_are_reserved_only_where_they_start_an_item() {
    assert_eq!(canonical("properties.when -> id"), "properties.when -> id\n");
    assert_eq!(canonical("routes_total -> id"), "routes_total -> id\n");
    assert!(syntax::parse(FileId(0), "when -> id").is_err());
}

#[test]
fn a_byte_order_mark_at_the_start_is_ignored() {
    assert_eq!(canonical("\u{feff}messageId -> id"), "messageId -> id\n");
}

#[test]
fn control_characters_in_strings_print_back_as_themselves() {
    // Found by the canonical_roundtrip fuzz target: `"\u{1}"` used to print as an escape the grammar rejects.
    let once = canonical("\"\u{1}\u{8}\" -> id");
    assert_eq!(canonical(&once), once);
}
