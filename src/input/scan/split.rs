//! Splitting the relay's requests with the fast reader's scanner: where each member of an object, and each event
//! of a batch, lies in the text, checked as strictly as the reader reads and nothing built, so that the relay keeps
//! events as the text they were sent as.

use std::borrow::Cow;
use std::ops::Range;

use super::{Fast, Scanner};

/// A member of an object, where [`members`] found it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member<'a> {
    /// The key, its escapes decoded.
    pub key: Cow<'a, str>,
    /// From the key's opening quote to the end of the value.
    pub span: Range<usize>,
    /// The value's place in the text.
    pub value: Range<usize>,
    /// An event's `context`, split as it is passed over: its members, their places in the whole text. Only the
    /// event splitters fill it (an event is read for its context's members, which were a second scan of it).
    pub inner: Option<Vec<Member<'a>>>,
}

/// The members of the object `text` is (whitespace around it allowed), in order and with repeated keys repeated,
/// checked as strictly as the fast reader reads; `None` where it gives up, for serde_json to decide.
pub(crate) fn members(text: &str) -> Option<Vec<Member<'_>>> {
    whole_object(text, Scanner::split_object)
}

/// The members of the event `text` is, as [`members`] finds them, its `context` split too ([`Member::inner`]).
pub(crate) fn event_members(text: &str) -> Option<Vec<Member<'_>>> {
    whole_object(text, Scanner::split_event)
}

/// `split` applied to the object `text` is, whitespace around it allowed.
fn whole_object<'a>(
    text: &'a str,
    split: impl FnOnce(&mut Scanner<'a>) -> Fast<Vec<Member<'a>>>,
) -> Option<Vec<Member<'a>>> {
    let mut scanner = Scanner { text, bytes: text.as_bytes(), pos: 0, depth: 0 };
    scanner.whitespace();
    if scanner.peek() != Some(b'{') {
        return None;
    }
    let members = split(&mut scanner).ok()?;
    scanner.whitespace();
    (scanner.pos == scanner.bytes.len()).then_some(members)
}

/// A batch of events as [`batch`] splits it.
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    /// The members of the body, the events' array among them.
    pub members: Vec<Member<'a>>,
    /// The events, when the body's `batch` (its last, if repeated) is an array.
    pub events: Option<Vec<Element<'a>>>,
}

/// An element of an array, where [`batch`] found it.
#[derive(Debug)]
pub(crate) struct Element<'a> {
    pub place: Range<usize>,
    /// Its members, when it is an object, its `context` split too ([`Member::inner`]).
    pub members: Option<Vec<Member<'a>>>,
}

/// Splits a body `{"batch": [event, …], …}` in one pass: its members, its events and each event's members, every
/// place in `text`. Checked and given up on as [`members`] is.
pub(crate) fn batch(text: &str) -> Option<Batch<'_>> {
    let mut scanner = Scanner { text, bytes: text.as_bytes(), pos: 0, depth: 0 };
    scanner.whitespace();
    if scanner.peek() != Some(b'{') {
        return None;
    }
    let mut events = None;
    let members = scanner
        .split_members(|scanner, key| {
            if key != "batch" {
                return scanner.skip().map(|()| None);
            }
            // A later `batch` replaces an earlier one, as in a parsed tree.
            events = None;
            if scanner.peek() != Some(b'[') {
                return scanner.skip().map(|()| None);
            }
            events = Some(scanner.split_array()?);
            Ok(None)
        })
        .ok()?;
    scanner.whitespace();
    (scanner.pos == scanner.bytes.len()).then_some(Batch { members, events })
}

impl<'a> Scanner<'a> {
    /// An object's members, at its `{`.
    fn split_object(&mut self) -> Fast<Vec<Member<'a>>> {
        self.split_members(|scanner, _| scanner.skip().map(|()| None))
    }

    /// An event's members, at its `{`, the members of each `context` that is an object split too.
    fn split_event(&mut self) -> Fast<Vec<Member<'a>>> {
        self.split_members(|scanner, key| match (key, scanner.peek()) {
            ("context", Some(b'{')) => scanner.split_object().map(Some),
            _ => scanner.skip().map(|()| None),
        })
    }

    /// An object's members, at its `{`, each value passed over by `value` (given the scanner at the value and the
    /// key), which may split it ([`Member::inner`]).
    fn split_members(
        &mut self,
        mut value: impl FnMut(&mut Self, &str) -> Fast<Option<Vec<Member<'a>>>>,
    ) -> Fast<Vec<Member<'a>>> {
        self.enter()?;
        let mut members = Vec::with_capacity(16);
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(members);
        }
        loop {
            let start = self.pos;
            let key = self.string()?;
            self.whitespace();
            self.eat(b':')?;
            self.whitespace();
            let at = self.pos;
            let inner = value(self, &key)?;
            members.push(Member { key, span: start..self.pos, value: at..self.pos, inner });
            if !self.next_member(b'}')? {
                return Ok(members);
            }
        }
    }

    /// An array's elements, at its `[`, the members of each object among them split too.
    fn split_array(&mut self) -> Fast<Vec<Element<'a>>> {
        self.enter()?;
        let mut elements = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(elements);
        }
        loop {
            let start = self.pos;
            let members = match self.peek() {
                Some(b'{') => Some(self.split_event()?),
                _ => {
                    self.skip()?;
                    None
                }
            };
            elements.push(Element { place: start..self.pos, members });
            if !self.next_member(b']')? {
                return Ok(elements);
            }
        }
    }
}
