//! The key table of identity memory: each visitor key and the place of the profile it points to, in a hash table
//! whose slot for a key is known from the key's hash alone, so that a look-up can be started (its cache lines
//! fetched) long before it is made.

use std::hash::BuildHasher;

use super::prefetch;

/// Visitor keys, each pointing to a profile, by open addressing with linear probing. A key's text and its profile
/// sit together in one slot of one cache line, so that finding a key reads its slot and nothing else: a key kept
/// as a string of its own was a second cache miss on every look-up. Beside the slots, a byte per slot says whether
/// it is taken and by which seven bits of hash, so probing past other keys reads those bytes, not their slots.
///
/// A general hash table (hashbrown's, which this replaced) hides where it will look for a key; knowing it is what
/// lets [`KeyTable::prefetch`] start the look-up of an event's visitor while the event is being mapped.
#[derive(Default)]
pub(super) struct KeyTable {
    /// A byte per slot: [`FREE`], or [`TAKEN`] with seven bits of the hash of the key in the slot.
    tags: Vec<u8>,
    slots: Vec<KeyEntry>,
    len: usize,
    hasher: hashbrown::DefaultHashBuilder,
}

const FREE: u8 = 0;
const TAKEN: u8 = 0x80;

/// A slot: exactly one cache line.
#[repr(align(64))]
pub(super) struct KeyEntry {
    hash: u64,
    pub(super) profile: usize,
    pub(super) key: KeyText,
}

impl KeyEntry {
    fn free() -> Self {
        KeyEntry { hash: 0, profile: 0, key: KeyText::Inline(0, [0; KeyText::INLINE]) }
    }
}

/// A key's text: in the slot when it is short (an anonymous id is a UUID: `anon:` and 36 characters).
pub(super) enum KeyText {
    Inline(u8, [u8; KeyText::INLINE]),
    Heap(Box<str>),
}

impl KeyText {
    /// What fits in a slot of 64 bytes beside the hash and the profile.
    pub(super) const INLINE: usize = 46;

    fn new(key: &str) -> Self {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= Self::INLINE => {
                let mut bytes = [0; Self::INLINE];
                bytes[..key.len()].copy_from_slice(key.as_bytes());
                KeyText::Inline(len, bytes)
            }
            _ => KeyText::Heap(key.into()),
        }
    }

    fn is(&self, key: &str) -> bool {
        match self {
            KeyText::Inline(len, bytes) => &bytes[..usize::from(*len)] == key.as_bytes(),
            KeyText::Heap(text) => &**text == key,
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            KeyText::Inline(len, _) => usize::from(*len),
            KeyText::Heap(text) => text.len(),
        }
    }
}

impl KeyTable {
    /// The table grows before more than seven slots in eight are taken, as hashbrown's did: the runs of taken
    /// slots a look-up probes grow long at that load, but they are probed in the tags, sixty-four to a cache line,
    /// and a slot is read only when its tag matches.
    const MOST_TAKEN: (usize, usize) = (7, 8);

    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn tag(hash: u64) -> u8 {
        TAKEN | (hash >> 57) as u8
    }

    /// The slot a key of `hash` is looked for first.
    fn home(&self, hash: u64) -> usize {
        (hash as usize) & (self.slots.len() - 1)
    }

    /// Starts fetching where `key` is held, or would be, without waiting for it.
    pub(super) fn prefetch(&self, key: &str) {
        if self.slots.is_empty() {
            return;
        }
        let home = self.home(self.hash(key));
        prefetch(&self.tags[home]);
        prefetch(&self.slots[home]);
    }

    /// The slot holding `key` (found) or the free slot ending its probe (not found).
    fn find(&self, key: &str, hash: u64) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let tag = Self::tag(hash);
        let mut at = self.home(hash);
        loop {
            match self.tags[at] {
                FREE => return Err(at),
                taken if taken == tag && self.slots[at].hash == hash && self.slots[at].key.is(key) => return Ok(at),
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// The profile `key` points to.
    pub(super) fn get(&self, key: &str) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        self.find(key, self.hash(key)).ok().map(|at| self.slots[at].profile)
    }

    /// Points `key` at `profile`; what it pointed to before, `None` for a new key.
    pub(super) fn set(&mut self, key: &str, profile: usize) -> Option<usize> {
        let (most, of) = Self::MOST_TAKEN;
        if (self.len + 1) * of > self.slots.len() * most {
            self.grow();
        }
        let hash = self.hash(key);
        match self.find(key, hash) {
            Ok(at) => Some(std::mem::replace(&mut self.slots[at].profile, profile)),
            Err(free) => {
                self.tags[free] = Self::tag(hash);
                self.slots[free] = KeyEntry { hash, profile, key: KeyText::new(key) };
                self.len += 1;
                None
            }
        }
    }

    /// Forgets `key` if it points to `profile`; true when it did.
    pub(super) fn remove(&mut self, key: &str, profile: usize) -> bool {
        if self.len == 0 {
            return false;
        }
        match self.find(key, self.hash(key)) {
            Ok(at) if self.slots[at].profile == profile => {
                self.take(at);
                true
            }
            _ => false,
        }
    }

    /// Keeps only the keys `keep` says to.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&KeyEntry) -> bool) {
        let mut at = 0;
        while at < self.slots.len() {
            if self.tags[at] != FREE && !keep(&self.slots[at]) {
                // A key probed past this slot may be moved into it: look at it again.
                self.take(at);
            } else {
                at += 1;
            }
        }
    }

    /// Frees the slot `at`, moving back into it the keys of the run after it that may sit there, so that no run
    /// of taken slots is broken in its middle (a key is found only before the first free slot after its home).
    fn take(&mut self, mut at: usize) {
        let mask = self.slots.len() - 1;
        self.len -= 1;
        let mut next = (at + 1) & mask;
        while self.tags[next] != FREE {
            let home = self.home(self.slots[next].hash);
            // The key at `next` may move back to `at` unless its home lies after `at`, up to `next`.
            let home_after_hole = next.wrapping_sub(home) & mask < next.wrapping_sub(at) & mask;
            if !home_after_hole {
                self.tags[at] = self.tags[next];
                self.slots.swap(at, next);
                at = next;
            }
            next = (next + 1) & mask;
        }
        self.tags[at] = FREE;
        self.slots[at] = KeyEntry::free();
    }

    /// Doubles the slots (16 at first) and places every key again.
    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(16);
        let tags = std::mem::replace(&mut self.tags, vec![FREE; size]);
        let slots = std::mem::replace(&mut self.slots, std::iter::repeat_with(KeyEntry::free).take(size).collect());
        let mask = size - 1;
        for (tag, entry) in tags.into_iter().zip(slots) {
            if tag == FREE {
                continue;
            }
            let mut at = self.home(entry.hash);
            while self.tags[at] != FREE {
                at = (at + 1) & mask;
            }
            self.tags[at] = tag;
            self.slots[at] = entry;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_slot_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<KeyEntry>(), 64);
        assert_eq!(std::mem::align_of::<KeyEntry>(), 64);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Keys pointed, re-pointed, removed and sifted in any order, some longer than a slot holds, some sharing
        /// the seven bits of hash their tag keeps (a small key space crowds the slots): the table answers as a map.
        #[test]
        fn the_key_table_answers_as_a_map(
            ops in proptest::collection::vec((0u8..4, 0usize..40, 0usize..3), 1..600)
        ) {
            let name = |k: usize| if k.is_multiple_of(7) { format!("user:{k}{}", "x".repeat(50)) } else { format!("anon:{k}") };
            let mut table = KeyTable::default();
            let mut model: HashMap<String, usize> = HashMap::new();
            for (op, k, profile) in ops {
                let key = name(k);
                match op {
                    0 | 1 => proptest::prop_assert_eq!(table.set(&key, profile), model.insert(key, profile)),
                    2 => {
                        let points = model.get(&key) == Some(&profile);
                        proptest::prop_assert_eq!(table.remove(&key, profile), points);
                        if points {
                            model.remove(&key);
                        }
                    }
                    _ => {
                        table.retain(|entry| entry.profile != profile);
                        model.retain(|_, &mut p| p != profile);
                    }
                }
                proptest::prop_assert_eq!(table.len(), model.len());
                for other in 0..40 {
                    let key = name(other);
                    proptest::prop_assert_eq!(table.get(&key), model.get(&key).copied(), "{}", key);
                }
            }
        }
    }
}
