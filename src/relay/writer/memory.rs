//! Identity memory as the pipelined writer's mapper sees it: the store's rows as committed, read outside its
//! transactions, overlaid with what the groups still on their way to the committer wrote. A profile a group wrote is
//! held as staged until the committer says that group committed; it is never dropped before, since until then it is
//! the only copy there is. After a failed commit every copy is dropped and read afresh.

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::identity::{IdentityStore, Profile};
use crate::relay::store::{touch_time, StoreError, StoredProfile};

/// Reads rows as committed, in one go for many keys.
type Read<'r> = Box<dyn Fn(&[String]) -> Result<Vec<StoredProfile>, StoreError> + 'r>;

/// A visitor key's profile as the mapper knows it. A visitor's keys share one profile: keeping a visitor of three
/// keys, and handing its rows to the committer, was six copies of it.
#[derive(Default)]
struct Held {
    profile: Option<Arc<Profile>>,
    touched_ms: Option<u64>,
    /// The last group that wrote it, until that group is known to be committed.
    staged: Option<u64>,
}

impl Held {
    fn committed(stored: StoredProfile) -> Held {
        Held { profile: stored.profile.map(Arc::new), touched_ms: stored.touched_ms, staged: None }
    }
}

/// A profile one group wrote, for the committer to store.
pub(super) struct Write {
    pub key: String,
    pub profile: Arc<Profile>,
    pub touched_ms: u64,
}

/// Bounded to [`Recollection::KEYS`] keys in two generations: a key not used while the newer one filled up is
/// dropped with the older one, unless it is staged.
pub(super) struct Recollection<'r> {
    read: Read<'r>,
    newer: HashMap<String, Held>,
    older: HashMap<String, Held>,
    /// Every write not yet known to be committed, as (group, key), in the order of the groups.
    staged: VecDeque<(u64, String)>,
    /// The group being mapped, and the time its rows are written at.
    group: u64,
    now_ms: u64,
    /// The keys the group being mapped wrote.
    written: Vec<String>,
    /// The first read that failed in the group being mapped: the group fails with it.
    failure: Option<StoreError>,
    /// What is held no longer matches the store, whatever is staged: a group was mapped and then not handed over.
    stale: bool,
    /// The store's identity generation the committed copies were read in.
    generation: u64,
}

impl<'r> Recollection<'r> {
    /// About 40 MB at most, for profiles of two keys and three fields; most keys (visitors that never identified
    /// nor came from an ad) have no row and take a tenth of that.
    const KEYS: usize = 65_536;

    pub fn new(read: impl Fn(&[String]) -> Result<Vec<StoredProfile>, StoreError> + 'r) -> Self {
        Recollection {
            read: Box::new(read),
            newer: HashMap::new(),
            older: HashMap::new(),
            staged: VecDeque::new(),
            group: 0,
            now_ms: 0,
            written: Vec::new(),
            failure: None,
            stale: false,
            generation: 0,
        }
    }

    /// Starts mapping `group` at `now_ms`.
    pub fn begin(&mut self, group: u64, now_ms: i64) {
        self.group = group;
        self.now_ms = now_ms.max(0) as u64;
        self.written.clear();
        self.failure = None;
    }

    /// The profiles the group being mapped wrote. They stay held as staged until [`Recollection::committed`].
    pub fn writes(&mut self) -> Vec<Write> {
        let written = std::mem::take(&mut self.written);
        written
            .into_iter()
            .filter_map(|key| {
                let held = self.newer.get(&key).or_else(|| self.older.get(&key))?;
                let profile = held.profile.clone()?;
                let touched_ms = held.touched_ms?;
                Some(Write { key, profile, touched_ms })
            })
            .collect()
    }

    /// Every group up to `group` is committed: what they wrote is now what the store holds.
    pub fn committed(&mut self, group: u64) {
        while let Some((_, key)) = self.staged.front().filter(|(written_by, _)| *written_by <= group).cloned() {
            self.staged.pop_front();
            let held = self.newer.get_mut(&key).or_else(|| self.older.get_mut(&key));
            if let Some(held) = held.filter(|held| held.staged.is_some_and(|by| by <= group)) {
                held.staged = None;
            }
        }
    }

    /// The first read of the group that failed.
    pub fn take_failure(&mut self) -> Option<StoreError> {
        self.failure.take()
    }

    /// The group just mapped will not be committed: what it wrote must not be recalled.
    pub fn discard(&mut self) {
        self.stale = true;
    }

    /// Whether a discarded group's writes are still held; [`Recollection::clear`] once nothing is in flight.
    pub fn failed(&self) -> bool {
        self.stale
    }

    /// Drops everything held, staged or not: every group in flight has settled and what is committed is read again.
    pub fn clear(&mut self) {
        self.newer.clear();
        self.older.clear();
        self.staged.clear();
        self.written.clear();
        self.failure = None;
        self.stale = false;
    }

    /// Follows the store's identity generation: when it moved (visitors forgotten), the committed copies may be of
    /// rows that are gone and are dropped. Staged ones are kept, since their groups write them again.
    pub fn follow(&mut self, generation: u64) {
        if generation != self.generation {
            self.generation = generation;
            self.newer.retain(|_, held| held.staged.is_some());
            self.older.retain(|_, held| held.staged.is_some());
        }
    }

    /// Reads the keys not held yet, in one go.
    pub fn prefetch(&mut self, keys: &[String]) {
        let mut missing: Vec<String> = keys
            .iter()
            .filter(|key| !self.newer.contains_key(*key) && !self.older.contains_key(*key))
            .cloned()
            .collect();
        if missing.is_empty() {
            return;
        }
        missing.sort_unstable();
        missing.dedup();
        match (self.read)(&missing) {
            Ok(rows) => {
                for (key, stored) in missing.into_iter().zip(rows) {
                    self.keep(key, Held::committed(stored));
                }
            }
            Err(error) => {
                self.failure.get_or_insert(error);
            }
        }
    }

    /// `key`'s profile, read from the store the first time.
    fn held(&mut self, key: &str) -> &mut Held {
        if !self.newer.contains_key(key) {
            let held = match self.older.remove(key) {
                Some(held) => held,
                None => Held::committed(self.read_one(key)),
            };
            self.keep(key.to_string(), held);
        }
        self.newer.entry_ref(key).or_default()
    }

    fn read_one(&mut self, key: &str) -> StoredProfile {
        match (self.read)(&[key.to_string()]) {
            Ok(mut rows) => rows.pop().unwrap_or_default(),
            Err(error) => {
                self.failure.get_or_insert(error);
                StoredProfile::default()
            }
        }
    }

    fn keep(&mut self, key: String, held: Held) {
        if self.newer.len() >= Self::KEYS / 2 {
            let dropped = std::mem::replace(&mut self.older, std::mem::take(&mut self.newer));
            // A staged write is the only copy until its group commits: it moves on rather than being dropped.
            self.newer.extend(dropped.into_iter().filter(|(_, held)| held.staged.is_some()));
        }
        self.newer.insert(key, held);
    }
}

impl Recollection<'_> {
    /// Holds `profile` as `key`'s, written by the group being mapped.
    fn hold(&mut self, key: &str, profile: Arc<Profile>) {
        let (group, now_ms) = (self.group, self.now_ms);
        let held = self.held(key);
        let first_write = held.staged != Some(group);
        held.touched_ms = Some(touch_time(held.touched_ms, now_ms));
        held.profile = Some(profile);
        held.staged = Some(group);
        if first_write {
            self.written.push(key.to_string());
            self.staged.push_back((group, key.to_string()));
        }
    }
}

impl IdentityStore for Recollection<'_> {
    fn load(&mut self, key: &str) -> Option<Profile> {
        self.held(key).profile.as_deref().cloned()
    }

    fn store(&mut self, key: &str, profile: Profile) {
        self.hold(key, Arc::new(profile));
    }

    fn merge_into(&mut self, key: &str, profile: &mut Profile, linked: &mut Vec<String>) -> bool {
        let Some(stored) = &self.held(key).profile else { return false };
        profile.merge(stored);
        linked.extend(stored.keys.iter().cloned());
        true
    }

    /// One copy, shared by the keys and handed to the committer for each of them.
    fn store_shared(&mut self, keys: &[String], profile: Profile) {
        let profile = Arc::new(profile);
        for key in keys {
            self.hold(key, Arc::clone(&profile));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap as StdMap;

    use super::*;
    use crate::identity::RememberedField;
    use crate::relay::store::TOUCH_PRECISION_MS;

    /// A store's committed rows, counting the keys read.
    #[derive(Default)]
    struct Rows {
        rows: RefCell<StdMap<String, StoredProfile>>,
        reads: RefCell<Vec<String>>,
        failing: RefCell<bool>,
    }

    impl Rows {
        fn read(&self, keys: &[String]) -> Result<Vec<StoredProfile>, StoreError> {
            if *self.failing.borrow() {
                return Err(StoreError("the disk failed".into()));
            }
            self.reads.borrow_mut().extend(keys.iter().cloned());
            Ok(keys.iter().map(|key| self.rows.borrow().get(key).cloned().unwrap_or_default()).collect())
        }

        fn reads(&self) -> usize {
            self.reads.borrow().len()
        }
    }

    fn profile(email: &str) -> Profile {
        let field = RememberedField { field: "user.email".into(), value: email.into(), seen_ms: 1, expires_ms: None };
        Profile { fields: vec![field], keys: vec!["anon:a".into()] }
    }

    fn email(memory: &mut Recollection<'_>, key: &str) -> Option<String> {
        let profile = memory.load(key)?;
        Some(profile.fields[0].value.as_str()?.to_string())
    }

    #[test]
    fn a_staged_profile_is_recalled_without_a_read_until_committed_and_then_as_committed() {
        let rows = Rows::default();
        let mut memory = Recollection::new(|keys: &[String]| rows.read(keys));
        memory.begin(1, 5_000);
        assert_eq!(email(&mut memory, "a"), None);
        memory.store("a", profile("first"));
        memory.store("a", profile("second"));
        let writes = memory.writes();
        assert_eq!(writes.len(), 1, "two writes of one key in a group are one row");
        assert_eq!(writes[0].touched_ms, 5_000);
        assert_eq!(*writes[0].profile, profile("second"));

        memory.begin(2, 6_000);
        assert_eq!(email(&mut memory, "a").as_deref(), Some("second"), "the next group recalls it before it commits");
        assert_eq!(rows.reads(), 1, "read once, when first recalled");
        // Forgetting drops what is committed, never what is staged: the staged group writes it again.
        memory.follow(1);
        assert_eq!(email(&mut memory, "a").as_deref(), Some("second"));
        assert_eq!(rows.reads(), 1);
        memory.committed(1);
        memory.follow(2);
        rows.rows
            .borrow_mut()
            .insert("a".into(), StoredProfile { profile: Some(profile("stored")), touched_ms: Some(1) });
        assert_eq!(email(&mut memory, "a").as_deref(), Some("stored"), "once committed, a forgetting drops it");
        assert_eq!(rows.reads(), 2);
    }

    #[test]
    fn a_row_moves_in_the_order_of_writes_once_it_is_an_hour_old() {
        let rows = Rows::default();
        let hour = TOUCH_PRECISION_MS;
        rows.rows
            .borrow_mut()
            .insert("a".into(), StoredProfile { profile: Some(profile("x")), touched_ms: Some(1_000) });
        let mut memory = Recollection::new(|keys: &[String]| rows.read(keys));
        memory.begin(1, 1_000 + hour as i64 - 1);
        memory.store("a", profile("y"));
        let writes = memory.writes();
        assert_eq!(writes[0].touched_ms, 1_000, "less than an hour old: kept");
        memory.begin(2, 1_000 + hour as i64);
        memory.store("a", profile("z"));
        let writes = memory.writes();
        assert_eq!(writes[0].touched_ms, 1_000 + hour, "an hour old: moved");
        memory.begin(3, 1_000 + hour as i64 + 5);
        memory.store("a", profile("w"));
        assert_eq!(memory.writes()[0].touched_ms, 1_000 + hour, "kept from the time the group before wrote it at");
    }

    #[test]
    fn staged_profiles_outlast_the_bound_and_committed_ones_do_not() {
        let rows = Rows::default();
        let mut memory = Recollection::new(|keys: &[String]| rows.read(keys));
        memory.begin(1, 1);
        memory.store("committed", profile("dropped"));
        memory.writes();
        memory.begin(2, 2);
        memory.store("staged", profile("kept"));
        memory.writes();
        memory.committed(1);
        memory.begin(3, 3);
        let others: Vec<String> = (0..Recollection::KEYS + 10).map(|i| format!("other-{i}")).collect();
        for chunk in others.chunks(1000) {
            memory.prefetch(chunk);
        }
        let reads = rows.reads();
        assert_eq!(email(&mut memory, "staged").as_deref(), Some("kept"), "a staged write is never dropped");
        assert_eq!(rows.reads(), reads);
        assert_eq!(email(&mut memory, "committed"), None, "a committed copy is dropped past the bound");
        assert_eq!(rows.reads(), reads + 1, "and read again");
    }

    #[test]
    fn a_failed_read_fails_the_group_and_clearing_drops_staged_profiles() {
        let rows = Rows::default();
        let mut memory = Recollection::new(|keys: &[String]| rows.read(keys));
        memory.begin(1, 1);
        memory.store("a", profile("staged"));
        memory.writes();
        memory.begin(2, 2);
        *rows.failing.borrow_mut() = true;
        memory.prefetch(&["b".to_string()]);
        assert!(memory.take_failure().is_some(), "a prefetch that fails fails the group");
        assert_eq!(memory.load("c"), None);
        assert!(memory.take_failure().is_some(), "so does a read of one key");
        memory.discard();
        assert!(memory.failed());
        *rows.failing.borrow_mut() = false;
        memory.clear();
        assert!(!memory.failed());
        assert_eq!(memory.load("a"), None, "after a failure nothing staged is recalled: read afresh");
        assert_eq!(rows.reads(), 2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Visitors seen under one or two of a few keys, so that they link and merge: the relay's memory recalls
        /// each time what the engine's own store does, and hands each key's profile to the committer.
        #[test]
        fn recalls_what_the_engines_memory_store_does(
            committed in proptest::collection::vec(
                (0..6usize, proptest::collection::vec(0..6usize, 0..3), 0..3u8, 0..2u8), 0..5),
            visits in proptest::collection::vec((0..6usize, proptest::option::of(0..6usize), 0..3u8, 0..2u8), 1..60)
        ) {
            use crate::functions::Val;
            use crate::identity::{MemoryStore, RememberedField};
            let key = |k: usize| if k < 4 { format!("anon:{k}") } else { format!("user:{k}") };
            let rows = Rows::default();
            let mut reference = MemoryStore::default();
            // Rows stored before, each key's of its own (as another relay of a fleet writes them), linking others.
            for (row, (owner, linked, field, value)) in committed.into_iter().enumerate() {
                // Each row's time its own: which of two values of one field is the freshest is never a tie.
                let seen_ms = -1 - row as i64;
                let mut profile = Profile::default();
                for k in linked.into_iter().chain([owner]) {
                    profile.link(&key(k));
                }
                let value = serde_json::Value::from(format!("v{value}"));
                profile.set(RememberedField { field: format!("f{field}"), value, seen_ms, expires_ms: None });
                reference.store(&key(owner), profile.clone());
                let row = StoredProfile { profile: Some(profile), touched_ms: Some(1) };
                rows.rows.borrow_mut().insert(key(owner), row);
            }
            let mut memory = Recollection::new(|keys: &[String]| rows.read(keys));
            for (step, (first, second, field, value)) in visits.into_iter().enumerate() {
                let mut keys = vec![key(first)];
                keys.extend(second.filter(|&k| k != first).map(key));
                memory.begin(step as u64 + 1, 1_000);
                let recalled = memory.recall_visitor(&keys);
                let expected = reference.recall_visitor(&keys);
                // The order of the keys and fields is the order they were found in, which differs: the engine's
                // store looks up the keys asked first, the relay's follows each key's links as it goes.
                let sorted = |profile: &Profile| {
                    let mut profile = profile.clone();
                    profile.keys.sort();
                    profile.fields.sort_by(|a, b| a.field.cmp(&b.field));
                    profile
                };
                proptest::prop_assert_eq!(sorted(&recalled), sorted(&expected), "step {}", step);
                let mut profile = recalled;
                let mut changed = false;
                for key in &keys {
                    changed |= profile.link(key);
                }
                let text = format!("v{value}");
                changed |= profile.observe(&format!("f{field}"), &Val::from(text.as_str()), step as i64, None);
                memory.keep_visitor(profile.clone(), changed);
                reference.keep_visitor(profile.clone(), changed);
                let writes = memory.writes();
                if changed {
                    let written: Vec<&str> = writes.iter().map(|write| write.key.as_str()).collect();
                    let keys: Vec<&str> = profile.keys.iter().map(String::as_str).collect();
                    proptest::prop_assert_eq!(written, keys, "each key's row is handed over");
                    proptest::prop_assert!(writes.iter().all(|write| *write.profile == profile));
                } else {
                    proptest::prop_assert!(writes.is_empty());
                }
                memory.committed(step as u64 + 1);
            }
        }
    }
}
