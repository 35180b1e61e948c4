//! Identity memory: what the engine learned about a visitor from earlier events (hashed identifiers from an
//! identify call, the `oppref` of the landing page), applied to the visitor's later events. The engine only
//! talks to the [`IdentityStore`] trait; `engine run` keeps it in memory for one stream and the relay backs it
//! with durable storage. Only values that already passed the mapping's checks are stored: hashed and normalised
//! identifiers, never raw email or phone.

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

    /// Folds another profile of the same visitor into this one, keeping the freshest value of each field.
    pub fn merge(&mut self, other: &Profile) {
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

/// Identity memory for one process, bounded: past `capacity` visitor keys the least recently seen is forgotten,
/// so memory stays constant however long the stream.
pub struct MemoryStore {
    profiles: lru::LruCache<String, Profile>,
}

impl MemoryStore {
    pub const DEFAULT_CAPACITY: usize = 200_000;

    pub fn new(capacity: usize) -> Self {
        MemoryStore { profiles: lru::LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("at least one")) }
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
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
        match self.profiles.get_mut(key) {
            Some(kept) => *kept = profile,
            None => {
                self.profiles.put(key.to_string(), profile);
            }
        }
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
