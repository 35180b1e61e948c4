//! Arbitrary bytes as one event line for the default preset: applying never panics (stateless and with
//! identity memory), `apply` on the serde_json parse agrees with the selective reader of `apply_str`, and a
//! mapped event is valid JSON from which raw emails never leave.
//!
//! "No `@` in the output" does not hold as such: the preset passes `messageId`, `anonymousId`, `context.ip`,
//! `context.userAgent`, page URLs and product names through unhashed, and those may hold `@`. What is
//! asserted instead: `user.email` and `user.phone_number` are SHA-256 hex digests, and every output string
//! holding `@` is copied from (or percent-decoded out of) an input string that is not an email or phone field.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use signal_engine::identity::MemoryStore;
use signal_engine::{Context, Outcome, Plan};

/// 2026-11-20T12:00:00Z, the `--now` of the CLI tests, near the example events' timestamps.
const NOW_MS: i64 = 1_795_176_000_000;

/// Where the preset reads personal data (`traits.email ?? context.traits.email`, same for phone).
const PII_PATHS: &[&[&str]] =
    &[&["traits", "email"], &["context", "traits", "email"], &["traits", "phone"], &["context", "traits", "phone"]];

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| signal_engine::presets::OPENAI_ADS.compile(&Default::default()).plan.expect("preset compiles"))
}

/// What a raw scan of the event text finds: every string member with its path, duplicates included (a
/// `serde_json::Value` keeps only the last of duplicate keys).
#[derive(Default)]
struct Scan {
    strings: Vec<(Vec<String>, String)>,
}

struct ScanSeed<'s> {
    scan: &'s mut Scan,
    path: &'s mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for ScanSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScanSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        self.scan.strings.push((self.path.clone(), s.to_string()));
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(ScanSeed { scan: &mut *self.scan, path: &mut *self.path })?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            self.path.push(key);
            map.next_value_seed(ScanSeed { scan: &mut *self.scan, path: &mut *self.path })?;
            self.path.pop();
        }
        Ok(())
    }
}

fn scan(text: &str) -> Option<Scan> {
    let mut scan = Scan::default();
    let mut deserializer = serde_json::Deserializer::from_str(text);
    ScanSeed { scan: &mut scan, path: &mut Vec::new() }.deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    Some(scan)
}

fn output_strings<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| output_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| output_strings(v, out)),
        _ => {}
    }
}

/// `%XX` and `+` decoded, as `url_param` reads a query value.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_sha256_hex(value: &Value) -> bool {
    value.as_str().is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn check_mapped(outcome: &Outcome, text: &str, input: Option<&Scan>) {
    let Outcome::Mapped(mapped) = outcome else { return };
    let output: Value = match serde_json::from_str(&mapped.json) {
        Ok(output @ Value::Object(_)) => output,
        other => panic!("mapped output is not a JSON object ({other:?}): {:?}\ninput: {text:?}", mapped.json),
    };
    for field in ["email", "phone_number"] {
        if let Some(value) = output.get("user").and_then(|user| user.get(field)) {
            assert!(is_sha256_hex(value), "user.{field} is not a SHA-256 digest: {}\ninput: {text:?}", mapped.json);
        }
    }
    // The selective reader skips unread members without checking number ranges (`1e400`), so a text serde_json
    // rejects can still map; there is nothing to trace `@` back to then.
    let Some(input) = input else { return };
    let sources: Vec<&str> = input
        .strings
        .iter()
        .filter(|(path, _)| !PII_PATHS.iter().any(|p| p.iter().eq(path.iter())))
        .map(|(_, s)| s.as_str())
        .collect();
    let mut decoded: Vec<String> = sources.iter().map(|s| percent_decode(s)).collect();
    // `strip_query` writes an address that had credentials as WHATWG's parser writes it (backslashes as slashes,
    // spaces encoded): its `@` comes from the address's path, which these forms keep.
    for source in &sources {
        let page = &source[..source.find(['?', '#']).unwrap_or(source.len())];
        if let Ok(mut url) = url::Url::parse(page) {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            let written = url[..url::Position::AfterPath].to_string();
            decoded.push(percent_decode(&written));
            decoded.push(written);
        }
    }
    let mut strings = Vec::new();
    output_strings(&output, &mut strings);
    for s in strings.into_iter().filter(|s| s.contains('@')) {
        let copied = sources.iter().any(|t| t.contains(s)) || decoded.iter().any(|t| t.contains(s));
        assert!(
            copied,
            "output string {s:?} holds '@' but comes from no non-PII input string: {}\ninput: {text:?}",
            mapped.json
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let plan = plan();
    let parsed = match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => Some(value),
        _ => None,
    };
    let scanned = scan(text);

    let stateless = plan.apply_str(text, &mut Context::stateless(NOW_MS));
    check_mapped(&stateless, text, scanned.as_ref());

    // Fresh memory per input keeps runs reproducible; applying twice lets the second run recall what the first
    // one taught.
    let mut store = MemoryStore::new(16);
    for _ in 0..2 {
        let outcome = plan.apply_str(text, &mut Context::with_identity(NOW_MS, &mut store));
        check_mapped(&outcome, text, scanned.as_ref());
    }

    // A repeated key counts as its last occurrence in both readers, so they agree on every event.
    if let Some(value) = parsed.as_ref() {
        let from_value = plan.apply(value, &mut Context::stateless(NOW_MS));
        assert_eq!(from_value, stateless, "apply and apply_str disagree on {text:?}");
    }
});
