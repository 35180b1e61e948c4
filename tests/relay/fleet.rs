//! A fleet of relays on one PostgreSQL database (a real server of the test's own, see `pg.rs`): the store keeps
//! the promises of the embedded one; three relays share the load and OpenAI gets every acknowledged event exactly
//! once; a relay killed in the middle of a delivery leaves a lease that runs out and another relay delivers its
//! batch; the database going away turns ingestion into 503s without losing what was acknowledged; a refused key
//! pauses the pixel on every relay; what one relay learned of a visitor applies to an order that arrives through
//! another.

use std::collections::HashSet;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Value};
use signal_engine::identity::{Profile, RememberedField};
use signal_engine::relay::config::{RelayConfig, StoreKind};
use signal_engine::relay::postgres::PostgresStore;
use signal_engine::relay::store::{Hold, Pending, RedbStore, Store};
use signal_engine::relay::{start, RelayHandle};

use crate::relay::fake_openai::FakeOpenAi;
use crate::relay::pg::Postgres;
use crate::relay::{config, data_dir, eventually, now, post, sha256_hex, API_KEY, PIXEL};

fn pending(id: &str) -> Pending {
    Pending {
        id: id.to_string(),
        event_type: "page_viewed".to_string(),
        timestamp_ms: Some(1_795_000_000_000),
        received_ms: 1_795_000_000_500,
        event: format!(r#"{{"id":"{id}","type":"page_viewed"}}"#),
        consent_sent: Some(true),
        observed: None,
    }
}

/// The store's promises, as the relay relies on them, checked the same way on both stores.
fn keeps_the_stores_promises(store: &dyn Store) {
    assert_eq!(store.stored_bytes().unwrap(), 0);
    let mut seqs = Vec::new();
    store
        .ingest(&mut |tx| {
            seqs.clear();
            for id in ["a", "b", "c"] {
                seqs.push(tx.enqueue("shop", &pending(id))?);
            }
            seqs.push(tx.enqueue("blog", &pending("d"))?);
            let mut profile = Profile::default();
            profile.fields.push(RememberedField {
                field: "user.email".to_string(),
                value: json!("h@sh"),
                seen_ms: 1_795_000_000_000,
                expires_ms: None,
            });
            tx.store("shop/visitor-1", profile);
            assert!(tx.load("shop/visitor-1").is_some(), "a profile written in the transaction is read back in it");
            Ok(())
        })
        .unwrap();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers grow: {seqs:?}");
    let bytes = store.stored_bytes().unwrap();
    assert!(bytes > 0);
    // A failed transaction leaves nothing behind.
    let failed = store.ingest(&mut |tx| {
        tx.enqueue("shop", &pending("never"))?;
        Err(signal_engine::relay::store::StoreError("the work failed".to_string()))
    });
    assert!(failed.is_err());
    assert_eq!(store.depth("shop").unwrap(), 3, "the failed transaction queued nothing");
    assert_eq!(store.stored_bytes().unwrap(), bytes);

    let claimed = store.claim("shop", 2).unwrap();
    let ids: Vec<&str> = claimed.iter().map(|(_, p)| p.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"], "oldest first");
    store.complete("shop", &[claimed[0].0]).unwrap();
    store.bury("shop", &[(claimed[1].0, "rejected".into(), "HTTP 400".into())], 1_795_000_001_000).unwrap();
    assert_eq!(store.depth("shop").unwrap(), 1);
    let dead = store.dead_letters(Some("shop")).unwrap();
    assert_eq!((dead.len(), dead[0].pending.id.as_str(), dead[0].reason.as_str()), (1, "b", "rejected"));
    assert_eq!(store.replay(Some("shop"), None).unwrap(), 1);
    let back: Vec<String> = store.claim("shop", 10).unwrap().into_iter().map(|(_, p)| p.id).collect();
    assert_eq!(back, ["b", "c"], "a replayed event goes back to its place");
    store.bury("shop", &[(seqs[1], "rejected".into(), "again".into())], 1_795_000_002_000).unwrap();
    assert_eq!(store.purge(None, None).unwrap(), 1);
    assert!(store.dead_letters(None).unwrap().is_empty());

    store
        .put_settings(&[("pixel/shop".into(), Some(b"{}".to_vec())), ("secret/shop".into(), Some(b"k".to_vec()))])
        .unwrap();
    store.put_settings(&[("pixel/blog".into(), Some(b"[]".to_vec()))]).unwrap();
    let pixels: Vec<String> = store.settings("pixel/").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(pixels, ["pixel/blog", "pixel/shop"]);
    store.put_settings(&[("pixel/blog".into(), None)]).unwrap();
    assert_eq!(store.settings("pixel/").unwrap().len(), 1);

    assert_eq!(store.forget_visitors(0).unwrap(), 0, "nothing is older than the epoch");
    assert_eq!(store.forget_visitors(i64::MAX).unwrap(), 1);
    assert_eq!(store.stored_bytes().unwrap() > 0, store.depth("shop").unwrap() + store.depth("blog").unwrap() > 0);
}

#[test]
fn both_stores_keep_the_same_promises() {
    let dir = data_dir("store-promises");
    keeps_the_stores_promises(&RedbStore::open(&dir.join("data")).unwrap());
    let Some(pg) = Postgres::start("promises") else { return };
    let url = pg.database("promises");
    let store = PostgresStore::open(&url, 4, Duration::from_secs(5)).expect("the store opens and migrates");
    keeps_the_stores_promises(&store);
    // Opening again finds the schema migrated; two relays starting together do not race (the advisory lock).
    let again: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresStore::open(&url, 2, Duration::from_secs(5)).map(drop))
        })
        .collect();
    for opened in again {
        opened.join().unwrap().expect("opens on a migrated schema");
    }
    assert_eq!(pg.query(&url, "SELECT count(*) FROM engine_migrations"), "1");

    // Leases: what one relay claimed, another does not take until the lease runs out; only the holder completes.
    let first = PostgresStore::open(&url, 2, Duration::from_millis(400)).unwrap();
    let second = PostgresStore::open(&url, 2, Duration::from_millis(400)).unwrap();
    first.ingest(&mut |tx| tx.enqueue("lease", &pending("l-1")).map(drop)).unwrap();
    let taken = first.claim("lease", 10).unwrap();
    assert_eq!(taken.len(), 1);
    assert!(second.claim("lease", 10).unwrap().is_empty(), "leased to the first relay");
    std::thread::sleep(Duration::from_millis(600));
    let retaken = second.claim("lease", 10).unwrap();
    assert_eq!(retaken.len(), 1, "the lease ran out: the second relay takes it");
    first.complete("lease", &[taken[0].0]).unwrap();
    assert_eq!(first.depth("lease").unwrap(), 1, "the first relay no longer holds it and cannot complete it");
    second.complete("lease", &[retaken[0].0]).unwrap();
    assert_eq!(second.depth("lease").unwrap(), 0);
    // A hold is seen by every relay.
    let hold = Hold { paused_why: Some("HTTP 401".into()), until_ms: None };
    first.set_hold("lease", &hold).unwrap();
    assert_eq!(second.hold("lease").unwrap(), hold);
    second.set_hold("lease", &Hold::default()).unwrap();
    assert_eq!(first.hold("lease").unwrap(), Hold::default());
}

/// A relay on the fleet's database, delivering to `fake`.
async fn fleet_relay(dir: &std::path::Path, fake: &FakeOpenAi, url: &str, extra: &str) -> RelayHandle {
    let mut config: RelayConfig = config(dir, fake, extra);
    config.store = StoreKind::Postgres { url: SecretString::from(url), pool_size: 4, lease: Duration::from_secs(5) };
    start(config).await.unwrap_or_else(|e| panic!("the relay starts: {e}"))
}

fn order_of(id: &str, visitor: &str) -> Value {
    json!({
        "type": "track", "event": "Order Completed", "messageId": id, "anonymousId": visitor,
        "timestamp": now().0,
        "properties": {"order_id": id, "revenue": 10, "currency": "USD"},
        "context": {"page": {"url": "https://shop.example.com/thanks"}, "consent": {"marketing": true}}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_share_the_load_and_openai_gets_every_event_once() {
    let Some(pg) = Postgres::start("three") else { return };
    let url = pg.database("fleet");
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dirs: Vec<_> = (0..3).map(|n| data_dir(&format!("fleet-{n}"))).collect();
    let mut relays = Vec::new();
    for dir in &dirs {
        relays.push(fleet_relay(dir, &fake, &url, "batch: {max_events: 50, linger_ms: 20}").await);
    }
    let mut acknowledged = Vec::new();
    for n in 0..300 {
        let relay = &relays[n % 3];
        let batch: Vec<Value> = (0..3).map(|k| order_of(&format!("f-{n}-{k}"), &format!("v-{n}"))).collect();
        let (status, answer) = post(relay, "/v1/batch", &json!({"batch": batch})).await;
        assert_eq!(status, 200, "{answer}");
        acknowledged.extend((0..3).map(|k| format!("f-{n}-{k}")));
    }
    let accepted = fake.wait_for(acknowledged.len(), Duration::from_secs(60)).await;
    let ids: HashSet<String> = accepted.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, acknowledged.iter().cloned().collect(), "every acknowledged event, and only those");
    assert_eq!(fake.duplicates(), 0, "none delivered twice");
    let senders: HashSet<usize> = fake.requests().iter().map(|r| r.events).collect();
    assert!(!senders.is_empty());
    for relay in relays {
        relay.stop().await;
    }
    assert_eq!(pg.query(&url, "SELECT count(*) FROM engine_queue"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_relay_learned_applies_to_an_order_through_another_and_a_refused_key_pauses_all() {
    let Some(pg) = Postgres::start("identity") else { return };
    let url = pg.database("fleet");
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let (a_dir, b_dir) = (data_dir("fleet-a"), data_dir("fleet-b"));
    let a = fleet_relay(&a_dir, &fake, &url, "").await;
    let b = fleet_relay(&b_dir, &fake, &url, "").await;
    let identify = json!({"type": "identify", "messageId": "i-1", "anonymousId": "shopper-7", "userId": "u-7",
        "traits": {"email": "Shopper@Example.com"}, "timestamp": now().0});
    assert_eq!(post(&a, "/v1/i", &identify).await.0, 200);
    assert_eq!(post(&b, "/v1/t", &order_of("o-through-b", "shopper-7")).await.0, 200);
    let accepted = fake.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(accepted[0]["user"]["email"], sha256_hex("shopper@example.com"), "{}", accepted[0]);

    // A refused key, seen by whichever relay sends first, pauses the pixel on both.
    fake.set_api_key("sk-rotated-key-000");
    assert_eq!(post(&a, "/v1/t", &order_of("o-refused", "shopper-8")).await.0, 200);
    eventually("both relays report the pixel paused", Duration::from_secs(20), || async {
        crate::relay::metric(&a, "signal_relay_pixel_paused{pixel=\"default\"}").await == 1.0
            && crate::relay::metric(&b, "signal_relay_pixel_paused{pixel=\"default\"}").await == 1.0
    })
    .await;
    fake.set_api_key(API_KEY);
    eventually("both resume once the key works", Duration::from_secs(20), || async {
        crate::relay::metric(&a, "signal_relay_pixel_paused{pixel=\"default\"}").await == 0.0
            && crate::relay::metric(&b, "signal_relay_pixel_paused{pixel=\"default\"}").await == 0.0
    })
    .await;
    fake.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(fake.duplicates(), 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_answers_503_and_loses_nothing_acknowledged() {
    let Some(pg) = Postgres::start("outage") else { return };
    let url = pg.database("fleet");
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("fleet-outage");
    let relay = fleet_relay(&dir, &fake, &url, "").await;
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for n in 0..60 {
        if n == 20 {
            pg.down();
        }
        if n == 40 {
            pg.up();
        }
        let id = format!("db-{n}");
        let (status, answer) = post(&relay, "/v1/t", &order_of(&id, &format!("v-{n}"))).await;
        match status {
            200 => acknowledged.push(id),
            503 => refused += 1,
            other => panic!("{other}: {answer}"),
        }
        if (20..40).contains(&n) {
            assert_eq!(status, 503, "never 200 while the database is away: {answer}");
        }
        if n == 30 {
            assert_eq!(crate::relay::metric(&relay, "signal_relay_store_up").await, 0.0);
            let (ready, body) = crate::relay::get(&relay, "/readyz").await;
            assert_eq!(ready, 503, "{body}");
            assert!(body.contains("the store does not answer"), "{body}");
        }
    }
    assert!(refused >= 20, "{refused}");
    assert_eq!(crate::relay::metric(&relay, "signal_relay_store_up").await, 1.0, "the database is back");
    let accepted = fake.wait_for(acknowledged.len(), Duration::from_secs(60)).await;
    let ids: HashSet<String> = accepted.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    for id in &acknowledged {
        assert!(ids.contains(id), "{id} was acknowledged but not delivered");
    }
    relay.stop().await;
}

/// The fleet's configuration for `engine serve`: the database from `ENGINE_TEST_DATABASE_URL`, leases of 3 s,
/// requests to OpenAI timing out after 1 s.
fn fleet_config(dir: &std::path::Path, endpoint: &str) -> std::path::PathBuf {
    let yaml = format!(
        "listen: 127.0.0.1:0\ndata_dir: data\npixel_id: {PIXEL}\napi_key_env: {}\nendpoint: {endpoint}\n\
         store: {{kind: postgres, url_env: ENGINE_TEST_DATABASE_URL, lease_ms: 3000, pool_size: 4}}\n\
         ingestion:\n  rate_limit: 100000\n  keys:\n    - name: site\n      key: {}\n\
         batch:\n  max_events: 100\n  linger_ms: 20\nshutdown_grace_ms: 500\n\
         retry:\n  initial_backoff_ms: 20\n  max_backoff_ms: 200\n  timeout_ms: 1000\n  auth_probe_ms: 100\n",
        crate::relay::process::KEY_ENV,
        crate::relay::INGESTION_KEY,
    );
    let path = dir.join("relay.yaml");
    std::fs::write(&path, yaml).expect("config written");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_delivery_leaves_its_batch_to_the_others_once_its_lease_runs_out() {
    use crate::relay::process::{client, send, RelayProcess};
    let Some(pg) = Postgres::start("killed") else { return };
    let url = pg.database("fleet");
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dirs: Vec<_> = (0..3).map(|n| data_dir(&format!("fleet-proc-{n}"))).collect();
    let mut relays = Vec::new();
    for (n, dir) in dirs.iter().enumerate() {
        let config = fleet_config(dir, &fake.url);
        // The first relay dies right after OpenAI took its first batch, before it could mark it delivered.
        let mut env = vec![("ENGINE_TEST_DATABASE_URL", url.as_str())];
        if n == 0 {
            env.push(("ENGINE_KILL_AT", "deliver.after_send:1"));
        }
        relays.push(RelayProcess::start(&config, &env).await.unwrap_or_else(|logs| panic!("relay {n}:\n{logs}")));
    }
    let client = client();
    let mut acknowledged = Vec::new();
    for n in 0..240 {
        let relay = &relays[n % 3];
        let id = format!("k-{n}");
        if send(&client, relay.addr, "/v1/t", &order_of(&id, &format!("v-{n}"))).await == Some(200) {
            acknowledged.push(id);
        }
    }
    let status = relays[0].exit(Duration::from_secs(20)).await;
    assert!(!status.success(), "the first relay was killed: {status:?}");
    assert!(acknowledged.len() >= 160, "the two others took their share: {}", acknowledged.len());
    let accepted = fake.wait_for(acknowledged.len(), Duration::from_secs(60)).await;
    let ids: HashSet<String> = accepted.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    for id in &acknowledged {
        assert!(ids.contains(id), "{id} was acknowledged but never delivered");
    }
    assert!(fake.mismatched().is_empty(), "a batch sent again is the same events under the same ids");
    eventually("the dead relay's leased batch is settled by the others", Duration::from_secs(30), || async {
        pg.query(&url, "SELECT count(*) FROM engine_queue") == "0"
    })
    .await;
    for relay in &relays[1..] {
        relay.sigterm();
    }
    for relay in &mut relays[1..] {
        assert!(relay.exit(Duration::from_secs(10)).await.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_the_fleet_are_replayed_from_engine_dlq_and_the_console_of_any_relay() {
    let Some(pg) = Postgres::start("dlq") else { return };
    let url = pg.database("fleet");
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    fake.poison_once("bad-a");
    fake.poison_once("bad-b");
    let (a_dir, b_dir) = (data_dir("fleet-dlq-a"), data_dir("fleet-dlq-b"));
    let a = fleet_relay(&a_dir, &fake, &url, "").await;
    let b = fleet_relay(&b_dir, &fake, &url, "").await;
    assert_eq!(post(&a, "/v1/t", &order_of("bad-a", "v-a")).await.0, 200);
    assert_eq!(post(&b, "/v1/t", &order_of("bad-b", "v-b")).await.0, 200);
    eventually("both are dead-lettered", Duration::from_secs(20), || async {
        pg.query(&url, "SELECT count(*) FROM engine_dead") == "2"
    })
    .await;
    // The tool, beside running relays, on the shared store.
    let config = fleet_config(&a_dir, &fake.url);
    let dlq = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
            .arg("dlq")
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("ENGINE_TEST_DATABASE_URL", &url)
            .output()
            .expect("engine dlq runs")
    };
    let listed = dlq(&["list"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(text.contains("bad-a") && text.contains("bad-b"), "{text}");
    let seq_a = text.lines().find(|l| l.contains("bad-a")).unwrap().split('\t').next().unwrap().to_string();
    let replayed = dlq(&["replay", &seq_a]);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    // And the console of either relay, on the same store.
    let admin = b.admin_addr.expect("the console");
    let answer: Value = reqwest::Client::new()
        .post(format!("http://{admin}/api/dead-letters/replay"))
        .json(&json!({"pixel": "default"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["replayed"], 1, "{answer}");
    let accepted = fake.wait_for(2, Duration::from_secs(20)).await;
    let ids: HashSet<&str> = accepted.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, HashSet::from(["bad-a", "bad-b"]));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_one_relay_was_given_holds_back_every_relay() {
    use crate::relay::fake_openai::Scripted;
    let Some(pg) = Postgres::start("retry-after") else { return };
    let url = pg.database("fleet");
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    fake.script([Scripted::Status(429, Some(2))]);
    let (a_dir, b_dir) = (data_dir("fleet-429-a"), data_dir("fleet-429-b"));
    let extra = "retry: {max_backoff_ms: 5000}";
    let a = fleet_relay(&a_dir, &fake, &url, extra).await;
    let b = fleet_relay(&b_dir, &fake, &url, extra).await;
    assert_eq!(post(&a, "/v1/t", &order_of("r-a", "v-a")).await.0, 200);
    eventually("OpenAI asked to wait", Duration::from_secs(10), || async { !fake.requests().is_empty() }).await;
    let throttled = fake.requests()[0].at;
    // The other relay gets an event of its own while the pixel is held back.
    assert_eq!(post(&b, "/v1/t", &order_of("r-b", "v-b")).await.0, 200);
    fake.wait_for(2, Duration::from_secs(20)).await;
    let requests = fake.requests();
    assert_eq!(requests[0].status, 429);
    for later in &requests[1..] {
        let waited = later.at - throttled;
        assert!(
            waited >= Duration::from_millis(1800),
            "a relay sent {waited:?} after a Retry-After of 2 s: {requests:?}"
        );
    }
    a.stop().await;
    b.stop().await;
}
