//! The relay's durable state behind one interface: the delivery queue of mapped events per pixel, the dead-letter
//! store, identity memory and the byte count the disk cap is enforced on. [`RedbStore`] keeps it in an embedded,
//! crash-safe redb file: every write transaction is fsynced before it returns, so what the relay acknowledged survives
//! a killed process or a lost machine. Its queue is kept in segments ([`segment`]) and its identity memory written
//! through a journal ([`journal`]), so that a group of requests costs a few inserts, not one per event. Only mapped
//! events are stored (personal data already hashed); raw input events never reach the disk. The console's settings are
//! kept here too; an API key typed into the console is the one secret the store holds (in its own table, never in the
//! queue, the dead letters or a log), as a configuration file with `api_key` would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use redb::{Database, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::identity::{IdentityStore, Profile};
use crate::quality::Observed;

mod journal;
mod segment;

use journal::Unfolded;
use segment::Segment;

/// An OpenAI event waiting for delivery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The event's `id`: OpenAI deduplicates on it with `type`, so it stays the same on every attempt.
    pub id: String,
    pub event_type: String,
    /// `timestamp_ms` of the event, to check OpenAI's window again at send time.
    pub timestamp_ms: Option<i64>,
    /// When the relay acknowledged it, epoch ms.
    pub received_ms: i64,
    /// The OpenAI event as JSON.
    pub event: String,
    /// Whether the event as received carried a consent state, for match quality's advice; `None` for events
    /// queued before the relay noted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_sent: Option<bool>,
    /// What the event says about its match quality, noted when it was mapped; `None` for events queued before the
    /// relay noted it, and for events it explained: delivery reads those from the event's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observed>,
}

/// The fields of a [`Pending`] around its event, as a queue row's first line.
#[derive(Serialize, Deserialize)]
struct RowHead<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    event_type: std::borrow::Cow<'a, str>,
    timestamp_ms: Option<i64>,
    received_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consent_sent: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    observed: Option<Observed>,
}

impl Pending {
    /// The event as a queue row: the fields around it as a JSON object on the first line, then the event's JSON as
    /// it is. Embedding the event in the object as a string would escape every quote of it on the way in and
    /// unescape it on every read, the largest cost of queueing an event.
    pub fn to_row(&self) -> Vec<u8> {
        let head = RowHead {
            id: self.id.as_str().into(),
            event_type: self.event_type.as_str().into(),
            timestamp_ms: self.timestamp_ms,
            received_ms: self.received_ms,
            consent_sent: self.consent_sent,
            observed: self.observed,
        };
        let mut row = Vec::with_capacity(self.event.len() + self.id.len() + self.event_type.len() + 100);
        // Writing to a Vec fails only on a serialiser error, which these plain fields cannot give.
        let _ = serde_json::to_writer(&mut row, &head);
        row.push(b'\n');
        row.extend_from_slice(self.event.as_bytes());
        row
    }

    /// The `received_ms` of a queue row, read from its first line alone.
    pub fn received_ms_of_row(row: &[u8]) -> Result<i64, String> {
        match memchr::memchr(b'\n', row) {
            Some(line_end) => serde_json::from_slice::<RowHead<'_>>(&row[..line_end])
                .map(|head| head.received_ms)
                .map_err(|e| e.to_string()),
            None => Pending::from_row(row).map(|pending| pending.received_ms),
        }
    }

    /// [`Pending::to_row`] as text, for a store that keeps rows in a text column.
    pub fn to_row_text(&self) -> String {
        // serde_json writes UTF-8 and the event is a `String`: the row is text.
        String::from_utf8(self.to_row()).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Reads a queue row written by [`Pending::to_row`], or one written before, when the whole row was the
    /// pending event as one JSON object (it has no line break: JSON text as serde_json writes it has none).
    pub fn from_row(row: &[u8]) -> Result<Pending, String> {
        let Some(line_end) = memchr::memchr(b'\n', row) else {
            return serde_json::from_slice(row).map_err(|e| e.to_string());
        };
        let head: RowHead<'_> = serde_json::from_slice(&row[..line_end]).map_err(|e| e.to_string())?;
        let event = std::str::from_utf8(&row[line_end + 1..]).map_err(|e| format!("the event is not UTF-8: {e}"))?;
        Ok(Pending {
            id: head.id.into_owned(),
            event_type: head.event_type.into_owned(),
            timestamp_ms: head.timestamp_ms,
            received_ms: head.received_ms,
            event: event.to_string(),
            consent_sent: head.consent_sent,
            observed: head.observed,
        })
    }
}

/// An event OpenAI will never accept, kept for an operator to inspect, replay or purge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub pixel: String,
    /// Its position in the queue it came from; replay puts it back there.
    pub seq: u64,
    pub pending: Pending,
    /// `expired` (outside OpenAI's timestamp window at send time) or `rejected` (OpenAI refused it).
    pub reason: String,
    /// OpenAI's response body, or what made the event expire.
    pub detail: String,
    pub dead_ms: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

/// What holds a pixel's delivery back for every relay sharing a store: paused because OpenAI refused the API key,
/// or asked to wait (Retry-After) until a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hold {
    pub paused_why: Option<String>,
    /// Epoch ms before which nothing is sent.
    pub until_ms: Option<i64>,
}

/// How a failure of the disk under the store begins, by which the store knows to close and reopen its file: after
/// one, redb refuses every transaction until the database is opened again.
const IO_FAILURE: &str = "I/O error";

/// A record that does not (de)serialise: a damaged record, reported, never a reason to reopen.
fn unreadable(error: serde_json::Error) -> StoreError {
    StoreError(format!("a stored record cannot be read: {error}"))
}

/// A queued event that cannot be read back.
pub(super) fn unreadable_row(error: String) -> StoreError {
    StoreError(format!("a queued event cannot be read: {error}"))
}

fn fail(error: impl Into<redb::Error>) -> StoreError {
    match error.into() {
        redb::Error::Io(error) => StoreError(format!("{IO_FAILURE}: {error}")),
        redb::Error::PreviousIo => StoreError(format!("{IO_FAILURE} earlier; the store is being reopened")),
        other => StoreError(other.to_string()),
    }
}

/// One durable write: the events an ingestion request queued and the identity memory it updated commit together
/// or not at all.
pub trait IngestTx: IdentityStore {
    /// Queues a mapped event for `pixel`; returns its sequence number.
    fn enqueue(&mut self, pixel: &str, pending: &Pending) -> Result<u64, StoreError>;
    /// Visitor keys the transaction is about to load: a store across a network reads them in one round trip.
    fn prefetch(&mut self, _keys: &[String]) {}
    /// Writes a profile mapped outside the transaction, against identity memory read with
    /// [`Store::read_identity`], as written at `touched_ms` ([`touch_time`] of the time it was read or written at by
    /// an earlier group of the same writer). A store that keeps its own times stores the profile as
    /// [`IdentityStore::store`] does.
    fn store_staged(&mut self, key: &str, profile: &Profile, _touched_ms: u64) -> Result<(), StoreError> {
        self.store(key, profile.clone());
        Ok(())
    }
}

/// The relay's storage. One interface so that a shared backend for a fleet of relays can replace the embedded one.
pub trait Store: Send + Sync + 'static {
    /// Runs `work` in one write transaction and makes it durable (fsync) before returning. An error from `work`
    /// or from the commit rolls back everything it did.
    fn ingest(&self, work: &mut dyn FnMut(&mut dyn IngestTx) -> Result<(), StoreError>) -> Result<(), StoreError>;
    /// The oldest `limit` events queued for `pixel`, in order.
    fn peek(&self, pixel: &str, limit: usize) -> Result<Vec<(u64, Pending)>, StoreError>;
    /// Removes delivered events from the queue.
    fn complete(&self, pixel: &str, seqs: &[u64]) -> Result<(), StoreError>;
    /// Moves events from the queue to the dead-letter store, with the reason and detail of each.
    fn bury(&self, pixel: &str, dead: &[(u64, String, String)], now_ms: i64) -> Result<(), StoreError>;
    /// Dead letters, of one pixel or all, oldest first.
    fn dead_letters(&self, pixel: Option<&str>) -> Result<Vec<DeadLetter>, StoreError>;
    /// Puts dead letters back into their queues (all of a pixel, or the given sequence numbers); returns how many.
    fn replay(&self, pixel: Option<&str>, seqs: Option<&[u64]>) -> Result<usize, StoreError>;
    /// Deletes dead letters for good; returns how many.
    fn purge(&self, pixel: Option<&str>, seqs: Option<&[u64]>) -> Result<usize, StoreError>;
    /// How many events wait for delivery to `pixel`.
    fn depth(&self, pixel: &str) -> Result<u64, StoreError>;
    /// Bytes of queued events, dead letters and identity memory: what the disk cap is enforced on.
    fn stored_bytes(&self) -> Result<u64, StoreError>;
    /// Forgets the visitors whose profile was last written before `before_ms`; returns how many. A store may know
    /// the time of the last write only to within a bound it documents ([`TOUCH_PRECISION_MS`] for redb's); it then
    /// forgets a visitor only once sure, up to that much later.
    fn forget_visitors(&self, before_ms: i64) -> Result<usize, StoreError>;
    /// Takes the oldest `limit` events of `pixel` for delivery. On a store several relays share, each event is
    /// taken by one relay at a time, for the store's lease, and events whose lease ran out (their relay died) are
    /// taken again; a relay alone takes what `peek` shows.
    fn claim(&self, pixel: &str, limit: usize) -> Result<Vec<(u64, Pending)>, StoreError> {
        self.peek(pixel, limit)
    }
    /// How many events wait for `pixel`, counted up to `limit`, and when the oldest of them was received: what
    /// deciding whether a batch goes now takes. Delivery asks each time a group is queued while a batch fills, so
    /// a store that can should answer without reading every event.
    fn waiting(&self, pixel: &str, limit: usize) -> Result<(usize, Option<i64>), StoreError> {
        let batch = self.peek(pixel, limit)?;
        Ok((batch.len(), batch.first().map(|(_, pending)| pending.received_ms)))
    }
    /// Extends this relay's lease on events it is still delivering.
    fn extend(&self, _pixel: &str, _seqs: &[u64]) -> Result<(), StoreError> {
        Ok(())
    }
    /// Gives up this relay's lease on events it will not send now (it waits, or it stops), so that they are not
    /// held back until the lease runs out: the next claim, by this relay or another, takes them.
    fn release(&self, _pixel: &str, _seqs: &[u64]) -> Result<(), StoreError> {
        Ok(())
    }
    /// What holds `pixel`'s delivery back for every relay on the store.
    fn hold(&self, _pixel: &str) -> Result<Hold, StoreError> {
        Ok(Hold::default())
    }
    /// Holds `pixel`'s delivery back for every relay on the store (a refused key, a Retry-After), or releases it.
    fn set_hold(&self, _pixel: &str, _hold: &Hold) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether other relays may share this store.
    fn shared(&self) -> bool {
        false
    }
    /// The identity rows of `keys` as last committed, read outside any write: for a writer that maps a group while
    /// the one before it commits, and writes what it learned with [`IngestTx::store_staged`]. Only a store no other
    /// relay writes can be read so; a shared one reads inside its transactions.
    fn read_identity(&self, _keys: &[String]) -> Result<Vec<StoredProfile>, StoreError> {
        Err(StoreError("this store reads identity memory inside its transactions only".into()))
    }
    /// Moves on whenever identity memory changes other than by ingestion (visitors forgotten): rows read with
    /// [`Store::read_identity`] before it moved may be gone.
    fn identity_generation(&self) -> u64 {
        0
    }
    /// The console's settings whose key starts with `prefix`, in key order.
    fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Writes (`Some`) or deletes (`None`) console settings, all in one durable transaction.
    fn put_settings(&self, writes: &[(String, Option<Vec<u8>>)]) -> Result<(), StoreError>;
}

/// (pixel, seq of its first row) → the rows one transaction queued for the pixel ([`segment`]), each a `Pending` as
/// [`Pending::to_row`] writes it.
const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");
/// (pixel, seq) → `DeadLetter` as JSON.
const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dead");
/// visitor key → `Remembered` as JSON.
const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("identity");
/// (last touched ms, visitor key): the order in which visitors not seen for a while are forgotten.
const IDENTITY_TOUCHED: TableDefinition<(u64, &str), ()> = TableDefinition::new("identity_touched");
/// The profiles each transaction wrote, not yet folded into [`IDENTITY`] and [`IDENTITY_TOUCHED`] ([`journal`]).
const IDENTITY_JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("identity_journal");

/// A visitor's profile as stored, with when it was last written (to within [`TOUCH_PRECISION_MS`]).
#[derive(Deserialize)]
struct Remembered {
    profile: Profile,
    touched_ms: u64,
}

/// [`Remembered`] as written, borrowing the profile.
#[derive(Serialize)]
struct RememberedRef<'a> {
    profile: &'a Profile,
    touched_ms: u64,
}

/// How stale the time a visitor was last written at may be. Most events of a known visitor change its profile
/// (a field's last sighting moves), and moving the visitor in `IDENTITY_TOUCHED` at every write cost a removal
/// and an insertion in a second table; the time is moved when it is an hour old instead, and forgetting allows
/// for the hour, so a visitor is never forgotten before the time to live.
pub const TOUCH_PRECISION_MS: u64 = 3_600_000;

/// The time a visitor's row is written with at `now_ms`, when it was last written at `before`: kept while less than
/// [`TOUCH_PRECISION_MS`] old.
pub fn touch_time(before: Option<u64>, now_ms: u64) -> u64 {
    match before {
        Some(at) if now_ms.saturating_sub(at) < TOUCH_PRECISION_MS => at,
        _ => now_ms,
    }
}

/// key → the console's settings (`pixel/<name>`, `secret/<name>`, …) as JSON.
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
/// counters: `next_seq`, `stored_bytes`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The embedded store: one redb file in the relay's data directory. After a disk failure (a full disk, a failed
/// fsync) redb refuses every later transaction until the file is opened again, so the store closes it and reopens
/// it on the next use; until that succeeds every call fails, and ingestion answers 503.
pub struct RedbStore {
    path: PathBuf,
    /// `None` between a disk failure and the reopen after it.
    db: RwLock<Option<Database>>,
    /// How many times visitors were forgotten: [`Store::identity_generation`].
    forgettings: AtomicU64,
    /// The journal's rows, as its last committed transaction left it.
    unfolded: Mutex<Unfolded>,
    /// Held by the transactions that write or fold the journal, from before they begin until [`RedbStore::unfolded`]
    /// says what they committed, so that none of them sees it out of step with the file.
    journal_writer: Mutex<()>,
    /// How many profile writes the journal takes before a pass folds it, and the fewest keys each step of a pass
    /// folds ([`journal`]).
    fold_at: usize,
    step_keys: usize,
}

/// A key's row: its profile (`None`: no row, or one that cannot be read) and when it was last written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredProfile {
    pub profile: Option<Profile>,
    pub touched_ms: Option<u64>,
}

impl RedbStore {
    pub const FILE: &'static str = "relay.redb";

    /// Opens (or creates) the store in `data_dir`. Fails when another process has it open.
    pub fn open(data_dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError(format!("cannot create data directory {}: {e}", data_dir.display())))?;
        let path = data_dir.join(Self::FILE);
        let db = open_database(&path)?;
        Ok(RedbStore {
            path,
            db: RwLock::new(Some(db)),
            forgettings: AtomicU64::new(0),
            unfolded: Mutex::default(),
            journal_writer: Mutex::default(),
            fold_at: journal::FOLD_AT,
            step_keys: journal::STEP_KEYS,
        })
    }

    /// Runs `work` on the open database, reopening it first if a disk failure closed it, and closing it when
    /// `work` meets one.
    fn with_db<T>(&self, work: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.db.read().unwrap_or_else(PoisonError::into_inner).is_none() {
            let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
            if db.is_none() {
                *db = Some(open_database(&self.path)?);
                // Opening folded the journal.
                self.unfolded().clear();
                tracing::info!(file = %self.path.display(), "the store is open again after a disk failure");
            }
        }
        let result = {
            let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
            match db.as_ref() {
                Some(db) => work(db),
                None => return Err(StoreError(format!("{IO_FAILURE} earlier; the store is being reopened"))),
            }
        };
        if let Err(error) = &result {
            if error.0.starts_with(IO_FAILURE) {
                tracing::error!(%error, file = %self.path.display(), "the disk failed under the store: closing it, to reopen it on the next use");
                *self.db.write().unwrap_or_else(PoisonError::into_inner) = None;
            }
        }
        result
    }

    fn write(&self, work: impl FnOnce(&WriteTransaction) -> Result<(), StoreError>) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(fail)?;
            match work(&txn) {
                Ok(()) => txn.commit().map_err(fail),
                Err(error) => {
                    let _ = txn.abort();
                    Err(error)
                }
            }
        })
    }

    fn read<T>(&self, work: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.with_db(|db| work(&db.begin_read().map_err(fail)?))
    }
}

/// Opens (or creates) the database file with every table in it. redb recovers by itself from what a crash leaves
/// (an interrupted commit); a file damaged beyond that (truncated, its header overwritten) is refused with the way
/// out, never rewritten or emptied here, since it may still hold events a backup or a person can save.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let damaged = |why: &str| {
        StoreError(format!(
            "{file} is damaged ({why}): the relay does not start on it, so that no queued event is silently \
             dropped. Move it aside (`mv {file} {file}.damaged`) to start with an empty queue, or put back a copy \
             from a backup",
            file = path.display()
        ))
    };
    // redb asserts, rather than returns an error, when the file is shorter than its header says.
    let db = match std::panic::catch_unwind(|| Database::create(path)) {
        Ok(Ok(db)) => db,
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
            return Err(StoreError(format!("{} is open in another process: is another relay running?", path.display())))
        }
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(error))))
            if error.kind() == std::io::ErrorKind::InvalidData =>
        {
            return Err(damaged(&error.to_string()))
        }
        Ok(Err(error)) => return Err(StoreError(format!("cannot open {}: {error}", path.display()))),
        Err(_) => return Err(damaged("shorter than its header says: truncated")),
    };
    let txn = db.begin_write().map_err(fail)?;
    {
        txn.open_table(QUEUE).map_err(fail)?;
        txn.open_table(DEAD).map_err(fail)?;
        txn.open_table(IDENTITY).map_err(fail)?;
        txn.open_table(IDENTITY_TOUCHED).map_err(fail)?;
        txn.open_table(META).map_err(fail)?;
        txn.open_table(SETTINGS).map_err(fail)?;
        // What the last run journaled is folded, so that a store starts with nothing in memory.
        let (added, removed) = fold_journal(
            &mut txn.open_table(IDENTITY_JOURNAL).map_err(fail)?,
            &mut txn.open_table(IDENTITY).map_err(fail)?,
            &mut txn.open_table(IDENTITY_TOUCHED).map_err(fail)?,
        )?;
        adjust_bytes(&txn, added, removed)?;
    }
    txn.commit().map_err(fail)?;
    Ok(db)
}

/// Folds the journal into the identity table and the table of times, each key's last write once, and empties it;
/// returns the bytes written and removed.
fn fold_journal(
    journal: &mut JournalTable<'_>,
    table: &mut IdentityTable<'_>,
    touched: &mut TouchedTable<'_>,
) -> Result<(u64, u64), StoreError> {
    let (mut added, mut removed) = (0, 0);
    let mut entries = Vec::new();
    for item in journal.iter().map_err(fail)? {
        let (seq, value) = item.map_err(fail)?;
        match journal::decode(seq.value(), value.value()) {
            Ok(read) => entries.extend(read),
            // Identity memory only makes matches better: the relay goes on without what cannot be read, rather than
            // refusing to start on a file whose queued events are fine.
            Err(error) => tracing::error!(%error, "identity memory: a journal entry is left out"),
        }
        removed += value.value().len() as u64;
    }
    journal.retain(|_, _| false).map_err(fail)?;
    // In key order: the tree's pages are visited once each, left to right.
    for (key, entry) in journal::last_writes(entries) {
        let (row_added, row_removed) = write_row(table, touched, &key, &entry.row, entry.touched_ms)?;
        added += row_added;
        removed += row_removed;
    }
    Ok((added, removed))
}

type QueueTable<'t> = redb::Table<'t, (&'static str, u64), &'static [u8]>;

/// The key and value of the segment of `pixel` that holds `seq`, if the queue has one that may: the last one whose
/// key is not after it.
fn segment_holding(table: &QueueTable<'_>, pixel: &str, seq: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    let last = table.range((pixel, 0)..=(pixel, seq)).map_err(fail)?.next_back();
    match last {
        Some(entry) => {
            let (key, value) = entry.map_err(fail)?;
            Ok(Some((key.value().1, value.value().to_vec())))
        }
        None => Ok(None),
    }
}

/// Writes what is left of a segment once rows were taken out of it or put beside it: nothing when no row is, else
/// under its first row's sequence number. Returns the bytes written.
fn rewrite(table: &mut QueueTable<'_>, pixel: &str, left: &[(u64, &[u8])]) -> Result<u64, StoreError> {
    if left.is_empty() {
        return Ok(0);
    }
    let (first, bytes) = Segment::of(left);
    table.insert((pixel, first), bytes.as_slice()).map_err(fail)?;
    Ok(bytes.len() as u64)
}

/// Takes the rows `seqs` of `pixel` out of the queue, handing each to `taken`; a sequence number not queued is passed
/// over. Returns the bytes written and removed.
fn take_rows(
    table: &mut QueueTable<'_>,
    pixel: &str,
    seqs: &[u64],
    mut taken: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
) -> Result<(u64, u64), StoreError> {
    let mut wanted = seqs.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let (mut added, mut removed) = (0, 0);
    let mut next = 0;
    while let Some(&seq) = wanted.get(next) {
        let Some((key, value)) = segment_holding(table, pixel, seq)? else {
            next += 1;
            continue;
        };
        let rows = segment::rows(key, &value).map_err(unreadable_row)?;
        // The wanted rows this segment may hold: those up to its last.
        let last = rows.last().map_or(key, |&(last, _)| last);
        let end = next + wanted[next..].partition_point(|&s| s <= last);
        let here = &wanted[next..end];
        next = end.max(next + 1);
        let held = rows.len();
        let mut left = Vec::with_capacity(held);
        for (seq, row) in rows {
            if here.binary_search(&seq).is_ok() {
                taken(seq, row)?;
            } else {
                left.push((seq, row));
            }
        }
        if left.len() == held {
            continue;
        }
        table.remove((pixel, key)).map_err(fail)?;
        removed += value.len() as u64;
        added += rewrite(table, pixel, &left)?;
    }
    Ok((added, removed))
}

/// Puts `row` back into the queue of `pixel` at `seq`, its place: a segment holding rows after it is split around it,
/// so that segments stay in order and apart. Returns the bytes written and removed.
fn put_back(table: &mut QueueTable<'_>, pixel: &str, seq: u64, row: &[u8]) -> Result<(u64, u64), StoreError> {
    let (mut added, mut removed) = (0, 0);
    if let Some((key, value)) = segment_holding(table, pixel, seq)? {
        let rows = segment::rows(key, &value).map_err(unreadable_row)?;
        if rows.iter().any(|&(held, _)| held >= seq) {
            table.remove((pixel, key)).map_err(fail)?;
            removed += value.len() as u64;
            // A row queued under the same number is replaced, as inserting under its key would.
            let (before, after): (Vec<_>, Vec<_>) =
                rows.into_iter().filter(|&(held, _)| held != seq).partition(|&(held, _)| held < seq);
            added += rewrite(table, pixel, &before)? + rewrite(table, pixel, &after)?;
        }
    }
    let (first, bytes) = Segment::of(&[(seq, row)]);
    table.insert((pixel, first), bytes.as_slice()).map_err(fail)?;
    Ok((added + bytes.len() as u64, removed))
}

fn counter(txn: &WriteTransaction, name: &str) -> Result<u64, StoreError> {
    let table = txn.open_table(META).map_err(fail)?;
    let value = table.get(name).map_err(fail)?.map(|v| v.value()).unwrap_or(0);
    Ok(value)
}

fn set_counter(txn: &WriteTransaction, name: &str, value: u64) -> Result<(), StoreError> {
    let mut table = txn.open_table(META).map_err(fail)?;
    table.insert(name, value).map_err(fail)?;
    Ok(())
}

fn adjust_bytes(txn: &WriteTransaction, added: u64, removed: u64) -> Result<(), StoreError> {
    let bytes = counter(txn, "stored_bytes")?;
    set_counter(txn, "stored_bytes", bytes.saturating_add(added).saturating_sub(removed))
}

struct RedbIngest<'t> {
    txn: &'t WriteTransaction,
    /// When the transaction began: the time visitors' profiles are touched at.
    now_ms: u64,
    /// The first failure of identity memory, which the trait cannot return: it fails the whole transaction.
    failure: Option<StoreError>,
    /// The counters, read once and written once per transaction rather than per event.
    next_seq: Option<u64>,
    bytes_added: u64,
    bytes_removed: u64,
    /// The profiles this transaction read or wrote, the written ones marked: a visitor's events in one group read
    /// its profile once and write it once, when the group commits ([`RedbIngest::write_profiles`]).
    profiles: BTreeMap<String, Visited>,
    /// The rows queued, one segment per pixel, written when the work is done.
    segments: Vec<(String, Segment)>,
    /// The identity table and its order of last writes, opened at their first use and kept open likewise.
    identity: Option<IdentityTable<'t>>,
    touched: Option<TouchedTable<'t>>,
    /// The store's journal as committed, read before the identity table.
    unfolded: &'t Mutex<Unfolded>,
    /// The profiles this transaction wrote, journaled when the work is done.
    journaled: Vec<journal::Entry>,
    /// The journal value this transaction wrote, and what it folded.
    journal_seq: u64,
    fold_step: Option<journal::Step>,
    fold_at: usize,
    step_keys: usize,
}

/// A profile a transaction read or wrote.
struct Visited {
    known: StoredProfile,
    written: bool,
}

impl RedbIngest<'_> {
    /// Journals the profiles the transaction changed, each to be moved in [`IDENTITY_TOUCHED`] if it was last moved
    /// more than [`TOUCH_PRECISION_MS`] ago.
    fn write_profiles(&mut self) -> Result<(), StoreError> {
        for (key, visited) in self.profiles.iter_mut().filter(|(_, visited)| visited.written) {
            let Some(profile) = &visited.known.profile else { continue };
            let touched_ms = touch_time(visited.known.touched_ms, self.now_ms);
            self.journaled.push(journal_entry(key, profile, touched_ms)?);
            visited.known.touched_ms = Some(touched_ms);
        }
        Ok(())
    }

    /// Writes the transaction's profiles into the journal as one value, and folds its share of a pass.
    fn write_journal(&mut self) -> Result<(), StoreError> {
        let step = (self.unfolded.lock().unwrap_or_else(PoisonError::into_inner)).step(
            self.journaled.len(),
            self.fold_at,
            self.step_keys,
        );
        if self.journaled.is_empty() && step.is_none() {
            return Ok(());
        }
        let mut journal = self.txn.open_table(IDENTITY_JOURNAL).map_err(fail)?;
        if !self.journaled.is_empty() {
            let value = journal::encode(&self.journaled);
            // A row held in memory is in a value the journal still holds, so numbering on from the last one held
            // never reuses the number of a row in memory.
            self.journal_seq = journal.last().map_err(fail)?.map_or(0, |(seq, _)| seq.value() + 1);
            journal.insert(self.journal_seq, value.as_slice()).map_err(fail)?;
            self.bytes_added += value.len() as u64;
        }
        if let Some(step) = &step {
            let (table, touched) = open_identity(self.txn, &mut self.identity, &mut self.touched)?;
            for (key, row, touched_ms) in &step.rows {
                let (added, removed) = write_row(table, touched, key, row, *touched_ms)?;
                self.bytes_added += added;
                self.bytes_removed += removed;
            }
            if let Some(through) = step.ends {
                let folded: Vec<(u64, u64)> = (journal.range(..=through).map_err(fail)?)
                    .map(|item| item.map(|(seq, value)| (seq.value(), value.value().len() as u64)))
                    .collect::<Result<_, _>>()
                    .map_err(fail)?;
                for (seq, len) in folded {
                    journal.remove(seq).map_err(fail)?;
                    self.bytes_removed += len;
                }
            }
        }
        self.fold_step = step;
        Ok(())
    }
}

type IdentityTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;
type TouchedTable<'t> = redb::Table<'t, (u64, &'static str), ()>;
type JournalTable<'t> = redb::Table<'t, u64, &'static [u8]>;

/// The identity table and its order of last writes, each opened at its first use in the transaction and kept open.
fn open_identity<'a, 't>(
    txn: &'t WriteTransaction,
    identity: &'a mut Option<IdentityTable<'t>>,
    touched: &'a mut Option<TouchedTable<'t>>,
) -> Result<(&'a mut IdentityTable<'t>, &'a mut TouchedTable<'t>), StoreError> {
    let table = match identity {
        Some(table) => table,
        empty => empty.insert(txn.open_table(IDENTITY).map_err(fail)?),
    };
    let touched = match touched {
        Some(table) => table,
        empty => empty.insert(txn.open_table(IDENTITY_TOUCHED).map_err(fail)?),
    };
    Ok((table, touched))
}

/// The journal's entry for `key`'s profile, as written at `touched_ms`.
fn journal_entry(key: &str, profile: &Profile, touched_ms: u64) -> Result<journal::Entry, StoreError> {
    let row = serde_json::to_vec(&RememberedRef { profile, touched_ms }).map_err(unreadable)?;
    Ok(journal::Entry { key: key.to_string(), touched_ms, row })
}

/// Writes `key`'s row, as written at `touched_ms`, and moves the key in the table of times from the time of the row it
/// replaces; returns the bytes it added and the bytes of that row.
fn write_row(
    table: &mut IdentityTable<'_>,
    touched: &mut TouchedTable<'_>,
    key: &str,
    bytes: &[u8],
    touched_ms: u64,
) -> Result<(u64, u64), StoreError> {
    let (removed, before) = match table.insert(key, bytes).map_err(fail)? {
        Some(old) => (old.value().len() as u64, row_touched_ms(old.value())),
        None => (0, None),
    };
    if before != Some(touched_ms) {
        if let Some(at) = before {
            touched.remove((at, key)).map_err(fail)?;
        }
        touched.insert((touched_ms, key), ()).map_err(fail)?;
    }
    Ok((bytes.len() as u64, removed))
}

impl IdentityStore for RedbIngest<'_> {
    fn load(&mut self, key: &str) -> Option<Profile> {
        self.visited(key).clone()
    }

    fn store(&mut self, key: &str, profile: Profile) {
        match self.profiles.get_mut(key) {
            Some(visited) => {
                visited.known.profile = Some(profile);
                visited.written = true;
            }
            None => {
                // Stored without being read first: the row it replaces says when it was last written.
                let touched_ms = self.read_profile(key).touched_ms;
                let known = StoredProfile { profile: Some(profile), touched_ms };
                self.profiles.insert(key.to_string(), Visited { known, written: true });
            }
        }
    }

    /// Merges the transaction's own copy of the profile rather than a copy of it, which is what the trait's default
    /// (through [`IdentityStore::load`]) merges: every event recalls its visitor this way.
    fn merge_into(&mut self, key: &str, profile: &mut Profile, linked: &mut Vec<String>) -> bool {
        let Some(stored) = self.visited(key) else { return false };
        profile.merge(stored);
        linked.extend(stored.keys.iter().cloned());
        true
    }
}

impl RedbIngest<'_> {
    /// The profile stored under `key`, read from the table the first time this transaction asks for it.
    fn visited(&mut self, key: &str) -> &Option<Profile> {
        if !self.profiles.contains_key(key) {
            let known = self.read_profile(key);
            self.profiles.insert(key.to_string(), Visited { known, written: false });
        }
        &self.profiles[key].known.profile
    }

    fn read_profile(&mut self, key: &str) -> StoredProfile {
        if let Some(row) = self.unfolded.lock().unwrap_or_else(PoisonError::into_inner).row(key) {
            return stored_profile(row);
        }
        let table = match &mut self.identity {
            Some(table) => table,
            identity => match self.txn.open_table(IDENTITY) {
                Ok(table) => identity.insert(table),
                Err(error) => {
                    self.failure.get_or_insert(fail(error));
                    return StoredProfile::default();
                }
            },
        };
        match table.get(key) {
            Ok(Some(bytes)) => stored_profile(bytes.value()),
            Ok(None) => StoredProfile::default(),
            Err(error) => {
                self.failure.get_or_insert(fail(error));
                StoredProfile::default()
            }
        }
    }
}

/// A row of the identity table as read; one that cannot be read is no row, as if the visitor were new.
/// When an identity row says it was written: read from its end, where `touched_ms` is written last, or from the whole
/// row when it does not end so.
fn row_touched_ms(row: &[u8]) -> Option<u64> {
    let number = row.strip_suffix(b"}").and_then(|body| {
        let digits = body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
        let (head, digits) = body.split_at(body.len() - digits);
        head.ends_with(b",\"touched_ms\":").then(|| std::str::from_utf8(digits).ok()?.parse().ok())?
    });
    number.or_else(|| stored_profile(row).touched_ms)
}

fn stored_profile(row: &[u8]) -> StoredProfile {
    match serde_json::from_slice::<Remembered>(row) {
        Ok(row) => StoredProfile { profile: Some(row.profile), touched_ms: Some(row.touched_ms) },
        Err(_) => StoredProfile::default(),
    }
}

impl IngestTx for RedbIngest<'_> {
    fn store_staged(&mut self, key: &str, profile: &Profile, touched_ms: u64) -> Result<(), StoreError> {
        self.journaled.push(journal_entry(key, profile, touched_ms)?);
        Ok(())
    }

    fn enqueue(&mut self, pixel: &str, pending: &Pending) -> Result<u64, StoreError> {
        let seq = match self.next_seq {
            Some(seq) => seq,
            None => counter(self.txn, "next_seq")?,
        };
        self.next_seq = Some(seq + 1);
        let row = pending.to_row();
        match self.segments.iter_mut().find(|(name, _)| name == pixel) {
            Some((_, segment)) => segment.push(seq, &row),
            None => {
                let mut segment = Segment::new(seq);
                segment.push(seq, &row);
                self.segments.push((pixel.to_string(), segment));
            }
        }
        Ok(seq)
    }
}

impl RedbIngest<'_> {
    /// Writes each pixel's segment: one insert however many events the transaction queued.
    fn write_segments(&mut self) -> Result<(), StoreError> {
        if self.segments.is_empty() {
            return Ok(());
        }
        let mut table = self.txn.open_table(QUEUE).map_err(fail)?;
        for (pixel, segment) in self.segments.drain(..) {
            let (first, bytes) = segment.finish();
            table.insert((pixel.as_str(), first), bytes.as_slice()).map_err(fail)?;
            self.bytes_added += bytes.len() as u64;
        }
        Ok(())
    }
}

impl Store for RedbStore {
    fn ingest(&self, work: &mut dyn FnMut(&mut dyn IngestTx) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let now_ms = jiff::Timestamp::now().as_millisecond().max(0) as u64;
        let _writer = self.journal_writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut journaled = (0, Vec::new(), None);
        self.write(|txn| {
            let mut ingest = RedbIngest {
                txn,
                now_ms,
                failure: None,
                next_seq: None,
                bytes_added: 0,
                bytes_removed: 0,
                profiles: BTreeMap::new(),
                segments: Vec::new(),
                identity: None,
                touched: None,
                unfolded: &self.unfolded,
                journaled: Vec::new(),
                journal_seq: 0,
                fold_step: None,
                fold_at: self.fold_at,
                step_keys: self.step_keys,
            };
            work(&mut ingest)?;
            ingest.write_segments()?;
            ingest.write_profiles()?;
            ingest.write_journal()?;
            if let Some(error) = ingest.failure {
                return Err(error);
            }
            if let Some(next) = ingest.next_seq {
                set_counter(txn, "next_seq", next)?;
            }
            adjust_bytes(txn, ingest.bytes_added, ingest.bytes_removed)?;
            journaled = (ingest.journal_seq, std::mem::take(&mut ingest.journaled), ingest.fold_step.take());
            Ok(())
        })?;
        let (seq, entries, step) = journaled;
        self.unfolded().committed(seq, entries, step);
        Ok(())
    }

    fn peek(&self, pixel: &str, limit: usize) -> Result<Vec<(u64, Pending)>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(QUEUE).map_err(fail)?;
            let mut out = Vec::new();
            for entry in table.range((pixel, 0)..=(pixel, u64::MAX)).map_err(fail)? {
                let (key, value) = entry.map_err(fail)?;
                for (seq, row) in segment::rows(key.value().1, value.value()).map_err(unreadable_row)? {
                    if out.len() >= limit {
                        return Ok(out);
                    }
                    out.push((seq, Pending::from_row(row).map_err(unreadable_row)?));
                }
            }
            Ok(out)
        })
    }

    fn waiting(&self, pixel: &str, limit: usize) -> Result<(usize, Option<i64>), StoreError> {
        self.read(|txn| {
            let table = txn.open_table(QUEUE).map_err(fail)?;
            let (mut count, mut oldest) = (0, None);
            for entry in table.range((pixel, 0)..=(pixel, u64::MAX)).map_err(fail)? {
                let (key, value) = entry.map_err(fail)?;
                if oldest.is_none() {
                    let rows = segment::rows(key.value().1, value.value()).map_err(unreadable_row)?;
                    if let Some((_, row)) = rows.first() {
                        oldest = Some(Pending::received_ms_of_row(row).map_err(unreadable_row)?);
                    }
                }
                count += segment::count(value.value()) as usize;
                if count >= limit {
                    break;
                }
            }
            Ok((count.min(limit), oldest))
        })
    }

    fn complete(&self, pixel: &str, seqs: &[u64]) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(QUEUE).map_err(fail)?;
            let (added, removed) = take_rows(&mut table, pixel, seqs, |_, _| Ok(()))?;
            drop(table);
            adjust_bytes(txn, added, removed)
        })
    }

    fn bury(&self, pixel: &str, dead: &[(u64, String, String)], now_ms: i64) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut queue = txn.open_table(QUEUE).map_err(fail)?;
            let mut dead_table = txn.open_table(DEAD).map_err(fail)?;
            let mut added = 0u64;
            let seqs: Vec<u64> = dead.iter().map(|(seq, _, _)| *seq).collect();
            let (rewritten, removed) = take_rows(&mut queue, pixel, &seqs, |seq, row| {
                let pending = Pending::from_row(row).map_err(unreadable_row)?;
                let Some((_, reason, detail)) = dead.iter().find(|(dead, _, _)| *dead == seq) else { return Ok(()) };
                let letter = DeadLetter {
                    pixel: pixel.to_string(),
                    seq,
                    pending,
                    reason: reason.clone(),
                    detail: detail.clone(),
                    dead_ms: now_ms,
                };
                let bytes = serde_json::to_vec(&letter).map_err(unreadable)?;
                added += bytes.len() as u64;
                dead_table.insert((pixel, seq), bytes.as_slice()).map_err(fail)?;
                Ok(())
            })?;
            drop((queue, dead_table));
            adjust_bytes(txn, added + rewritten, removed)
        })
    }

    fn dead_letters(&self, pixel: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(DEAD).map_err(fail)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(fail)? {
                let (key, value) = entry.map_err(fail)?;
                if pixel.is_some_and(|p| p != key.value().0) {
                    continue;
                }
                out.push(serde_json::from_slice::<DeadLetter>(value.value()).map_err(unreadable)?);
            }
            out.sort_by_key(|d| d.seq);
            Ok(out)
        })
    }

    fn replay(&self, pixel: Option<&str>, seqs: Option<&[u64]>) -> Result<usize, StoreError> {
        let chosen = self.chosen(pixel, seqs)?;
        self.write(|txn| {
            let mut queue = txn.open_table(QUEUE).map_err(fail)?;
            let mut dead = txn.open_table(DEAD).map_err(fail)?;
            let (mut added, mut removed) = (0u64, 0u64);
            for letter in &chosen {
                if let Some(old) = dead.remove((letter.pixel.as_str(), letter.seq)).map_err(fail)? {
                    removed += old.value().len() as u64;
                }
                let (put, taken) = put_back(&mut queue, &letter.pixel, letter.seq, &letter.pending.to_row())?;
                added += put;
                removed += taken;
            }
            drop((queue, dead));
            adjust_bytes(txn, added, removed)
        })?;
        Ok(chosen.len())
    }

    fn purge(&self, pixel: Option<&str>, seqs: Option<&[u64]>) -> Result<usize, StoreError> {
        let chosen = self.chosen(pixel, seqs)?;
        self.write(|txn| {
            let mut dead = txn.open_table(DEAD).map_err(fail)?;
            let mut removed = 0u64;
            for letter in &chosen {
                if let Some(old) = dead.remove((letter.pixel.as_str(), letter.seq)).map_err(fail)? {
                    removed += old.value().len() as u64;
                }
            }
            drop(dead);
            adjust_bytes(txn, 0, removed)
        })?;
        Ok(chosen.len())
    }

    fn depth(&self, pixel: &str) -> Result<u64, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(QUEUE).map_err(fail)?;
            let mut count = 0;
            for entry in table.range((pixel, 0)..=(pixel, u64::MAX)).map_err(fail)? {
                count += segment::count(entry.map_err(fail)?.1.value());
            }
            Ok(count)
        })
    }

    fn read_identity(&self, keys: &[String]) -> Result<Vec<StoredProfile>, StoreError> {
        // The journal first, then the table: a key that is not in the journal now was either never there or was
        // folded before, and a read that begins after that sees the fold.
        let journaled: Vec<Option<StoredProfile>> = {
            let unfolded = self.unfolded();
            keys.iter().map(|key| unfolded.row(key).map(stored_profile)).collect()
        };
        if journaled.iter().all(Option::is_some) {
            return Ok(journaled.into_iter().flatten().collect());
        }
        self.read(|txn| {
            let table = txn.open_table(IDENTITY).map_err(fail)?;
            keys.iter()
                .zip(journaled)
                .map(|(key, journaled)| {
                    if let Some(profile) = journaled {
                        return Ok(profile);
                    }
                    Ok(match table.get(key.as_str()).map_err(fail)? {
                        Some(bytes) => stored_profile(bytes.value()),
                        None => StoredProfile::default(),
                    })
                })
                .collect()
        })
    }

    fn identity_generation(&self) -> u64 {
        self.forgettings.load(Ordering::Acquire)
    }

    fn forget_visitors(&self, before_ms: i64) -> Result<usize, StoreError> {
        // A visitor's time may be up to the precision older than its last write.
        let cutoff = (before_ms.max(0) as u64).saturating_sub(TOUCH_PRECISION_MS);
        let mut forgotten = 0;
        let writer = self.journal_writer.lock().unwrap_or_else(PoisonError::into_inner);
        let result = self.write(|txn| {
            let mut touched = txn.open_table(IDENTITY_TOUCHED).map_err(fail)?;
            let mut table = txn.open_table(IDENTITY).map_err(fail)?;
            // The journal is folded first, so that the times visitors are forgotten by are their last.
            let (folded_added, folded_removed) =
                fold_journal(&mut txn.open_table(IDENTITY_JOURNAL).map_err(fail)?, &mut table, &mut touched)?;
            let stale: Vec<(u64, String)> = touched
                .range((0, "")..(cutoff, ""))
                .map_err(fail)?
                .map(|entry| entry.map(|(key, _)| (key.value().0, key.value().1.to_string())))
                .collect::<Result<_, _>>()
                .map_err(fail)?;
            let mut removed = 0;
            for (at, key) in &stale {
                touched.remove((*at, key.as_str())).map_err(fail)?;
                if let Some(old) = table.remove(key.as_str()).map_err(fail)? {
                    removed += old.value().len() as u64;
                }
            }
            forgotten = stale.len();
            drop((touched, table));
            super::killpoint::reached("prune");
            adjust_bytes(txn, folded_added, removed + folded_removed)
        });
        if result.is_ok() {
            self.unfolded().clear();
        }
        drop(writer);
        // Moved after the commit, failed or not: a writer that reads again once it sees the move reads what is left.
        self.forgettings.fetch_add(1, Ordering::AcqRel);
        result?;
        Ok(forgotten)
    }

    fn stored_bytes(&self) -> Result<u64, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(META).map_err(fail)?;
            Ok(table.get("stored_bytes").map_err(fail)?.map(|v| v.value()).unwrap_or(0))
        })
    }

    fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(SETTINGS).map_err(fail)?;
            let mut out = Vec::new();
            for entry in table.range(prefix..).map_err(fail)? {
                let (key, value) = entry.map_err(fail)?;
                if !key.value().starts_with(prefix) {
                    break;
                }
                out.push((key.value().to_string(), value.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn put_settings(&self, writes: &[(String, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(SETTINGS).map_err(fail)?;
            for (key, value) in writes {
                match value {
                    Some(bytes) => table.insert(key.as_str(), bytes.as_slice()).map(drop).map_err(fail)?,
                    None => table.remove(key.as_str()).map(drop).map_err(fail)?,
                }
            }
            Ok(())
        })
    }
}

impl RedbStore {
    fn chosen(&self, pixel: Option<&str>, seqs: Option<&[u64]>) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self.dead_letters(pixel)?.into_iter().filter(|d| seqs.is_none_or(|s| s.contains(&d.seq))).collect())
    }

    /// How many visitor keys identity memory holds.
    pub fn identity_keys(&self) -> Result<u64, StoreError> {
        let journaled: Vec<String> = self.unfolded().keys().map(str::to_string).collect();
        self.read(|txn| {
            let table = txn.open_table(IDENTITY).map_err(fail)?;
            let mut keys = table.len().map_err(fail)?;
            for key in &journaled {
                keys += u64::from(table.get(key.as_str()).map_err(fail)?.is_none());
            }
            Ok(keys)
        })
    }

    /// The journal's rows as committed.
    fn unfolded(&self) -> std::sync::MutexGuard<'_, Unfolded> {
        self.unfolded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str) -> Pending {
        Pending {
            id: id.into(),
            event_type: "page_viewed".into(),
            timestamp_ms: Some(1),
            received_ms: 2,
            event: format!(r#"{{"id":"{id}"}}"#),
            consent_sent: None,
            observed: None,
        }
    }

    proptest::proptest! {
        /// Whatever its text (quotes, line breaks, non-ASCII, an event that is not even JSON), a queued event reads
        /// back as it was written, and so does a row in the format before (the whole event as one JSON object).
        #[test]
        fn a_queue_row_reads_back_as_the_event_it_was_written_from(
            id in "\\PC{0,12}", event_type in "[a-z_\n\"]{0,12}", event in "\\PC{0,60}|\\{\"a\":\"[^\"]{0,20}\"\\}",
            timestamp_ms in proptest::option::of(proptest::num::i64::ANY), received_ms in proptest::num::i64::ANY,
            consent_sent in proptest::option::of(proptest::bool::ANY),
            observed in proptest::option::of(proptest::num::u64::ANY),
        ) {
            let observed = observed.map(Observed::from_bits);
            let pending = Pending { id, event_type, timestamp_ms, received_ms, event, consent_sent, observed };
            proptest::prop_assert_eq!(Pending::from_row(&pending.to_row()), Ok(pending.clone()));
            proptest::prop_assert_eq!(Pending::from_row(pending.to_row_text().as_bytes()), Ok(pending.clone()));
            let before = serde_json::to_vec(&pending).expect("serialisable");
            proptest::prop_assert_eq!(Pending::from_row(&before), Ok(pending));
        }
    }

    #[test]
    fn a_queue_row_keeps_the_event_as_it_is_and_a_damaged_row_is_an_error() {
        let row = pending("m-1").to_row();
        assert!(row.ends_with(br#"{"id":"m-1"}"#), "the event is not escaped: {}", String::from_utf8_lossy(&row));
        assert!(Pending::from_row(b"{\"id\":\"m-1\"\n{}").is_err(), "a head cut short");
        assert!(Pending::from_row(b"not json").is_err());
        let mut not_text = pending("m-2").to_row();
        not_text.push(0xff);
        assert!(Pending::from_row(&not_text).unwrap_err().contains("not UTF-8"));
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("engine-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn queue_dead_letters_and_byte_count_survive_reopening() {
        let dir = temp_dir("reopen");
        {
            let store = RedbStore::open(&dir).unwrap();
            store
                .ingest(&mut |tx| {
                    for id in ["a", "b", "c"] {
                        tx.enqueue("px", &pending(id))?;
                    }
                    tx.enqueue("other", &pending("z"))?;
                    tx.store("anon:1", Profile { fields: Vec::new(), keys: vec!["anon:1".into()] });
                    Ok(())
                })
                .unwrap();
            store.complete("px", &[0]).unwrap();
            store.bury("px", &[(1, "rejected".into(), "{\"error\":\"bad\"}".into())], 10).unwrap();
        }
        let store = RedbStore::open(&dir).unwrap();
        let queued: Vec<String> = store.peek("px", 10).unwrap().into_iter().map(|(_, p)| p.id).collect();
        assert_eq!(queued, ["c"]);
        assert_eq!(store.depth("other").unwrap(), 1);
        let dead = store.dead_letters(Some("px")).unwrap();
        assert_eq!((dead.len(), dead[0].pending.id.as_str(), dead[0].reason.as_str()), (1, "b", "rejected"));
        assert_eq!(store.identity_keys().unwrap(), 1);
        let bytes = store.stored_bytes().unwrap();
        assert!(bytes > 0);
        assert_eq!(store.replay(Some("px"), None).unwrap(), 1);
        let queued: Vec<String> = store.peek("px", 10).unwrap().into_iter().map(|(_, p)| p.id).collect();
        assert_eq!(queued, ["b", "c"], "a replayed event goes back to its place in the queue");
        store.complete("px", &[1, 2]).unwrap();
        store.complete("other", &[3]).unwrap();
        let remembered = store.stored_bytes().unwrap();
        assert!(remembered > 0, "identity memory counts toward the disk cap");
        assert_eq!(store.forget_visitors(0).unwrap(), 0, "a visitor touched now is not forgotten for a past cutoff");
        let later = jiff::Timestamp::now().as_millisecond() + TOUCH_PRECISION_MS as i64 + 1000;
        assert_eq!(store.forget_visitors(later).unwrap(), 1);
        assert_eq!(store.identity_keys().unwrap(), 0);
        assert_eq!(store.stored_bytes().unwrap(), 0, "the byte count returns to zero when everything is delivered");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What the queue and the dead letters must hold, kept the plain way: one entry per event.
    #[derive(Default)]
    struct Model {
        queue: BTreeMap<(String, u64), String>,
        dead: BTreeMap<(String, u64), String>,
    }

    /// One change to the store, its arguments drawn as numbers and resolved against what is there.
    #[derive(Clone, Debug)]
    enum Change {
        /// Events for each pixel, in one transaction: (pixel, how many).
        Queue(Vec<(usize, usize)>),
        /// Removes the events at these places (modulo the queue's length) of a pixel.
        Complete(usize, Vec<usize>),
        Bury(usize, Vec<usize>),
        Replay(Vec<usize>),
    }

    const PIXELS: [&str; 2] = ["shop", "blog"];

    fn change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        let places = || proptest::collection::vec(0usize..64, 0..6);
        prop_oneof![
            3 => proptest::collection::vec((0usize..2, 0usize..8), 1..3).prop_map(Change::Queue),
            2 => (0usize..2, places()).prop_map(|(p, at)| Change::Complete(p, at)),
            2 => (0usize..2, places()).prop_map(|(p, at)| Change::Bury(p, at)),
            2 => places().prop_map(Change::Replay),
        ]
    }

    /// The seqs at `places` of a list, each taken modulo its length.
    fn picked(all: &[u64], places: &[usize]) -> Vec<u64> {
        if all.is_empty() {
            return Vec::new();
        }
        places.iter().map(|place| all[place % all.len()]).collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]
        /// Queued in segments, taken out of them one by one, buried, put back in their place: the queue reads as the
        /// plain list of events would, in order, with its depth, and the byte count returns to zero once it is empty.
        #[test]
        fn the_queue_in_segments_reads_as_one_event_after_another(
            legacy in proptest::collection::vec(0usize..2, 0..4),
            changes in proptest::collection::vec(change(), 1..16),
        ) {
            let dir = temp_dir("segments");
            let store = RedbStore::open(&dir).unwrap();
            let mut model = Model::default();
            let mut next = 0u64;
            // Rows as the store wrote them before segments: one value each, under its own seq.
            store.write(|txn| {
                let mut table = txn.open_table(QUEUE).map_err(fail)?;
                let mut bytes = 0;
                for &pixel in &legacy {
                    let row = pending(&format!("old-{next}")).to_row();
                    table.insert((PIXELS[pixel], next), row.as_slice()).map_err(fail)?;
                    bytes += row.len() as u64;
                    model.queue.insert((PIXELS[pixel].to_string(), next), format!("old-{next}"));
                    next += 1;
                }
                drop(table);
                set_counter(txn, "next_seq", next)?;
                adjust_bytes(txn, bytes, 0)
            }).unwrap();
            let mut made = 0;
            for change in changes {
                match change {
                    Change::Queue(batches) => {
                        store.ingest(&mut |tx| {
                            for &(pixel, count) in &batches {
                                for _ in 0..count {
                                    let id = format!("e-{made}");
                                    made += 1;
                                    let queued = Pending { received_ms: 100 + made as i64, ..pending(&id) };
                                    let seq = tx.enqueue(PIXELS[pixel], &queued)?;
                                    model.queue.insert((PIXELS[pixel].to_string(), seq), id);
                                }
                            }
                            Ok(())
                        }).unwrap();
                    }
                    Change::Complete(pixel, places) => {
                        let all: Vec<u64> = model.queue.keys().filter(|(p, _)| p == PIXELS[pixel]).map(|(_, s)| *s).collect();
                        let seqs = picked(&all, &places);
                        store.complete(PIXELS[pixel], &seqs).unwrap();
                        for seq in seqs {
                            model.queue.remove(&(PIXELS[pixel].to_string(), seq));
                        }
                    }
                    Change::Bury(pixel, places) => {
                        let all: Vec<u64> = model.queue.keys().filter(|(p, _)| p == PIXELS[pixel]).map(|(_, s)| *s).collect();
                        let seqs = picked(&all, &places);
                        let dead: Vec<(u64, String, String)> =
                            seqs.iter().map(|&seq| (seq, "rejected".to_string(), "{}".to_string())).collect();
                        store.bury(PIXELS[pixel], &dead, 5).unwrap();
                        for seq in seqs {
                            if let Some(id) = model.queue.remove(&(PIXELS[pixel].to_string(), seq)) {
                                model.dead.insert((PIXELS[pixel].to_string(), seq), id);
                            }
                        }
                    }
                    Change::Replay(places) => {
                        let all: Vec<u64> = model.dead.keys().map(|(_, s)| *s).collect();
                        let mut seqs = picked(&all, &places);
                        seqs.sort_unstable();
                        seqs.dedup();
                        proptest::prop_assert_eq!(store.replay(None, Some(&seqs)).unwrap(), seqs.len());
                        for seq in seqs {
                            let key = model.dead.keys().find(|(_, s)| *s == seq).cloned().unwrap();
                            let id = model.dead.remove(&key).unwrap();
                            model.queue.insert(key, id);
                        }
                    }
                }
                for pixel in PIXELS {
                    let read: Vec<(u64, String)> =
                        store.peek(pixel, 1000).unwrap().into_iter().map(|(seq, p)| (seq, p.id)).collect();
                    let expected: Vec<(u64, String)> = model.queue.iter()
                        .filter(|((p, _), _)| p == pixel).map(|((_, seq), id)| (*seq, id.clone())).collect();
                    proptest::prop_assert_eq!(&read, &expected);
                    proptest::prop_assert_eq!(store.depth(pixel).unwrap(), expected.len() as u64);
                    let limited = store.peek(pixel, 3).unwrap().len();
                    proptest::prop_assert_eq!(limited, expected.len().min(3));
                    // What delivery decides on: the count up to the limit and the oldest's time, as reading says.
                    let oldest = store.peek(pixel, 1).unwrap().first().map(|(_, p)| p.received_ms);
                    for limit in [1, 3, 1000] {
                        let waiting = store.waiting(pixel, limit).unwrap();
                        proptest::prop_assert_eq!(waiting, (expected.len().min(limit), oldest));
                    }
                }
                let dead: Vec<(u64, String)> =
                    store.dead_letters(None).unwrap().into_iter().map(|d| (d.seq, d.pending.id)).collect();
                let mut expected: Vec<(u64, String)> =
                    model.dead.iter().map(|((_, seq), id)| (*seq, id.clone())).collect();
                expected.sort();
                proptest::prop_assert_eq!(dead, expected);
            }
            for pixel in PIXELS {
                let all: Vec<u64> = store.peek(pixel, usize::MAX).unwrap().into_iter().map(|(seq, _)| seq).collect();
                store.complete(pixel, &all).unwrap();
            }
            store.purge(None, None).unwrap();
            proptest::prop_assert_eq!(store.stored_bytes().unwrap(), 0, "everything delivered, nothing counted");
            drop(store);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn an_event_put_back_between_others_of_its_group_goes_back_to_its_place() {
        let dir = temp_dir("put-back");
        let store = RedbStore::open(&dir).unwrap();
        let mut seqs = Vec::new();
        store
            .ingest(&mut |tx| {
                seqs.clear();
                for id in ["a", "b", "c", "d", "e"] {
                    seqs.push(tx.enqueue("px", &pending(id))?);
                }
                Ok(())
            })
            .unwrap();
        let dead = [(seqs[1], "rejected".into(), "{}".into()), (seqs[3], "rejected".into(), "{}".into())];
        store.bury("px", &dead, 1).unwrap();
        let ids = |store: &RedbStore| store.peek("px", 10).unwrap().into_iter().map(|(_, p)| p.id).collect::<Vec<_>>();
        assert_eq!(ids(&store), ["a", "c", "e"]);
        assert_eq!(store.replay(None, Some(&[seqs[3]])).unwrap(), 1);
        assert_eq!(ids(&store), ["a", "c", "d", "e"]);
        assert_eq!(store.replay(None, Some(&[seqs[1]])).unwrap(), 1);
        assert_eq!(ids(&store), ["a", "b", "c", "d", "e"]);
        assert_eq!(store.depth("px").unwrap(), 5);
        store.complete("px", &[seqs[2], seqs[0]]).unwrap();
        assert_eq!(ids(&store), ["b", "d", "e"]);
        store.complete("px", &[seqs[1], seqs[3], seqs[4]]).unwrap();
        assert_eq!((store.depth("px").unwrap(), store.stored_bytes().unwrap()), (0, 0));
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_profile_written_in_a_group_is_read_back_in_it_and_written_once_with_it() {
        let dir = temp_dir("profiles");
        let store = RedbStore::open(&dir).unwrap();
        store
            .ingest(&mut |tx| {
                assert_eq!(tx.load("anon:1"), None);
                tx.store("anon:1", oppref_profile("anon:1", "first"));
                assert_eq!(
                    tx.load("anon:1"),
                    Some(oppref_profile("anon:1", "first")),
                    "the group's own write is read back"
                );
                tx.store("anon:1", oppref_profile("anon:1", "second"));
                Ok(())
            })
            .unwrap();
        assert_eq!(store.identity_keys().unwrap(), 1);
        let one_profile = store.stored_bytes().unwrap();
        store
            .ingest(&mut |tx| {
                assert_eq!(
                    tx.load("anon:1"),
                    Some(oppref_profile("anon:1", "second")),
                    "the last write of a group is kept"
                );
                tx.store("anon:2", oppref_profile("anon:2", "lost"));
                Err(StoreError("the request failed".into()))
            })
            .unwrap_err();
        assert_eq!(store.identity_keys().unwrap(), 1, "a failed group writes no profile");
        assert_eq!(store.stored_bytes().unwrap(), one_profile, "and counts none");
        store
            .ingest(&mut |tx| {
                assert_eq!(tx.load("anon:2"), None, "what a failed group stored is not remembered in memory either");
                assert_eq!(tx.load("anon:1"), Some(oppref_profile("anon:1", "second")), "what it read is read again");
                Ok(())
            })
            .unwrap();
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// One change to identity memory, drawn as numbers.
    #[derive(Clone, Debug)]
    enum Remembering {
        /// A group writing (key, value) pairs, staged as the relay's committer does or through the transaction's own
        /// reads and writes; it fails at its end when the flag says so.
        Group { writes: Vec<(usize, u8)>, staged: bool, fails: bool },
        /// The relay stopped (or was killed) and started again.
        Reopen,
        /// Visitors forgotten: all of them (a cutoff after the hour), or none (a cutoff in the past).
        Forget { all: bool },
    }

    fn remembering() -> impl proptest::strategy::Strategy<Value = Remembering> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (proptest::collection::vec((0usize..10, 0u8..4), 0..5), any::<bool>(), proptest::bool::weighted(0.15))
                .prop_map(|(writes, staged, fails)| Remembering::Group { writes, staged, fails }),
            1 => Just(Remembering::Reopen),
            1 => any::<bool>().prop_map(|all| Remembering::Forget { all }),
        ]
    }

    /// The bytes the identity tables and the journal hold: what the byte count must say when nothing is queued.
    fn identity_bytes(store: &RedbStore) -> u64 {
        store
            .read(|txn| {
                let mut bytes = 0;
                for row in txn.open_table(IDENTITY).map_err(fail)?.iter().map_err(fail)? {
                    bytes += row.map_err(fail)?.1.value().len() as u64;
                }
                for value in txn.open_table(IDENTITY_JOURNAL).map_err(fail)?.iter().map_err(fail)? {
                    bytes += value.map_err(fail)?.1.value().len() as u64;
                }
                Ok(bytes)
            })
            .unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]
        /// Through the journal, its passes (begun every few writes here, a key or two folded per transaction), failed
        /// groups, restarts and forgetting, identity memory reads back what the last committed write of each key
        /// said, in a group and outside one, lists each visitor once in the table of times, and the byte count stays
        /// what the file holds.
        #[test]
        fn identity_memory_reads_back_its_last_committed_writes(
            changes in proptest::collection::vec(remembering(), 1..40),
            fold_at in 1usize..8,
            step_keys in 1usize..4,
        ) {
            let dir = temp_dir("journal");
            let open = || RedbStore { fold_at, step_keys, ..RedbStore::open(&dir).unwrap() };
            let mut store = open();
            let mut model: BTreeMap<String, Profile> = BTreeMap::new();
            let key = |k: usize| format!("anon:{k}");
            for change in changes {
                match change {
                    Remembering::Group { writes, staged, fails } => {
                        let mut written = model.clone();
                        // A staged write says when the row was written before, as the relay's writer read it.
                        let mut times: BTreeMap<String, Option<u64>> = BTreeMap::new();
                        let now_ms = jiff::Timestamp::now().as_millisecond() as u64;
                        let result = store.ingest(&mut |tx| {
                            for &(k, value) in &writes {
                                let profile = oppref_profile(&key(k), &value.to_string());
                                if staged {
                                    let before = match times.get(&key(k)) {
                                        Some(&before) => before,
                                        None => store.read_identity(&[key(k)]).unwrap().remove(0).touched_ms,
                                    };
                                    let touched_ms = touch_time(before, now_ms);
                                    tx.store_staged(&key(k), &profile, touched_ms)?;
                                    times.insert(key(k), Some(touched_ms));
                                } else {
                                    assert_eq!(tx.load(&key(k)).as_ref(), written.get(&key(k)), "read in the group");
                                    tx.store(&key(k), profile.clone());
                                }
                                written.insert(key(k), profile);
                            }
                            if fails { Err(StoreError("the group failed".into())) } else { Ok(()) }
                        });
                        proptest::prop_assert_eq!(result.is_ok(), !fails);
                        if !fails {
                            model = written;
                        }
                    }
                    Remembering::Reopen => {
                        drop(store);
                        store = open();
                    }
                    Remembering::Forget { all } => {
                        let cutoff = if all { jiff::Timestamp::now().as_millisecond() + TOUCH_PRECISION_MS as i64 + 1000 } else { 0 };
                        let forgotten = store.forget_visitors(cutoff).unwrap();
                        if all {
                            // Every visitor was written within the hour before the cutoff, and is listed once.
                            proptest::prop_assert_eq!(forgotten, model.len());
                            model.clear();
                        } else {
                            proptest::prop_assert_eq!(forgotten, 0);
                        }
                    }
                }
                let keys: Vec<String> = (0..10).map(key).collect();
                let read = store.read_identity(&keys).unwrap();
                for (k, stored) in keys.iter().zip(read) {
                    proptest::prop_assert_eq!(stored.profile.as_ref(), model.get(k), "{}", k);
                }
                proptest::prop_assert_eq!(store.identity_keys().unwrap(), model.len() as u64);
                proptest::prop_assert_eq!(store.stored_bytes().unwrap(), identity_bytes(&store));
            }
            drop(store);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// A visitor known by `key` that remembers an `oppref`.
    fn oppref_profile(key: &str, value: &str) -> Profile {
        Profile {
            fields: vec![crate::identity::RememberedField {
                field: "oppref".into(),
                value: value.into(),
                seen_ms: 1,
                expires_ms: None,
            }],
            keys: vec![key.into()],
        }
    }

    /// Folds the journal, as a full one is, and returns the rows of the table visitors are forgotten by.
    fn touched_rows(store: &RedbStore) -> Vec<(u64, String)> {
        let _writer = store.journal_writer.lock().unwrap();
        store
            .write(|txn| {
                let (added, removed) = fold_journal(
                    &mut txn.open_table(IDENTITY_JOURNAL).map_err(fail)?,
                    &mut txn.open_table(IDENTITY).map_err(fail)?,
                    &mut txn.open_table(IDENTITY_TOUCHED).map_err(fail)?,
                )?;
                adjust_bytes(txn, added, removed)
            })
            .unwrap();
        store.unfolded().clear();
        store
            .read(|txn| {
                let table = txn.open_table(IDENTITY_TOUCHED).map_err(fail)?;
                let rows = table.iter().map_err(fail)?;
                rows.map(|row| row.map(|(key, _)| (key.value().0, key.value().1.to_string())).map_err(fail)).collect()
            })
            .unwrap()
    }

    #[test]
    fn a_visitor_written_again_within_the_hour_keeps_one_time_and_is_forgotten_only_once_surely_stale() {
        let dir = temp_dir("touched");
        let profile = |value: &str| oppref_profile("anon:1", value);
        // Written without being read first.
        let store_unread = |store: &RedbStore, value: &str| {
            store
                .ingest(&mut |tx| {
                    tx.store("anon:1", profile(value));
                    Ok(())
                })
                .unwrap()
        };
        let store = RedbStore::open(&dir).unwrap();
        store_unread(&store, "first");
        let first = touched_rows(&store);
        assert_eq!(first.len(), 1);
        for value in ["second", "third"] {
            store
                .ingest(&mut |tx| {
                    assert!(tx.load("anon:1").is_some());
                    tx.store("anon:1", profile(value));
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(touched_rows(&store), first, "written within the hour: its time stays and is not moved");
        drop(store);
        // A store opened again has nothing in memory: a profile written without being read first still replaces
        // its one time, read from the row it overwrites.
        let store = RedbStore::open(&dir).unwrap();
        store_unread(&store, "fourth");
        assert_eq!(touched_rows(&store), first);
        let now = jiff::Timestamp::now().as_millisecond();
        assert_eq!(store.forget_visitors(now + 1000).unwrap(), 0, "its time may be up to an hour old: kept");
        assert_eq!(store.forget_visitors(now + TOUCH_PRECISION_MS as i64 + 1000).unwrap(), 1);
        assert_eq!((touched_rows(&store), store.identity_keys().unwrap()), (vec![], 0));
        store
            .ingest(&mut |tx| {
                assert_eq!(tx.load("anon:1"), None, "a forgotten visitor is not recalled from memory");
                Ok(())
            })
            .unwrap();
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_ingest_leaves_nothing_behind() {
        let dir = temp_dir("rollback");
        let store = RedbStore::open(&dir).unwrap();
        let result = store.ingest(&mut |tx| {
            tx.enqueue("px", &pending("a"))?;
            Err(StoreError("the request failed".into()))
        });
        assert!(result.is_err());
        assert_eq!(store.depth("px").unwrap(), 0);
        assert_eq!(store.stored_bytes().unwrap(), 0);
        assert!(RedbStore::open(&dir).is_err(), "a second opener is refused while the store is open");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod damage {
    use super::*;

    /// A store of 1,000 queued events, damaged by `damage`, then opened again.
    fn reopen_damaged(name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> Result<RedbStore, StoreError> {
        let dir = tempfile::Builder::new().prefix(&format!("engine-store-{name}-")).tempdir().expect("a directory");
        {
            let store = RedbStore::open(dir.path()).expect("a new store");
            for batch in 0..50 {
                store
                    .ingest(&mut |tx| {
                        for i in 0..20 {
                            let event = "x".repeat(300);
                            let id = format!("{batch}-{i}");
                            let pending = Pending {
                                id,
                                event_type: "t".into(),
                                timestamp_ms: Some(1),
                                received_ms: 2,
                                event,
                                consent_sent: None,
                                observed: None,
                            };
                            tx.enqueue("px", &pending)?;
                        }
                        Ok(())
                    })
                    .expect("stored");
            }
        }
        let file = dir.path().join(RedbStore::FILE);
        let mut bytes = std::fs::read(&file).expect("the store's file");
        damage(&mut bytes);
        std::fs::write(&file, &bytes).expect("damaged");
        RedbStore::open(dir.path())
    }

    #[test]
    fn a_journal_entry_that_cannot_be_read_is_left_out_and_the_store_opens() {
        let dir = tempfile::Builder::new().prefix("engine-store-journal-").tempdir().expect("a directory");
        let profile = |key: &str| Profile { fields: Vec::new(), keys: vec![key.into()] };
        {
            let store = RedbStore::open(dir.path()).expect("a new store");
            store.ingest(&mut |tx| tx.store_staged("anon:1", &profile("anon:1"), 5)).expect("stored");
            store.ingest(&mut |tx| tx.store_staged("anon:2", &profile("anon:2"), 5)).expect("stored");
            store
                .write(|txn| {
                    let mut journal = txn.open_table(IDENTITY_JOURNAL).map_err(fail)?;
                    // The second entry, overwritten with bytes that do not read as one.
                    let old = journal.insert(1, &[0xff_u8; 40][..]).map_err(fail)?.map(|old| old.value().len());
                    drop(journal);
                    adjust_bytes(txn, 40, old.expect("the second entry") as u64)
                })
                .expect("damaged");
        }
        let store = RedbStore::open(dir.path()).expect("opens all the same");
        let read = store.read_identity(&["anon:1".into(), "anon:2".into()]).expect("read");
        assert_eq!(read[0].profile, Some(profile("anon:1")));
        assert_eq!(read[1].profile, None, "what the damaged entry held is gone");
        assert_eq!(
            store.stored_bytes().unwrap(),
            store
                .read(|txn| {
                    let rows = txn.open_table(IDENTITY).map_err(fail)?;
                    let row = rows.get("anon:1").map_err(fail)?.expect("folded");
                    Ok(row.value().len() as u64)
                })
                .unwrap(),
            "the damaged entry's bytes are no longer counted"
        );
    }

    #[test]
    fn a_damaged_file_is_refused_with_its_name_and_the_way_out() {
        let truncated = reopen_damaged("truncated", |bytes| bytes.truncate(bytes.len() / 2));
        let overwritten = reopen_damaged("header", |bytes| bytes[..64].fill(0xAB));
        for refused in [truncated, overwritten] {
            let Err(StoreError(message)) = refused else { panic!("a damaged store opened") };
            assert!(message.contains(RedbStore::FILE) && message.contains("is damaged"), "{message}");
            assert!(message.contains(".damaged`") && message.contains("backup"), "{message}");
        }
    }
}
