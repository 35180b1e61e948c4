//! The writer: maps each group of requests for every pixel against identity memory and makes the result durable
//! before any of them is answered (group commit). On a store only this relay writes, it is two threads, so that a
//! group is mapped while the one before it is fsynced: the mapper recalls visitors as committed plus what the groups
//! still being committed taught ([`memory`]), and the committer stores each group in one transaction. A store that
//! several relays share is read inside its transactions, so there one thread maps and commits each group in turn.

mod memory;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::enrich::Received;
use super::registry::{Pixel, Setup};
use super::store::{IngestTx, Pending, StoreError};
use super::{debug, killpoint, now_ms, Shared};
use crate::explain::explain;
use crate::identity::{IdentityStore, Profile};
use crate::run::{Context, Outcome};
use memory::{Recollection, Write};

/// Events of one request, on their way to the writer.
pub(super) struct Job {
    pub events: Vec<Received>,
    pub reply: oneshot::Sender<Answer>,
}

/// The writer's answer to a job. The events go back with it: the writer is the relay's bottleneck under load, so
/// the request's task frees them.
pub(super) struct Answer {
    pub events: Vec<Received>,
    pub verdicts: Result<Vec<Verdict>, Refusal>,
}

impl Job {
    fn answer(self, verdicts: Result<Vec<Verdict>, Refusal>) {
        // The request may have gone (its client hung up): then the events are freed here after all.
        let _ = self.reply.send(Answer { events: self.events, verdicts });
    }
}

/// What became of one event of a request, over every pixel.
#[derive(Debug, Clone)]
pub(super) enum Verdict {
    /// Mapped for at least one pixel and stored for delivery.
    Queued,
    /// Dropped on purpose by every pixel's mapping (`unmapped`, `identify`, `alias`): nothing to send.
    Dropped { reason: String },
    /// Rejected by the mapping of every pixel that did not drop it: it would never be accepted by OpenAI.
    Refused { reason: String, message: String, field: Option<String> },
}

/// Why the writer could not take a request.
#[derive(Debug)]
pub(super) enum Refusal {
    /// The disk cap is reached: nothing was stored.
    Full,
    Storage(StoreError),
}

/// The pixels taking events, each with the setup a group is mapped under.
type Pixels = Vec<(Arc<Pixel>, Arc<Setup>)>;

/// The most requests committed together.
const MAX_GROUP: usize = 256;

/// An explanation costs about twice what applying does, so under load the debugger samples: the newest events of
/// a group are explained and kept, as many as the sampler allows, the others only applied. At a trickle, every
/// event is; of the events the mapping rejects, up to as many again per group.
const EXPLAINED_PER_GROUP: usize = 16;

/// What mapping a group gave, besides its queued events: what to count, show and answer once it is committed.
#[derive(Default)]
struct Mapping {
    /// Per request, what became of each of its events.
    verdicts: Vec<Vec<Verdict>>,
    /// Per event and pixel: the pixel's place in the group's pixels, the outcome's name and its reason.
    outcomes: Vec<(usize, &'static str, Option<String>)>,
    entries: Vec<debug::Entry>,
}

/// A group of requests mapped, with what it was mapped under.
struct Mapped {
    jobs: Vec<Job>,
    pixels: Pixels,
    /// When the group was taken: its events' time of receipt.
    now: i64,
    mapping: Mapping,
}

/// Where a group is mapped into: identity memory, recalled and taught, and the delivery queues.
trait Destination {
    /// Identity memory, as the group recalls and teaches it.
    fn identity(&mut self) -> &mut dyn IdentityStore;
    /// Queues a mapped event for the pixel at `pixel` in the group's pixels.
    fn enqueue(&mut self, pixel: usize, pending: Pending) -> Result<(), StoreError>;
    /// The visitor keys the group is about to recall, read in one go where that saves round trips.
    fn prefetch(&mut self, keys: &[String]);
}

/// Starts the writer's threads; the handle is the thread that ends last, once every sender of jobs is gone and what
/// they sent is answered.
pub(super) fn start(shared: Arc<Shared>, jobs: mpsc::Receiver<Job>) -> std::io::Result<std::thread::JoinHandle<()>> {
    let writer = std::thread::Builder::new().name("relay-writer".into());
    if shared.store.shared() {
        return writer.spawn(move || serial(&shared, jobs));
    }
    // The committer takes one group at a time and one more waits for it: a request waits at most for the group
    // being committed, the one waiting, and its own.
    let (handover, staged) = std_mpsc::sync_channel::<Staged>(1);
    let (settle, settled) = std_mpsc::channel::<Settled>();
    let failures = Arc::new(AtomicU64::new(0));
    let committer = {
        let (shared, failures) = (shared.clone(), failures.clone());
        std::thread::Builder::new()
            .name("relay-committer".into())
            .spawn(move || commit_groups(&shared, staged, settle, &failures))?
    };
    writer.spawn(move || {
        map_groups(&shared, jobs, handover, settled, &failures);
        // The committer ends once the mapper has let go of the hand-over, with every group answered.
        let _ = committer.join();
    })
}

/// The next group: the first request waited for, then those already waiting. `None` once every sender is gone.
fn next_group(jobs: &mut mpsc::Receiver<Job>) -> Option<Vec<Job>> {
    let mut group = vec![jobs.blocking_recv()?];
    while group.len() < MAX_GROUP {
        match jobs.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
    Some(group)
}

/// The group, when the store has room for it; otherwise it is answered here.
fn admit(shared: &Shared, group: Vec<Job>) -> Option<Vec<Job>> {
    match shared.store.stored_bytes().map(|bytes| bytes >= shared.config.disk_cap_bytes) {
        Ok(false) => Some(group),
        Ok(true) => {
            shared.metrics.refused_full(group.iter().map(|j| j.events.len()).sum());
            for job in group {
                job.answer(Err(Refusal::Full));
            }
            None
        }
        Err(error) => {
            fail(group, &error);
            None
        }
    }
}

fn fail(group: Vec<Job>, error: &StoreError) {
    for job in group {
        job.answer(Err(Refusal::Storage(StoreError(error.0.clone()))));
    }
}

/// Where explaining starts among the group's events times pixels: the last ones, as many as the sampler grants.
fn explained_from(sampler: &mut debug::Sampler, group: &[Job], pixels: usize) -> usize {
    let mapped_events = group.iter().map(|j| j.events.len()).sum::<usize>() * pixels;
    mapped_events - sampler.take(EXPLAINED_PER_GROUP.min(mapped_events), std::time::Instant::now())
}

/// Maps every event of the group for every pixel into `destination`.
fn map_group(
    pixels: &Pixels,
    group: &[Job],
    now: i64,
    explain_from: usize,
    destination: &mut dyn Destination,
) -> Result<Mapping, StoreError> {
    let mut mapping = Mapping::default();
    let mut keys = Vec::new();
    let mut key = String::new();
    for visitor in group.iter().flat_map(|job| &job.events).flat_map(|event| &event.visitors) {
        for (pixel, _) in pixels {
            keys.push(PixelMemory::namespaced(&mut key, &pixel.name, visitor).to_string());
        }
    }
    destination.prefetch(&keys);
    let mut index = 0;
    let mut rejections_explained = 0;
    for job in group {
        let mut job_verdicts = Vec::with_capacity(job.events.len());
        for event in &job.events {
            let mut verdict: Option<Verdict> = None;
            for (place, (pixel, setup)) in pixels.iter().enumerate() {
                let mut memory = PixelMemory { destination: &mut *destination, prefix: &pixel.name, key: &mut key };
                let mut context = Context::with_identity(now, &mut memory);
                let sampled = index >= explain_from;
                index += 1;
                let (outcome, observed, explanation) = if sampled {
                    let explanation = explain(&setup.plan, &event.text, &mut context);
                    (explanation.outcome.clone(), None, Some(explanation))
                } else {
                    match setup.plan.apply_str_noting_quality(&event.text, &mut context) {
                        // A rejected event is always explained, since the debugger is where one finds out why.
                        // Applying again is harmless: what the event taught is already remembered.
                        (rejected @ Outcome::Rejected(_), _) if rejections_explained < EXPLAINED_PER_GROUP => {
                            rejections_explained += 1;
                            (rejected, None, Some(explain(&setup.plan, &event.text, &mut context)))
                        }
                        (other, observed) => (other, observed, None),
                    }
                };
                let (name, reason) = debug::describe(&outcome);
                mapping.outcomes.push((place, name, reason.clone()));
                let mut event_id = None;
                // Taken apart: the mapped event's text moves into the queue's row without a copy.
                match outcome {
                    Outcome::Mapped(mapped) => {
                        let id = mapped.id.unwrap_or_default();
                        event_id = Some(id.clone());
                        let pending = Pending {
                            id,
                            event_type: mapped.event_type.to_string(),
                            timestamp_ms: mapped.timestamp_ms,
                            received_ms: now,
                            event: mapped.json,
                            consent_sent: Some(event.consent),
                            observed,
                        };
                        destination.enqueue(place, pending)?;
                        verdict = Some(Verdict::Queued);
                    }
                    Outcome::Rejected(rejected) => {
                        // The message may quote a value; the reason, field and rule say what to fix.
                        tracing::info!(
                            pixel = %pixel.name,
                            reason = ?rejected.reason,
                            field = rejected.field.as_deref().unwrap_or_default(),
                            rule = rejected.rule.as_deref().unwrap_or_default(),
                            "event rejected by the mapping: refused, not sent (see /debug)"
                        );
                        if !matches!(verdict, Some(Verdict::Queued | Verdict::Refused { .. })) {
                            verdict = Some(Verdict::Refused {
                                reason: reason.unwrap_or_default(),
                                message: rejected.message,
                                field: rejected.field,
                            });
                        }
                    }
                    Outcome::Dropped(_) => {
                        if verdict.is_none() {
                            verdict = Some(Verdict::Dropped { reason: reason.unwrap_or_default() });
                        }
                    }
                }
                if let Some(explanation) = explanation {
                    let input = serde_json::from_str(&event.text).unwrap_or(Value::Null);
                    mapping.entries.push(debug::Entry::received(&pixel.name, input, explanation, event_id, now));
                }
            }
            job_verdicts.push(verdict.unwrap_or(Verdict::Dropped { reason: "no_pixel".to_string() }));
        }
        mapping.verdicts.push(job_verdicts);
    }
    Ok(mapping)
}

/// What follows a group's commit: its outcomes counted, its explanations shown, its requests answered and its
/// pixels' delivery woken.
fn finish(shared: &Shared, mapped: Mapped) {
    let Mapped { jobs, pixels, now, mapping } = mapped;
    for (place, outcome, reason) in mapping.outcomes {
        let (pixel, setup) = &pixels[place];
        let target = setup.plan.target_schema();
        match outcome {
            "dropped" => shared.quality.dropped(&pixel.name, target, reason.as_deref().unwrap_or("other"), now),
            "rejected" => shared.quality.rejected(&pixel.name, target, reason.as_deref().unwrap_or("other"), 1, now),
            _ => {}
        }
        shared.metrics.outcome(&pixel.name, outcome, reason);
    }
    for entry in mapping.entries {
        shared.debug.push(entry);
    }
    for (job, verdicts) in jobs.into_iter().zip(mapping.verdicts) {
        let taken = verdicts.iter().filter(|v| !matches!(v, Verdict::Refused { .. })).count();
        shared.metrics.received(taken);
        shared.metrics.events_refused("mapping_rejected", verdicts.len() - taken);
        job.answer(Ok(verdicts));
    }
    for (pixel, _) in &pixels {
        pixel.queued.notify_one();
    }
}

/// Identity memory of one pixel: keys are namespaced by pixel, so pixels with different mappings never read each
/// other's remembered fields.
struct PixelMemory<'t> {
    destination: &'t mut dyn Destination,
    prefix: &'t str,
    /// The namespaced key of the last call, its allocation reused by the next.
    key: &'t mut String,
}

impl PixelMemory<'_> {
    /// `key` in the pixel's namespace: `<pixel>/<key>`.
    fn namespaced<'k>(buffer: &'k mut String, prefix: &str, key: &str) -> &'k str {
        buffer.clear();
        buffer.push_str(prefix);
        buffer.push('/');
        buffer.push_str(key);
        buffer
    }
}

impl IdentityStore for PixelMemory<'_> {
    fn load(&mut self, key: &str) -> Option<Profile> {
        self.destination.identity().load(Self::namespaced(self.key, self.prefix, key))
    }

    fn store(&mut self, key: &str, profile: Profile) {
        self.destination.identity().store(Self::namespaced(self.key, self.prefix, key), profile);
    }

    fn merge_into(&mut self, key: &str, profile: &mut Profile, linked: &mut Vec<String>) -> bool {
        self.destination.identity().merge_into(Self::namespaced(self.key, self.prefix, key), profile, linked)
    }

    fn store_shared(&mut self, keys: &[String], profile: Profile) {
        let namespaced: Vec<String> =
            keys.iter().map(|key| Self::namespaced(self.key, self.prefix, key).to_string()).collect();
        self.destination.identity().store_shared(&namespaced, profile);
    }
}

/// One thread for a shared store: each group is mapped inside the transaction that commits it.
fn serial(shared: &Shared, mut jobs: mpsc::Receiver<Job>) {
    let mut sampler = debug::Sampler::new(shared.debug.capacity(), std::time::Instant::now());
    while let Some(group) = next_group(&mut jobs) {
        let Some(group) = admit(shared, group) else { continue };
        let now = now_ms();
        // The setups of this group: a plan saved meanwhile in the console applies from the next group on.
        let pixels = shared.pixels.active();
        let explain_from = explained_from(&mut sampler, &group, pixels.len());
        let mut mapping = None;
        let result = shared.store.ingest(&mut |tx| {
            let mut destination = Direct { tx, pixels: &pixels };
            mapping = Some(map_group(&pixels, &group, now, explain_from, &mut destination)?);
            killpoint::reached("ingest.before_commit");
            Ok(())
        });
        let result = result
            .and_then(|()| mapping.ok_or_else(|| StoreError("the store committed without mapping the group".into())));
        match result {
            Ok(mapping) => {
                killpoint::reached("ingest.after_commit");
                finish(shared, Mapped { jobs: group, pixels, now, mapping });
            }
            Err(error) => fail(group, &error),
        }
    }
}

/// A store's transaction as the destination of a group mapped inside it.
struct Direct<'t> {
    tx: &'t mut dyn IngestTx,
    pixels: &'t Pixels,
}

impl Destination for Direct<'_> {
    fn identity(&mut self) -> &mut dyn IdentityStore {
        self.tx
    }

    fn enqueue(&mut self, pixel: usize, pending: Pending) -> Result<(), StoreError> {
        self.tx.enqueue(&self.pixels[pixel].0.name, &pending).map(drop)
    }

    fn prefetch(&mut self, keys: &[String]) {
        self.tx.prefetch(keys);
    }
}

/// A mapped group on its way from the mapper to the committer.
struct Staged {
    /// Groups are numbered from 1 in the order they are mapped, and committed in that order.
    seq: u64,
    /// The failed commits counted when the group was mapped: one more since, and the group was mapped on top of
    /// what a failed group taught, so it fails too.
    failures: u64,
    mapped: Mapped,
    rows: Vec<(usize, Pending)>,
    profiles: Vec<Write>,
}

/// What became of a group the mapper handed over.
struct Settled {
    seq: u64,
    committed: bool,
}

/// The mapper: maps each group against identity memory as committed plus what the groups in flight taught, and
/// hands it to the committer. After a failed commit it waits for the groups in flight to settle (they fail too)
/// and recalls every visitor afresh from the store.
fn map_groups(
    shared: &Shared,
    mut jobs: mpsc::Receiver<Job>,
    handover: std_mpsc::SyncSender<Staged>,
    settled: std_mpsc::Receiver<Settled>,
    failures: &AtomicU64,
) {
    let mut sampler = debug::Sampler::new(shared.debug.capacity(), std::time::Instant::now());
    let mut memory = Recollection::new(|keys: &[String]| shared.store.read_identity(keys));
    // The last group handed over, and the last one the committer settled.
    let mut sent = 0;
    let mut settled_through = 0;
    let mut failures_seen = 0;
    while let Some(group) = next_group(&mut jobs) {
        for done in settled.try_iter() {
            settled_through = done.seq;
            if done.committed {
                memory.committed(done.seq);
            }
        }
        if failures.load(Ordering::Acquire) != failures_seen || memory.failed() {
            while settled_through < sent {
                match settled.recv() {
                    Ok(done) => settled_through = done.seq,
                    Err(_) => break,
                }
            }
            memory.clear();
            failures_seen = failures.load(Ordering::Acquire);
        }
        memory.follow(shared.store.identity_generation());
        let Some(group) = admit(shared, group) else { continue };
        let now = now_ms();
        let pixels = shared.pixels.active();
        let explain_from = explained_from(&mut sampler, &group, pixels.len());
        let seq = sent + 1;
        memory.begin(seq, now);
        let mut stage = Stage { memory: &mut memory, rows: Vec::new() };
        let result = map_group(&pixels, &group, now, explain_from, &mut stage);
        let rows = stage.rows;
        let result = result.and_then(|mapping| memory.take_failure().map_or(Ok(mapping), Err));
        let mapping = match result {
            Ok(mapping) => mapping,
            Err(error) => {
                memory.discard();
                fail(group, &error);
                continue;
            }
        };
        let profiles = memory.writes();
        let mapped = Mapped { jobs: group, pixels, now, mapping };
        let staged = Staged { seq, failures: failures_seen, mapped, rows, profiles };
        if let Err(std_mpsc::SendError(staged)) = handover.send(staged) {
            memory.discard();
            fail(staged.mapped.jobs, &StoreError("the relay's committer stopped".into()));
            continue;
        }
        sent = seq;
    }
}

/// The committer: stores each group in one transaction, in the order they were mapped, then answers its requests.
fn commit_groups(
    shared: &Shared,
    staged: std_mpsc::Receiver<Staged>,
    settle: std_mpsc::Sender<Settled>,
    failures: &AtomicU64,
) {
    for Staged { seq, failures: failures_before, mapped, rows, profiles } in staged {
        let result = if failures.load(Ordering::Acquire) != failures_before {
            Err(StoreError("not stored: mapped on top of a group whose commit had failed".into()))
        } else {
            let result = shared.store.ingest(&mut |tx| {
                for write in &profiles {
                    tx.store_staged(&write.key, &write.profile, write.touched_ms)?;
                }
                for (place, pending) in &rows {
                    tx.enqueue(&mapped.pixels[*place].0.name, pending)?;
                }
                killpoint::reached("ingest.before_commit");
                Ok(())
            });
            if result.is_err() {
                failures.fetch_add(1, Ordering::AcqRel);
            }
            result
        };
        let committed = result.is_ok();
        match result {
            Ok(()) => {
                killpoint::reached("ingest.after_commit");
                finish(shared, mapped);
            }
            Err(error) => fail(mapped.jobs, &error),
        }
        // The mapper may be gone already, at shutdown: then nobody needs to know.
        let _ = settle.send(Settled { seq, committed });
    }
}

/// The mapper's destination: identity memory in [`Recollection`], the queued events gathered for the committer.
struct Stage<'m, 'r> {
    memory: &'m mut Recollection<'r>,
    rows: Vec<(usize, Pending)>,
}

impl Destination for Stage<'_, '_> {
    fn identity(&mut self) -> &mut dyn IdentityStore {
        self.memory
    }

    fn enqueue(&mut self, pixel: usize, pending: Pending) -> Result<(), StoreError> {
        self.rows.push((pixel, pending));
        Ok(())
    }

    fn prefetch(&mut self, keys: &[String]) {
        self.memory.prefetch(keys);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::{Condvar, Mutex};
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;
    use crate::relay::config::RelayConfig;
    use crate::relay::decode::{self, Shape};
    use crate::relay::enrich::{self, Facts};
    use crate::relay::registry::Registry;
    use crate::relay::store::{DeadLetter, RedbStore, Store, StoredProfile};
    use crate::relay::{console, metrics};

    /// The embedded store, its commits held until the test opens the gate, and the next one failed on demand.
    struct Gated {
        inner: RedbStore,
        /// How many groups the writer admitted: it asks for the stored bytes once per group.
        admitted: AtomicUsize,
        /// How many commits began.
        entered: AtomicUsize,
        open: Mutex<bool>,
        opened: Condvar,
        fail_next: AtomicBool,
    }

    impl Gated {
        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    impl Store for Gated {
        fn ingest(&self, work: &mut dyn FnMut(&mut dyn IngestTx) -> Result<(), StoreError>) -> Result<(), StoreError> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let open = self.open.lock().unwrap();
            drop(self.opened.wait_while(open, |open| !*open).unwrap());
            if self.fail_next.swap(false, Ordering::SeqCst) {
                return self.inner.ingest(&mut |tx| {
                    work(tx)?;
                    Err(StoreError("the disk failed".into()))
                });
            }
            self.inner.ingest(work)
        }
        fn peek(&self, pixel: &str, limit: usize) -> Result<Vec<(u64, Pending)>, StoreError> {
            self.inner.peek(pixel, limit)
        }
        fn complete(&self, pixel: &str, seqs: &[u64]) -> Result<(), StoreError> {
            self.inner.complete(pixel, seqs)
        }
        fn bury(&self, pixel: &str, dead: &[(u64, String, String)], now_ms: i64) -> Result<(), StoreError> {
            self.inner.bury(pixel, dead, now_ms)
        }
        fn dead_letters(&self, pixel: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
            self.inner.dead_letters(pixel)
        }
        fn replay(&self, pixel: Option<&str>, seqs: Option<&[u64]>) -> Result<usize, StoreError> {
            self.inner.replay(pixel, seqs)
        }
        fn purge(&self, pixel: Option<&str>, seqs: Option<&[u64]>) -> Result<usize, StoreError> {
            self.inner.purge(pixel, seqs)
        }
        fn depth(&self, pixel: &str) -> Result<u64, StoreError> {
            self.inner.depth(pixel)
        }
        fn stored_bytes(&self) -> Result<u64, StoreError> {
            self.admitted.fetch_add(1, Ordering::SeqCst);
            self.inner.stored_bytes()
        }
        fn forget_visitors(&self, before_ms: i64) -> Result<usize, StoreError> {
            self.inner.forget_visitors(before_ms)
        }
        fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            self.inner.settings(prefix)
        }
        fn put_settings(&self, writes: &[(String, Option<Vec<u8>>)]) -> Result<(), StoreError> {
            self.inner.put_settings(writes)
        }
        fn read_identity(&self, keys: &[String]) -> Result<Vec<StoredProfile>, StoreError> {
            self.inner.read_identity(keys)
        }
        fn identity_generation(&self) -> u64 {
            self.inner.identity_generation()
        }
    }

    /// A writer on the gated store, with the trial's one pixel and the default mapping.
    struct Rig {
        store: Arc<Gated>,
        jobs: Option<mpsc::Sender<Job>>,
        writer: Option<std::thread::JoinHandle<()>>,
        dir: std::path::PathBuf,
    }

    impl Rig {
        fn start(name: &str) -> Rig {
            let dir = std::env::temp_dir().join(format!("engine-writer-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let store = Arc::new(Gated {
                inner: RedbStore::open(&dir).unwrap(),
                admitted: AtomicUsize::new(0),
                entered: AtomicUsize::new(0),
                open: Mutex::new(false),
                opened: Condvar::new(),
                fail_next: AtomicBool::new(false),
            });
            let config = RelayConfig::trial(dir.clone());
            let pixels: Vec<Pixel> =
                console::setups(&config, store.as_ref()).unwrap().into_iter().map(Pixel::new).collect();
            let shared = Arc::new(Shared {
                metrics: metrics::Metrics::new(pixels.iter().map(|p| p.name.as_str())),
                config,
                store: store.clone(),
                pixels: Registry::new(pixels),
                debug: debug::DebugLog::new(500),
                quality: Default::default(),
                stopping: tokio::sync::watch::channel(None).1,
                tasks: Default::default(),
            });
            let (jobs, receiver) = mpsc::channel(16);
            let writer = super::start(shared, receiver).unwrap();
            Rig { store, jobs: Some(jobs), writer: Some(writer), dir }
        }

        /// Hands one event to the writer as a request would; the answer comes on the receiver.
        fn send(&self, event: Value) -> oneshot::Receiver<Answer> {
            let text = event.to_string();
            let decoded = decode::decode(text.as_bytes(), Shape::Single(None), 1 << 20).unwrap();
            let facts = Facts::new(now_ms(), [203, 0, 113, 9].into(), false, None);
            let events = decoded.events.into_iter().map(|event| enrich::enrich(event.unwrap(), &facts)).collect();
            let (reply, answer) = oneshot::channel();
            self.jobs.as_ref().unwrap().blocking_send(Job { events, reply }).unwrap();
            answer
        }

        /// Waits until the writer admitted `groups` groups in all: the mapper has handed over every group before.
        fn admitted(&self, groups: usize) {
            until("the writer admits the group", || self.store.admitted.load(Ordering::SeqCst) >= groups);
        }

        /// The queued events, as OpenAI events.
        fn queued(&self) -> Vec<Value> {
            let rows = self.store.peek("default", 100).unwrap();
            rows.into_iter().map(|(_, pending)| serde_json::from_str(&pending.event).unwrap()).collect()
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            self.store.open();
            self.jobs = None;
            if let Some(writer) = self.writer.take() {
                let _ = writer.join();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn until(what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn verdicts(answer: oneshot::Receiver<Answer>) -> Result<Vec<Verdict>, Refusal> {
        answer.blocking_recv().expect("answered").verdicts
    }

    fn identify(visitor: &str, id: &str) -> Value {
        json!({"type": "identify", "messageId": id, "anonymousId": visitor, "timestamp": jiff::Timestamp::now().to_string(),
               "traits": {"email": "Jane@Example.com"}})
    }

    fn order(visitor: &str, id: &str) -> Value {
        json!({"type": "track", "event": "Order Completed", "messageId": id, "anonymousId": visitor,
               "timestamp": jiff::Timestamp::now().to_string(),
               "properties": {"order_id": id, "revenue": 10.5, "currency": "USD"},
               "context": {"page": {"url": "https://shop.example.com/thanks"}}})
    }

    fn email_of(event: &Value) -> &Value {
        &event["user"]["email"]
    }

    fn jane() -> Value {
        use sha2::Digest;
        json!(sha2::Sha256::digest(b"jane@example.com").iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    /// Holds the first group's commit until the two groups after it are mapped: the second must be mapped then.
    fn hold_first_commit(rig: &Rig, first: Value, second: Value) -> [oneshot::Receiver<Answer>; 3] {
        let first = rig.send(first);
        until("the first group's commit begins", || rig.store.entered.load(Ordering::SeqCst) == 1);
        let second = rig.send(second);
        rig.admitted(2);
        // A third group is admitted only once the second is mapped and handed over.
        let third = rig.send(order("someone-else", "o-third"));
        rig.admitted(3);
        assert_eq!(rig.store.entered.load(Ordering::SeqCst), 1, "the first group is still being committed");
        rig.store.open();
        [first, second, third]
    }

    #[test]
    fn a_group_mapped_while_the_one_before_commits_recalls_what_that_one_taught() {
        let rig = Rig::start("in-flight");
        let [first, second, third] = hold_first_commit(&rig, identify("v-1", "i-1"), order("v-1", "o-1"));
        assert!(matches!(verdicts(first).unwrap()[..], [Verdict::Dropped { .. }]));
        let second = verdicts(second).unwrap();
        assert!(matches!(second[..], [Verdict::Queued]), "{second:?}");
        assert!(matches!(verdicts(third).unwrap()[..], [Verdict::Queued]));
        let queued = rig.queued();
        assert_eq!(queued.iter().map(|e| &e["id"]).collect::<Vec<_>>(), [&json!("o-1"), &json!("o-third")]);
        assert_eq!(email_of(&queued[0]), &jane(), "the order recalls the email its visitor's identify taught");
        assert_eq!(email_of(&queued[1]), &Value::Null, "another visitor recalls nothing");
        // What the identify taught is on disk, written by the committer.
        let stored = rig.store.read_identity(&["default/anon:v-1".to_string()]).unwrap();
        assert!(stored[0].profile.is_some() && stored[0].touched_ms.is_some(), "{stored:?}");
    }

    #[test]
    fn a_group_mapped_on_top_of_a_failed_commit_fails_with_it_and_what_it_taught_is_forgotten() {
        let rig = Rig::start("failed");
        rig.store.fail_next.store(true, Ordering::SeqCst);
        let [first, second, third] = hold_first_commit(&rig, identify("v-2", "i-2"), order("v-2", "o-2"));
        for (answer, which) in [(first, "the failed group"), (second, "the group mapped on it"), (third, "the next")] {
            assert!(matches!(verdicts(answer), Err(Refusal::Storage(_))), "{which} is refused");
        }
        assert!(rig.queued().is_empty(), "nothing of the failed groups is stored");
        let later = rig.send(order("v-2", "o-2-again"));
        assert!(matches!(verdicts(later).unwrap()[..], [Verdict::Queued]));
        let queued = rig.queued();
        assert_eq!(queued.len(), 1);
        assert_eq!(email_of(&queued[0]), &Value::Null, "the identify never committed, so it taught nothing");
    }

    #[test]
    fn visitors_forgotten_meanwhile_are_not_recalled_from_the_writers_copy() {
        let rig = Rig::start("forgotten");
        rig.store.open();
        assert!(verdicts(rig.send(identify("v-3", "i-3"))).is_ok());
        assert!(verdicts(rig.send(order("v-3", "o-3"))).is_ok());
        let far_future = now_ms() + 10 * super::super::store::TOUCH_PRECISION_MS as i64;
        assert_eq!(rig.store.forget_visitors(far_future).unwrap(), 1);
        assert!(verdicts(rig.send(order("v-3", "o-3-after"))).is_ok());
        let queued = rig.queued();
        assert_eq!((email_of(&queued[0]), email_of(&queued[1])), (&jane(), &Value::Null));
    }
}
