//! The fast reader of an event's text: one pass over the bytes that captures the values at the trie's leaves and
//! skips everything else without building it. It handles the JSON events are made of; anything it does not accept
//! (broken JSON, deep nesting, a number it would have to round) it hands back, and the reference reader (serde_json)
//! reads the event instead, so both give the same slots for every text and the errors are serde_json's. The same
//! scanner splits the relay's requests (module `split`).

use std::borrow::Cow;

use serde_json::Number;

use super::{Captured, Node, Seen, Unbuilt};
use crate::functions::{next_escape, Val};

/// The fast reader gave up on this text; the reference reader decides.
pub(super) struct GiveUp;

type Fast<T> = Result<T, GiveUp>;

#[cfg(any(feature = "relay", test))]
pub(super) mod split;

/// Below serde_json's own limit (128), so that nothing it refuses for depth is accepted here.
const MAX_DEPTH: usize = 100;

/// Reads `text` (an object at the top) into `slots`; `Err` when the reference reader must decide.
pub(super) fn read<'a>(root: &Node, text: &'a str, captured: &mut Captured<'a>) -> Fast<()> {
    let mut scanner = Scanner { text, bytes: text.as_bytes(), pos: 0, depth: 0 };
    scanner.whitespace();
    if scanner.peek() != Some(b'{') {
        return Err(GiveUp);
    }
    scanner.object(root, captured)?;
    scanner.whitespace();
    if scanner.pos != scanner.bytes.len() {
        return Err(GiveUp);
    }
    if let Some(slot) = root.capture {
        captured.unbuilt[slot] = Some(Unbuilt::Text(text));
    }
    Ok(())
}

/// The value of a text the fast reader has read before, built.
pub(super) fn value(text: &str) -> Option<Val<'_>> {
    let mut scanner = Scanner { text, bytes: text.as_bytes(), pos: 0, depth: 0 };
    scanner.whitespace();
    let value = scanner.value().ok()?;
    scanner.whitespace();
    (scanner.pos == scanner.bytes.len()).then_some(value)
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Fast<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    fn enter(&mut self) -> Fast<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(GiveUp);
        }
        self.pos += 1;
        self.whitespace();
        Ok(())
    }

    /// After a member or element: `true` when another follows, `false` at the closing bracket.
    fn next_member(&mut self, close: u8) -> Fast<bool> {
        self.whitespace();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                self.whitespace();
                Ok(true)
            }
            Some(byte) if byte == close => {
                self.pos += 1;
                self.depth -= 1;
                Ok(false)
            }
            _ => Err(GiveUp),
        }
    }

    /// An object whose keys are matched against `node`'s children; at `{`.
    fn object(&mut self, node: &Node, captured: &mut Captured<'a>) -> Fast<()> {
        self.enter()?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        let mut seen = Seen::default();
        loop {
            let key = self.string()?;
            self.whitespace();
            self.eat(b':')?;
            self.whitespace();
            match node.child(&key) {
                Some(index) => {
                    let child = &node.children[index].1;
                    if seen.again(index) {
                        captured.forget(child);
                    }
                    let object = self.peek() == Some(b'{');
                    match child.capture {
                        // Read whole and by members: taken apart now, built only if the route reads it whole.
                        Some(slot) if object && !child.children.is_empty() => {
                            let start = self.pos;
                            self.object(child, captured)?;
                            captured.unbuilt[slot] = Some(Unbuilt::Text(&self.text[start..self.pos]));
                        }
                        Some(slot) => captured.values[slot] = Some(self.value()?),
                        None if object => self.object(child, captured)?,
                        None => self.skip()?,
                    }
                }
                None => self.skip()?,
            }
            if !self.next_member(b'}')? {
                return Ok(());
            }
        }
    }

    /// A whole value, built.
    fn value(&mut self) -> Fast<Val<'a>> {
        match self.peek() {
            Some(b'"') => Ok(Val::Str(self.string()?)),
            Some(b'{') => {
                self.enter()?;
                // Events' objects mostly have a handful of members: one allocation instead of four growths.
                let mut entries = Vec::with_capacity(8);
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    self.depth -= 1;
                } else {
                    loop {
                        let key = self.string()?;
                        self.whitespace();
                        self.eat(b':')?;
                        self.whitespace();
                        entries.push((key, self.value()?));
                        if !self.next_member(b'}')? {
                            break;
                        }
                    }
                }
                Ok(Val::object(entries))
            }
            Some(b'[') => {
                self.enter()?;
                let mut items = Vec::with_capacity(4);
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    self.depth -= 1;
                } else {
                    loop {
                        items.push(self.value()?);
                        if !self.next_member(b']')? {
                            break;
                        }
                    }
                }
                Ok(Val::Array(crate::functions::Slice::Owned(items)))
            }
            Some(b't') => self.literal(b"true").map(|()| Val::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|()| Val::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|()| Val::Null),
            _ => self.number(),
        }
    }

    /// A value skipped: checked as strictly as it is read, never built.
    fn skip(&mut self) -> Fast<()> {
        match self.peek() {
            Some(b'"') => self.skip_string(),
            Some(b'{') => {
                self.enter()?;
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                loop {
                    if self.peek() != Some(b'"') {
                        return Err(GiveUp);
                    }
                    self.skip_string()?;
                    self.whitespace();
                    self.eat(b':')?;
                    self.whitespace();
                    self.skip()?;
                    if !self.next_member(b'}')? {
                        return Ok(());
                    }
                }
            }
            Some(b'[') => {
                self.enter()?;
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                loop {
                    self.skip()?;
                    if !self.next_member(b']')? {
                        return Ok(());
                    }
                }
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => {
                let text = self.number_text()?;
                // serde_json refuses a number too large for a float even where it skips it; only an exponent or
                // more than 300 digits can make one.
                if text.len() > 300 || text.bytes().any(|b| b == b'e' || b == b'E') {
                    text.parse::<Number>().map_err(|_| GiveUp)?;
                }
                Ok(())
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Fast<()> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    /// Moves past string content up to the next `"`, `\` or control character; returns that byte.
    fn plain_run(&mut self) -> Option<u8> {
        match next_escape(self.bytes, self.pos) {
            Some(stop) => {
                self.pos = stop;
                Some(self.bytes[stop])
            }
            None => {
                self.pos = self.bytes.len();
                None
            }
        }
    }

    /// A string, at its opening quote: borrowed from the text unless it has escapes.
    fn string(&mut self) -> Fast<Cow<'a, str>> {
        if self.peek() != Some(b'"') {
            return Err(GiveUp);
        }
        self.pos += 1;
        let start = self.pos;
        match self.plain_run() {
            Some(b'"') => {
                self.pos += 1;
                Ok(Cow::Borrowed(&self.text[start..self.pos - 1]))
            }
            Some(b'\\') => {
                let mut owned = String::from(&self.text[start..self.pos]);
                loop {
                    self.escape(Some(&mut owned))?;
                    let from = self.pos;
                    let stop = self.plain_run();
                    owned.push_str(&self.text[from..self.pos]);
                    match stop {
                        Some(b'"') => {
                            self.pos += 1;
                            return Ok(Cow::Owned(owned));
                        }
                        Some(b'\\') => continue,
                        _ => return Err(GiveUp),
                    }
                }
            }
            _ => Err(GiveUp),
        }
    }

    fn skip_string(&mut self) -> Fast<()> {
        self.pos += 1;
        loop {
            match self.plain_run() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => self.escape(None)?,
                _ => return Err(GiveUp),
            }
        }
    }

    /// One escape sequence, at its backslash, written to `out` when given.
    fn escape(&mut self, out: Option<&mut String>) -> Fast<()> {
        let Some(&kind) = self.bytes.get(self.pos + 1) else { return Err(GiveUp) };
        self.pos += 2;
        let decoded = match kind {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4()?;
                let code = match unit {
                    0xD800..=0xDBFF => {
                        // A leading surrogate must be followed by an escaped trailing one.
                        if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                            return Err(GiveUp);
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(GiveUp);
                        }
                        0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err(GiveUp),
                    other => u32::from(other),
                };
                char::from_u32(code).ok_or(GiveUp)?
            }
            _ => return Err(GiveUp),
        };
        if let Some(out) = out {
            out.push(decoded);
        }
        Ok(())
    }

    fn hex4(&mut self) -> Fast<u16> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or(GiveUp)?;
        let mut unit = 0u16;
        for &digit in digits {
            let value = (digit as char).to_digit(16).ok_or(GiveUp)?;
            unit = unit << 4 | value as u16;
        }
        self.pos += 4;
        Ok(unit)
    }

    /// The text of a number, checked against JSON's grammar: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number_text(&mut self) -> Fast<&'a str> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(GiveUp),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(GiveUp);
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(GiveUp);
            }
            self.digits();
        }
        Ok(&self.text[start..self.pos])
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// A number as serde_json reads it: whole numbers that fit as integers, the rest as the nearest float.
    fn number(&mut self) -> Fast<Val<'a>> {
        let text = self.number_text()?;
        // Up to 19 digits always fit a u64; everything else is read by serde_json itself so that the value is
        // exactly the one the reference reader makes.
        if text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit()) {
            let n = text.bytes().fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
            return Ok(Val::from(n));
        }
        let number: Number = text.parse().map_err(|_| GiveUp)?;
        Ok(Val::Number(number))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use std::ops::Range;

    use super::super::{InputLayout, InputPaths};
    use crate::plan::Step;

    /// Paths like the default preset's: leaves, an object read whole and by members, nested objects.
    fn layout() -> InputLayout {
        let mut paths = InputPaths::default();
        for path in ["type", "a", "a.b", "a.b.c", "a.d", "p", "p.q", "list", "u.v", "k"] {
            paths.add(path.split('.').map(|key| Step::Key(key.to_string())).collect());
        }
        paths.build().0
    }

    fn slots_json(layout: &InputLayout, text: &str, reference: bool) -> Result<Vec<Option<Value>>, String> {
        let read = if reference { layout.read_str_reference(text) } else { layout.read_str(text) };
        let mut captured = read.map_err(|e| e.0)?;
        captured.build_all();
        Ok(captured.values.iter().map(|v| v.as_ref().map(crate::functions::Val::to_json)).collect())
    }

    /// The fast reader accepts only what the reference reader accepts, and captures the same values.
    fn agree(text: &str) {
        let layout = layout();
        let mut captured = super::super::Captured::new(layout.slot_count);
        let fast = super::read(&layout.root, text, &mut captured).is_ok();
        let reference = slots_json(&layout, text, true);
        if fast {
            assert!(serde_json::from_str::<Value>(text).is_ok(), "fast reader accepted broken JSON: {text:?}");
            captured.build_all();
            let fast_values: Vec<_> =
                captured.values.iter().map(|v| v.as_ref().map(crate::functions::Val::to_json)).collect();
            assert_eq!(Ok(fast_values), reference, "{text:?}");
        }
        assert_eq!(slots_json(&layout, text, false), reference, "{text:?}");
        split_as_serde_json_reads(text);
    }

    /// The member and batch splitters accept what serde_json accepts (short of their depth limit) and find the
    /// members and events it reads, a repeated key's last occurrence winning as in a parsed tree.
    fn split_as_serde_json_reads(text: &str) {
        let parsed = serde_json::from_str::<Value>(text);
        let at = |range: Range<usize>| serde_json::from_str::<Value>(&text[range]).expect("a value's place");
        // Deeper than the splitters go takes more than 200 bytes.
        let shallow = text.len() < 200;
        match super::split::members(text) {
            Some(members) => {
                let Ok(Value::Object(object)) = &parsed else { panic!("members of a non-object: {text:?}") };
                let mut rebuilt = serde_json::Map::new();
                let as_event = super::split::event_members(text).expect("an object splits as an event too");
                assert!(as_event.iter().map(|m| (&m.key, &m.span)).eq(members.iter().map(|m| (&m.key, &m.span))));
                for member in members {
                    assert!(member.inner.is_none(), "only an event's context is split: {text:?}");
                    assert!(text[member.span.clone()].starts_with('"') && member.span.end == member.value.end);
                    rebuilt.insert(member.key.into_owned(), at(member.value));
                }
                assert_eq!(&rebuilt, object, "{text:?}");
            }
            None => assert!(!(shallow && matches!(parsed, Ok(Value::Object(_)))), "gave up on {text:?}"),
        }
        let wrapped = format!(r#"{{"batch": {text}, "sentAt": 1}}"#);
        let parsed_batch = serde_json::from_str::<Value>(&wrapped);
        match super::split::batch(&wrapped) {
            Some(batch) => {
                let Ok(Value::Object(body)) = &parsed_batch else { panic!("a batch of broken JSON: {text:?}") };
                assert_eq!(batch.members.len(), 2);
                match (batch.events, &body["batch"]) {
                    (Some(events), Value::Array(items)) => {
                        assert_eq!(events.len(), items.len(), "{text:?}");
                        for (event, item) in events.into_iter().zip(items) {
                            assert_eq!(&serde_json::from_str::<Value>(&wrapped[event.place]).unwrap(), item);
                            let Some(members) = event.members else {
                                assert!(!item.is_object(), "{text:?}");
                                continue;
                            };
                            let mut rebuilt = serde_json::Map::new();
                            for member in members {
                                let value = &wrapped[member.value.clone()];
                                // A `context` object is split with its event, as splitting it alone would.
                                let alone = (member.key == "context" && value.starts_with('{'))
                                    .then(|| super::split::members(value).expect("split with its event"));
                                let shifted = member.inner.map(|inner| {
                                    let base = member.value.start;
                                    inner.into_iter().map(move |m| (m.key, m.value.start - base..m.value.end - base))
                                });
                                let alone = alone.map(|alone| alone.into_iter().map(|m| (m.key, m.value)));
                                assert_eq!(shifted.map(Vec::from_iter), alone.map(Vec::from_iter), "{text:?}");
                                rebuilt.insert(member.key.into_owned(), serde_json::from_str(value).unwrap());
                            }
                            assert_eq!(&Value::Object(rebuilt), item, "{text:?}");
                        }
                    }
                    (None, item) => assert!(!item.is_array(), "{text:?}"),
                    (Some(_), item) => panic!("events of a non-array {item}"),
                }
            }
            None => assert!(!(shallow && parsed_batch.is_ok()), "gave up on {text:?}"),
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let keys = vec!["a", "b", "c", "d", "p", "q", "k", "u", "v", "list", "type", "x", "é"];
        let key = prop::sample::select(keys).prop_map(str::to_string).boxed();
        crate::testing::json_value(key, "[a-z\"\\\\/\u{0}-\u{1f}é😀]{0,6}")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn fast_and_reference_readers_agree_on_json(value in json_value(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) };
            agree(&text.unwrap());
        }

        #[test]
        fn fast_and_reference_readers_agree_on_damaged_json(
            value in json_value(),
            cut in any::<prop::sample::Index>(),
            insert in prop::sample::select(vec!["", "\"", "\\", "{", "}", "[", "]", ",", ":", "-", "0", "1e", ".", " ",
                "\\u", "\\ud800", "\u{1}", "tru", "nul", "01", "-0", "1.5e999", "\"a\":1,\"a\":", "\n"]),
            drop in 0usize..3,
        ) {
            let text = serde_json::to_string(&value).unwrap();
            let at = cut.index(text.len() + 1);
            let at = (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            let rest = &text[at..];
            let skip = rest.char_indices().nth(drop).map_or(rest.len(), |(i, _)| i);
            agree(&format!("{}{insert}{}", &text[..at], &rest[skip..]));
        }
    }

    #[test]
    fn readers_agree_on_hand_picked_texts() {
        for text in [
            r#"{"type":"page","a":{"b":{"c":1,"z":[1,{"c":2}]},"d":"x"},"a":{"d":"y"}}"#,
            r#"{"a":"not an object","a":{"b":null}}"#,
            r#"{"a":{"b":{"c":"\u00e9\ud83d\ude00\n"}},"p":{"q":-0,"r":1E+2},"k":123456789012345678901234}"#,
            r#"  {"list":[1,2,[3,{"a":4}]],"u":{"v":{"w":true}}}  "#,
            r#"{"a":{"b":{"c":"\ud800"}}}"#,
            r#"{"a":01}"#,
            r#"{"a":1,}"#,
            r#"{"a":"tab	inside"}"#,
            "{\"a\":{\"b\":{\"c\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}}",
            r#"{} x"#,
            r#"[1]"#,
            r#" [ {"a" : 1} , 2 ,"x"] "#,
            r#"{"a\u0062":1,"ab":2}"#,
            r#"{"k":1.0,"p":{"q":0.1e-3}}"#,
        ] {
            agree(text);
        }
    }
}
