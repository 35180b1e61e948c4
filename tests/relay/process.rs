//! The relay as an operator runs it: the `engine serve` binary killed with SIGKILL under load and restarted loses
//! no acknowledged event and re-sends only under the same ids; SIGTERM stops it promptly with exit 0 and keeps
//! what is still queued; the API key reaches neither its logs nor its data directory.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::relay::fake_openai::{FakeOpenAi, Scripted};
use crate::relay::{data_dir, order, API_KEY, INGESTION_KEY, PIXEL};

/// The environment variable the spawned relay reads its OpenAI key from, as a deployment would set it.
pub const KEY_ENV: &str = "ENGINE_TEST_OPENAI_KEY";

/// Writes `dir/relay.yaml`: listening on a port the system picks, storing in `dir/data`, delivering to `endpoint`
/// in batches of at most 100 with short lingers and backoffs, and requests to OpenAI timing out after 2 s.
pub fn write_config(dir: &Path, endpoint: &str) -> PathBuf {
    let yaml = format!(
        "listen: 127.0.0.1:0\ndata_dir: data\npixel_id: {PIXEL}\napi_key_env: {KEY_ENV}\nendpoint: {endpoint}\n\
         ingestion:\n  rate_limit: 100000\n  keys:\n    - name: site\n      key: {INGESTION_KEY}\n\
         batch:\n  max_events: 100\n  linger_ms: 20\nshutdown_grace_ms: 500\n\
         retry:\n  initial_backoff_ms: 20\n  max_backoff_ms: 200\n  timeout_ms: 2000\n  auth_probe_ms: 100\n"
    );
    let path = dir.join("relay.yaml");
    std::fs::write(&path, yaml).expect("config written");
    path
}

/// An address nothing listens on: OpenAI is down.
pub fn closed_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = listener.local_addr().expect("bound");
    drop(listener);
    format!("http://{addr}")
}

/// `engine serve --config FILE --json-logs` as a child process. Its address comes from its own "relay listening"
/// log line, so it can listen on port 0; its log lines are kept for the test to read. Killed when dropped.
pub struct RelayProcess {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl RelayProcess {
    pub async fn spawn(config: &Path) -> RelayProcess {
        match RelayProcess::start(config, &[]).await {
            Ok(relay) => relay,
            Err(logs) => panic!("the relay did not start listening:\n{logs}"),
        }
    }

    /// Starts the relay with extra environment variables; its log lines when it exits or does not listen within a
    /// minute.
    pub async fn start(config: &Path, env: &[(&str, &str)]) -> Result<RelayProcess, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["serve", "--config"])
            .arg(config)
            .arg("--json-logs")
            .env(KEY_ENV, API_KEY)
            .env("ENGINE_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the engine binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (found, listening) = tokio::sync::oneshot::channel();
        let kept = logs.clone();
        // Reads to the end, so the relay never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let record: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if record["fields"]["message"] == "relay listening" {
                    let addr = record["fields"]["addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
                    if let (Some(addr), Some(found)) = (addr, found.take()) {
                        let _ = found.send(addr);
                    }
                }
                kept.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        match tokio::time::timeout(Duration::from_secs(60), listening).await {
            Ok(Ok(addr)) => Ok(RelayProcess { child, addr, logs }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tokio::time::sleep(Duration::from_millis(100)).await;
                let logs = logs.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
                Err(logs)
            }
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    /// Waits until a log line contains `text`.
    pub async fn wait_for_log(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.logs().contains(text) {
            assert!(Instant::now() < deadline, "no log line with {text:?} within {within:?}:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: the process gets no chance to flush or clean up.
    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL delivered");
        self.child.wait().expect("the killed relay is reaped");
    }

    /// SIGTERM, sent as an operator or a supervisor would.
    pub fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit by itself; fails after `within`.
    pub async fn exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("the relay's status") {
                return status;
            }
            assert!(Instant::now() < deadline, "the relay still runs {within:?} later:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP client for talking to the relay (reqwest is built without a default TLS provider, as the relay is).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// POSTs `body` to the relay with the ingestion key; `None` when no answer came (the relay is gone).
pub async fn send(client: &reqwest::Client, addr: SocketAddr, path: &str, body: &Value) -> Option<u16> {
    let response =
        client.post(format!("http://{addr}{path}")).bearer_auth(INGESTION_KEY).json(body).send().await.ok()?;
    let status = response.status().as_u16();
    // The answer is complete only with its body: read it before counting the events as acknowledged.
    response.bytes().await.ok()?;
    Some(status)
}

/// Senders that post orders as fast as the relay answers, alternating `/v1/batch` (10 events) and `/v1/t`,
/// until `quota` events were acknowledged in all or the relay stops answering. Returns the acknowledged ids and
/// every id that was sent (an unacknowledged one may still have been stored).
async fn load(addr: SocketAddr, prefix: &str, senders: usize, quota: usize) -> (Vec<String>, Vec<String>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let client = client();
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let (acked, sent, count, client, prefix) =
            (acked.clone(), sent.clone(), count.clone(), client.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            for request in 0.. {
                if count.load(Ordering::Relaxed) >= quota {
                    break;
                }
                let ids: Vec<String> = if request % 2 == 0 {
                    (0..10).map(|i| format!("{prefix}-{sender}-{request}-{i}")).collect()
                } else {
                    vec![format!("{prefix}-{sender}-{request}")]
                };
                sent.lock().unwrap().extend(ids.iter().cloned());
                let answer = if ids.len() == 1 {
                    send(&client, addr, "/v1/t", &order(&ids[0])).await
                } else {
                    let batch: Vec<Value> = ids.iter().map(|id| order(id)).collect();
                    send(&client, addr, "/v1/batch", &json!({ "batch": batch })).await
                };
                match answer {
                    Some(200) => {
                        count.fetch_add(ids.len(), Ordering::Relaxed);
                        acked.lock().unwrap().extend(ids);
                    }
                    Some(status) => panic!("the relay answered {status} under load"),
                    None => break,
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a sender");
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    (acked, sent)
}

/// Fails if the API key appears in the logs or in any file of the data directory.
fn assert_key_kept_secret(logs: &str, data: &Path) {
    assert!(!logs.contains(API_KEY), "the API key is in the relay's logs");
    for entry in std::fs::read_dir(data).expect("the data directory") {
        let path = entry.expect("an entry").path();
        let bytes = std::fs::read(&path).expect("a data file");
        let found = bytes.windows(API_KEY.len()).any(|w| w == API_KEY.as_bytes());
        assert!(!found, "the API key is stored in {}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_sigkill_under_load_and_restarted_it_delivers_every_acknowledged_event() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    // OpenAI answers slowly, so the relay takes events faster than it delivers them and dies with a backlog.
    fake.script((0..1000).map(|_| Scripted::Slow(Duration::from_millis(150))));
    let dir = data_dir("sigkill");
    let config = write_config(&dir, &fake.url);
    let mut relay = RelayProcess::spawn(&config).await;

    // Eight senders post until the relay dies under them; it is killed once 500 events were delivered.
    let addr = relay.addr;
    let senders = tokio::spawn(async move { load(addr, "a", 8, usize::MAX).await });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered = fake.accepted().len();
        if delivered >= 500 {
            break;
        }
        assert!(Instant::now() < deadline, "only {delivered} events reached OpenAI before the kill");
        assert!(!senders.is_finished(), "the senders stopped before the kill:\n{}", relay.logs());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // OpenAI goes down while the senders go on, so the relay certainly dies with acknowledged events queued, however
    // the machine's load shares time between senders and delivery.
    fake.outage(Some(503));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!senders.is_finished(), "the senders stopped before the kill:\n{}", relay.logs());
    relay.sigkill();
    fake.outage(None);
    let delivered_before_restart = fake.accepted().len();
    let (acked_before, sent_before) = senders.await.expect("the senders");
    let logs_before = relay.logs();
    assert!(
        acked_before.len() > delivered_before_restart,
        "the relay was killed with events still queued ({} acknowledged, {delivered_before_restart} delivered)",
        acked_before.len()
    );

    // Restarted on the same data directory, it delivers the backlog while taking 1,000 more events.
    let relay = RelayProcess::spawn(&config).await;
    let (acked_after, sent_after) = load(relay.addr, "b", 4, 1000).await;
    assert!(acked_after.len() >= 1000, "the restarted relay acknowledged only {}", acked_after.len());

    let acked: HashSet<&str> = acked_before.iter().chain(&acked_after).map(String::as_str).collect();
    let sent: HashSet<&str> = sent_before.iter().chain(&sent_after).map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let accepted = loop {
        let accepted = fake.accepted();
        let ids: HashSet<String> = accepted.iter().filter_map(|e| e["id"].as_str().map(str::to_string)).collect();
        let missing = acked.iter().filter(|id| !ids.contains(**id)).count();
        if missing == 0 {
            break accepted;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged events never reached OpenAI:\n{}",
            acked.len(),
            relay.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // What reached OpenAI more than once came back under the id and type it had: each id is one event, and
    // every event sent is either new or an exact (id, type) repeat, so OpenAI's deduplication absorbs it.
    let mut types: HashMap<&str, HashSet<&str>> = HashMap::new();
    for event in &accepted {
        let id = event["id"].as_str().expect("an id");
        assert!(sent.contains(id), "OpenAI received an event the test never sent: {id}");
        types.entry(id).or_default().insert(event["type"].as_str().expect("a type"));
    }
    assert!(types.values().all(|t| t.len() == 1 && t.contains("order_created")), "an id changed its type");
    let events_received: usize = fake.requests().iter().filter(|r| r.status == 202).map(|r| r.events).sum();
    assert_eq!(events_received, accepted.len() + fake.duplicates(), "every event sent is new or a repeat");
    eprintln!(
        "sigkill: {} acknowledged before the kill ({delivered_before_restart} delivered by then), {} after; \
         {} delivered, {} duplicates absorbed by (id, type)",
        acked_before.len(),
        acked_after.len(),
        accepted.len(),
        fake.duplicates()
    );
    assert_key_kept_secret(&(logs_before + &relay.logs()), &dir.join("data"));
    drop(relay);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_openai_is_down_exits_0_promptly_and_a_restart_delivers_everything() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("sigterm");
    let mut relay = RelayProcess::spawn(&write_config(&dir, &closed_endpoint())).await;
    let (acked, _) = load(relay.addr, "t", 2, 300).await;
    assert!(acked.len() >= 300);
    relay.wait_for_log("delivery will be retried", Duration::from_secs(30)).await;

    let asked = Instant::now();
    relay.sigterm();
    let status = relay.exit(Duration::from_secs(10)).await;
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "{}", relay.logs());
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
    assert!(relay.logs().contains("relay stopped"), "{}", relay.logs());
    let logs_before = relay.logs();

    let mut relay = RelayProcess::spawn(&write_config(&dir, &fake.url)).await;
    let accepted = fake.wait_for(acked.len(), Duration::from_secs(60)).await;
    let delivered: HashSet<&str> = accepted.iter().filter_map(|e| e["id"].as_str()).collect();
    let acked: HashSet<&str> = acked.iter().map(String::as_str).collect();
    assert_eq!(delivered, acked, "exactly the acknowledged events reach OpenAI");
    relay.sigterm();
    assert_eq!(relay.exit(Duration::from_secs(10)).await.code(), Some(0));
    assert_key_kept_secret(&(logs_before + &relay.logs()), &dir.join("data"));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_request_openai_never_answers_exits_promptly_and_keeps_the_events() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    fake.script([Scripted::Hang]);
    let dir = data_dir("sigterm-hang");
    // The request timeout is the default of 30 s: SIGTERM must not wait for it.
    let config = write_config(&dir, &fake.url);
    let yaml = std::fs::read_to_string(&config).unwrap().replace("timeout_ms: 2000", "timeout_ms: 30000");
    std::fs::write(&config, yaml).unwrap();
    let mut relay = RelayProcess::spawn(&config).await;
    let client = client();
    assert_eq!(send(&client, relay.addr, "/v1/t", &order("hang-1")).await, Some(200));
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.requests().is_empty() {
        assert!(Instant::now() < deadline, "the relay never sent the event");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let asked = Instant::now();
    relay.sigterm();
    let status = relay.exit(Duration::from_secs(40)).await;
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "{}", relay.logs());
    assert!(took < Duration::from_secs(3), "SIGTERM waited {took:?} for a request OpenAI never answers");

    let _relay = RelayProcess::spawn(&config).await;
    let accepted = fake.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(accepted[0]["id"], "hang-1", "the event interrupted in flight is sent again after the restart");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_api_key_pauses_the_pixel_where_a_supervisor_sees_it_and_delivery_resumes_once_openai_takes_it() {
    // OpenAI does not know the relay's key yet (it was revoked, or is not active).
    let fake = FakeOpenAi::start("sk-not-the-relays-key", &[PIXEL]).await;
    let dir = data_dir("auth-pause");
    let relay = RelayProcess::spawn(&write_config(&dir, &fake.url)).await;
    let (acked, _) = load(relay.addr, "k", 2, 50).await;
    relay.wait_for_log("delivery is paused", Duration::from_secs(30)).await;

    let client = client();
    let health = client.get(format!("http://{}/healthz", relay.addr)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let health: Value = health.json().await.unwrap();
    assert_eq!((&health["status"], &health["paused_pixels"]), (&json!("degraded"), &json!(["default"])));
    let metrics = client.get(format!("http://{}/metrics", relay.addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"signal_relay_pixel_paused{pixel="default"} 1"#), "{metrics}");
    assert!(metrics.contains(&format!(r#"signal_relay_queue_depth{{pixel="default"}} {}"#, acked.len())), "{metrics}");

    // While paused, the relay probes every `auth_probe_ms` (100 ms here) instead of hammering OpenAI.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let probes: Vec<Instant> = fake.requests().iter().filter(|r| r.status == 401).map(|r| r.at).collect();
    assert!(probes.len() >= 3, "{} probes", probes.len());
    assert!(probes.windows(2).all(|w| w[1] - w[0] >= Duration::from_millis(90)), "probes too close: {probes:?}");

    fake.set_api_key(API_KEY);
    let accepted = fake.wait_for(acked.len(), Duration::from_secs(30)).await;
    assert_eq!(accepted.len(), acked.len(), "nothing was dropped while paused");
    // The relay marks the pixel healthy once it has OpenAI's answer, a moment after OpenAI recorded the events.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = client.get(format!("http://{}/healthz", relay.addr)).send().await.unwrap();
        if health.status().as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still unhealthy: {}", health.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_key_kept_secret(&relay.logs(), &dir.join("data"));
    drop(relay);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_clients_dribble_headers_and_bodies_exits_within_the_grace_period() {
    use tokio::io::AsyncWriteExt;
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("sigterm-dribble");
    let mut relay = RelayProcess::spawn(&write_config(&dir, &fake.url)).await;
    let addr = relay.addr;
    // One client sends its head a byte every 200 ms, another a body the same way; both would outlive any drain
    // that waited for them.
    let mut dribblers = Vec::new();
    for head in
        ["POST /v1/t HTTP/1.1\r\nHost: x\r\nX-Slow: ", "POST /v1/t HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n"]
    {
        dribblers.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
            let head = head.to_string();
            let (first, rest) = if head.ends_with("\r\n\r\n") { (head.as_str(), "") } else { ("", head.as_str()) };
            let _ = stream.write_all(first.as_bytes()).await;
            for byte in rest.bytes().chain(std::iter::repeat(b'a')).take(300) {
                if stream.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    relay.sigterm();
    let status = relay.exit(Duration::from_secs(30)).await;
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "{}", relay.logs());
    // shutdown_grace_ms is 500 in this configuration.
    assert!(took < Duration::from_secs(2), "SIGTERM waited {took:?} for slow clients");
    for dribbler in dribblers {
        dribbler.abort();
    }
    std::fs::remove_dir_all(&dir).ok();
}
