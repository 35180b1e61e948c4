//! How the embedded store writes identity memory: the profiles a transaction writes go into the journal as one value,
//! and the journal is folded into the identity table, each visitor's last write once. Visitor keys are random, so a
//! profile written straight into the table landed on a page of the tree of its own, which redb rebuilt, checksummed
//! and wrote out at the commit: that was half of what committing a group of requests cost. Folding writes a visitor
//! once however often it changed since, and many visitors to a page.
//!
//! Folding happens in passes. Once the journal holds [`FOLD_AT`] writes, a pass takes the keys it holds then, in key
//! order, and each transaction after that folds the next few of them ([`Unfolded::step`]): every commit does a little,
//! so none of them waits on a whole fold, and the keys one folds are neighbours in the table. The transaction that
//! folds the last of them removes the journal's values up to where the pass began. Until then, and for writes after
//! it, the journal's rows are held in memory, where reads find them first. A store that opens folds whatever its
//! journal holds at once, so a pass is never resumed: it lives in memory only.

use std::collections::{BTreeMap, HashMap};

/// How many profile writes the journal takes before a pass folds it. The more a pass folds, the closer its keys are
/// in the table and the more of them share a page: on 160,000 events of `relay_load.py`, 4,096 gave 51,785
/// acknowledged events/s, 16,384 gave 59,055 and 65,536 gave 61,007. Its rows are held in memory until folded, about
/// 400 bytes each.
pub(super) const FOLD_AT: usize = 16_384;

/// The fewest keys a transaction folds while a pass runs; it folds twice its own writes when that is more, so that
/// passes keep up with any rate of writes and the journal stays bounded.
pub(super) const STEP_KEYS: usize = 256;

/// One profile write.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Entry {
    pub key: String,
    pub touched_ms: u64,
    /// The row as the identity table holds it.
    pub row: Vec<u8>,
}

/// The journal value of `entries`: for each, the key's and the row's lengths and the time, then the key and the row.
pub(super) fn encode(entries: &[Entry]) -> Vec<u8> {
    let size = entries.iter().map(|e| 16 + e.key.len() + e.row.len()).sum();
    let mut value = Vec::with_capacity(size);
    for entry in entries {
        value.extend_from_slice(&(entry.key.len() as u32).to_le_bytes());
        value.extend_from_slice(&(entry.row.len() as u32).to_le_bytes());
        value.extend_from_slice(&entry.touched_ms.to_le_bytes());
        value.extend_from_slice(entry.key.as_bytes());
        value.extend_from_slice(&entry.row);
    }
    value
}

/// The entries of the journal value stored under `seq`, in the order they were written.
pub(super) fn decode(seq: u64, value: &[u8]) -> Result<Vec<Entry>, String> {
    let damaged = || format!("identity journal entry {seq} is damaged: it ends inside a profile");
    let mut entries = Vec::new();
    let mut at = 0;
    while at < value.len() {
        let head = value.get(at..at + 16).ok_or_else(damaged)?;
        let number = |from: usize, to: usize| head[from..to].iter().rev().fold(0u64, |n, &b| n << 8 | u64::from(b));
        let (key_len, row_len, touched_ms) = (number(0, 4) as usize, number(4, 8) as usize, number(8, 16));
        let key_end = at + 16 + key_len;
        let end = key_end + row_len;
        let key = value.get(at + 16..key_end).ok_or_else(damaged)?;
        let row = value.get(key_end..end).ok_or_else(damaged)?;
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| format!("identity journal entry {seq} is damaged: a visitor key is not UTF-8"))?;
        entries.push(Entry { key, touched_ms, row: row.to_vec() });
        at = end;
    }
    Ok(entries)
}

/// Each key's last entry, in key order.
pub(super) fn last_writes(entries: impl IntoIterator<Item = Entry>) -> BTreeMap<String, Entry> {
    entries.into_iter().map(|entry| (entry.key.clone(), entry)).collect()
}

/// A key's last row in the journal.
struct Journaled {
    row: Vec<u8>,
    touched_ms: u64,
    /// The journal value it is in.
    seq: u64,
}

/// The keys a pass folds, taken when it began.
struct Pass {
    /// The last journal value it covers: once every key is folded, the values up to it are removed.
    through: u64,
    /// In key order; the first `next` are folded.
    keys: Vec<String>,
    next: usize,
}

/// What one transaction folds.
pub(super) struct Step {
    /// Keys with their last rows and times, in key order.
    pub rows: Vec<(String, Vec<u8>, u64)>,
    /// Set when the step begins a pass: the last journal value it covers and its keys.
    begins: Option<(u64, Vec<String>)>,
    /// Set when the step ends the pass: the journal values up to it are to be removed.
    pub ends: Option<u64>,
}

/// The journal as committed, in memory: each key's last row, and the pass under way.
#[derive(Default)]
pub(super) struct Unfolded {
    rows: HashMap<String, Journaled>,
    /// Writes committed since the last pass began.
    writes: usize,
    pass: Option<Pass>,
}

impl Unfolded {
    /// The row last journaled for `key`.
    pub fn row(&self, key: &str) -> Option<&[u8]> {
        self.rows.get(key).map(|journaled| journaled.row.as_slice())
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.rows.keys().map(String::as_str)
    }

    /// What a transaction that journals `writes` more folds: the next keys of the pass under way (at least
    /// `step_keys`), or of one it begins once the journal holds `fold_at` writes; nothing otherwise. Rows are as
    /// committed: a key the transaction writes again is folded at its older row, and its newer one stays in the
    /// journal for the next pass.
    pub fn step(&self, writes: usize, fold_at: usize, step_keys: usize) -> Option<Step> {
        let take = step_keys.max(2 * writes);
        let begun;
        let (keys, next, through, begins) = match &self.pass {
            Some(pass) => (&pass.keys, pass.next, pass.through, None),
            None if self.writes + writes >= fold_at && !self.rows.is_empty() => {
                let mut keys: Vec<String> = self.rows.keys().cloned().collect();
                keys.sort_unstable();
                // The last value committed: its rows are held, at its number, unless written again since.
                let through = self.rows.values().map(|journaled| journaled.seq).max().unwrap_or_default();
                begun = keys;
                (&begun, 0, through, Some((through, begun.clone())))
            }
            None => return None,
        };
        let end = keys.len().min(next + take);
        let rows = keys[next..end]
            .iter()
            .map(|key| {
                let journaled = &self.rows[key];
                (key.clone(), journaled.row.clone(), journaled.touched_ms)
            })
            .collect();
        Some(Step { rows, begins, ends: (end == keys.len()).then_some(through) })
    }

    /// Notes what a transaction committed: the entries it journaled under `seq`, and the step it folded.
    pub fn committed(&mut self, seq: u64, entries: Vec<Entry>, step: Option<Step>) {
        if let Some(step) = step {
            if let Some((through, keys)) = step.begins {
                self.pass = Some(Pass { through, keys, next: 0 });
                self.writes = 0;
            }
            if let Some(pass) = &mut self.pass {
                pass.next += step.rows.len();
            }
            if let Some(through) = step.ends {
                // Keys written again since the pass began stay: their newer rows are in the journal still.
                self.rows.retain(|_, journaled| journaled.seq > through);
                self.pass = None;
            }
        }
        if entries.is_empty() {
            return;
        }
        self.writes += entries.len();
        for Entry { key, touched_ms, row } in entries {
            self.rows.insert(key, Journaled { row, touched_ms, seq });
        }
    }

    /// The journal was folded whole: the table holds everything.
    pub fn clear(&mut self) {
        *self = Unfolded::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, touched_ms: u64, row: &str) -> Entry {
        Entry { key: key.into(), touched_ms, row: row.as_bytes().to_vec() }
    }

    #[test]
    fn a_journal_value_reads_back_as_its_entries_and_a_damaged_one_is_an_error() {
        let entries = vec![entry("anon:é", 7, "{\"a\":1}"), entry("user:2", 9, ""), entry("", 0, "x")];
        let value = encode(&entries);
        assert_eq!(decode(4, &value).unwrap(), entries);
        assert_eq!(decode(4, &[]).unwrap(), []);
        let boundaries: Vec<usize> = (1..entries.len()).map(|n| encode(&entries[..n]).len()).collect();
        for cut in 1..value.len() {
            match decode(4, &value[..cut]) {
                Ok(read) => assert!(boundaries.contains(&cut) && entries.starts_with(&read), "cut at {cut}"),
                Err(message) => assert!(message.contains("entry 4 is damaged"), "{message}"),
            }
        }
        let mut lying = value.clone();
        lying[0] = 200;
        assert!(decode(4, &lying).unwrap_err().contains("identity journal entry 4 is damaged"));
    }

    #[test]
    fn a_pass_folds_the_keys_it_began_with_a_few_at_a_time_and_keeps_what_was_written_since() {
        let mut unfolded = Unfolded::default();
        assert!(unfolded.step(1, 3, STEP_KEYS).is_none(), "nothing journaled: nothing to fold");
        let batch: Vec<Entry> = (0..300).rev().map(|n| entry(&format!("k{n:03}"), 1, "old")).collect();
        unfolded.committed(0, batch, None);
        let first = unfolded.step(10, 3, STEP_KEYS).expect("full: a pass begins");
        assert_eq!((first.rows.len(), first.ends), (STEP_KEYS, None));
        assert_eq!(first.rows[0].0, "k000", "in key order");
        unfolded.committed(1, vec![entry("k299", 2, "new"), entry("k500", 2, "new")], Some(first));
        let last = unfolded.step(0, 3, STEP_KEYS).expect("the pass goes on");
        assert_eq!((last.rows.len(), last.ends), (300 - STEP_KEYS, Some(0)));
        assert!(last.rows.iter().any(|(key, row, _)| key == "k299" && row == b"new"), "rows as committed last");
        assert!(last.rows.iter().all(|(key, ..)| key != "k500"), "a key journaled after the pass began waits");
        unfolded.committed(2, Vec::new(), Some(last));
        let left: Vec<&str> = unfolded.keys().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        assert_eq!(left, ["k299", "k500"], "written again after the pass began: kept for the next");
        assert!(unfolded.step(0, 3, STEP_KEYS).is_none(), "two writes since: not full");
        assert_eq!(unfolded.step(100, 3, STEP_KEYS).map(|step| step.rows.len()), Some(2));
    }

    proptest::proptest! {
        /// Whatever bytes a damaged file hands back, reading them is an answer, never a panic.
        #[test]
        fn any_bytes_read_as_entries_or_an_error(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = decode(1, &bytes);
        }
    }
}
