//! How the embedded store writes identity memory: the profiles a transaction writes go into the journal as one value,
//! and from time to time the journal is folded into the identity table, each visitor's last write once. Visitor keys
//! are random, so a profile written straight into the table landed on a page of the tree of its own, which redb
//! rebuilt, checksummed and wrote out at the commit: that was half of what committing a group of requests cost.
//! A fold writes a visitor once however often it changed since the last one, and many visitors to a page. Until
//! folded, the journal's rows are also held in memory ([`Unfolded`]), where reads find them first.

use std::collections::{BTreeMap, HashMap};

/// How many profile writes the journal takes before the transaction that reaches it folds it.
pub(super) const FOLD_AT: usize = 4096;

/// One profile write.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Entry {
    pub key: String,
    /// When the visitor's row was written before, as the writer read it: where the table of times lists it.
    pub before: Option<u64>,
    pub touched_ms: u64,
    /// The row as the identity table holds it.
    pub row: Vec<u8>,
}

/// A time no row is written at, standing for "never written".
const NEVER: u64 = u64::MAX;

/// The journal value of `entries`: for each, the key's and the row's lengths, the two times, then the key and the row.
pub(super) fn encode(entries: &[Entry]) -> Vec<u8> {
    let size = entries.iter().map(|e| 24 + e.key.len() + e.row.len()).sum();
    let mut value = Vec::with_capacity(size);
    for entry in entries {
        value.extend_from_slice(&(entry.key.len() as u32).to_le_bytes());
        value.extend_from_slice(&(entry.row.len() as u32).to_le_bytes());
        value.extend_from_slice(&entry.before.unwrap_or(NEVER).to_le_bytes());
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
        let head = value.get(at..at + 24).ok_or_else(damaged)?;
        let number = |from: usize, to: usize| head[from..to].iter().rev().fold(0u64, |n, &b| n << 8 | u64::from(b));
        let (key_len, row_len) = (number(0, 4) as usize, number(4, 8) as usize);
        let before = Some(number(8, 16)).filter(|&at| at != NEVER);
        let touched_ms = number(16, 24);
        let key_end = (at + 24).checked_add(key_len).ok_or_else(damaged)?;
        let end = key_end.checked_add(row_len).ok_or_else(damaged)?;
        let key = value.get(at + 24..key_end).ok_or_else(damaged)?;
        let row = value.get(key_end..end).ok_or_else(damaged)?;
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| format!("identity journal entry {seq} is damaged: a visitor key is not UTF-8"))?;
        entries.push(Entry { key, before, touched_ms, row: row.to_vec() });
        at = end;
    }
    Ok(entries)
}

/// What folding journal entries leaves for each visitor key: its last row, at its last time, and the time the table
/// of times listed it at before the first of them.
pub(super) fn folded(entries: impl IntoIterator<Item = Entry>) -> BTreeMap<String, Entry> {
    let mut last: BTreeMap<String, Entry> = BTreeMap::new();
    for entry in entries {
        match last.get_mut(&entry.key) {
            Some(kept) => {
                kept.touched_ms = entry.touched_ms;
                kept.row = entry.row;
            }
            None => {
                last.insert(entry.key.clone(), entry);
            }
        }
    }
    last
}

/// The journal's rows not folded yet, in memory: each key's last.
#[derive(Default)]
pub(super) struct Unfolded {
    rows: HashMap<String, Vec<u8>>,
    /// How many writes the journal holds, each write of a key counted.
    writes: usize,
}

impl Unfolded {
    /// The row last journaled for `key`.
    pub fn row(&self, key: &str) -> Option<&[u8]> {
        self.rows.get(key).map(Vec::as_slice)
    }

    /// How many writes the journal holds, each write of a key counted.
    pub fn writes(&self) -> usize {
        self.writes
    }

    /// Notes entries a transaction committed to the journal.
    pub fn add(&mut self, entries: Vec<Entry>) {
        self.writes += entries.len();
        for entry in entries {
            self.rows.insert(entry.key, entry.row);
        }
    }

    /// The journal was folded: the table holds everything.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.writes = 0;
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.rows.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, before: Option<u64>, touched_ms: u64, row: &str) -> Entry {
        Entry { key: key.into(), before, touched_ms, row: row.as_bytes().to_vec() }
    }

    #[test]
    fn a_journal_value_reads_back_as_its_entries_and_a_damaged_one_is_an_error() {
        let entries =
            vec![entry("anon:é", None, 7, "{\"a\":1}"), entry("user:2", Some(3), 9, ""), entry("", Some(0), 0, "x")];
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
    fn folding_keeps_each_keys_last_row_and_time_and_its_first_listed_time() {
        let folded = folded([
            entry("anon:1", Some(1), 5, "first"),
            entry("anon:2", None, 5, "other"),
            entry("anon:1", Some(5), 6, "second"),
        ]);
        assert_eq!(
            folded.into_values().collect::<Vec<_>>(),
            [entry("anon:1", Some(1), 6, "second"), entry("anon:2", None, 5, "other")]
        );
    }

    proptest::proptest! {
        /// Whatever bytes a damaged file hands back, reading them is an answer, never a panic.
        #[test]
        fn any_bytes_read_as_entries_or_an_error(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = decode(1, &bytes);
        }
    }
}
