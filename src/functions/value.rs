//! The values the runtime and the function library work on: JSON values that borrow their text from the event
//! being mapped, or from the plan, instead of copying it. Reading a field, passing it through a rule and writing
//! it out costs no allocation; only what a function computes is owned.
//!
//! A `Val` means exactly what the `serde_json::Value` of the same JSON means: numbers are `serde_json::Number`s
//! and objects keep their keys sorted and unique, the last of duplicate keys winning, as `serde_json::Map` does.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::ops::Deref;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use super::Ty;

/// A JSON value borrowing from the event or the plan (`'a`).
#[derive(Clone, Debug, PartialEq)]
pub enum Val<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array(Slice<'a, Val<'a>>),
    /// Entries sorted by key, keys unique.
    Object(Slice<'a, (Cow<'a, str>, Val<'a>)>),
}

/// A slice that is borrowed or owned. Unlike `Cow<[T]>`, it is covariant in `'a`, so a value borrowed from a
/// longer-lived event can stand where a shorter-lived one is expected.
pub enum Slice<'a, T> {
    Borrowed(&'a [T]),
    Owned(Vec<T>),
}

impl<T> Deref for Slice<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Slice::Borrowed(items) => items,
            Slice::Owned(items) => items,
        }
    }
}

impl<T: Clone> Clone for Slice<'_, T> {
    fn clone(&self) -> Self {
        match self {
            Slice::Borrowed(items) => Slice::Borrowed(items),
            Slice::Owned(items) => Slice::Owned(items.clone()),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Slice<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: PartialEq> PartialEq for Slice<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<'a> Val<'a> {
    /// The value of a `serde_json::Value`, borrowing its text.
    pub fn from_json(value: &'a Value) -> Val<'a> {
        match value {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => Val::Number(n.clone()),
            Value::String(s) => Val::Str(Cow::Borrowed(s)),
            Value::Array(items) => Val::Array(Slice::Owned(items.iter().map(Val::from_json).collect())),
            // A `Map` iterates in key order with unique keys already.
            Value::Object(map) => Val::Object(Slice::Owned(
                map.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Val::from_json(v))).collect(),
            )),
        }
    }

    /// The same value as a `serde_json::Value`.
    pub fn to_json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Number(n) => Value::Number(n.clone()),
            Val::Str(s) => Value::String(s.to_string()),
            Val::Array(items) => Value::Array(items.iter().map(Val::to_json).collect()),
            Val::Object(entries) => {
                Value::Object(entries.iter().map(|(k, v)| (k.to_string(), v.to_json())).collect::<Map<_, _>>())
            }
        }
    }

    /// The same value owning all its text.
    pub fn into_owned(self) -> Val<'static> {
        match self {
            Val::Null => Val::Null,
            Val::Bool(b) => Val::Bool(b),
            Val::Number(n) => Val::Number(n),
            Val::Str(s) => Val::Str(Cow::Owned(s.into_owned())),
            Val::Array(items) => Val::Array(Slice::Owned(match items {
                Slice::Borrowed(items) => items.iter().map(|v| v.clone().into_owned()).collect(),
                Slice::Owned(items) => items.into_iter().map(Val::into_owned).collect(),
            })),
            Val::Object(entries) => {
                let owned = |(k, v): (Cow<'_, str>, Val<'_>)| (Cow::Owned(k.into_owned()), v.into_owned());
                Val::Object(Slice::Owned(match entries {
                    Slice::Borrowed(entries) => entries.iter().cloned().map(owned).collect(),
                    Slice::Owned(entries) => entries.into_iter().map(owned).collect(),
                }))
            }
        }
    }

    /// The same value borrowing from this one: never copies text or elements.
    pub fn reborrow(&self) -> Val<'_> {
        match self {
            Val::Null => Val::Null,
            Val::Bool(b) => Val::Bool(*b),
            Val::Number(n) => Val::Number(n.clone()),
            Val::Str(s) => Val::Str(Cow::Borrowed(s)),
            Val::Array(items) => Val::Array(Slice::Borrowed(items)),
            Val::Object(entries) => Val::Object(Slice::Borrowed(entries)),
        }
    }

    /// An object from its entries in any order; of duplicate keys the last one counts, as when `serde_json`
    /// reads an object.
    pub fn object(mut entries: Vec<(Cow<'a, str>, Val<'a>)>) -> Val<'a> {
        if !entries.windows(2).all(|pair| compare(&pair[0].0, &pair[1].0).is_lt()) {
            // A stable sort keeps duplicates in their order, so the last of each run is the last in the text: its
            // value moves into the entry that stays.
            entries.sort_by(|a, b| compare(&a.0, &b.0));
            entries.dedup_by(|later, kept| {
                let duplicate = later.0 == kept.0;
                if duplicate {
                    std::mem::swap(&mut later.1, &mut kept.1);
                }
                duplicate
            });
        }
        Val::Object(Slice::Owned(entries))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Val::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Val::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    /// The entries of an object.
    pub fn as_object(&self) -> Option<&[(Cow<'a, str>, Val<'a>)]> {
        match self {
            Val::Object(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value under `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Val<'a>> {
        self.as_object().and_then(|entries| lookup(entries, key))
    }

    /// The kind of the value in words, for notes. Notes name the kind rather than the value because values may
    /// be personal data and notes are shown to analysts.
    pub fn kind(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::Number(_) => "a number",
            Val::Str(_) => "a string",
            Val::Array(_) => "an array",
            Val::Object(_) => "an object",
        }
    }

    /// The static type of the value, as [`Ty::of`] gives it for the same `serde_json::Value`.
    pub fn ty(&self) -> Ty {
        match self {
            Val::Null => Ty::NULL,
            Val::Bool(_) => Ty::BOOL,
            Val::Number(n) if n.is_i64() || n.is_u64() => Ty::INTEGER,
            Val::Number(n) => match n.as_f64() {
                Some(f) if f.fract() == 0.0 => Ty::INTEGER,
                _ => Ty::FRACTION,
            },
            Val::Str(_) => Ty::STRING,
            Val::Array(_) => Ty::ARRAY,
            Val::Object(_) => Ty::OBJECT,
        }
    }
}

/// The value under `key` in sorted, unique object entries.
pub fn lookup<'v, 'a>(entries: &'v [(Cow<'a, str>, Val<'a>)], key: &str) -> Option<&'v Val<'a>> {
    // The objects of events are mostly small, where a scan beats the unpredictable branches of a search.
    if entries.len() <= 12 {
        return entries.iter().find(|(k, _)| k.len() == key.len() && k.as_bytes() == key.as_bytes()).map(|(_, v)| v);
    }
    entries.binary_search_by(|(k, _)| compare(k, key)).ok().map(|index| &entries[index].1)
}

/// `Ord` for keys: most keys differ in their first byte, which decides without a call to `memcmp`.
fn compare(a: &str, b: &str) -> Ordering {
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x.cmp(y),
        _ => a.cmp(b),
    }
}

impl From<bool> for Val<'_> {
    fn from(b: bool) -> Self {
        Val::Bool(b)
    }
}

impl From<i64> for Val<'_> {
    fn from(n: i64) -> Self {
        Val::Number(n.into())
    }
}

impl From<u64> for Val<'_> {
    fn from(n: u64) -> Self {
        Val::Number(n.into())
    }
}

/// As for `serde_json::Value`: a number that is not finite is null.
impl From<f64> for Val<'_> {
    fn from(f: f64) -> Self {
        Number::from_f64(f).map_or(Val::Null, Val::Number)
    }
}

impl From<String> for Val<'_> {
    fn from(s: String) -> Self {
        Val::Str(Cow::Owned(s))
    }
}

impl<'a> From<&'a str> for Val<'a> {
    fn from(s: &'a str) -> Self {
        Val::Str(Cow::Borrowed(s))
    }
}

impl<'a> From<Cow<'a, str>> for Val<'a> {
    fn from(s: Cow<'a, str>) -> Self {
        Val::Str(s)
    }
}

/// Reads JSON as `serde_json::Value` does, borrowing every string that has no escapes from the text.
impl<'de> Deserialize<'de> for Val<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValVisitor)
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Val<'de>, E> {
        Ok(Val::from(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Val<'de>, E> {
        Ok(Val::from(n))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Val<'de>, E> {
        Ok(Val::from(f))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(s.to_string())))
    }

    fn visit_string<E>(self, s: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(s)))
    }

    fn visit_none<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Val<'de>, D::Error> {
        Val::deserialize(deserializer)
    }

    fn visit_unit<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        let mut items = Vec::with_capacity(4);
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Val::Array(Slice::Owned(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        let mut entries = Vec::with_capacity(8);
        while let Some(key) = map.next_key_seed(Key)? {
            entries.push((key, map.next_value()?));
        }
        Ok(Val::object(entries))
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s))
    }
}

/// Writes a value as compact JSON, exactly as `serde_json` serialises the same `Value`.
pub fn write_json(value: &Val<'_>, out: &mut String) {
    match value {
        Val::Null => out.push_str("null"),
        Val::Bool(true) => out.push_str("true"),
        Val::Bool(false) => out.push_str("false"),
        Val::Number(n) => write_number(n, out),
        Val::Str(s) => write_json_string(s, out),
        Val::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Val::Object(entries) => {
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(key, out);
                out.push(':');
                write_json(item, out);
            }
            out.push('}');
        }
    }
}

/// Writes a number as `serde_json` does: integers in full, other numbers in their shortest round-trip form.
pub fn write_number(n: &Number, out: &mut String) {
    if let Some(u) = n.as_u64() {
        write_u64(u, out);
    } else if let Some(i) = n.as_i64() {
        out.push('-');
        write_u64(i.unsigned_abs(), out);
    } else {
        // Floats: `Number`'s `Display` uses the same shortest-form formatter as the serialiser.
        fmt::Write::write_fmt(out, format_args!("{n}")).expect("writing to a String cannot fail");
    }
}

pub(crate) fn write_u64(u: u64, out: &mut String) {
    // Two digits a step from a table, then one append: every event writes a 13-digit timestamp and its amounts.
    out.push_str(itoa::Buffer::new().format(u));
}

/// Writes a JSON string literal, escaping as `serde_json` does: `"` and `\`, the short forms of backspace,
/// form feed, newline, carriage return and tab, `\u00XX` (lowercase hex) for other control characters, and
/// nothing else.
pub fn write_json_string(text: &str, out: &mut String) {
    out.reserve(text.len() + 2);
    out.push('"');
    let bytes = text.as_bytes();
    let mut run = 0;
    while let Some(i) = next_escape(bytes, run) {
        // Escaped bytes are ASCII, so `run..i` lies on character boundaries.
        out.push_str(&text[run..i]);
        run = i + 1;
        match bytes[i] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            control => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(control >> 4)]));
                out.push(char::from(HEX[usize::from(control & 0xf)]));
            }
        }
    }
    out.push_str(&text[run..]);
    out.push('"');
}

/// The length of `text` written as a JSON string by [`write_json_string`] (and serde_json), quotes included.
#[cfg(feature = "relay")]
pub(crate) fn json_string_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut len = bytes.len() + 2;
    let mut from = 0;
    while let Some(i) = next_escape(bytes, from) {
        len += match bytes[i] {
            b'"' | b'\\' | 0x08 | 0x0c | b'\n' | b'\r' | b'\t' => 1,
            _ => 5,
        };
        from = i + 1;
    }
    len
}

/// The index of the first byte from `from` on that a JSON string must escape: a control character, `"` or `\`.
/// The same bytes end a run of plain content when a string is read (`input::scan`). Sixteen bytes are tested at a
/// time (eight without SSE2) while none of them is one, as most text has none.
pub(crate) fn next_escape(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        while let Some(chunk) = bytes.get(i..i + 16) {
            let found = escapes_in_sixteen(chunk.try_into().expect("sixteen bytes"));
            if found != 0 {
                return Some(i + found.trailing_zeros() as usize);
            }
            i += 16;
        }
        // Fewer than sixteen bytes are left: most strings written end so, and most are short. They are tested at
        // once too, as the end of the last sixteen bytes (whose first ones, before `i`, are shifted out), or padded
        // with spaces when the text is shorter; byte by byte, their tests were the larger part of writing a string.
        let rest = bytes.len().checked_sub(i).filter(|&rest| rest > 0)?;
        let found = match bytes.len().checked_sub(16) {
            Some(start) => escapes_in_sixteen(bytes[start..].try_into().expect("sixteen bytes")) >> (16 - rest),
            None => {
                let mut padded = [b' '; 16];
                padded[..rest].copy_from_slice(&bytes[i..]);
                escapes_in_sixteen(&padded)
            }
        };
        (found != 0).then(|| i + found.trailing_zeros() as usize)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    next_escape_by_words(bytes, i)
}

/// [`next_escape`] without SSE2: eight bytes at a time, then byte by byte.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
fn next_escape_by_words(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Whether any byte of `word` is zero, or below `n` for `less_than`: exact for the word as a whole.
    let has_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGH != 0;
    let less_than = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH != 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        if less_than(word, 0x20)
            || has_zero(word ^ (ONES * u64::from(b'"')))
            || has_zero(word ^ (ONES * u64::from(b'\\')))
        {
            break;
        }
        i += 8;
    }
    bytes.get(i..)?.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\').map(|p| i + p)
}

/// A bit for each of the sixteen bytes that a JSON string must escape, the first byte's lowest.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn escapes_in_sixteen(chunk: &[u8; 16]) -> u32 {
    use safe_arch::set_splat_i8_m128i as splat;
    use safe_arch::{bitor_m128i, cmp_eq_mask_i8_m128i, load_unaligned_m128i, min_u8_m128i, move_mask_i8_m128i};
    let bytes = load_unaligned_m128i(chunk);
    let quote = cmp_eq_mask_i8_m128i(bytes, splat(b'"' as i8));
    let backslash = cmp_eq_mask_i8_m128i(bytes, splat(b'\\' as i8));
    // A byte below 0x20 is its own unsigned minimum with 0x1f.
    let control = cmp_eq_mask_i8_m128i(min_u8_m128i(bytes, splat(0x1f)), bytes);
    move_mask_i8_m128i(bitor_m128i(bitor_m128i(quote, backslash), control)) as u32
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn samples() -> Vec<Value> {
        let mut samples = vec![
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-0.0),
            json!(1.5),
            json!(-1.5e-7),
            json!(12999.0),
            json!(1e21),
            json!(1e300),
            json!(5e-324),
            json!(f64::MAX),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(-1),
            json!(""),
            json!("plain"),
            json!("\"quoted\" \\ back/slash"),
            json!("\u{0}\u{1}\u{7}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f}\u{7f}\u{80}"),
            json!("é中😀\u{2028}\u{2029}\u{feff}"),
            json!([]),
            json!({}),
            json!([1, "a", null, [true, {"b": []}]]),
            json!({"b": 1, "a": {"z": [1.25, "x"], "": null}, "é": "\n"}),
        ];
        samples.extend((0u8..=0x7f).map(|b| json!(format!("{}x", char::from(b)))));
        samples
    }

    #[test]
    fn writes_json_as_serde_json_does() {
        for value in samples() {
            let mut out = String::new();
            write_json(&Val::from_json(&value), &mut out);
            assert_eq!(out, value.to_string(), "{value:?}");
        }
    }

    #[test]
    fn escapes_at_every_position() {
        for len in 0..40 {
            for at in 0..len {
                for special in ['"', '\\', '\n', '\u{1}', '\u{1f}', ' ', '~', '\u{7f}', 'é'] {
                    let text: String = (0..len).map(|i| if i == at { special } else { 'a' }).collect();
                    let mut out = String::new();
                    write_json_string(&text, &mut out);
                    assert_eq!(out, Value::from(text.clone()).to_string(), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn finds_the_first_escape_from_any_position() {
        // Two bytes of interest in a run of plain ones, the search starting before, between and after them: an
        // escape before the start is passed over, whether it lies in the text's last sixteen bytes or not.
        let interesting = [b'"', b'\\', b'\n', 0, 0x1f, b' ', b'a', 0x7f, 0xc3, 0xff];
        for len in 0..40 {
            for first in 0..len {
                for second in first..len {
                    for (x, y) in interesting.iter().zip(interesting.iter().rev()) {
                        let mut bytes = vec![b'a'; len];
                        bytes[first] = *x;
                        bytes[second] = *y;
                        for from in 0..=len + 1 {
                            let expected = bytes
                                .get(from..)
                                .and_then(|rest| rest.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\'))
                                .map(|at| from + at);
                            assert_eq!(next_escape(&bytes, from), expected, "{bytes:?} from {from}");
                            assert_eq!(next_escape_by_words(&bytes, from), expected, "{bytes:?} from {from}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn reads_json_as_serde_json_does() {
        for value in samples() {
            let text = value.to_string();
            let read: Val<'_> = serde_json::from_str(&text).unwrap();
            assert_eq!(read.to_json(), value, "{text}");
            assert_eq!(read.ty(), Ty::of(&value), "{text}");
            assert_eq!(read.clone().into_owned(), read);
            assert_eq!(read.reborrow(), read);
        }
        let text = r#"{"b": 0, "a": 2, "b": 1, "c": {"x": 1, "x": [2]}, "a\u0062": "esc\"aped", "b": 3}"#;
        let read: Val<'_> = serde_json::from_str(text).unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(read.to_json(), value);
        assert_eq!(read, Val::from_json(&value));
        assert_eq!(read.get("b"), Some(&Val::from(3i64)));
        assert_eq!(read.get("ab"), Some(&Val::from("esc\"aped")));
        assert_eq!(read.get("d"), None);
        let many: Vec<(String, Value)> = (0..40).map(|i| (format!("k{i}"), json!(i))).collect();
        let object = Value::Object(many.iter().cloned().collect());
        let read = Val::from_json(&object);
        for (key, value) in &many {
            assert_eq!(read.get(key).map(Val::to_json).as_ref(), Some(value));
        }
        assert_eq!(read.get("k"), None);
        let huge: Val<'_> = serde_json::from_str("1e400").unwrap_or(Val::Null);
        assert_eq!(huge.to_json(), serde_json::from_str::<Value>("1e400").unwrap_or(Value::Null));
    }

    #[test]
    fn borrows_text_without_escapes() {
        let read: Val<'_> = serde_json::from_str(r#"{"key": "text", "esc": "a\nb"}"#).unwrap();
        let entries = read.as_object().unwrap();
        assert!(matches!(entries[1], (Cow::Borrowed("key"), Val::Str(Cow::Borrowed("text")))));
        assert!(matches!(entries[0].1, Val::Str(Cow::Owned(_))));
    }
}
