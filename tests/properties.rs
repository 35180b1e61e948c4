//! Property tests: no input panics the parser, the compiler or the runtime, and the runtime's two entry points
//! agree. These are the fuzzing we run on every `cargo test`; inputs are built from the language's own tokens
//! and from mutated real events, so they reach deep into each stage rather than failing at the first byte.

use proptest::prelude::*;
use serde_json::Value;
use signal_engine::ast::FileId;
use signal_engine::presets;
use signal_engine::source::MemoryLoader;
use signal_engine::{compile, CompileOptions, Context};

const TOKENS: &[&str] = &[
    "->",
    "??",
    "|",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    "[*]",
    "[0]",
    ".",
    ",",
    ":",
    "=",
    "$",
    "@",
    "\"",
    "\n",
    " ",
    "#",
    "routes",
    "when",
    "remember",
    "param",
    "include",
    "target",
    "for",
    "30d",
    "custom",
    "true",
    "false",
    "-1.5",
    "100",
    "\"Order Completed\"",
    "page",
    "track",
    "identify",
    "order_created",
    "contents",
    "user.email",
    "data.amount",
    "data.contents[*]",
    "timestamp_ms",
    "id",
    "messageId",
    "traits.email",
    "context.page.url",
    "products[*]",
    "revenue",
    "sha256",
    "minor_units",
    "e164",
    "lookup",
    "consent",
    "not",
    "multiply",
    "string",
    "openai_ads",
    "\"US\"",
    "é",
    "\u{0}",
];

fn mapping_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..60).prop_map(|tokens| tokens.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn the_parser_and_compiler_never_panic_on_token_soup(text in mapping_text()) {
        let _ = signal_engine::syntax::parse(FileId(0), &text);
        let compiled = compile("soup.map", &text, &MemoryLoader::default(), &CompileOptions::default());
        // Whatever the text, every diagnostic must point inside it.
        for diagnostic in &compiled.diagnostics {
            prop_assert!(diagnostic.primary.span.end <= compiled.sources.get(diagnostic.primary.span.file).text.len());
        }
    }

    #[test]
    fn the_parser_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = compile("any.map", &text, &MemoryLoader::default(), &CompileOptions::default());
    }

    #[test]
    fn mutated_preset_lines_never_panic_the_compiler(line in 0usize..80, cut in 0usize..40, insert in prop::sample::select(TOKENS)) {
        let text = presets::OPENAI_ADS.text;
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let index = line % lines.len();
        let at = lines[index].char_indices().map(|(i, _)| i).nth(cut).unwrap_or(lines[index].len());
        lines[index].insert_str(at, insert);
        let _ = compile("mutated.map", &lines.join("\n"), &MemoryLoader::default(), &CompileOptions::default());
    }

    #[test]
    fn the_runtime_never_panics_and_both_entry_points_agree(event in arbitrary_event()) {
        let plan = presets::OPENAI_ADS.compile(&CompileOptions::default()).plan.unwrap();
        let now = 1_795_003_200_000;
        let from_value = plan.apply(&event, &mut Context::stateless(now));
        let from_text = plan.apply_str(&event.to_string(), &mut Context::stateless(now));
        prop_assert_eq!(from_value, from_text);
    }

    /// `explain` traces the element-form rules over the block's source built whole; `apply_str` reads the source's
    /// members where the reader captured them, leaving it unbuilt. One outcome, whatever the event.
    #[test]
    fn explain_and_the_untraced_runtime_agree(event in arbitrary_event()) {
        let plan = presets::OPENAI_ADS.compile(&CompileOptions::default()).plan.unwrap();
        let now = 1_795_003_200_000;
        let text = event.to_string();
        let explained = signal_engine::explain::explain(&plan, &text, &mut Context::stateless(now));
        prop_assert_eq!(explained.outcome, plan.apply_str(&text, &mut Context::stateless(now)));
    }

    #[test]
    fn the_runtime_never_panics_on_arbitrary_bytes(text in "\\PC{0,300}") {
        let plan = presets::OPENAI_ADS.compile(&CompileOptions::default()).plan.unwrap();
        let _ = plan.apply_str(&text, &mut Context::stateless(0));
    }
}

/// Real events from the bundled example with one field replaced by an arbitrary JSON value.
fn arbitrary_event() -> impl Strategy<Value = Value> {
    let events: Vec<Value> =
        include_str!("../examples/events.ndjson").lines().take(60).map(|l| serde_json::from_str(l).unwrap()).collect();
    let paths: &[&[&str]] = &[
        &["type"],
        &["event"],
        &["messageId"],
        &["anonymousId"],
        &["timestamp"],
        &["properties"],
        &["properties", "revenue"],
        &["properties", "currency"],
        &["properties", "products"],
        &["properties", "price"],
        &["properties", "product_id"],
        &["properties", "sku"],
        &["properties", "name"],
        &["properties", "quantity"],
        &["context"],
        &["context", "page", "url"],
        &["context", "traits", "email"],
        &["context", "traits", "phone"],
        &["context", "consent"],
        &["context", "ip"],
    ];
    (prop::sample::select(events), prop::sample::select(paths), json_value()).prop_map(|(mut event, path, value)| {
        let mut target = &mut event;
        for key in &path[..path.len() - 1] {
            if !target.get(*key).is_some_and(Value::is_object) {
                target[*key] = Value::Object(Default::default());
            }
            target = &mut target[*key];
        }
        target[path[path.len() - 1]] = value;
        event
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "\\PC{0,30}".prop_map(Value::from),
        prop::sample::select(vec![
            "USD",
            "jpy",
            "KWD",
            "XAU",
            "",
            " 12.50 ",
            "1e400",
            "+44 7700 900123",
            "2026-11-19T10:00:00Z"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
