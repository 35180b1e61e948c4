//! Identity memory: what the engine learned about a visitor from earlier events (hashed identifiers from an
//! identify call, the `oppref` of the landing page), applied to the visitor's later events. The engine only
//! talks to the [`IdentityStore`] trait; `engine run` keeps it in memory for one stream and the relay backs it
//! with durable storage. Only values that already passed the mapping's checks are stored: hashed and normalised
//! identifiers, never raw email or phone.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::functions::Val;

mod keys;

use keys::{KeyTable, KeyText};

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
            // As `set`, cloning only what changes: a visitor's linked keys mostly hold the same profile.
            match self.fields.iter_mut().find(|f| f.field == field.field) {
                Some(existing) if existing.seen_ms <= field.seen_ms && existing != field => existing.clone_from(field),
                Some(_) => {}
                None => self.fields.push(field.clone()),
            }
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

    /// How many times [`IdentityStore::prefetch_visitor`] is worth calling before a recall: a store whose look-ups
    /// wait on memory goes one link of its chain further at each call. None by default.
    fn prefetch_steps(&self) -> usize {
        0
    }

    /// Says that the visitor known by `keys` is about to be recalled, so that the store can start reading where it
    /// is held while the event is being mapped; `step` counts the calls from 0. A hint only: nothing changes.
    fn prefetch_visitor(&mut self, _keys: &[String], _step: usize) {}

    /// Gives back the profile [`IdentityStore::recall_visitor`] gave, which every recall is followed by; when
    /// `changed`, it is kept under every one of its keys.
    fn keep_visitor(&mut self, profile: Profile, changed: bool) {
        if changed {
            let keys = profile.keys.clone();
            self.store_shared(&keys, profile);
        }
    }

    /// Stores `profile` under each of `keys` as [`IdentityStore::store`] does, once per key by default; a store
    /// whose keys can share one copy keeps one.
    fn store_shared(&mut self, keys: &[String], profile: Profile) {
        if let Some((last, others)) = keys.split_last() {
            for key in others {
                self.store(key, profile.clone());
            }
            self.store(last, profile);
        }
    }
}

/// Identity memory for one process, bounded twice: by a number of visitor keys and by a memory budget in bytes.
/// Past either, the least recently seen visitor is forgotten with all its keys, so memory stays within the budget
/// however long the stream and however many visitors it has.
///
/// A visitor's keys share one profile: keeping a visitor writes its profile once, not once per key, and recalling
/// it reads one profile however many keys point to it. Each profile is held packed in one allocation (module
/// `packed`), not as a `Profile`'s dozen scattered strings, and when it was last seen is the profile's, not each
/// key's: on tens of thousands of visitors every string read and every key looked up is a cache miss, and those
/// were most of what identity memory cost. A recall unpacks the visitor into the `Profile` last given back, reusing
/// its strings, and a visitor given back unchanged is not packed again.
pub struct MemoryStore {
    /// Each key and the profile it points to in `profiles`.
    keys: KeyTable,
    /// Profiles, each with how many keys point to it; a profile no key points to is dropped and its place reused.
    profiles: Vec<Shared>,
    free: Vec<usize>,
    /// The order the profiles were seen in: a queue of (place, mark) pairs, one per sighting, least recent first. A
    /// pair whose profile was seen again since, or whose place was freed, no longer matches the profile's own
    /// mark and is skipped; such pairs are dropped once they outnumber the profiles.
    order: VecDeque<(usize, u64)>,
    /// The last mark given: unique, increasing, never 0 (the mark of a free place).
    clock: u64,
    /// The place of the profile the last recall lent out; the first `held` of `held_keys` are the keys it was
    /// asked for that point there.
    lent: Option<Lent>,
    held_keys: Vec<String>,
    /// The places of the profiles the last prefetch found.
    foreseen: Places,
    /// The profile last given back, kept for its allocations: the next recall unpacks into it.
    spare: Profile,
    /// Where a profile is packed before it is copied to its place.
    packing: Vec<u8>,
    capacity: usize,
    budget: usize,
    /// The estimated heap taken by the keys and profiles held, kept within `budget`.
    used: usize,
}

#[derive(Default)]
struct Shared {
    /// The profile, [`packed`].
    packed: Box<[u8]>,
    holders: usize,
    /// The mark of the last sighting; 0 for a free place.
    seen: u64,
    /// Every key the profile lists points to it, so following its links finds nothing new, and a key it lists
    /// needs no look-up to be found.
    closed: bool,
}

/// Places in a list, most often one or two: an event has at most two keys of its own.
type Places = smallvec::SmallVec<[usize; 4]>;

struct Lent {
    index: usize,
    /// How many of `held_keys` the recall found pointing to `index`.
    held: usize,
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
            order: VecDeque::new(),
            clock: 0,
            lent: None,
            held_keys: Vec::new(),
            foreseen: Places::new(),
            spare: Profile::default(),
            packing: Vec::new(),
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

    /// The heap one key takes, estimated from its length: the key table's slot, and the key's own allocation when
    /// it is too long for the slot. Measured against peak RSS on a million distinct visitors (benches/README.md),
    /// with [`MemoryStore::packed_footprint`].
    fn key_footprint(key: &str) -> usize {
        Self::key_footprint_of(key.len())
    }

    fn key_footprint_of(len: usize) -> usize {
        const ENTRY: usize = 176;
        const STRING: usize = 56;
        ENTRY + if len > KeyText::INLINE { STRING + len } else { 0 }
    }

    /// The heap one packed profile takes: its place in the list of profiles, its marks in the order of sightings,
    /// and its allocation with the allocator's rounding to its size classes (up to an eighth).
    fn packed_footprint(len: usize) -> usize {
        const SLOT: usize = 160;
        SLOT + len + len / 8
    }

    /// The heap `profile` takes once packed.
    #[cfg(test)]
    fn profile_footprint(profile: &Profile) -> usize {
        let mut bytes = Vec::new();
        packed::pack(profile, &mut bytes);
        Self::packed_footprint(bytes.len())
    }

    /// A place for `profile`, held by no key yet, seen now.
    fn add_profile(&mut self, profile: &Profile) -> usize {
        self.packing.clear();
        packed::pack(profile, &mut self.packing);
        self.used += Self::packed_footprint(self.packing.len());
        let shared = Shared { packed: self.packing.as_slice().into(), holders: 0, seen: 0, closed: false };
        let index = match self.free.pop() {
            Some(index) => {
                self.profiles[index] = shared;
                index
            }
            None => {
                self.profiles.push(shared);
                self.profiles.len() - 1
            }
        };
        self.see(index);
        index
    }

    /// Replaces the profile at `index`, accounting for the one it replaces. Whether its keys point to it is for the
    /// caller to say.
    fn replace_profile(&mut self, index: usize, profile: &Profile) {
        self.packing.clear();
        packed::pack(profile, &mut self.packing);
        let shared = &mut self.profiles[index];
        shared.closed = false;
        if shared.packed.len() == self.packing.len() {
            // A visitor seen again mostly moves only its times: the same length, written over in place.
            shared.packed.copy_from_slice(&self.packing);
            return;
        }
        self.used = self.used.saturating_sub(Self::packed_footprint(shared.packed.len()))
            + Self::packed_footprint(self.packing.len());
        shared.packed = self.packing.as_slice().into();
    }

    /// The profile at `index`, unpacked.
    fn unpack(&self, index: usize) -> Profile {
        let mut profile = Profile::default();
        packed::unpack(&self.profiles[index].packed, &mut profile);
        profile
    }

    /// The profile at `index` is seen now.
    fn see(&mut self, index: usize) {
        self.clock += 1;
        self.profiles[index].seen = self.clock;
        self.order.push_back((index, self.clock));
        let live = self.profiles.len() - self.free.len();
        if self.order.len() > 2 * live + 64 {
            // The queue is in order already: what stays is each live profile's latest mark.
            let profiles = &self.profiles;
            self.order.retain(|&(index, seen)| profiles[index].seen == seen);
        }
    }

    /// One key fewer points to the profile at `index`; the last one takes it along.
    fn release(&mut self, index: usize) {
        let shared = &mut self.profiles[index];
        shared.holders -= 1;
        if shared.holders == 0 {
            self.free_place(index);
        }
    }

    /// Drops the profile at `index` and makes its place free for the next one.
    fn free_place(&mut self, index: usize) {
        let Shared { packed, .. } = std::mem::take(&mut self.profiles[index]);
        self.used = self.used.saturating_sub(Self::packed_footprint(packed.len()));
        self.free.push(index);
    }

    /// Points `key` at the profile at `index`.
    fn point(&mut self, key: &str, index: usize) {
        match self.keys.set(key, index) {
            Some(before) if before == index => {}
            Some(before) => {
                self.profiles[index].holders += 1;
                // The key may be one `before` lists, which now points elsewhere.
                self.profiles[before].closed = false;
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
            let Some(index) = self.least_recently_seen() else { break };
            self.forget(index);
        }
    }

    /// The place of the profile seen least recently, its mark taken from the queue.
    fn least_recently_seen(&mut self) -> Option<usize> {
        while let Some((index, seen)) = self.order.pop_front() {
            if self.profiles[index].seen == seen {
                return Some(index);
            }
        }
        None
    }

    /// Forgets the visitor at `index`: its profile and every key that points to it.
    fn forget(&mut self, index: usize) {
        let listed: Vec<String> = packed::keys(&self.profiles[index].packed)
            .map(|key| String::from_utf8(key.to_vec()).expect("packed from a str"))
            .collect();
        for key in &listed {
            if self.keys.remove(key, index) {
                self.used = self.used.saturating_sub(Self::key_footprint(key));
                self.release(index);
            }
        }
        if self.profiles[index].seen != 0 {
            // Keys that point here without being listed (dropped from the list past `Profile::MAX_KEYS`, or stored
            // under a key of their own): rare enough to look for in the whole table.
            let mut forgotten = 0;
            self.keys.retain(|entry| {
                let keep = entry.profile != index;
                if !keep {
                    forgotten += Self::key_footprint_of(entry.key.len());
                }
                keep
            });
            self.used = self.used.saturating_sub(forgotten);
            self.free_place(index);
        }
    }

    /// A profile lent out and not given back can only be lost: every recall is followed by a keep.
    fn settle_loan(&mut self) {
        debug_assert!(self.lent.is_none(), "a recalled visitor was not given back");
        self.lent = None;
    }

    /// The profiles `keys` point to, each once and each seen now, following the links between keys as the trait's
    /// recall does; and which of `keys` point to them (their positions in `keys`).
    fn profiles_of(&mut self, keys: &[String]) -> (Places, Places) {
        let mut found = Places::new();
        let mut held = Places::new();
        let mut linked: Vec<String> = Vec::new();
        let mut done: Vec<String> = Vec::new();
        let mut read = 0;
        for (position, key) in keys.iter().enumerate().rev().take(Profile::MAX_KEYS) {
            // A key that a closed profile found already lists points there: it needs no look-up.
            let listed = |&index: &usize| {
                self.profiles[index].closed && packed::keys(&self.profiles[index].packed).any(|k| k == key.as_bytes())
            };
            if found.iter().any(listed) {
                held.push(position);
                continue;
            }
            read += 1;
            if self.visit(key, keys, &mut found, &mut linked, &done) {
                held.push(position);
            }
        }
        while let Some(key) = linked.pop() {
            if read >= Profile::MAX_KEYS {
                break;
            }
            read += 1;
            self.visit(&key, keys, &mut found, &mut linked, &done);
            done.push(key);
        }
        (found, held)
    }

    /// Looks `key` up for [`MemoryStore::profiles_of`]: a profile not found before is seen now, and the keys it
    /// links that are not known yet are added to `linked`. False when no profile is remembered under `key`.
    fn visit(
        &mut self,
        key: &str,
        asked: &[String],
        found: &mut Places,
        linked: &mut Vec<String>,
        done: &[String],
    ) -> bool {
        let Some(index) = self.keys.get(key) else { return false };
        if found.contains(&index) {
            return true;
        }
        found.push(index);
        self.see(index);
        if self.profiles[index].closed {
            // Its keys all point back to it: nothing new to find through them.
            return true;
        }
        for other in packed::keys(&self.profiles[index].packed) {
            let is = |k: &String| k.as_bytes() == other;
            let known = other == key.as_bytes() || asked.iter().any(is) || done.iter().any(is);
            if !known && !linked.iter().any(is) {
                linked.push(String::from_utf8(other.to_vec()).expect("packed from a str"));
            }
        }
        true
    }
}

/// Starts fetching `item`'s cache line without waiting for it.
fn prefetch<T>(item: &T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    safe_arch::prefetch_t0(item);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = item;
}

/// Starts fetching the first cache lines of `bytes`, as many as a visitor's profile mostly takes.
fn prefetch_bytes(bytes: &[u8]) {
    for line in bytes.chunks(64).take(4) {
        prefetch(&line[0]);
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(Self::DEFAULT_CAPACITY)
    }
}

impl IdentityStore for MemoryStore {
    fn prefetch_steps(&self) -> usize {
        3
    }

    /// A visitor's profile is three cache misses away (the key's slot, the profile's place, the packed profile),
    /// each known only once the one before it is read; on tens of thousands of visitors they were most of what a
    /// recall cost. Step 0 starts fetching the keys' slots; step 1 finds the profiles they point to and starts
    /// fetching their places; step 2 the packed profiles, whose addresses the places hold.
    fn prefetch_visitor(&mut self, keys: &[String], step: usize) {
        match step {
            0 => {
                for key in keys {
                    self.keys.prefetch(key);
                }
            }
            1 => {
                self.foreseen.clear();
                for key in keys {
                    if let Some(index) = self.keys.get(key) {
                        prefetch(&self.profiles[index]);
                        self.foreseen.push(index);
                    }
                }
            }
            _ => {
                for &index in &self.foreseen {
                    prefetch_bytes(&self.profiles[index].packed);
                }
            }
        }
    }

    fn load(&mut self, key: &str) -> Option<Profile> {
        let index = self.keys.get(key)?;
        self.see(index);
        Some(self.unpack(index))
    }

    /// `key` gets a profile of its own, whatever other keys it was shared with.
    fn store(&mut self, key: &str, profile: Profile) {
        self.settle_loan();
        let index = match self.keys.get(key) {
            Some(index) if self.profiles[index].holders == 1 => {
                self.replace_profile(index, &profile);
                self.see(index);
                index
            }
            _ => {
                let index = self.add_profile(&profile);
                self.point(key, index);
                index
            }
        };
        self.profiles[index].closed = profile.keys.iter().all(|listed| listed == key);
        self.forget_beyond_bounds();
    }

    /// As the trait does, but a profile several keys share is read once, and a visitor with one profile is
    /// unpacked into the profile last given back.
    fn recall_visitor(&mut self, keys: &[String]) -> Profile {
        self.settle_loan();
        let (found, held) = self.profiles_of(keys);
        match found[..] {
            // A visitor not seen before (most often, on a stream of many): the profile last given back, emptied,
            // keeps its vectors for what this one learns.
            [] => {
                let mut profile = std::mem::take(&mut self.spare);
                profile.keys.clear();
                profile.fields.clear();
                profile
            }
            [index] => {
                // With one profile found, every key the store holds points to it.
                self.held_keys.truncate(held.len());
                for (place, &position) in held.iter().enumerate() {
                    match self.held_keys.get_mut(place) {
                        Some(kept) => kept.clone_from(&keys[position]),
                        None => self.held_keys.push(keys[position].clone()),
                    }
                }
                self.lent = Some(Lent { index, held: held.len() });
                let mut profile = std::mem::take(&mut self.spare);
                packed::unpack(&self.profiles[index].packed, &mut profile);
                profile
            }
            ref several => {
                let mut profile = Profile::default();
                for &index in several {
                    profile.merge(&self.unpack(index));
                }
                profile
            }
        }
    }

    /// Packs a changed profile into its place once and points every one of its keys at it; an unchanged one is
    /// there already.
    fn keep_visitor(&mut self, profile: Profile, changed: bool) {
        let lent = self.lent.take();
        if !changed {
            self.spare = profile;
            return;
        }
        let (index, held) = match lent {
            Some(Lent { index, held }) => {
                self.replace_profile(index, &profile);
                (index, held)
            }
            None => match profile.keys.iter().rev().find_map(|key| self.keys.get(key)) {
                Some(index) => {
                    self.replace_profile(index, &profile);
                    (index, 0)
                }
                None => (self.add_profile(&profile), 0),
            },
        };
        for key in &profile.keys {
            // A key the recall found pointing here needs no second look-up.
            if !self.held_keys[..held].contains(key) {
                self.point(key, index);
            }
        }
        if self.profiles[index].holders == 0 {
            // A profile without keys: nothing points to it, so it is not kept.
            self.profiles[index].holders = 1;
            self.release(index);
        } else {
            self.profiles[index].closed = true;
        }
        self.spare = profile;
        self.forget_beyond_bounds();
    }
}

/// A profile packed into one run of bytes, for [`MemoryStore`]: the lengths and times first, then every string's
/// text one after the other, so that unpacking checks the text is UTF-8 once rather than string by string. Private
/// to the process: never written anywhere, so its layout can change freely.
mod packed {
    use serde_json::Value;

    use super::{Profile, RememberedField};

    /// A field's value: a string as its text (remembered values are hashed identifiers and click ids), anything else
    /// as its JSON.
    const TEXT: u8 = 0;
    const JSON: u8 = 1;

    pub(super) fn pack(profile: &Profile, out: &mut Vec<u8>) {
        let number = |out: &mut Vec<u8>, n: usize| {
            let n = u32::try_from(n).expect("a profile's strings and lists are shorter than 4 GiB");
            out.extend_from_slice(&n.to_le_bytes());
        };
        // The JSON of values that are not strings, written out once: their length comes before their text.
        let json: Vec<String> = (profile.fields.iter())
            .filter(|field| !field.value.is_string())
            .map(|field| field.value.to_string())
            .collect();
        // How many bytes the numbers take, written once they are.
        let start = out.len();
        number(out, 0);
        number(out, profile.keys.len());
        for key in &profile.keys {
            number(out, key.len());
        }
        number(out, profile.fields.len());
        let mut others = json.iter();
        for field in &profile.fields {
            number(out, field.field.len());
            out.extend_from_slice(&field.seen_ms.to_le_bytes());
            match field.expires_ms {
                Some(expires) => {
                    out.push(1);
                    out.extend_from_slice(&expires.to_le_bytes());
                }
                None => out.push(0),
            }
            let (kind, len) = match &field.value {
                Value::String(text) => (TEXT, text.len()),
                _ => (JSON, others.next().expect("one JSON text per value that is not a string").len()),
            };
            out.push(kind);
            number(out, len);
        }
        let mut numbers = Vec::with_capacity(4);
        number(&mut numbers, out.len() - start - 4);
        out[start..start + 4].copy_from_slice(&numbers);
        for key in &profile.keys {
            out.extend_from_slice(key.as_bytes());
        }
        let mut others = json.iter();
        for field in &profile.fields {
            out.extend_from_slice(field.field.as_bytes());
            match &field.value {
                Value::String(value) => out.extend_from_slice(value.as_bytes()),
                _ => out.extend_from_slice(others.next().expect("as counted above").as_bytes()),
            }
        }
    }

    /// Unpacks `bytes` into `profile`, writing over the strings it has rather than allocating new ones.
    pub(super) fn unpack(bytes: &[u8], profile: &mut Profile) {
        let (mut numbers, text) = sections(bytes);
        let text = std::str::from_utf8(text).expect("packed from strs");
        let mut texts = Texts { text, at: 0 };
        let keys = numbers.len();
        profile.keys.truncate(keys);
        let mut lengths = numbers;
        numbers.skip(4 * keys);
        for position in 0..keys {
            let key = texts.next(lengths.len());
            match profile.keys.get_mut(position) {
                Some(kept) => {
                    kept.clear();
                    kept.push_str(key);
                }
                None => profile.keys.push(key.to_string()),
            }
        }
        let fields = numbers.len();
        profile.fields.truncate(fields);
        for position in 0..fields {
            let name_len = numbers.len();
            let seen_ms = numbers.i64();
            let expires_ms = match numbers.byte() {
                0 => None,
                _ => Some(numbers.i64()),
            };
            let kind = numbers.byte();
            let value_len = numbers.len();
            let (name, text) = (texts.next(name_len), texts.next(value_len));
            let Some(kept) = profile.fields.get_mut(position) else {
                let value = value(kind, text, None);
                profile.fields.push(RememberedField { field: name.to_string(), value, seen_ms, expires_ms });
                continue;
            };
            kept.field.clear();
            kept.field.push_str(name);
            kept.value = value(kind, text, Some(std::mem::take(&mut kept.value)));
            kept.seen_ms = seen_ms;
            kept.expires_ms = expires_ms;
        }
    }

    /// The keys of a packed profile as bytes, without unpacking it.
    pub(super) fn keys(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
        let (mut numbers, mut text) = sections(bytes);
        let count = numbers.len();
        (0..count).map(move |_| {
            let (key, rest) = text.split_at(numbers.len());
            text = rest;
            key
        })
    }

    /// The numbers and the text of a packed profile.
    fn sections(bytes: &[u8]) -> (Reader<'_>, &[u8]) {
        let mut reader = Reader(bytes);
        let numbers = reader.len();
        let (numbers, text) = reader.0.split_at(numbers);
        (Reader(numbers), text)
    }

    /// A field's value from its packed kind and text, in `kept`'s string when it has one.
    fn value(kind: u8, text: &str, kept: Option<Value>) -> Value {
        match (kind, kept) {
            (TEXT, Some(Value::String(mut string))) => {
                string.clear();
                string.push_str(text);
                Value::String(string)
            }
            (TEXT, _) => Value::String(text.to_string()),
            _ => serde_json::from_str(text).expect("a value packed as JSON reads back"),
        }
    }

    /// The strings of the text section, one after the other.
    struct Texts<'a> {
        text: &'a str,
        at: usize,
    }

    impl<'a> Texts<'a> {
        fn next(&mut self, len: usize) -> &'a str {
            let text = &self.text[self.at..self.at + len];
            self.at += len;
            text
        }
    }

    /// Reads back the numbers [`pack`] wrote: only what this process packed is ever read.
    #[derive(Clone, Copy)]
    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn take(&mut self, count: usize) -> &'a [u8] {
            let (taken, rest) = self.0.split_at(count);
            self.0 = rest;
            taken
        }

        fn skip(&mut self, count: usize) {
            self.take(count);
        }

        fn byte(&mut self) -> u8 {
            self.take(1)[0]
        }

        fn len(&mut self) -> usize {
            u32::from_le_bytes(self.take(4).try_into().expect("four bytes")) as usize
        }

        fn i64(&mut self) -> i64 {
            i64::from_le_bytes(self.take(8).try_into().expect("eight bytes"))
        }
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
    fn forgetting_a_visitor_forgets_all_its_keys_and_what_they_took() {
        let profile = visitor(&["anon:a", "user:u"], "e1", 1);
        let mut store = MemoryStore::bounded(2, usize::MAX);
        store.keep_visitor(profile.clone(), true);
        assert_eq!(store.len(), 2);
        store.store("anon:z", Profile::default());
        assert_eq!(store.len(), 1, "the least recently seen visitor goes whole");
        assert!(store.load("anon:a").is_none() && store.load("user:u").is_none());
        assert!(store.load("anon:z").is_some());
        let z = MemoryStore::key_footprint("anon:z") + MemoryStore::profile_footprint(&Profile::default());
        assert_eq!(store.used(), z);
    }

    #[test]
    fn keys_dropped_from_a_long_list_are_forgotten_with_their_visitor() {
        let mut store = MemoryStore::bounded(usize::MAX, usize::MAX);
        // Seventeen keys, one of them longer than a key table slot holds, linked one event after another: the list
        // keeps the sixteen most recent, and the first still points to the visitor.
        let keys: Vec<String> = (0..=Profile::MAX_KEYS)
            .map(|n| format!("anon:{n:02}{}", if n == 3 { "x".repeat(60) } else { String::new() }))
            .collect();
        for key in &keys {
            let mut profile = store.recall_visitor(&keys[..1]);
            profile.link(key);
            store.keep_visitor(profile, true);
        }
        assert!(!store.recall_visitor(&keys[1..2]).keys.contains(&keys[0]));
        store.keep_visitor(Profile::default(), false);
        store.keep_visitor(visitor(&["anon:first"], "e0", 1), true);
        assert!(store.load(&keys[0]).is_some(), "a dropped key still finds its visitor");
        assert_eq!(store.len(), Profile::MAX_KEYS + 2);
        // Seen last, the long visitor stays when the bound leaves room for one; then it goes, every key of it.
        store.capacity = Profile::MAX_KEYS + 1;
        store.forget_beyond_bounds();
        assert!(store.load("anon:first").is_none());
        assert!(store.load(&keys[3]).is_some());
        store.capacity = 1;
        store.forget_beyond_bounds();
        assert!(store.is_empty());
        assert_eq!(store.used(), 0, "every key and profile forgotten is accounted for");
    }

    #[test]
    fn a_key_moved_to_another_visitor_is_looked_up_again() {
        let mut store = MemoryStore::default();
        store.keep_visitor(visitor(&["anon:a", "user:u"], "old", 1), true);
        // anon:a is stored on its own: the first visitor still lists it, but it points elsewhere now.
        store.store("anon:a", visitor(&["anon:a"], "new", 2));
        let recalled = store.recall_visitor(&keys(&["anon:a", "user:u"]));
        assert_eq!(recalled.get("user.email", 3).map(|f| f.value.clone()), Some(Value::from("new")));
        assert!(recalled.keys.iter().any(|k| k == "user:u"));
        store.keep_visitor(recalled, false);
    }

    #[test]
    fn a_profile_given_back_unchanged_is_recalled_as_it_was() {
        let mut store = MemoryStore::default();
        let first = visitor(&["anon:a", "user:u"], "e1", 1);
        let mut second = visitor(&["anon:b"], "e2", 2);
        second.set(RememberedField { field: "oppref".into(), value: Value::from(7), seen_ms: 2, expires_ms: Some(9) });
        store.keep_visitor(first.clone(), true);
        store.keep_visitor(second.clone(), true);
        // Each recall unpacks into the profile given back before it: other strings, another number of fields.
        let recalled = store.recall_visitor(&keys(&["anon:b"]));
        assert_eq!(recalled, second);
        store.keep_visitor(recalled, false);
        let recalled = store.recall_visitor(&keys(&["user:u"]));
        assert_eq!(recalled, first);
        store.keep_visitor(recalled, false);
    }

    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex("[a-z0-9:é€\u{1F600}\"\\\\ ]{0,70}").expect("a valid pattern")
    }

    fn remembered() -> impl proptest::strategy::Strategy<Value = RememberedField> {
        use proptest::prelude::*;
        let value = prop_oneof![
            text().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (text(), any::<bool>()).prop_map(|(key, flag)| serde_json::json!({ key: [flag, null, 1.5] })),
        ];
        (text(), value, any::<i64>(), any::<Option<i64>>())
            .prop_map(|(field, value, seen_ms, expires_ms)| RememberedField { field, value, seen_ms, expires_ms })
    }

    fn any_profile() -> impl proptest::strategy::Strategy<Value = Profile> {
        use proptest::collection::vec;
        use proptest::prelude::*;
        (vec(remembered(), 0..5), vec(text(), 0..5)).prop_map(|(fields, keys)| Profile { fields, keys })
    }

    /// Profiles over a few fields, values and times, so that two of them often hold the same field.
    fn close_profile() -> impl proptest::strategy::Strategy<Value = Profile> {
        use proptest::collection::vec;
        use proptest::prelude::*;
        let field =
            (0..3u8, 0..2u8, 0..3i64, proptest::option::of(0..2i64)).prop_map(|(name, value, seen_ms, expires)| {
                RememberedField { field: format!("f{name}"), value: Value::from(value), seen_ms, expires_ms: expires }
            });
        (vec(field, 0..4), vec((0..4u8).prop_map(|k| format!("anon:{k}")), 0..4))
            .prop_map(|(fields, keys)| Profile { fields, keys })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// A profile packed and unpacked into another profile, whose strings and fields it reuses, is the profile.
        #[test]
        fn a_packed_profile_unpacks_to_itself(profile in any_profile(), before in any_profile()) {
            let mut bytes = Vec::new();
            packed::pack(&profile, &mut bytes);
            let mut unpacked = before;
            packed::unpack(&bytes, &mut unpacked);
            proptest::prop_assert_eq!(&unpacked, &profile);
            proptest::prop_assert!(packed::keys(&bytes).eq(profile.keys.iter().map(String::as_bytes)));
        }

        /// Merging a profile clones only the fields that change, and gives what setting each of them would.
        #[test]
        fn merging_is_setting_each_field_and_linking_each_key(
            into in proptest::prop_oneof![any_profile(), close_profile()],
            other in proptest::prop_oneof![any_profile(), close_profile()],
        ) {
            let mut merged = into.clone();
            merged.merge(&other);
            let mut expected = into.clone();
            if into.fields.is_empty() && into.keys.is_empty() {
                expected = other.clone();
            } else {
                for field in &other.fields {
                    expected.set(field.clone());
                }
                for key in &other.keys {
                    if !expected.keys.contains(key) {
                        expected.link(key);
                    }
                }
            }
            proptest::prop_assert_eq!(merged, expected);
        }

        /// Visitors seen in any order, some with a second key, one of them longer than a slot holds: past the bound
        /// on keys, the store forgets whole visitors in exactly least-recently-seen order.
        #[test]
        fn the_store_forgets_the_least_recently_seen_visitor_first(
            capacity in 1usize..9,
            ops in proptest::collection::vec((0usize..12, proptest::prelude::any::<bool>()), 1..400)
        ) {
            let visitor_keys = |v: usize| {
                let mut keys = vec![format!("anon:{v}")];
                if v.is_multiple_of(3) {
                    keys.push(format!("user:{v}{}", "u".repeat(10 * v)));
                }
                keys
            };
            let mut store = MemoryStore::bounded(capacity, usize::MAX);
            // Visitors held, least recently seen first.
            let mut model: Vec<usize> = Vec::new();
            for (step, (v, teach)) in ops.into_iter().enumerate() {
                let keys = visitor_keys(v);
                // A prefetch is a hint only: whether given or not, the store answers the same.
                for prefetch_step in 0..if step.is_multiple_of(2) { store.prefetch_steps() } else { 0 } {
                    store.prefetch_visitor(&keys, prefetch_step);
                }
                let mut profile = store.recall_visitor(&keys);
                let held = model.iter().position(|&m| m == v);
                proptest::prop_assert_eq!(profile.keys.is_empty(), held.is_none(), "visitor {} recalled", v);
                if let Some(position) = held {
                    model.remove(position);
                    model.push(v);
                }
                if teach {
                    for key in &keys {
                        profile.link(key);
                    }
                    profile.set(field("user.email", &format!("e{step}"), step as i64, None));
                    if held.is_none() {
                        model.push(v);
                    }
                }
                store.keep_visitor(profile, teach);
                while model.iter().map(|&m| visitor_keys(m).len()).sum::<usize>() > capacity {
                    model.remove(0);
                }
                for other in 0..12 {
                    let kept = model.contains(&other);
                    for key in visitor_keys(other) {
                        proptest::prop_assert_eq!(store.keys.get(&key).is_some(), kept, "{} after step {}", key, step);
                    }
                }
                proptest::prop_assert_eq!(store.len(), model.iter().map(|&m| visitor_keys(m).len()).sum::<usize>());
                proptest::prop_assert!(store.order.len() <= 2 * store.len() + 65, "the queue of marks stays bounded");
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
