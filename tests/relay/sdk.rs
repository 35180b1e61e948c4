//! The relay against the real SDKs, as they send: Segment's analytics-next and RudderStack's JS SDK in headless
//! Chromium on a page of another origin (every request preflighted, the key in Basic auth and the body), and
//! Segment's Python library with gzip. The harness is `tests/sdk/` (see its README); `.ci/run` installs its npm and
//! PyPI packages and Chromium. Without them the tests say so and pass, unless `CI` is set, where they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use signal_engine::relay::RelayHandle;

use crate::relay::fake_openai::FakeOpenAi;
use crate::relay::{data_dir, metric, relay, sha256_hex, TestDir, API_KEY, PIXEL};

const BROWSER_KEY: &str = "wk_browser_public";
const SERVER_KEY: &str = "sk_server_key_123";

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

/// Whether the harness can run here; under CI, a missing piece fails the test instead of skipping it.
fn harness_ready(needs: &[&str]) -> bool {
    let mut missing = Vec::new();
    let runs = |program: &str, arg: &str| {
        Command::new(program).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    if needs.contains(&"node") {
        if !runs("node", "--version") {
            missing.push("node");
        }
        if !sdk_dir().join("node_modules/@segment/analytics-next").is_dir() {
            missing.push("tests/sdk/node_modules (cd tests/sdk && npm ci)");
        }
        if !runs("chromium", "--version") {
            missing.push("chromium (apt-get install chromium)");
        }
    }
    if needs.contains(&"python") && !runs("python3", "--version") {
        missing.push("python3");
    }
    if needs.contains(&"python")
        && !Command::new("python3")
            .args(["-c", "import segment.analytics"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    {
        missing.push("segment-analytics-python (pip install -r tests/sdk/requirements.txt)");
    }
    if missing.is_empty() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI is set but the SDK harness cannot run: missing {missing:?}");
    eprintln!("NOTICE: the real-SDK tests did not run: missing {missing:?}");
    false
}

/// A port nothing listens on now, for the page server.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A relay with a browser key for pages at `allowed_port` and a server key.
async fn sdk_relay(name: &str, fake: &FakeOpenAi, allowed_port: u16) -> (RelayHandle, TestDir) {
    let dir = data_dir(name);
    let keys = format!(
        "ingestion: {{keys: [{{name: web, key: {BROWSER_KEY}, browser: true, \
         allowed_origins: [\"http://127.0.0.1:{allowed_port}\"]}}, {{name: server, key: {SERVER_KEY}}}]}}"
    );
    (relay(&dir, fake, &keys).await, dir)
}

async fn run(program: &str, args: Vec<String>) -> Output {
    let program = program.to_string();
    tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .output()
            .expect("the harness starts")
    })
    .await
    .unwrap()
}

/// One shopper's journey in Chromium with `sdk`: the landing page with an `oppref`, identify with email and phone,
/// then the order on the checkout page.
async fn journey(sdk: &str, delivery: &str, relay: &RelayHandle, page_port: u16) -> (bool, Value, String) {
    let args = vec![
        "tests/sdk/browser.mjs".to_string(),
        "--sdk".into(),
        sdk.into(),
        "--delivery".into(),
        delivery.into(),
        "--relay".into(),
        format!("http://127.0.0.1:{}", relay.addr.port()),
        "--key".into(),
        BROWSER_KEY.into(),
        "--page-port".into(),
        page_port.to_string(),
        "--timeout-ms".into(),
        "45000".into(),
    ];
    let output = run("node", args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let report = stdout.lines().rev().find_map(|line| serde_json::from_str(line).ok()).unwrap_or(Value::Null);
    (output.status.success(), report, stderr)
}

/// The order, as OpenAI received it, with everything the journey taught the relay.
fn assert_the_order(accepted: &[Value], page_port: u16, sdk: &str) {
    let order = accepted
        .iter()
        .find(|e| e["type"] == "order_created")
        .unwrap_or_else(|| panic!("{sdk}: no order reached OpenAI: {accepted:#?}"));
    assert_eq!(order["data"]["order_id"], "ORD-BROWSER-1", "{sdk}");
    assert_eq!(order["data"]["amount"], 12999, "{sdk}: minor units");
    assert_eq!(order["data"]["currency"], "USD", "{sdk}");
    assert_eq!(order["user"]["email"], sha256_hex("jane.doe@example.com"), "{sdk}: the identify's email, hashed");
    assert_eq!(order["user"]["phone_number"], sha256_hex("+447700900123"), "{sdk}: the phone in E.164, hashed");
    assert_eq!(order["oppref"], "clk_browser_42", "{sdk}: the landing page's click id, remembered");
    assert_eq!(order["user"]["ip_address"], "127.0.0.1", "{sdk}: the browser's address, added by the relay");
    let agent = order["user"]["user_agent"].as_str().unwrap_or_default();
    assert!(agent.contains("HeadlessChrome"), "{sdk}: {agent:?}");
    assert_eq!(order["source_url"], format!("http://127.0.0.1:{page_port}/checkout/complete"), "{sdk}: no query");
    assert_eq!(order["opt_out"], false, "{sdk}: consent given");
    let landing = accepted
        .iter()
        .find(|e| e["type"] == "page_viewed" && e["source_url"].as_str().is_some_and(|u| u.ends_with("/landing")))
        .unwrap_or_else(|| panic!("{sdk}: no landing page: {accepted:#?}"));
    assert_eq!(landing["oppref"], "clk_browser_42");
}

async fn browser_sdk_delivers_the_journey(sdk: &str, delivery: &str) {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let page_port = free_port();
    let (relay, dir) = sdk_relay(&format!("sdk-{sdk}-{delivery}"), &fake, page_port).await;
    let (ok, report, stderr) = journey(sdk, delivery, &relay, page_port).await;
    assert!(ok, "{sdk} ({delivery}) failed: {stderr}\n{report:#}");
    let requests = report["requests"].as_array().expect("the harness reports its requests");
    if delivery != "beacon" {
        assert!(
            requests.iter().any(|r| r["preflight"] == true && r["status"] == 204),
            "{sdk}: the browser preflighted and the relay said yes: {requests:#?}"
        );
    }
    let accepted = fake.wait_for(3, Duration::from_secs(20)).await;
    assert_the_order(&accepted, page_port, sdk);
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_next_in_chromium() {
    if !harness_ready(&["node"]) {
        return;
    }
    browser_sdk_delivers_the_journey("analytics-next", "standard").await;
    // Its batching strategy posts `{writeKey, batch, sentAt}` to /v1/b.
    browser_sdk_delivers_the_journey("analytics-next", "batching").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudderstack_analytics_js_in_chromium() {
    if !harness_ready(&["node"]) {
        return;
    }
    browser_sdk_delivers_the_journey("rudderstack", "standard").await;
    // sendBeacon: text/plain to /beacon/v1/batch with the key in the query string, not preflighted.
    browser_sdk_delivers_the_journey("rudderstack", "beacon").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_from_an_origin_not_allowed_stores_nothing() {
    if !harness_ready(&["node"]) {
        return;
    }
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let allowed = free_port();
    let (relay, dir) = sdk_relay("sdk-foreign-origin", &fake, allowed).await;
    let page_port = loop {
        let port = free_port();
        if port != allowed {
            break port;
        }
    };
    let (ok, report, _) = journey("analytics-next", "standard", &relay, page_port).await;
    assert!(!ok, "the journey cannot succeed from an origin the key does not allow: {report:#}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(fake.accepted().is_empty(), "nothing was delivered: {:?}", fake.accepted());
    assert_eq!(metric(&relay, "signal_relay_events_received_total").await, 0.0, "nothing was stored");
    let refused = metric(&relay, "signal_relay_requests_refused_total{reason=\"origin_not_allowed\"}").await;
    assert!(refused >= 1.0, "the refusals are counted: {refused}");
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_python_library_with_gzip() {
    if !harness_ready(&["python"]) {
        return;
    }
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let (relay, dir) = sdk_relay("sdk-python", &fake, free_port()).await;
    let args = vec![
        "tests/sdk/python_sender.py".to_string(),
        "--host".into(),
        format!("http://127.0.0.1:{}", relay.addr.port()),
        "--key".into(),
        SERVER_KEY.into(),
        "--gzip".into(),
    ];
    let output = run("python3", args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON summary");
    assert_eq!(report["gzip"], true, "{report}");
    let accepted = fake.wait_for(1, Duration::from_secs(20)).await;
    let order = &accepted[0];
    assert_eq!(order["type"], "order_created");
    assert_eq!(order["data"]["order_id"], "ORD-PY-1");
    assert_eq!(order["data"]["amount"], 4250);
    assert_eq!(order["data"]["currency"], "EUR");
    assert_eq!(order["user"]["email"], sha256_hex("jane.doe@example.com"), "the identify's email, by userId");
    assert_eq!(order["source_url"], "https://shop.example.com/thanks");
    assert_eq!(order["opt_out"], json!(false));
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// The requests each SDK really sent (captured by `tests/sdk/capture_samples.mjs` into `tests/sdk/samples/`),
/// replayed byte for byte in meaning: headers as sent, the body gzipped again where it was. This runs without
/// Chromium, Node or Python. The captures' times are old, but every SDK sends `sentAt`, so the relay's clock-skew
/// correction brings them to now, as it would for a browser whose clock is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_sdk_requests_are_taken_as_sent() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(sdk_dir().join("samples"))
        .expect("tests/sdk/samples")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        let sample: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let requests = sample["requests"].as_array().expect("requests");
        let origin = requests.iter().find_map(|r| r["headers"]["origin"].as_str());
        let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
        let dir = data_dir(&format!("sdk-sample-{name}"));
        let origins = origin.map(|o| format!(", allowed_origins: [\"{o}\"]")).unwrap_or_default();
        let relay = relay(&dir, &fake, &format!("ingestion: {{keys: [{{key: WK_sample_1{origins}}}]}}")).await;
        let client = reqwest::Client::new();
        // The gaps between requests are kept (from their `sentAt`), so the corrected times keep their order.
        let mut previous_sent: Option<i64> = None;
        for request in requests {
            let sent = request["body"]["sentAt"]
                .as_str()
                .or_else(|| request["body"]["batch"][0]["sentAt"].as_str())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(|t| t.as_millisecond());
            if let (Some(before), Some(now)) = (previous_sent, sent) {
                tokio::time::sleep(Duration::from_millis((now - before).clamp(0, 3000) as u64)).await;
            }
            previous_sent = sent.or(previous_sent);
            let method = reqwest::Method::from_bytes(request["method"].as_str().unwrap().as_bytes()).unwrap();
            let path = request["path"].as_str().unwrap();
            let mut call = client.request(method.clone(), format!("http://{}{path}", relay.addr));
            for (header, value) in request["headers"].as_object().unwrap() {
                if !["content-length", "host", "connection"].contains(&header.as_str()) {
                    call = call.header(header, value.as_str().unwrap());
                }
            }
            if method == reqwest::Method::POST {
                let mut body = serde_json::to_vec(&request["body"]).unwrap();
                if request["headers"]["content-encoding"] == "gzip" {
                    use std::io::Write as _;
                    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    encoder.write_all(&body).unwrap();
                    body = encoder.finish().unwrap();
                }
                call = call.body(body);
            }
            let response = call.send().await.unwrap();
            let status = response.status().as_u16();
            if method == reqwest::Method::OPTIONS {
                assert_eq!(status, 204, "{name} {path}");
                let allowed = response.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
                for asked in
                    request["headers"]["access-control-request-headers"].as_str().unwrap_or_default().split(',')
                {
                    assert!(allowed.contains(asked.trim()), "{name}: {asked} not in {allowed}");
                }
                continue;
            }
            if let Some(origin) = origin {
                assert_eq!(response.headers()["access-control-allow-origin"], origin, "{name} {path}");
            }
            let body: Value = response.json().await.unwrap();
            assert_eq!(status, 200, "{name} {path}: {body}");
            assert!(body.get("refused").is_none(), "{name} {path}: {body}");
        }
        let accepted = fake.wait_for(1, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let accepted = if accepted.iter().any(|e| e["type"] == "order_created") { accepted } else { fake.accepted() };
        let order =
            accepted.iter().find(|e| e["type"] == "order_created").unwrap_or_else(|| panic!("{name}: {accepted:#?}"));
        assert_eq!(order["user"]["email"], sha256_hex("jane.doe@example.com"), "{name}: {order}");
        let lag = jiff::Timestamp::now().as_millisecond() - order["timestamp_ms"].as_i64().unwrap();
        assert!((0..120_000).contains(&lag), "{name}: the time, corrected from sentAt, is recent: {lag} ms");
        if name != "python-gzip" {
            assert_eq!(order["oppref"], "clk_browser_42", "{name}");
            assert_eq!(order["user"]["ip_address"], "127.0.0.1", "{name}");
        }
        relay.stop().await;
        std::fs::remove_dir_all(&dir).ok();
    }
}
