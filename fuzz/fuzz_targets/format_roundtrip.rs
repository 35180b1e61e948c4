//! Arbitrary text as a mapping file: when it parses, the formatter accepts it, and the formatted text parses,
//! means the same (equal canonical form), keeps every comment in order, and formats to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signal_engine::format::{format, FILE};
use signal_engine::syntax::parse;

fuzz_target!(|text: &str| {
    let Ok(original) = parse(FILE, text) else { return };
    let formatted = match format(text) {
        Ok(formatted) => formatted,
        Err(errors) => panic!("the formatter refused a file that parses\ninput: {text:?}\nerrors: {errors:?}"),
    };
    let reparsed = match parse(FILE, &formatted) {
        Ok(reparsed) => reparsed,
        Err(errors) => panic!("formatted text does not parse\ninput: {text:?}\nformatted: {formatted:?}\n{errors:?}"),
    };
    assert_eq!(
        original.to_string(),
        reparsed.to_string(),
        "meaning changed\ninput: {text:?}\nformatted: {formatted:?}"
    );
    let comments = |m: &signal_engine::ast::Mapping| m.comments.iter().map(|c| c.text.clone()).collect::<Vec<_>>();
    assert_eq!(comments(&original), comments(&reparsed), "comments changed\ninput: {text:?}\nformatted: {formatted:?}");
    let again = format(&formatted).expect("formatted text formats");
    assert_eq!(again, formatted, "not idempotent\ninput: {text:?}");
});
