//! Arbitrary bytes as a mapping file: compiling never panics, every diagnostic's primary (and context) span lies
//! inside its file's text on char boundaries, and a produced plan applies to a fixed event without panicking,
//! writing a JSON object when it maps it. Diagnostics render (text and JSON) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signal_engine::source::MemoryLoader;
use signal_engine::{Context, Outcome};

/// 2026-11-20T12:00:00Z, the `--now` of the CLI tests: the event below is inside the timestamp window.
const NOW_MS: i64 = 1_795_176_000_000;

const EVENT: &str = r#"{"type":"track","event":"Order Completed","messageId":"m1","anonymousId":"anon_1","userId":"user_1","timestamp":"2026-11-19T15:19:41.170Z","properties":{"order_id":"ord_1","revenue":1324.04,"total":1575.61,"currency":"USD","plan_id":"pro","value":3,"products":[{"product_id":"p1","sku":"S1","product_name":"Tent","price":11.99,"quantity":1}]},"context":{"ip":"203.0.113.247","userAgent":"UA","page":{"url":"https://shop.example.com/c?oppref=abc&x=1","path":"/c"},"consent":{"marketing":true},"traits":{"email":"Someone@Example.com ","phone":"+44 7700 900819"}}}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let compiled = signal_engine::compile("fuzz.map", text, &MemoryLoader::default(), &Default::default());
    for diagnostic in &compiled.diagnostics {
        // The primary label is required to be in range; context labels are checked the same way.
        for (which, label) in std::iter::once(("primary", &diagnostic.primary))
            .chain(diagnostic.context.iter().map(|label| ("context", label)))
        {
            let span = label.span;
            let file = compiled.sources.get(span.file);
            assert!(
                span.start <= span.end && span.end <= file.text.len(),
                "{}: {which} span {}..{} outside {} ({} bytes)",
                diagnostic.code,
                span.start,
                span.end,
                file.name,
                file.text.len()
            );
            assert!(
                file.text.is_char_boundary(span.start) && file.text.is_char_boundary(span.end),
                "{}: {which} span {}..{} not on char boundaries of {}",
                diagnostic.code,
                span.start,
                span.end,
                file.name
            );
        }
    }
    // What `engine check` prints: rustc-style and JSON diagnostics draw from those spans and must not panic.
    let _ = signal_engine::diagnostic::render(&compiled.diagnostics, &compiled.sources, Default::default());
    for diagnostic in &compiled.diagnostics {
        let _ = signal_engine::diagnostic::to_json(diagnostic, &compiled.sources);
    }
    if let Some(plan) = &compiled.plan {
        assert!(!compiled.has_errors(), "a plan was produced despite errors");
        if let Outcome::Mapped(mapped) = plan.apply_str(EVENT, &mut Context::stateless(NOW_MS)) {
            let output: Result<serde_json::Value, _> = serde_json::from_str(&mapped.json);
            assert!(output.is_ok_and(|v| v.is_object()), "mapped output is not a JSON object: {:?}", mapped.json);
        }
    }
});
