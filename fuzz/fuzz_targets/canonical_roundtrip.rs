//! Arbitrary text as a mapping file: when it parses, its printed form parses again and prints identically
//! (the canonical form is a fixed point).
#![no_main]

use libfuzzer_sys::fuzz_target;
use signal_engine::ast::FileId;
use signal_engine::syntax::parse;

fuzz_target!(|text: &str| {
    let Ok(first) = parse(FileId(0), text) else { return };
    let printed = first.to_string();
    let second = match parse(FileId(0), &printed) {
        Ok(second) => second,
        Err(errors) => panic!(
            "printed form does not parse\ninput: {text:?}\nprinted: {printed:?}\nerrors: {:?}",
            errors.iter().map(|d| (&d.message, d.primary.span.start, d.primary.span.end)).collect::<Vec<_>>()
        ),
    };
    let reprinted = second.to_string();
    assert_eq!(printed, reprinted, "canonical form is not idempotent\ninput: {text:?}");
});
