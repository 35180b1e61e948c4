//! Crash consistency: the `engine serve` binary under steady load, killed with SIGKILL at kill points chosen to land
//! in every phase (`ENGINE_KILL_AT=PHASE:N`, see src/relay/killpoint.rs): inside the ingestion commit and just
//! after it, between a batch's send and its mark-as-delivered, during bisection, while dead-lettering, during
//! identity pruning and during a SIGTERM drain. After every kill the relay restarts on the same data directory.
//! The oracle is the test's own bookkeeping and the fake OpenAI's record:
//!
//! - conservation: every acknowledged event is delivered, except the poisoned ones OpenAI refuses, which are
//!   dead-lettered, never delivered;
//! - integrity: every delivery of an id carries the same payload, the one the mapping gives the event as sent;
//! - liveness: after every restart a new event is acknowledged and delivered;
//! - duplicates repeat an id and type only, and a kill repeats at most one batch in flight plus the events of
//!   requests that were stored but never acknowledged (the client sends those again).
//!
//! `cargo test` tries 20 kill points; `ENGINE_KILL_POINTS=200 cargo test --test tests relay::crash` is the long
//! campaign. A summary line reports kill points tried and landed per phase, events acknowledged, lost and
//! duplicated.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signal_engine::relay::killpoint::PHASES;
use signal_engine::relay::store::{RedbStore, Store};
use signal_engine::{Context, Outcome};

use crate::relay::fake_openai::{FakeOpenAi, Scripted};
use crate::relay::process::{client, send, write_config, RelayProcess};
use crate::relay::{data_dir, now_rfc3339, API_KEY, PIXEL, PIXEL_NAME};

/// `batch.max_events` in `write_config`: the most one round sends, so the most a kill can make it send again.
const BATCH: usize = 100;

/// An order with its own id and time, and the visitor's address and browser given, so that its mapped payload does
/// not depend on which relay process took it.
fn event(id: &str) -> Value {
    json!({
        "type": "track", "event": "Order Completed", "messageId": id, "anonymousId": "anon-crash",
        "timestamp": now_rfc3339(),
        "properties": {"order_id": id, "revenue": 10.5, "currency": "EUR"},
        "context": {"ip": "198.51.100.7", "userAgent": "crash-test/1",
                    "page": {"url": "https://shop.example.com/thanks"}, "traits": {"email": "crash@example.com"}}
    })
}

/// What the load generator knows: events sent and answered with 200, and events whose request got no answer
/// (the relay died with it) and were sent again.
#[derive(Default)]
struct Ledger {
    sent: HashMap<String, Value>,
    acked: HashSet<String>,
    resent: usize,
}

/// A steady client, as an SDK behaves: requests of 1 or 10 events at a modest pace to whichever relay is up; a
/// request that gets no answer is sent again, same events, until one is acknowledged. Every 37th event is poisoned.
async fn load(
    fake: FakeOpenAi,
    target: Arc<Mutex<Option<SocketAddr>>>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    sender: usize,
) {
    let client = client();
    let mut serial = 0usize;
    let mut pending: Option<Vec<String>> = None;
    while !stop.load(Ordering::Relaxed) {
        let ids = match pending.take() {
            Some(ids) => ids,
            None => {
                let count = if serial.is_multiple_of(3) { 1 } else { 10 };
                let ids: Vec<String> = (0..count)
                    .map(|_| {
                        serial += 1;
                        let id = if serial.is_multiple_of(37) {
                            format!("poison-{sender}-{serial}")
                        } else {
                            format!("e-{sender}-{serial}")
                        };
                        if id.starts_with("poison") {
                            fake.poison(&id);
                        }
                        id
                    })
                    .collect();
                let mut ledger = ledger.lock().unwrap();
                for id in &ids {
                    ledger.sent.insert(id.clone(), event(id));
                }
                ids
            }
        };
        let Some(addr) = *target.lock().unwrap() else {
            pending = Some(ids);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let events: Vec<Value> = {
            let ledger = ledger.lock().unwrap();
            ids.iter().map(|id| ledger.sent[id].clone()).collect()
        };
        let answer = if events.len() == 1 {
            send(&client, addr, "/v1/t", &events[0]).await
        } else {
            send(&client, addr, "/v1/batch", &json!({ "batch": events })).await
        };
        match answer {
            Some(200) => {
                ledger.lock().unwrap().acked.extend(ids);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            // Refused while stopping (503), or no answer: the same events again, as an SDK retries.
            _ => {
                ledger.lock().unwrap().resent += ids.len();
                pending = Some(ids);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The `N` of the `i`-th kill point: pruning runs once at start (then hourly), so it is always the first; the others
/// vary, so that a kill also lands after some of the phase's work was done.
fn schedule(points: usize) -> Vec<(&'static str, u32)> {
    (0..points)
        .map(|i| {
            let phase = PHASES[i % PHASES.len()];
            let nth = if phase == "prune" { 1 } else { 1 + (i / PHASES.len()) as u32 % 3 };
            (phase, nth)
        })
        .collect()
}

#[derive(Default)]
struct Tally {
    tried: BTreeMap<&'static str, usize>,
    landed: BTreeMap<&'static str, usize>,
    worst_duplicates: usize,
}

async fn wait_for_exit(relay: &mut RelayProcess, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if relay.exited() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_kill_points_in_every_phase_it_loses_nothing_and_repeats_little() {
    let points: usize = std::env::var("ENGINE_KILL_POINTS").ok().and_then(|n| n.parse().ok()).unwrap_or(20);
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("crash");
    let config = write_config(&dir, &fake.url);
    let target = Arc::new(Mutex::new(None));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..2)
        .map(|sender| tokio::spawn(load(fake.clone(), target.clone(), ledger.clone(), stop.clone(), sender)))
        .collect();
    let mut tally = Tally::default();
    let probe_client = client();
    for (k, (phase, nth)) in schedule(points).into_iter().enumerate() {
        *tally.tried.entry(phase).or_default() += 1;
        let duplicates_before = fake.duplicates();
        let resent_before = ledger.lock().unwrap().resent;
        let armed = format!("{phase}:{nth}");
        let mut relay = match RelayProcess::start(&config, &[("ENGINE_KILL_AT", &armed)]).await {
            Ok(relay) => Some(relay),
            // Pruning runs as the relay starts, and delivery of what an earlier run left queued starts with it: their
            // kills may come before the relay says it listens.
            Err(logs) => {
                let at_start = ["kill point prune", "kill point deliver."].iter().any(|point| logs.contains(point));
                assert!(at_start, "kill point {armed}: the relay did not start:\n{logs}");
                None
            }
        };
        let landed = match relay.as_mut() {
            None => true,
            Some(relay) => {
                *target.lock().unwrap() = Some(relay.addr);
                if phase == "deliver.drain" {
                    // Slow answers let events pile up, so that the drain has a round to be killed in.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    fake.script([
                        Scripted::Slow(Duration::from_millis(150)),
                        Scripted::Slow(Duration::from_millis(150)),
                    ]);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    relay.sigterm();
                }
                let landed = wait_for_exit(relay, Duration::from_secs(10)).await && relay.logs().contains("kill point");
                if !relay.exited() {
                    // The phase was not reached in time: an unplanned SIGKILL, still a crash to recover from.
                    relay.sigkill();
                }
                landed
            }
        };
        if landed {
            *tally.landed.entry(phase).or_default() += 1;
        }
        *target.lock().unwrap() = None;
        drop(relay);

        // The restart on the same data directory takes new events and delivers them (liveness).
        let mut restarted = RelayProcess::spawn(&config).await;
        *target.lock().unwrap() = Some(restarted.addr);
        let probe = format!("live-{k}");
        ledger.lock().unwrap().sent.insert(probe.clone(), event(&probe));
        let probe_event = ledger.lock().unwrap().sent[&probe].clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if send(&probe_client, restarted.addr, "/v1/t", &probe_event).await == Some(200) {
                ledger.lock().unwrap().acked.insert(probe.clone());
                break;
            }
            assert!(Instant::now() < deadline, "after kill point {armed} the restarted relay takes no event");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fake.accepted().iter().any(|e| e["id"] == probe.as_str()) {
            assert!(
                Instant::now() < deadline,
                "after kill point {armed} a new event is not delivered:\n{}",
                restarted.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        *target.lock().unwrap() = None;
        restarted.sigterm();
        restarted.exit(Duration::from_secs(10)).await;

        // A kill repeats at most the batch in flight, and what the client sent again because no answer came.
        let duplicates = fake.duplicates() - duplicates_before;
        let resent = ledger.lock().unwrap().resent - resent_before;
        assert!(
            duplicates <= BATCH + resent,
            "kill point {armed}: {duplicates} events delivered twice, more than a batch ({BATCH}) and the {resent} \
             events the client sent again"
        );
        tally.worst_duplicates = tally.worst_duplicates.max(duplicates);
    }

    // The last relay delivers what is left; then the books are closed.
    stop.store(true, Ordering::Relaxed);
    let mut last = RelayProcess::spawn(&config).await;
    *target.lock().unwrap() = Some(last.addr);
    for sender in senders {
        sender.await.expect("a sender");
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let owed: HashSet<&String> = ledger.acked.iter().filter(|id| !id.starts_with("poison")).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let delivered: HashSet<String> =
            fake.accepted().iter().filter_map(|e| e["id"].as_str().map(str::to_string)).collect();
        let missing = owed.iter().filter(|id| !delivered.contains(id.as_str())).count();
        if missing == 0 {
            break delivered;
        }
        assert!(Instant::now() < deadline, "{missing} acknowledged events were never delivered (conservation)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    last.sigterm();
    last.exit(Duration::from_secs(10)).await;

    // Poisoned events are refused by OpenAI, dead-lettered, and never delivered.
    assert!(!delivered.iter().any(|id| id.starts_with("poison")), "a poisoned event was accepted");
    let store = RedbStore::open(&dir.join("data")).expect("the store opens after the campaign");
    let buried: HashSet<String> = store
        .dead_letters(Some(PIXEL_NAME))
        .expect("dead letters")
        .into_iter()
        .map(|letter| letter.pending.id)
        .collect();
    let acked_poison: Vec<&String> = ledger.acked.iter().filter(|id| id.starts_with("poison")).collect();
    for id in &acked_poison {
        assert!(
            buried.contains(id.as_str()),
            "the acknowledged poisoned event {id} is neither delivered nor dead-lettered"
        );
    }

    // Integrity: one payload per id, and it is the mapping of the event as sent.
    assert_eq!(fake.mismatched(), Vec::<(Value, Value)>::new(), "an id delivered twice with different payloads");
    let plan = signal_engine::presets::OPENAI_ADS.compile(&Default::default()).plan.expect("the preset compiles");
    let mut types: HashMap<String, String> = HashMap::new();
    for delivered in fake.accepted() {
        let id = delivered["id"].as_str().expect("an id").to_string();
        let previous = types.insert(id.clone(), delivered["type"].as_str().unwrap_or_default().to_string());
        assert!(previous.is_none(), "{id} was delivered under two types");
        let Some(sent) = ledger.sent.get(&id) else { panic!("{id} was delivered but never sent") };
        let now = jiff::Timestamp::now().as_millisecond();
        let Outcome::Mapped(expected) = plan.apply(sent, &mut Context::stateless(now)) else {
            panic!("{id} does not map")
        };
        let expected: Value = serde_json::from_str(&expected.json).expect("mapped JSON");
        assert_eq!(delivered, expected, "{id}: the delivered payload is not the mapping of the event sent");
    }
    eprintln!(
        "crash campaign: {points} kill points, landed by phase {:?} of tried {:?}; {} events acknowledged \
         ({} poisoned, dead-lettered), 0 lost, {} delivered twice in all, at most {} after one kill; the client \
         re-sent {} events that got no answer",
        tally.landed,
        tally.tried,
        ledger.acked.len(),
        acked_poison.len(),
        fake.duplicates(),
        tally.worst_duplicates,
        ledger.resent
    );
    for phase in PHASES {
        assert!(
            points < PHASES.len() || tally.landed.get(phase).copied().unwrap_or(0) > 0,
            "no kill landed in {phase}: {:?}",
            tally.landed
        );
    }
}
