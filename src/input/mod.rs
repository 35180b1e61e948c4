//! Reading an event: only the paths a plan uses. The compiler gathers every path the plan reads into a trie of
//! object keys; reading an event walks the JSON once, captures the values at the trie's nodes into slots and
//! skips everything else without building it, so the cost of an event grows with what the mapping reads, not
//! with the size of the event. An object read both whole and by its members (`properties` for an element block,
//! `properties.revenue` for a rule) is taken apart member by member; it is built whole only for the events whose
//! route reads it whole ([`Captured::build`]).

use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::functions::{lookup, Val};
use crate::spare::{self, Spare};

mod scan;

#[cfg(any(feature = "relay", test))]
pub(crate) use scan::split::{batch, event_members, members, Batch, Element, Member};

/// One step of a path into the event: an object key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

/// The envelope fields the runtime reads whatever the mapping: `type` and `event` route an event, the ids key
/// identity memory (`previousId` for alias events).
const ENVELOPE: [&str; 5] = ["type", "event", "anonymousId", "userId", "previousId"];

/// The slots of the envelope fields ([`ENVELOPE`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Envelope {
    pub kind: usize,
    pub event: usize,
    pub anonymous_id: usize,
    pub user_id: usize,
    pub previous_id: usize,
}

impl Envelope {
    pub fn slots(&self) -> [usize; 5] {
        [self.kind, self.event, self.anonymous_id, self.user_id, self.previous_id]
    }
}

/// The trie of captured paths and where each path the plan reads ends up.
#[derive(Debug, Default)]
pub(crate) struct InputLayout {
    root: Node,
    slot_count: usize,
    /// Where the envelope fields the runtime reads are captured.
    pub envelope: Envelope,
    /// Slots whose object the fast reader takes apart instead of building: read whole, and by members too.
    containers: Vec<usize>,
    /// Each slot's event path, written out the first time one is asked for (explanations ask for many).
    paths: std::sync::OnceLock<Vec<Option<String>>>,
}

#[derive(Debug, Default)]
struct Node {
    /// Ordered by the keys' length, so that the children whose key has one length are found together.
    children: Vec<(String, Node)>,
    /// Where the children with keys of each length start in `children`, and then where they end: those of length
    /// `n` are `children[by_length[n]..by_length[n + 1]]`. Empty without children.
    by_length: Vec<u32>,
    /// Each child's key head ([`key_head`]), in `children`'s order: a look-up compares these, side by side in one
    /// allocation, and reads a child's own key only past its eighth byte. Comparing the keys themselves read each
    /// candidate's entry and then its heap text, two cache misses an event's key could cost.
    heads: Vec<u64>,
    capture: Option<usize>,
}

/// The first eight bytes of a key (fewer, zero-padded, for a shorter one) as one word: with the length, all of a
/// short key.
#[inline(always)]
fn key_head(key: &[u8]) -> u64 {
    // A short key is read in two overlapping halves, the second shifted past the overlap: no loop, no copy.
    let n = key.len();
    match (key.first_chunk::<8>(), key.first_chunk::<4>(), key.first_chunk::<2>()) {
        (Some(eight), _, _) => u64::from_le_bytes(*eight),
        (None, Some(low), _) => {
            let high = u64::from(u32::from_le_bytes(key[n - 4..].try_into().unwrap_or_default()));
            u64::from(u32::from_le_bytes(*low)) | (high >> ((8 - n) * 8)) << 32
        }
        (None, None, Some(low)) => {
            let high = u64::from(u16::from_le_bytes(key[n - 2..].try_into().unwrap_or_default()));
            u64::from(u16::from_le_bytes(*low)) | (high >> ((4 - n) * 8)) << 16
        }
        _ => key.first().copied().map_or(0, u64::from),
    }
}

impl Node {
    fn new(mut children: Vec<(String, Node)>, capture: Option<usize>) -> Self {
        children.sort_by_key(|(key, _)| key.len());
        let mut by_length = match children.last() {
            Some((longest, _)) => vec![0; longest.len() + 2],
            None => Vec::new(),
        };
        for (key, _) in &children {
            by_length[key.len() + 1] += 1;
        }
        for n in 1..by_length.len() {
            by_length[n] += by_length[n - 1];
        }
        let heads = children.iter().map(|(key, _)| key_head(key.as_bytes())).collect();
        Node { children, by_length, heads, capture }
    }

    /// The index of the child under `key`. Most keys an event has are not read and have a length no child's key
    /// has: those are told apart without a comparison. Of the rest, a key of eight bytes or fewer is decided by
    /// its head alone, and a longer one whose head matches is most likely the child's.
    #[inline(always)]
    fn child(&self, key: &str) -> Option<usize> {
        let (&start, &end) = (self.by_length.get(key.len())?, self.by_length.get(key.len() + 1)?);
        let key = key.as_bytes();
        let head = key_head(key);
        let heads = self.heads.get(start as usize..end as usize)?;
        heads.iter().zip(start as usize..).find_map(|(&candidate, index)| {
            let found = candidate == head && (key.len() <= 8 || self.children[index].0.as_bytes()[8..] == key[8..]);
            found.then_some(index)
        })
    }
}

/// A trie node while the trie grows: its children by key (arena indexes) in insertion order, and its slot.
type ArenaNode = (Vec<(String, usize)>, Option<usize>);

/// Collects the paths a plan reads while it is being compiled.
#[derive(Debug, Default)]
pub(crate) struct InputPaths {
    paths: Vec<Vec<Step>>,
    /// Each path's id, so that a mapping of thousands of rules compiles in linear time.
    ids: HashMap<Vec<Step>, usize>,
}

impl InputPaths {
    /// The steps of the path registered as `id`.
    pub fn path(&self, id: usize) -> &[Step] {
        &self.paths[id]
    }

    /// Registers a path and returns its id for [`InputLayout::resolve`].
    pub fn add(&mut self, path: Vec<Step>) -> usize {
        if let Some(&id) = self.ids.get(&path) {
            return id;
        }
        self.ids.insert(path.clone(), self.paths.len());
        self.paths.push(path);
        self.paths.len() - 1
    }

    /// Builds the trie; returns the layout and, for each path id, its slot and the steps to take inside it. Each
    /// run of object keys that starts a path is a node, and a node that some path ends at has a slot.
    pub fn build(mut self) -> (InputLayout, Vec<(usize, Vec<Step>)>) {
        let envelope = ENVELOPE.map(|name| self.add(vec![Step::Key(name.to_string())]));
        let mut layout = InputLayout::default();
        let mut slot_count = 0;
        let mut resolved = Vec::with_capacity(self.paths.len());
        // The trie is grown in an arena indexed by (parent, key), then laid out as nested nodes in insertion order.
        let mut arena: Vec<ArenaNode> = vec![(Vec::new(), None)];
        let mut edges: HashMap<(usize, &str), usize> = HashMap::new();
        for path in &self.paths {
            let keys = path.iter().take_while(|s| matches!(s, Step::Key(_))).count();
            let mut node = 0;
            for step in &path[..keys] {
                let Step::Key(key) = step else { unreachable!("counted as a key") };
                node = match edges.get(&(node, key.as_str())) {
                    Some(&child) => child,
                    None => {
                        arena.push((Vec::new(), None));
                        let child = arena.len() - 1;
                        arena[node].0.push((key.clone(), child));
                        edges.insert((node, key.as_str()), child);
                        child
                    }
                };
            }
            let slot = *arena[node].1.get_or_insert_with(|| {
                slot_count += 1;
                slot_count - 1
            });
            resolved.push((slot, path[keys..].to_vec()));
        }
        fn lay_out(arena: &[ArenaNode], index: usize) -> Node {
            let (children, capture) = &arena[index];
            Node::new(children.iter().map(|(key, child)| (key.clone(), lay_out(arena, *child))).collect(), *capture)
        }
        layout.root = lay_out(&arena, 0);
        fn containers(node: &Node, found: &mut Vec<usize>) {
            if let (Some(slot), false) = (node.capture, node.children.is_empty()) {
                found.push(slot);
            }
            node.children.iter().for_each(|(_, child)| containers(child, found));
        }
        containers(&layout.root, &mut layout.containers);
        layout.slot_count = slot_count;
        let [kind, event, anonymous_id, user_id, previous_id] = envelope.map(|id| resolved[id].0);
        layout.envelope = Envelope { kind, event, anonymous_id, user_id, previous_id };
        (layout, resolved)
    }
}

/// An event's captured input: the value at each of the plan's paths, by slot.
#[derive(Debug)]
pub(crate) struct Captured<'a> {
    pub values: Vec<Option<Val<'a>>>,
    /// Objects read whole and by members, taken apart but not built yet, by slot.
    unbuilt: Vec<Option<Unbuilt<'a>>>,
}

/// An object taken apart but not built: its text, or the parsed tree it came from.
#[derive(Debug, Clone, Copy)]
enum Unbuilt<'a> {
    Text(&'a str),
    Tree(&'a Value),
}

thread_local! {
    static SPARE_VALUES: Spare<Option<Val<'static>>> = const { Spare::new() };
    static SPARE_UNBUILT: Spare<Option<Unbuilt<'static>>> = const { Spare::new() };
}

impl Drop for Captured<'_> {
    fn drop(&mut self) {
        spare::give_back(&SPARE_VALUES, std::mem::take(&mut self.values));
        spare::give_back(&SPARE_UNBUILT, std::mem::take(&mut self.unbuilt));
    }
}

impl<'a> Captured<'a> {
    fn new(slot_count: usize) -> Self {
        Captured {
            values: spare::take(&SPARE_VALUES, slot_count, || None),
            unbuilt: spare::take(&SPARE_UNBUILT, slot_count, || None),
        }
    }

    /// Builds the objects in `slots` that were only taken apart, so that they can be read whole.
    pub fn build(&mut self, slots: &[usize]) {
        for &slot in slots {
            match self.unbuilt.get_mut(slot).and_then(Option::take) {
                // The text was read once already, so it reads again; serde_json decides if ever it does not.
                Some(Unbuilt::Text(text)) => {
                    self.values[slot] = scan::value(text).or_else(|| serde_json::from_str(text).ok());
                }
                Some(Unbuilt::Tree(tree)) => self.values[slot] = Some(Val::from_json(tree)),
                None => {}
            }
        }
    }

    /// Marks the objects in `slots` that were taken apart as objects, without building them: for a run that reads
    /// them only by their members ([`crate::plan::MemberRule`]), and only to know that they are there. An object
    /// that was built stays as it is.
    pub fn mark_objects(&mut self, slots: &[usize]) {
        for &slot in slots {
            if self.values[slot].is_none() && self.unbuilt[slot].is_some() {
                self.values[slot] = Some(Val::Object(crate::functions::Slice::Borrowed(&[])));
            }
        }
    }

    /// Builds every object that was only taken apart.
    #[cfg(test)]
    pub fn build_all(&mut self) {
        let slots: Vec<usize> = (0..self.unbuilt.len()).collect();
        self.build(&slots);
    }

    /// Empties the slots captured at or below `node`, before a repeated key is read again.
    fn forget(&mut self, node: &Node) {
        if let Some(slot) = node.capture {
            self.values[slot] = None;
            self.unbuilt[slot] = None;
        }
        for (_, child) in &node.children {
            self.forget(child);
        }
    }

    /// Fills the slots below a node captured whole from its value, as the fast reader fills them from the text.
    fn fill_members(&mut self, node: &Node, value: &Val<'a>) {
        let Val::Object(entries) = value else { return };
        for (key, child) in &node.children {
            if let Some(member) = lookup(entries, key) {
                if let Some(slot) = child.capture {
                    self.values[slot] = Some(member.clone());
                }
                self.fill_members(child, member);
            }
        }
    }

    /// After a whole read: the members of every node captured whole, from its value.
    fn fill_all_members(&mut self, node: &Node) {
        match node.capture.and_then(|slot| self.values[slot].clone()) {
            Some(value) if !node.children.is_empty() => self.fill_members(node, &value),
            _ => node.children.iter().for_each(|(_, child)| self.fill_all_members(child)),
        }
    }
}

/// Why an input line is not an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

impl InputLayout {
    /// Reads the captured values of one JSON text; they borrow every string without escapes from it.
    /// The event path captured in `slot` (`properties.revenue`), for explanations.
    pub(crate) fn path_of(&self, slot: usize) -> Option<&str> {
        let paths = self.paths.get_or_init(|| {
            fn visit<'n>(node: &'n Node, keys: &mut Vec<&'n str>, paths: &mut [Option<String>]) {
                if let Some(slot) = node.capture {
                    paths[slot] = Some(keys_text(keys));
                }
                for (key, child) in &node.children {
                    keys.push(key);
                    visit(child, keys, paths);
                    keys.pop();
                }
            }
            let mut paths = vec![None; self.slot_count];
            visit(&self.root, &mut Vec::new(), &mut paths);
            paths
        });
        paths.get(slot)?.as_deref()
    }

    pub fn read_str<'a>(&self, text: &'a str) -> Result<Captured<'a>, InputError> {
        let mut captured = Captured::new(self.slot_count);
        if scan::read(&self.root, text, &mut captured).is_ok() {
            return Ok(captured);
        }
        self.read_str_reference(text)
    }

    /// The reference reader, serde_json driven by the trie: what the fast reader must agree with, and what
    /// decides (with serde_json's error messages) every text the fast reader gives up on. It builds every value
    /// it captures.
    pub(crate) fn read_str_reference<'a>(&self, text: &'a str) -> Result<Captured<'a>, InputError> {
        if text.trim_start().as_bytes().first() != Some(&b'{') {
            return Err(not_an_event(text));
        }
        let mut captured = Captured::new(self.slot_count);
        let mut deserializer = serde_json::Deserializer::from_str(text);
        RootSeed { node: &self.root, captured: &mut captured }
            .deserialize(&mut deserializer)
            .map_err(|e| InputError(format!("invalid JSON: {e}")))?;
        deserializer.end().map_err(|e| InputError(format!("invalid JSON: {e}")))?;
        if let Some(slot) = self.root.capture {
            captured.values[slot] = serde_json::from_str(text).ok();
        }
        captured.fill_all_members(&self.root);
        Ok(captured)
    }

    /// Reads the captured values of an already parsed event, borrowing from it.
    pub fn read_value<'a>(&self, event: &'a Value) -> Result<Captured<'a>, InputError> {
        let found = match event {
            Value::Object(_) => None,
            Value::Array(_) => Some("an array"),
            Value::String(_) => Some("a string"),
            Value::Bool(_) => Some("a boolean"),
            Value::Null => Some("null"),
            Value::Number(_) => Some("a number"),
        };
        if let Some(found) = found {
            return Err(not_an_object(found));
        }
        let mut captured = Captured::new(self.slot_count);
        // As the fast reader does with text: an object read whole and by members is taken apart, and built only for
        // the routes that read it whole.
        fn walk<'a>(node: &Node, value: &'a Value, captured: &mut Captured<'a>) {
            if let Some(slot) = node.capture {
                if value.is_object() && !node.children.is_empty() {
                    captured.unbuilt[slot] = Some(Unbuilt::Tree(value));
                } else {
                    captured.values[slot] = Some(Val::from_json(value));
                }
            }
            if let Value::Object(map) = value {
                for (key, child) in &node.children {
                    if let Some(v) = map.get(key) {
                        walk(child, v, captured);
                    }
                }
            }
        }
        walk(&self.root, event, &mut captured);
        Ok(captured)
    }

    /// The slots whose objects the fast reader may leave unbuilt: see [`Captured::build`].
    pub(crate) fn containers(&self) -> &[usize] {
        &self.containers
    }
}

/// Why text that does not start an object is no event: broken JSON, or valid JSON of another kind.
fn not_an_event(text: &str) -> InputError {
    match serde_json::from_str::<serde::de::IgnoredAny>(text) {
        Err(error) => InputError(format!("invalid JSON: {error}")),
        Ok(_) => not_an_object(match text.trim_start().as_bytes().first() {
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            _ => "a number",
        }),
    }
}

fn not_an_object(found: &str) -> InputError {
    InputError(format!("an event must be a JSON object, found {found}"))
}

/// The top level must be an object; below it, anything goes.
struct RootSeed<'n, 'de> {
    node: &'n Node,
    captured: &'n mut Captured<'de>,
}

impl<'de> DeserializeSeed<'de> for RootSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(NodeVisitor { node: self.node, captured: self.captured, root: true })
    }
}

struct NodeSeed<'n, 'de> {
    node: &'n Node,
    captured: &'n mut Captured<'de>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.node.capture {
            Some(slot) => {
                self.captured.values[slot] = Some(Val::deserialize(deserializer)?);
                Ok(())
            }
            None => deserializer.deserialize_any(NodeVisitor { node: self.node, captured: self.captured, root: false }),
        }
    }
}

struct NodeVisitor<'n, 'de> {
    node: &'n Node,
    captured: &'n mut Captured<'de>,
    root: bool,
}

impl NodeVisitor<'_, '_> {
    fn not_object<E: serde::de::Error>(&self, what: &str) -> Result<(), E> {
        if self.root {
            Err(E::custom(format!("an event must be a JSON object, found {what}")))
        } else {
            Ok(())
        }
    }
}

impl<'de> Visitor<'de> for NodeVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // A key that comes twice counts once, as its last occurrence: what every JSON parser that builds a tree
        // (serde_json's `Value`, JavaScript, Python) does, so the relay, `explain` and `engine run` agree.
        let mut seen = Seen::default();
        while let Some(child) = map.next_key_seed(KeySeed { node: self.node })? {
            match child {
                Some(index) => {
                    let node = &self.node.children[index].1;
                    if seen.again(index) {
                        self.captured.forget(node);
                    }
                    map.next_value_seed(NodeSeed { node, captured: self.captured })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.not_object("an array")
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.not_object("a string")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.not_object("a boolean")
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.not_object("a number")
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.not_object("a number")
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.not_object("a number")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.not_object("null")
    }
}

/// Which children of a node an object has shown so far; allocates only past 64 children.
#[derive(Default)]
struct Seen {
    first: u64,
    more: Vec<usize>,
}

impl Seen {
    /// Records `index`; true when it was seen before.
    fn again(&mut self, index: usize) -> bool {
        if index < 64 {
            let bit = 1u64 << index;
            let before = self.first & bit != 0;
            self.first |= bit;
            return before;
        }
        if self.more.contains(&index) {
            return true;
        }
        self.more.push(index);
        false
    }
}

/// Matches an object key against a trie node's children without allocating.
struct KeySeed<'a> {
    node: &'a Node,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.node.child(key))
    }
}

/// The fast reader's value of a whole JSON text, for tests elsewhere that need values borrowed from a text.
#[cfg(test)]
pub(crate) fn scan_value(text: &str) -> Option<Val<'_>> {
    scan::value(text)
}

/// The value at `steps` inside `value`.
pub(crate) fn walk<'v, 'a>(mut value: &'v Val<'a>, steps: &[Step]) -> Option<&'v Val<'a>> {
    for step in steps {
        value = match (step, value) {
            (Step::Key(key), Val::Object(entries)) => lookup(entries, key)?,
            (Step::Index(index), Val::Array(items)) => items.get(*index)?,
            _ => return None,
        };
    }
    Some(value)
}

/// Keys as a path of the mapping language: `properties."order id"` for keys that are not plain names.
pub(crate) fn keys_text(keys: &[&str]) -> String {
    let mut text = String::new();
    for key in keys {
        if !text.is_empty() {
            text.push('.');
        }
        let plain = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if plain {
            text.push_str(key);
        } else {
            text.push_str(&serde_json::Value::from(*key).to_string());
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Step {
        Step::Key(k.to_string())
    }

    #[test]
    fn a_key_head_is_the_key_zero_padded_and_decides_with_the_rest_which_child() {
        for text in ["", "a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh", "abcdefghi", "a\0\0\u{e9}"]
        {
            let mut padded = [0u8; 8];
            let n = text.len().min(8);
            padded[..n].copy_from_slice(&text.as_bytes()[..n]);
            assert_eq!(key_head(text.as_bytes()), u64::from_le_bytes(padded), "{text:?}");
        }
        let names = ["a", "a\0", "ab", "ba", "type", "typf", "timestamp", "timestampZ", "userAgent1", "userAgent2"];
        let node = Node::new(names.iter().map(|k| (k.to_string(), Node::default())).collect(), None);
        for name in names {
            let found = node.child(name).map(|index| node.children[index].0.as_str());
            assert_eq!(found, Some(name));
        }
        for absent in ["", "b", "\0", "a\0\0", "typ", "types", "timestamq", "userAgent3", "userAgent"] {
            assert_eq!(node.child(absent), None, "{absent:?}");
        }
    }

    #[test]
    fn reads_only_the_used_paths_and_nests_longer_paths_in_shorter_ones() {
        let mut paths = InputPaths::default();
        let url = paths.add(vec![key("context"), key("page"), key("url")]);
        let consent = paths.add(vec![key("context"), key("consent"), key("marketing")]);
        let whole_consent = paths.add(vec![key("context"), key("consent")]);
        let first_price = paths.add(vec![key("properties"), key("products"), Step::Index(0), key("price")]);
        let (layout, resolved) = paths.build();
        let mut slots = layout
            .read_str(
                r#"{"context":{"page":{"url":"u","title":"t"},"consent":{"marketing":true}},
                   "properties":{"products":[{"price":1.5}],"other":[1,2,{"a":null}]},"extra":"x"}"#,
            )
            .unwrap();
        assert_eq!(layout.containers(), &[resolved[whole_consent].0], "consent is read whole and by a member");
        let read = |slots: &Captured<'_>, id: usize| {
            let (slot, rest) = &resolved[id];
            slots.values[*slot].as_ref().and_then(|v| walk(v, rest)).map(Val::to_json)
        };
        assert_eq!(read(&slots, whole_consent), None, "taken apart, not built");
        assert_eq!(read(&slots, consent), Some(Value::from(true)));
        slots.build(layout.containers());
        let read = |id: usize| read(&slots, id);
        assert_eq!(read(url), Some(Value::from("u")));
        assert_eq!(read(consent), Some(Value::from(true)));
        assert_eq!(read(whole_consent), Some(serde_json::json!({"marketing": true})));
        assert_eq!(read(first_price), Some(Value::from(1.5)));
    }

    #[test]
    fn a_repeated_key_counts_as_its_last_occurrence_as_in_a_parsed_tree() {
        let mut paths = InputPaths::default();
        let revenue = paths.add(vec![key("properties"), key("revenue")]);
        let currency = paths.add(vec![key("properties"), key("currency")]);
        let kind = paths.add(vec![key("type")]);
        let traits = paths.add(vec![key("traits")]);
        let (layout, resolved) = paths.build();
        let text = r#"{"type":"page","properties":{"revenue":1,"currency":"EUR"},"type":"track",
                       "properties":{"revenue":2},"traits":{"email":"a@b.c","email":"d@e.f"}}"#;
        let from_text = layout.read_str(text).unwrap();
        let from_reference = layout.read_str_reference(text).unwrap();
        let tree: Value = serde_json::from_str(text).unwrap();
        let from_tree = layout.read_value(&tree).unwrap();
        for slots in [&from_text, &from_reference, &from_tree] {
            let read = |id: usize| {
                let (slot, rest) = &resolved[id];
                slots.values[*slot].as_ref().and_then(|v| walk(v, rest)).map(Val::to_json)
            };
            assert_eq!(read(kind), Some(Value::from("track")));
            assert_eq!(read(revenue), Some(Value::from(2)));
            assert_eq!(read(currency), None, "the last `properties` has no currency: objects are not merged");
            assert_eq!(read(traits), Some(serde_json::json!({"email": "d@e.f"})));
        }
    }

    #[test]
    fn rejects_non_objects_and_broken_json() {
        let (layout, _) = InputPaths::default().build();
        assert!(layout.read_str("[1,2]").unwrap_err().0.contains("JSON object"));
        assert!(layout.read_str("{\"a\":").unwrap_err().0.contains("invalid JSON"));
        assert!(layout.read_str("{} x").is_err());
        assert!(layout.read_str("{\"a\": [1, {\"b\": 2}]}").is_ok());
    }
}
