//! `engine dlq list|show|replay|purge` as an operator uses it: on a store holding dead letters, on the dead letter
//! a running relay made of an event OpenAI refused (replayed once OpenAI takes it), and against a running relay,
//! which holds the store.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use signal_engine::relay::store::{Pending, RedbStore, Store};

use crate::relay::fake_openai::FakeOpenAi;
use crate::relay::process::{client, send, write_config, RelayProcess};
use crate::relay::{data_dir, order, API_KEY, PIXEL};
use crate::support::{engine_in, text};

fn dlq(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["dlq"];
    all.extend_from_slice(args);
    engine_in(dir, &all, "")
}

fn pending(id: &str, event_type: &str) -> Pending {
    Pending {
        id: id.to_string(),
        event_type: event_type.to_string(),
        timestamp_ms: Some(1_795_000_000_000),
        received_ms: 1_795_000_000_500,
        event: format!(r#"{{"id":"{id}","type":"{event_type}","timestamp_ms":1795000000000,"action_source":"web"}}"#),
        consent_sent: Some(true),
        observed: None,
    }
}

/// A store with four queued events: `o-1` and `o-2` of pixel `shop` refused by OpenAI, `p-1` of pixel `blog`
/// expired, and `o-3` still queued. Returns the sequence numbers of o-1, o-2, p-1.
fn store_with_dead_letters(data: &Path) -> [u64; 3] {
    let store = RedbStore::open(data).expect("the store opens");
    let mut seqs = Vec::new();
    store
        .ingest(&mut |tx| {
            seqs.clear();
            for (pixel, id, kind) in
                [("shop", "o-1", "order_created"), ("shop", "o-2", "order_created"), ("blog", "p-1", "page_viewed")]
            {
                seqs.push(tx.enqueue(pixel, &pending(id, kind))?);
            }
            tx.enqueue("shop", &pending("o-3", "order_created"))?;
            Ok(())
        })
        .expect("events queued");
    let refused = "HTTP 400: {\"error\":{\"message\":\"events[0]: `currency` is not ISO 4217\"}}".to_string();
    store
        .bury(
            "shop",
            &[(seqs[0], "rejected".into(), refused.clone()), (seqs[1], "rejected".into(), refused)],
            1_795_000_001_000,
        )
        .expect("buried");
    store.bury("blog", &[(seqs[2], "expired".into(), "outside the window".into())], 1_795_000_002_000).expect("buried");
    [seqs[0], seqs[1], seqs[2]]
}

#[test]
fn list_show_replay_and_purge_dead_letters() {
    let dir = data_dir("dlq-cli");
    let [o1, o2, p1] = store_with_dead_letters(&dir.join("data"));
    std::fs::write(dir.join("relay.yaml"), "data_dir: data\npixel_id: px\n").unwrap();

    let listed = dlq(&dir, &["list", "--config", "relay.yaml"]);
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed.stderr));
    let lines: Vec<Vec<String>> =
        text(&listed.stdout).lines().map(|l| l.split('\t').map(str::to_string).collect()).collect();
    let summary: Vec<(&str, &str, &str, &str)> =
        lines.iter().map(|l| (l[1].as_str(), l[2].as_str(), l[3].as_str(), l[4].as_str())).collect();
    assert_eq!(
        summary,
        [
            ("shop", "o-1", "order_created", "rejected"),
            ("shop", "o-2", "order_created", "rejected"),
            ("blog", "p-1", "page_viewed", "expired")
        ]
    );
    assert_eq!(lines[0][0], o1.to_string(), "each line starts with the sequence number `show` takes");
    assert!(lines[0][5].contains("is not ISO 4217"), "with OpenAI's answer: {:?}", lines[0]);
    assert_eq!(text(&listed.stderr).trim(), "3 dead letters");

    let blog = dlq(&dir, &["list", "--pixel", "blog", "--data-dir", "data"]);
    assert_eq!((blog.status.code(), text(&blog.stdout).lines().count()), (Some(0), 1), "{}", text(&blog.stdout));

    let shown = dlq(&dir, &["show", &o2.to_string(), "--data-dir", "data"]);
    assert_eq!(shown.status.code(), Some(0), "{}", text(&shown.stderr));
    let record: Value = serde_json::from_slice(&shown.stdout).expect("show prints JSON");
    assert_eq!(
        (record["seq"].as_u64(), &record["pixel"], &record["reason"]),
        (Some(o2), &"shop".into(), &"rejected".into())
    );
    assert_eq!(record["event"]["id"], "o-2", "the OpenAI event as it would be sent");
    assert!(record["detail"].as_str().unwrap().starts_with("HTTP 400: "), "{record}");

    let unknown = dlq(&dir, &["show", "999", "--data-dir", "data"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("no dead letter 999"), "{}", text(&unknown.stderr));

    let replayed = dlq(&dir, &["replay", &o1.to_string(), "--data-dir", "data"]);
    assert_eq!(replayed.status.code(), Some(0), "{}", text(&replayed.stderr));
    assert!(text(&replayed.stdout).starts_with("1 dead letter(s) put back in the queue"), "{}", text(&replayed.stdout));

    let unnamed = dlq(&dir, &["purge", "--data-dir", "data"]);
    assert_eq!(unnamed.status.code(), Some(2), "purge without names or --all deletes nothing");
    assert!(text(&unnamed.stderr).contains("give --all"), "{}", text(&unnamed.stderr));

    let purged = dlq(&dir, &["purge", "--all", "--pixel", "blog", "--data-dir", "data"]);
    assert_eq!(purged.status.code(), Some(0), "{}", text(&purged.stderr));
    assert_eq!(text(&purged.stdout).trim(), "1 dead letter(s) purged");

    // What is left: o-2 dead, o-1 back in the queue at its old place, before o-3.
    let store = RedbStore::open(&dir.join("data")).expect("the store opens");
    let dead: Vec<String> = store.dead_letters(None).unwrap().into_iter().map(|d| d.pending.id).collect();
    assert_eq!(dead, ["o-2"]);
    let queued: Vec<String> = store.peek("shop", 10).unwrap().into_iter().map(|(_, p)| p.id).collect();
    assert_eq!(queued, ["o-1", "o-3"]);
    assert!(store.dead_letters(Some("blog")).unwrap().is_empty() && p1 > o1);
    drop(store);

    let nowhere = dlq(&dir, &["list", "--data-dir", "no-such-dir"]);
    assert_eq!(nowhere.status.code(), Some(2));
    assert!(text(&nowhere.stderr).contains("no relay store in no-such-dir"), "{}", text(&nowhere.stderr));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_openai_refused_is_dead_lettered_shown_and_replayed_once_openai_takes_it() {
    let strict = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    strict.poison("bad-1");
    let dir = data_dir("dlq-relay");
    let mut relay = RelayProcess::spawn(&write_config(&dir, &strict.url)).await;
    let client = client();
    for id in ["good-1", "bad-1", "good-2"] {
        assert_eq!(send(&client, relay.addr, "/v1/t", &order(id)).await, Some(200));
    }
    strict.wait_for(2, Duration::from_secs(30)).await;
    relay.wait_for_log("OpenAI refused an event: dead-lettered", Duration::from_secs(30)).await;

    // The running relay holds the store: the tool goes through its console instead, and sees the same.
    let live = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || dlq(&dir, &["list", "--config", "relay.yaml"])
    })
    .await
    .unwrap();
    assert_eq!(live.status.code(), Some(0), "{}", text(&live.stderr));
    assert!(text(&live.stderr).contains("going through its console"), "{}", text(&live.stderr));
    let fields: Vec<String> = text(&live.stdout).trim_end().split('\t').map(str::to_string).collect();
    assert_eq!(&fields[1..5], ["default", "bad-1", "order_created", "rejected"], "{fields:?}");
    let seq = fields[0].clone();
    let shown = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || dlq(&dir, &["show", &seq, "--config", "relay.yaml"])
    })
    .await
    .unwrap();
    let record: Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    assert_eq!(record["event"]["id"], "bad-1", "{record}");

    relay.sigterm();
    assert_eq!(relay.exit(Duration::from_secs(10)).await.code(), Some(0));
    let listed = dlq(&dir, &["list", "--config", "relay.yaml"]);
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed.stderr));
    let line = text(&listed.stdout);
    let fields: Vec<&str> = line.trim_end().split('\t').collect();
    assert_eq!(&fields[1..5], ["default", "bad-1", "order_created", "rejected"], "{line}");
    assert!(fields[5].contains("HTTP 400") && fields[5].contains("event bad-1 is malformed"), "{line}");

    // OpenAI is fixed (a fake without the poison); the replayed event goes out when the relay runs again.
    let fixed = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let replayed = dlq(&dir, &["replay", "--config", "relay.yaml"]);
    assert_eq!(replayed.status.code(), Some(0), "{}", text(&replayed.stderr));
    let mut relay = RelayProcess::spawn(&write_config(&dir, &fixed.url)).await;
    let accepted = fixed.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(accepted[0]["id"], "bad-1");
    assert_eq!(accepted.len(), 1, "only the replayed event; the others were delivered before");
    relay.sigterm();
    assert_eq!(relay.exit(Duration::from_secs(10)).await.code(), Some(0));
    let empty = dlq(&dir, &["list", "--config", "relay.yaml"]);
    assert_eq!((empty.status.code(), text(&empty.stdout)), (Some(0), String::new()));
    assert_eq!(text(&empty.stderr).trim(), "0 dead letters");
    std::fs::remove_dir_all(&dir).ok();
}
