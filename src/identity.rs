//! Identity memory: what the engine learned about a visitor from earlier events (hashed identifiers from an
//! identify call, the `oppref` of the landing page), applied to the visitor's later events. The engine only
//! talks to the [`IdentityStore`] trait; `engine run` keeps it in memory for one stream and the relay backs it
//! with durable storage. Only values that already passed the mapping's checks are stored: hashed and normalised
//! identifiers, never raw email or phone.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::functions::Val;

/// One remembered output field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RememberedField {
    /// The output field, e.g. `user.email`.
    pub field: String,
    pub value: Value,
    /// Event time (epoch ms) of the event that taught it.
    pub seen_ms: i64,
    /// Event time after which it no longer applies.
    pub expires_ms: Option<i64>,
}

/// Everything remembered about one visitor key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub fields: Vec<RememberedField>,
    /// Every key known to belong to the same visitor (its anonymous ids and user id), so that what one key
    /// learns later reaches the others.
    #[serde(default)]
    pub keys: Vec<String>,
}

impl Profile {
    /// The most keys one visitor keeps linked; past it the oldest links are dropped.
    pub const MAX_KEYS: usize = 16;
}

impl Profile {
    /// The freshest value of `field` that applies at event time `at_ms`. A value with a lifetime (a click id)
    /// applies from the event that taught it until it expires, so a conversion that happened before the click does
    /// not get the click's id; a value without one (a hashed email) describes the visitor at any time.
    pub fn get(&self, field: &str, at_ms: i64) -> Option<&RememberedField> {
        self.fields
            .iter()
            .filter(|f| f.field == field && f.expires_ms.is_none_or(|e| f.seen_ms <= at_ms && at_ms <= e))
            .max_by_key(|f| f.seen_ms)
    }

    /// Links `key` to this visitor as its most recent key, keeping the most recent [`Profile::MAX_KEYS`]; true
    /// when that changed the keys.
    pub fn link(&mut self, key: &str) -> bool {
        if self.keys.last().is_some_and(|last| last == key) {
            return false;
        }
        if let Some(position) = self.keys.iter().position(|k| k == key) {
            self.keys.remove(position);
        }
        self.keys.push(key.to_string());
        if self.keys.len() > Self::MAX_KEYS {
            self.keys.remove(0);
        }
        true
    }

    /// Records `field`, replacing an older value; an out-of-order older event does not overwrite a newer one.
    /// True when that changed the profile.
    pub fn set(&mut self, new: RememberedField) -> bool {
        match self.fields.iter_mut().find(|f| f.field == new.field) {
            Some(existing) if existing.seen_ms <= new.seen_ms && *existing != new => {
                *existing = new;
                true
            }
            Some(_) => false,
            None => {
                self.fields.push(new);
                true
            }
        }
    }

    /// Records that an event at `seen_ms` produced `value` for `field`, as [`Profile::set`] does, without building
    /// a new field when the profile already holds that value: then only its times move. True when that changed
    /// the profile.
    pub fn observe(&mut self, field: &str, value: &Val<'_>, seen_ms: i64, expires_ms: Option<i64>) -> bool {
        let same = |kept: &Value| match (kept, value) {
            (Value::String(kept), Val::Str(value)) => kept == value,
            (kept, value) => *kept == value.to_json(),
        };
        match self.fields.iter_mut().find(|f| f.field == field) {
            Some(existing) if same(&existing.value) => {
                if existing.seen_ms > seen_ms || (existing.seen_ms == seen_ms && existing.expires_ms == expires_ms) {
                    return false;
                }
                existing.seen_ms = seen_ms;
                existing.expires_ms = expires_ms;
                true
            }
            _ => self.set(RememberedField { field: field.to_string(), value: value.to_json(), seen_ms, expires_ms }),
        }
    }

    /// Folds another profile of the same visitor into this one, keeping the freshest value of each field.
    pub fn merge(&mut self, other: &Profile) {
        if self.fields.is_empty() && self.keys.is_empty() {
            // What merging into nothing gives: `other`'s fields and keys, unique and in order already.
            self.clone_from(other);
            return;
        }
        for field in &other.fields {
            self.set(field.clone());
        }
        for key in &other.keys {
            if !self.keys.contains(key) {
                self.link(key);
            }
        }
    }
}

/// Where identity memory lives. Keys are `anon:<anonymousId>` and `user:<userId>`.
pub trait IdentityStore {
    fn load(&mut self, key: &str) -> Option<Profile>;
    fn store(&mut self, key: &str, profile: Profile);

    /// Folds what is remembered under `key` into `profile` and adds the keys linked to it there to `linked`; false
    /// when nothing is.
    fn merge_into(&mut self, key: &str, profile: &mut Profile, linked: &mut Vec<String>) -> bool {
        let Some(stored) = self.load(key) else { return false };
        profile.merge(&stored);
        linked.extend(stored.keys);
        true
    }

    /// Everything remembered about the visitor known by `keys`: what each key holds, following the links between
    /// keys, so that what a visitor's anonymous id learned after an identify reaches its user id on another device,
    /// and back. At most [`Profile::MAX_KEYS`] keys are read.
    fn recall_visitor(&mut self, keys: &[String]) -> Profile {
        let mut profile = Profile::default();
        let mut loaded: Vec<String> = Vec::with_capacity(keys.len());
        let mut pending = keys.to_vec();
        let mut linked = Vec::new();
        while let Some(key) = pending.pop() {
            if loaded.contains(&key) || loaded.len() >= Profile::MAX_KEYS {
                continue;
            }
            if self.merge_into(&key, &mut profile, &mut linked) {
                pending.extend(linked.drain(..).filter(|k| !loaded.contains(k)));
            }
            loaded.push(key);
        }
        profile
    }

    /// Gives back the profile [`IdentityStore::recall_visitor`] gave, which every recall is followed by; when
    /// `changed`, it is kept under every one of its keys.
    fn keep_visitor(&mut self, profile: Profile, changed: bool) {
        if !changed {
            return;
        }
        let keys = profile.keys.clone();
        if let Some((last, others)) = keys.split_last() {
            for key in others {
                self.store(key, profile.clone());
            }
            self.store(last, profile);
        }
    }
}

/// Identity memory for one process, bounded twice: by a number of visitor keys and by a memory budget in bytes.
/// Past either, the least recently seen key is forgotten, so memory stays within the budget however long the
/// stream and however many visitors it has.
///
/// A visitor's keys share one profile: keeping a visitor writes its profile once, not once per key, and recalling
/// it reads one profile however many keys point to it. A visitor whose keys all point to one profile (the usual
/// case) is lent out by [`IdentityStore::recall_visitor`] rather than copied, and put back in its place by
/// [`IdentityStore::keep_visitor`] without looking its keys up again.
pub struct MemoryStore {
    /// Each key and the profile it points to in `profiles`, least recently seen first out.
    keys: KeyTable,
    /// Profiles, each with how many keys point to it; a profile no key points to is dropped and its place reused.
    profiles: Vec<Shared>,
    free: Vec<usize>,
    /// The place of the profile the last recall lent out, and the keys it was asked for that point there.
    lent: Option<Lent>,
    capacity: usize,
    budget: usize,
    /// The estimated heap taken by the keys and profiles held, kept within `budget`.
    used: usize,
}

#[derive(Default)]
struct Shared {
    profile: Profile,
    holders: usize,
    /// [`MemoryStore::profile_footprint`] of `profile`, counted in `used`.
    footprint: usize,
}

struct Lent {
    index: usize,
    /// The recalled keys found pointing to `index`; they were seen at the recall.
    keys: Vec<String>,
}

impl MemoryStore {
    pub const DEFAULT_CAPACITY: usize = 200_000;
    /// 64 MiB: about 80,000 visitors that identified with an email and a phone number.
    pub const DEFAULT_BUDGET: usize = 64 << 20;

    /// At most `capacity` visitor keys, within the default budget.
    pub fn new(capacity: usize) -> Self {
        Self::bounded(capacity, Self::DEFAULT_BUDGET)
    }

    /// At most `capacity` visitor keys, taking at most about `budget` bytes.
    pub fn bounded(capacity: usize, budget: usize) -> Self {
        MemoryStore {
            keys: KeyTable::default(),
            profiles: Vec::new(),
            free: Vec::new(),
            lent: None,
            capacity: capacity.max(1),
            budget,
            used: 0,
        }
    }

    /// How many visitor keys are remembered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.len() == 0
    }

    /// The estimated bytes held, which [`MemoryStore::bounded`]'s budget limits.
    pub fn used(&self) -> usize {
        self.used
    }

    /// The heap one key takes, estimated from its length: the string's allocation with the allocator's overhead
    /// and the key table's own (its slot, its marks in the order of use). Measured against peak RSS on a million distinct visitors
    /// (benches/README.md), with [`MemoryStore::profile_footprint`].
    fn key_footprint(key: &str) -> usize {
        const ENTRY: usize = 176;
        const STRING: usize = 56;
        ENTRY + STRING + key.len()
    }

    /// The heap one profile takes: its place in the list of profiles, each field's fixed part, each string's
    /// allocation with the allocator's overhead.
    fn profile_footprint(profile: &Profile) -> usize {
        const SLOT: usize = 176;
        const STRING: usize = 56;
        const FIELD: usize = 96;
        let value = |value: &Value| match value {
            Value::String(text) => STRING + text.len(),
            other => STRING + other.to_string().len(),
        };
        let fields: usize = profile.fields.iter().map(|f| FIELD + STRING + f.field.len() + value(&f.value)).sum();
        let keys: usize = profile.keys.iter().map(|k| STRING + k.len()).sum();
        SLOT + fields + keys
    }

    /// A place for `profile`, held by no key yet.
    fn add_profile(&mut self, profile: Profile) -> usize {
        let footprint = Self::profile_footprint(&profile);
        self.used += footprint;
        let shared = Shared { profile, holders: 0, footprint };
        match self.free.pop() {
            Some(index) => {
                self.profiles[index] = shared;
                index
            }
            None => {
                self.profiles.push(shared);
                self.profiles.len() - 1
            }
        }
    }

    /// Replaces the profile at `index`, accounting for the one it replaces.
    fn replace_profile(&mut self, index: usize, profile: Profile) {
        let footprint = Self::profile_footprint(&profile);
        let shared = &mut self.profiles[index];
        self.used = self.used.saturating_sub(shared.footprint) + footprint;
        shared.profile = profile;
        shared.footprint = footprint;
    }

    /// One key fewer points to the profile at `index`; the last one takes it along.
    fn release(&mut self, index: usize) {
        let shared = &mut self.profiles[index];
        shared.holders -= 1;
        if shared.holders == 0 {
            let Shared { footprint, .. } = std::mem::take(shared);
            self.used = self.used.saturating_sub(footprint);
            self.free.push(index);
        }
    }

    /// Points `key` at the profile at `index`, seen now.
    fn point(&mut self, key: &str, index: usize) {
        match self.keys.set(key, index) {
            Some(before) if before == index => {}
            Some(before) => {
                self.profiles[index].holders += 1;
                self.release(before);
            }
            None => {
                self.profiles[index].holders += 1;
                self.used += Self::key_footprint(key);
            }
        }
    }

    fn forget_beyond_bounds(&mut self) {
        while self.used > self.budget || self.keys.len() > self.capacity {
            let Some((key, index)) = self.keys.pop_oldest() else { break };
            self.used = self.used.saturating_sub(Self::key_footprint(&key));
            self.release(index);
        }
    }

    /// A profile lent out and not given back can only be lost: every recall is followed by a keep.
    fn settle_loan(&mut self) {
        debug_assert!(self.lent.is_none(), "a recalled visitor was not given back");
        self.lent = None;
    }

    /// The profiles `keys` point to, following the links between keys as the trait's recall does, each once; and
    /// which of `keys` the store holds.
    fn profiles_of<'k>(&mut self, keys: &'k [String]) -> (Vec<usize>, Vec<&'k String>) {
        let mut found: Vec<usize> = Vec::with_capacity(1);
        let mut held: Vec<&String> = Vec::with_capacity(keys.len());
        let mut linked: Vec<String> = Vec::new();
        let mut done: Vec<String> = Vec::new();
        let mut read = 0;
        let mut visit = |store: &mut MemoryStore, key: &str, linked: &mut Vec<String>, done: &[String]| {
            let Some(index) = store.keys.get(key) else { return false };
            if found.contains(&index) {
                return true;
            }
            found.push(index);
            for other in &store.profiles[index].profile.keys {
                let known = other == key || keys.contains(other) || done.contains(other);
                if !known && !linked.contains(other) {
                    linked.push(other.clone());
                }
            }
            true
        };
        for key in keys.iter().rev().take(Profile::MAX_KEYS) {
            read += 1;
            if visit(self, key, &mut linked, &done) {
                held.push(key);
            }
        }
        while let Some(key) = linked.pop() {
            if read >= Profile::MAX_KEYS {
                break;
            }
            read += 1;
            visit(self, &key, &mut linked, &done);
            done.push(key);
        }
        (found, held)
    }
}

/// Visitor keys, each pointing to a profile, forgotten least recently seen first. A key's text, its profile and
/// when it was last seen sit together in the hash table's slot, so finding a key reads its slot and its text and
/// nothing else (a linked-list LRU also reads and relinks its neighbours on every look-up, each a cache miss on a
/// table of tens of thousands of visitors). The order of use is a queue of (hash, seen) marks, one per look-up; a
/// mark whose key was seen again since is stale and skipped, and the queue is rebuilt from the table when stale
/// marks outnumber the keys.
#[derive(Default)]
struct KeyTable {
    table: hashbrown::HashTable<KeyEntry>,
    hasher: hashbrown::DefaultHashBuilder,
    order: std::collections::VecDeque<(u64, u64)>,
    clock: u64,
}

struct KeyEntry {
    hash: u64,
    /// The mark of the last look-up: unique, increasing.
    seen: u64,
    profile: usize,
    key: Box<str>,
}

impl KeyTable {
    fn len(&self) -> usize {
        self.table.len()
    }

    fn hash(&self, key: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    /// The profile `key` points to, seen now.
    fn get(&mut self, key: &str) -> Option<usize> {
        let hash = self.hash(key);
        let entry = self.table.find_mut(hash, |entry| &*entry.key == key)?;
        self.clock += 1;
        entry.seen = self.clock;
        let profile = entry.profile;
        self.order.push_back((hash, self.clock));
        self.compact();
        Some(profile)
    }

    /// The profile `key` points to, without counting as seen.
    fn peek(&self, key: &str) -> Option<usize> {
        let hash = self.hash(key);
        self.table.find(hash, |entry| &*entry.key == key).map(|entry| entry.profile)
    }

    /// Points `key` at `profile`, seen now; what it pointed to before, `None` for a new key.
    fn set(&mut self, key: &str, profile: usize) -> Option<usize> {
        let hash = self.hash(key);
        self.clock += 1;
        let seen = self.clock;
        let before = match self.table.find_mut(hash, |entry| &*entry.key == key) {
            Some(entry) => {
                entry.seen = seen;
                Some(std::mem::replace(&mut entry.profile, profile))
            }
            None => {
                let entry = KeyEntry { hash, seen, profile, key: key.into() };
                self.table.insert_unique(hash, entry, |entry| entry.hash);
                None
            }
        };
        self.order.push_back((hash, seen));
        self.compact();
        before
    }

    /// Forgets the least recently seen key: its text and the profile it pointed to.
    fn pop_oldest(&mut self) -> Option<(Box<str>, usize)> {
        while let Some((hash, seen)) = self.order.pop_front() {
            if let Ok(entry) = self.table.find_entry(hash, |entry| entry.seen == seen) {
                let (KeyEntry { key, profile, .. }, _) = entry.remove();
                return Some((key, profile));
            }
        }
        None
    }

    /// Rebuilds the queue from the table once stale marks outnumber the keys, keeping it within twice the keys.
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.table.len() + 64 {
            return;
        }
        let mut live: Vec<(u64, u64)> = self.table.iter().map(|entry| (entry.seen, entry.hash)).collect();
        live.sort_unstable();
        self.order.clear();
        self.order.extend(live.into_iter().map(|(seen, hash)| (hash, seen)));
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(Self::DEFAULT_CAPACITY)
    }
}

impl IdentityStore for MemoryStore {
    fn load(&mut self, key: &str) -> Option<Profile> {
        let index = self.keys.get(key)?;
        Some(self.profiles[index].profile.clone())
    }

    /// `key` gets a profile of its own, whatever other keys it was shared with.
    fn store(&mut self, key: &str, profile: Profile) {
        self.settle_loan();
        match self.keys.peek(key) {
            Some(index) if self.profiles[index].holders == 1 => {
                self.keys.get(key);
                self.replace_profile(index, profile);
            }
            _ => {
                let index = self.add_profile(profile);
                self.point(key, index);
            }
        }
        self.forget_beyond_bounds();
    }

    /// As the trait does, but a profile several keys share is read once, and a visitor with one profile is lent.
    fn recall_visitor(&mut self, keys: &[String]) -> Profile {
        self.settle_loan();
        let (found, held) = self.profiles_of(keys);
        match found[..] {
            [] => Profile::default(),
            [index] => {
                // With one profile found, every key the store holds points to it.
                let keys = held.into_iter().cloned().collect();
                self.lent = Some(Lent { index, keys });
                std::mem::take(&mut self.profiles[index].profile)
            }
            ref several => {
                let mut profile = Profile::default();
                for &index in several {
                    profile.merge(&self.profiles[index].profile);
                }
                profile
            }
        }
    }

    /// Puts a lent profile back in its place; writes a changed one once and points every one of its keys at it.
    fn keep_visitor(&mut self, profile: Profile, changed: bool) {
        let lent = self.lent.take();
        if !changed {
            if let Some(Lent { index, .. }) = lent {
                self.profiles[index].profile = profile;
            }
            return;
        }
        let (index, seen) = match lent {
            Some(Lent { index, keys }) => {
                self.replace_profile(index, profile);
                (index, keys)
            }
            None => {
                let held = profile.keys.iter().rev().find_map(|key| self.keys.peek(key));
                match held {
                    Some(index) => {
                        self.replace_profile(index, profile);
                        (index, Vec::new())
                    }
                    None => (self.add_profile(profile), Vec::new()),
                }
            }
        };
        for position in 0..self.profiles[index].profile.keys.len() {
            let key = &self.profiles[index].profile.keys[position];
            // A key the recall found pointing here was seen just now: it needs no second lookup.
            if !seen.contains(key) {
                let key = key.clone();
                self.point(&key, index);
            }
        }
        if self.profiles[index].holders == 0 {
            // A profile without keys: nothing points to it, so it is not kept.
            self.profiles[index].holders = 1;
            self.release(index);
        }
        self.forget_beyond_bounds();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, value: &str, seen: i64, expires: Option<i64>) -> RememberedField {
        RememberedField { field: name.into(), value: Value::from(value), seen_ms: seen, expires_ms: expires }
    }

    #[test]
    fn keeps_the_freshest_value_and_honours_lifetimes() {
        let mut profile = Profile::default();
        profile.set(field("oppref", "new", 200, Some(300)));
        profile.set(field("oppref", "old", 100, Some(200)));
        assert_eq!(profile.get("oppref", 250).unwrap().value, "new");
        assert!(profile.get("oppref", 301).is_none());
        assert!(profile.get("oppref", 150).is_none(), "learned after the event it would be applied to");
    }

    #[test]
    fn memory_store_stays_within_its_budget() {
        let profile = |n: usize| Profile {
            fields: vec![field("user.email", &format!("{n:064x}"), 1, None)],
            keys: vec![format!("anon:{n:03}")],
        };
        let one = MemoryStore::key_footprint("anon:000") + MemoryStore::profile_footprint(&profile(0));
        let mut store = MemoryStore::bounded(usize::MAX, one * 10);
        for n in 0..100 {
            store.store(&format!("anon:{n:03}"), profile(n));
            assert!(store.used() <= one * 10, "{} over {}", store.used(), one * 10);
        }
        assert_eq!(store.len(), 10, "the ten most recent visitors fit");
        assert!(store.load("anon:099").is_some() && store.load("anon:089").is_none());
        // Replacing a profile accounts for the one it replaces.
        for _ in 0..5 {
            store.store("anon:099", profile(99));
        }
        assert_eq!(store.used(), one * 10);
    }

    fn visitor(keys: &[&str], email: &str, seen: i64) -> Profile {
        Profile {
            fields: vec![field("user.email", email, seen, None)],
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn a_visitors_keys_share_one_profile_counted_once() {
        let mut store = MemoryStore::default();
        let profile = visitor(&["anon:a", "user:u"], "e1", 1);
        store.keep_visitor(profile.clone(), true);
        assert_eq!(store.len(), 2);
        assert_eq!(store.load("anon:a"), Some(profile.clone()));
        assert_eq!(store.load("user:u"), Some(profile.clone()));
        let expected = MemoryStore::profile_footprint(&profile)
            + MemoryStore::key_footprint("anon:a")
            + MemoryStore::key_footprint("user:u");
        assert_eq!(store.used(), expected);

        // Recalled by either key, changed and kept: both keys see the change, and the accounting follows it.
        let mut recalled = store.recall_visitor(&keys(&["user:u"]));
        assert_eq!(recalled, profile);
        recalled.set(field("user.phone_number", "p1", 2, None));
        store.keep_visitor(recalled.clone(), true);
        assert_eq!(store.load("anon:a"), Some(recalled.clone()));
        let expected = MemoryStore::profile_footprint(&recalled)
            + MemoryStore::key_footprint("anon:a")
            + MemoryStore::key_footprint("user:u");
        assert_eq!(store.used(), expected);

        // Recalled and given back unchanged: nothing moves.
        let again = store.recall_visitor(&keys(&["anon:a", "user:u"]));
        assert_eq!(again, recalled);
        store.keep_visitor(again, false);
        assert_eq!(store.load("user:u"), Some(recalled));
        assert_eq!(store.used(), expected);
    }

    #[test]
    fn linking_two_visitors_merges_them_and_frees_what_no_key_points_to() {
        let mut store = MemoryStore::default();
        store.keep_visitor(visitor(&["anon:a"], "old", 1), true);
        store.keep_visitor(visitor(&["anon:b", "user:u"], "new", 2), true);
        let before = store.used();

        // An event of anon:a as user:u: the two visitors are one; the freshest email wins.
        let mut merged = store.recall_visitor(&keys(&["anon:a", "user:u"]));
        assert_eq!(merged.get("user.email", 3).map(|f| f.value.clone()), Some(Value::from("new")));
        assert!(merged.keys.iter().any(|k| k == "anon:b"), "the link through user:u is followed: {merged:?}");
        merged.link("anon:a");
        merged.link("user:u");
        store.keep_visitor(merged.clone(), true);
        for key in ["anon:a", "anon:b", "user:u"] {
            assert_eq!(store.load(key), Some(merged.clone()), "{key}");
        }
        // One profile is left: the one only anon:a pointed to went with its last key.
        let expected = MemoryStore::profile_footprint(&merged)
            + ["anon:a", "anon:b", "user:u"].iter().map(|k| MemoryStore::key_footprint(k)).sum::<usize>();
        assert_eq!(store.used(), expected);
        assert!(store.used() < before + MemoryStore::profile_footprint(&merged));
    }

    #[test]
    fn forgetting_one_key_of_a_visitor_keeps_its_profile_for_the_others() {
        let profile = visitor(&["anon:a", "user:u"], "e1", 1);
        let two = MemoryStore::key_footprint("anon:a") * 2 + MemoryStore::profile_footprint(&profile);
        let mut store = MemoryStore::bounded(2, usize::MAX);
        store.keep_visitor(profile.clone(), true);
        store.store("anon:z", Profile::default());
        assert_eq!(store.len(), 2);
        assert!(store.load("anon:a").is_none(), "the least recently seen key goes first");
        assert_eq!(store.load("user:u"), Some(profile));
        assert!(
            store.used()
                < two + MemoryStore::key_footprint("anon:z") + MemoryStore::profile_footprint(&Profile::default())
        );
    }

    /// What [`KeyTable`] does, the plain way: keys in order of use, most recent last.
    #[derive(Default)]
    struct Model(Vec<(String, usize)>);

    impl Model {
        fn get(&mut self, key: &str) -> Option<usize> {
            let position = self.0.iter().position(|(k, _)| k == key)?;
            let entry = self.0.remove(position);
            self.0.push(entry);
            self.0.last().map(|(_, profile)| *profile)
        }

        fn set(&mut self, key: &str, profile: usize) -> Option<usize> {
            let before = self.get(key);
            match before {
                Some(_) => self.0.last_mut().expect("just used").1 = profile,
                None => self.0.push((key.to_string(), profile)),
            }
            before
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// Looked up, set and forgotten in any order, over few keys so that they are seen again and again (and the
        /// queue of marks is rebuilt many times), the table forgets keys in exactly least-recently-seen order.
        #[test]
        fn the_key_table_forgets_the_least_recently_seen_key_first(
            ops in proptest::collection::vec((0u8..16, 0usize..12, 0usize..5), 1..1500)
        ) {
            let (mut table, mut model) = (KeyTable::default(), Model::default());
            for (op, key, profile) in ops {
                let key = format!("anon:{key}");
                // Forgetting is rare, as it is in use, so that stale marks pile up and the queue is rebuilt.
                match op {
                    0..=6 => proptest::prop_assert_eq!(table.get(&key), model.get(&key)),
                    7..=13 => proptest::prop_assert_eq!(table.set(&key, profile), model.set(&key, profile)),
                    14 => {
                        let expected = (!model.0.is_empty()).then(|| model.0.remove(0));
                        let popped = table.pop_oldest().map(|(k, p)| (k.to_string(), p));
                        proptest::prop_assert_eq!(popped, expected);
                    }
                    _ => {
                        let expected = model.0.iter().find(|(k, _)| *k == key).map(|(_, p)| *p);
                        proptest::prop_assert_eq!(table.peek(&key), expected);
                    }
                }
                proptest::prop_assert_eq!(table.len(), model.0.len());
                proptest::prop_assert!(table.order.len() <= 2 * table.len() + 65, "the queue of marks stays bounded");
            }
        }
    }

    #[test]
    fn memory_store_is_bounded() {
        let mut store = MemoryStore::new(2);
        for key in ["a", "b", "c"] {
            store.store(key, Profile::default());
        }
        assert_eq!(store.len(), 2);
        assert!(store.load("a").is_none());
        assert!(store.load("c").is_some());
    }
}
