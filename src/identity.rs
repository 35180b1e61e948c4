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
    /// when nothing is. A store that keeps profiles in memory merges without copying one out first.
    fn merge_into(&mut self, key: &str, profile: &mut Profile, linked: &mut Vec<String>) -> bool {
        let Some(stored) = self.load(key) else { return false };
        profile.merge(&stored);
        linked.extend(stored.keys);
        true
    }
}

/// Identity memory for one process, bounded twice: by a number of visitor keys and by a memory budget in bytes.
/// Past either, the least recently seen key is forgotten, so memory stays within the budget however long the
/// stream and however many visitors it has.
pub struct MemoryStore {
    profiles: lru::LruCache<String, Profile>,
    capacity: usize,
    budget: usize,
    /// The estimated heap taken by the keys and profiles held, kept within `budget`.
    used: usize,
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
        MemoryStore { profiles: lru::LruCache::unbounded(), capacity: capacity.max(1), budget, used: 0 }
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// The estimated bytes held, which [`MemoryStore::bounded`]'s budget limits.
    pub fn used(&self) -> usize {
        self.used
    }

    /// The heap one key and its profile take, estimated from their lengths: each string's allocation with the
    /// allocator's overhead, each field's and key's fixed part, and the cache's own entry (hash slot, list links).
    /// Measured against peak RSS on a million distinct visitors (benches/README.md).
    fn footprint(key: &str, profile: &Profile) -> usize {
        const ENTRY: usize = 256;
        const STRING: usize = 56;
        const FIELD: usize = 96;
        let value = |value: &Value| match value {
            Value::String(text) => STRING + text.len(),
            other => STRING + other.to_string().len(),
        };
        let fields: usize = profile.fields.iter().map(|f| FIELD + STRING + f.field.len() + value(&f.value)).sum();
        let keys: usize = profile.keys.iter().map(|k| STRING + k.len()).sum();
        ENTRY + STRING + key.len() + fields + keys
    }

    fn forget_beyond_bounds(&mut self) {
        while self.used > self.budget || self.profiles.len() > self.capacity {
            let Some((key, profile)) = self.profiles.pop_lru() else { break };
            self.used = self.used.saturating_sub(Self::footprint(&key, &profile));
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(Self::DEFAULT_CAPACITY)
    }
}

impl IdentityStore for MemoryStore {
    fn load(&mut self, key: &str) -> Option<Profile> {
        self.profiles.get(key).cloned()
    }

    fn store(&mut self, key: &str, profile: Profile) {
        let added = Self::footprint(key, &profile);
        match self.profiles.get_mut(key) {
            Some(kept) => {
                let removed = Self::footprint(key, kept);
                *kept = profile;
                self.used = self.used.saturating_sub(removed);
            }
            None => {
                self.profiles.put(key.to_string(), profile);
            }
        }
        self.used += added;
        self.forget_beyond_bounds();
    }

    fn merge_into(&mut self, key: &str, profile: &mut Profile, linked: &mut Vec<String>) -> bool {
        let Some(stored) = self.profiles.get(key) else { return false };
        profile.merge(stored);
        linked.extend(stored.keys.iter().cloned());
        true
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
        let one = MemoryStore::footprint("anon:000", &profile(0));
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
