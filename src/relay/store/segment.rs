//! How the embedded store keeps a pixel's queue: in segments, each the rows one transaction queued for the pixel, in
//! one value of the queue table under the sequence number of its first row. redb rebuilds a page of its tree for
//! every value it inserts or removes, which cost more than everything else of queueing and delivering an event when
//! each event was a value of its own; a group of requests now costs one insert, and a delivered batch a removal per
//! segment. Every segment's rows are in order, and a pixel's segments never interleave: each holds the rows from its
//! key up to the key of the next one. A value written before segments (one row, a JSON text) reads as a segment of
//! that one row.

/// The first byte of a segment: a row as it was written before segments starts with `{`.
const MARK: u8 = 0x01;
/// The mark and the number of rows.
const HEAD: usize = 1 + 4;

/// A segment being written, row by row in order.
pub(super) struct Segment {
    first: u64,
    count: u32,
    bytes: Vec<u8>,
}

impl Segment {
    pub fn new(first: u64) -> Segment {
        let mut bytes = Vec::with_capacity(64 << 10);
        bytes.push(MARK);
        bytes.extend_from_slice(&0u32.to_le_bytes());
        Segment { first, count: 0, bytes }
    }

    pub fn push(&mut self, seq: u64, row: &[u8]) {
        self.count += 1;
        self.bytes.extend_from_slice(&seq.to_le_bytes());
        self.bytes.extend_from_slice(&(row.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(row);
    }

    /// The key it goes under and its value.
    pub fn finish(mut self) -> (u64, Vec<u8>) {
        self.bytes[1..HEAD].copy_from_slice(&self.count.to_le_bytes());
        (self.first, self.bytes)
    }

    /// A segment of `rows`, which must be in order and not empty: the key is the first one's.
    pub fn of(rows: &[(u64, &[u8])]) -> (u64, Vec<u8>) {
        let mut segment = Segment::new(rows.first().map_or(0, |&(seq, _)| seq));
        for &(seq, row) in rows {
            segment.push(seq, row);
        }
        segment.finish()
    }
}

/// The rows of the value stored under `key`, in order.
pub(super) fn rows(key: u64, value: &[u8]) -> Result<Vec<(u64, &[u8])>, String> {
    if value.first() != Some(&MARK) {
        return Ok(vec![(key, value)]);
    }
    let damaged = || format!("queue segment {key} is damaged: it ends inside a row");
    let count = u32::from_le_bytes(value.get(1..HEAD).ok_or_else(damaged)?.try_into().map_err(|_| damaged())?);
    // A damaged count must not decide an allocation: every row takes at least 12 bytes.
    let mut rows = Vec::with_capacity((count as usize).min(value.len() / 12));
    let mut at = HEAD;
    while at < value.len() {
        let seq = u64::from_le_bytes(value.get(at..at + 8).ok_or_else(damaged)?.try_into().map_err(|_| damaged())?);
        let len =
            u32::from_le_bytes(value.get(at + 8..at + 12).ok_or_else(damaged)?.try_into().map_err(|_| damaged())?);
        let row = value.get(at + 12..at + 12 + len as usize).ok_or_else(damaged)?;
        rows.push((seq, row));
        at += 12 + len as usize;
    }
    if rows.len() != count as usize {
        return Err(format!("queue segment {key} is damaged: it says {count} rows and holds {}", rows.len()));
    }
    Ok(rows)
}

/// How many rows the value holds, read from its head.
pub(super) fn count(value: &[u8]) -> u64 {
    match value {
        [MARK, a, b, c, d, ..] => u64::from(u32::from_le_bytes([*a, *b, *c, *d])),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_reads_back_as_its_rows_and_a_row_of_before_as_itself() {
        let mut segment = Segment::new(7);
        for (seq, row) in [(7, &b"{\"id\":\"a\"}\n{}"[..]), (9, b""), (12, b"{\"id\":\"c\"}\n{\"x\":1}")] {
            segment.push(seq, row);
        }
        let (key, value) = segment.finish();
        assert_eq!(key, 7);
        assert_eq!(count(&value), 3);
        let read = rows(key, &value).unwrap();
        assert_eq!(read, [(7, &b"{\"id\":\"a\"}\n{}"[..]), (9, b""), (12, b"{\"id\":\"c\"}\n{\"x\":1}")]);
        assert_eq!(Segment::of(&read[1..]), (9, Segment::of(&read[1..]).1));
        let legacy = b"{\"id\":\"old\"}\n{}";
        assert_eq!((rows(4, legacy).unwrap(), count(legacy)), (vec![(4, &legacy[..])], 1));
    }

    proptest::proptest! {
        /// Whatever bytes a damaged file hands back, reading them is an answer, never a panic.
        #[test]
        fn any_bytes_read_as_rows_or_an_error(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = (rows(3, &bytes), count(&bytes));
            bytes.insert(0, MARK);
            let _ = (rows(3, &bytes), count(&bytes));
        }
    }

    #[test]
    fn a_damaged_segment_is_an_error_naming_it_never_a_panic() {
        let (key, value) = Segment::of(&[(1, b"abc"), (2, b"def")]);
        for cut in 1..value.len() {
            assert!(rows(key, &value[..cut]).is_err(), "cut at {cut}");
        }
        let mut lying = value.clone();
        lying[1] = 3;
        assert!(rows(key, &lying).unwrap_err().contains("says 3 rows and holds 2"));
    }
}
