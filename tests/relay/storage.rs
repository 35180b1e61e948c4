//! Storage faults: the relay's data directory on a small tmpfs of the test's own, filled until writes fail with
//! ENOSPC. Ingestion answers 503 with Retry-After and never 200 for an event it could not store; once space returns
//! it takes events again without a restart, and every event it acknowledged, before and after, is delivered.
//! Mounting needs root (as on this project's machines and CI); elsewhere the test says so and passes, unless `CI`
//! is set.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    _dir: TestDir,
    mount: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = data_dir("storage");
        let mount = dir.join("mnt");
        std::fs::create_dir(&mount).expect("a mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .output()
            .is_ok_and(|out| out.status.success());
        mounted.then_some(Tmpfs { _dir: dir, mount })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Fills the file system of `path` with `filler` until a write fails, then frees `leave` bytes of it.
fn fill(filler: &Path, leave: u64) {
    let mut file = std::fs::File::create(filler).expect("the filler file");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    while file.write_all(&chunk).and_then(|_| file.sync_all()).is_ok() {
        written += chunk.len() as u64;
    }
    file.set_len(written.saturating_sub(leave)).expect("the filler shrinks");
    file.sync_all().expect("synced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_stores_nothing_it_acknowledges_falsely_and_recovers_when_space_returns() {
    if std::env::var("ENGINE_TEST_STORE").ok().as_deref() == Some("postgres") {
        // The full disk here is the embedded store's; on PostgreSQL the database is elsewhere, and losing it is
        // tests/relay/fleet.rs's outage test.
        eprintln!("storage faults: not applicable to the PostgreSQL store");
        return;
    }
    let Some(disk) = Tmpfs::mount("8m") else {
        assert!(std::env::var_os("CI").is_none(), "CI is set but a tmpfs cannot be mounted (the test needs root)");
        eprintln!("storage faults: skipped, a tmpfs cannot be mounted here (needs root)");
        return;
    };
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    // OpenAI is down, so nothing leaves the queue and the disk only fills.
    fake.outage(Some(503));
    let relay = relay(&disk.mount, &fake, "").await;
    let filler = disk.mount.join("filler");
    fill(&filler, 256 * 1024);

    let mut acknowledged = Vec::new();
    let mut refusals = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while refusals < 3 {
        assert!(Instant::now() < deadline, "the disk never filled: {} events taken", acknowledged.len());
        let id = format!("full-{i}");
        i += 1;
        let batch: Vec<Value> = (0..20).map(|j| order(&format!("{id}-{j}"))).collect();
        let answer = send(
            &relay,
            "/v1/batch",
            Auth::Bearer(INGESTION_KEY),
            json!({ "batch": batch }).to_string().into_bytes(),
            &[],
        )
        .await;
        match answer.status {
            200 => acknowledged.extend((0..20).map(|j| format!("{id}-{j}"))),
            503 => {
                assert!(answer.retry_after.is_some_and(|s| s >= 1), "a 503 without Retry-After: {answer:?}");
                refusals += 1;
            }
            other => panic!("a full disk answered {other}: {answer:?}"),
        }
    }
    assert!(!acknowledged.is_empty(), "some events fit before the disk was full");
    assert!(metric(&relay, "signal_relay_requests_refused_total{reason=\"storage\"}").await >= 3.0);

    // Space returns: ingestion takes events again, without a restart.
    std::fs::remove_file(&filler).expect("the filler is removed");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = 0;
    while after < 5 {
        assert!(Instant::now() < deadline, "ingestion does not recover once space returns:\n");
        let id = format!("after-{after}");
        match post(&relay, "/v1/t", &order(&id)).await.0 {
            200 => {
                acknowledged.push(id);
                after += 1;
            }
            503 => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("after the disk emptied, ingestion answered {other}"),
        }
    }

    // OpenAI is back: every acknowledged event is delivered, and no event that was refused.
    fake.outage(None);
    let delivered = fake.wait_for(acknowledged.len(), Duration::from_secs(60)).await;
    let delivered: BTreeSet<String> = ids(&delivered).into_iter().collect();
    let acknowledged: BTreeSet<String> = acknowledged.into_iter().collect();
    assert_eq!(delivered, acknowledged, "exactly the acknowledged events are delivered");
    relay.stop().await;
}
