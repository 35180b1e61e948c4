//! The relay's `/debug` page in a real browser (headless Chromium): an order that was just sent shows with its id,
//! its mapped payload and OpenAI's answer, with personal data masked. Without Chromium the test says so and passes,
//! unless `CI` is set (`.ci/run` installs Debian's `chromium`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use signal_engine::relay::start;

use crate::relay::fake_openai::FakeOpenAi;
use crate::relay::process::client;
use crate::relay::{config, data_dir, order, post, API_KEY, PIXEL};

/// The first Chromium found on PATH.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|name| {
        Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The DOM of `url` after its scripts ran, as headless Chromium renders it.
async fn rendered_dom(browser: &str, url: &str, scratch: &Path) -> String {
    let profile = scratch.join("chromium-profile");
    let dom_file = scratch.join("dom.html");
    std::fs::create_dir_all(&profile).expect("a profile directory");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&dom_file).expect("a DOM file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("chromium's status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not render {url} within a minute");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "chromium failed on {url}: {status}");
    std::fs::read_to_string(&dom_file).expect("the DOM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_page_shows_an_order_just_sent_with_its_payload_and_openais_answer() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but Chromium is not installed: .ci/run installs Debian's chromium package"
        );
        eprintln!("NOTICE: the /debug page test did not run: Chromium is not installed (apt-get install chromium)");
        return;
    };
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    let dir = data_dir("browser");
    let relay = start(config(&dir, &fake, "")).await.expect("the relay starts");
    assert_eq!(post(&relay, "/v1/t", &order("order-in-browser")).await.0, 200);

    // Once OpenAI's answer is recorded, the page has everything to show.
    let events_url = format!("http://{}/debug/events", relay.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let entries: Value = client().get(&events_url).send().await.unwrap().json().await.unwrap();
        if entries[0]["state"] == "delivered" {
            break;
        }
        assert!(Instant::now() < deadline, "the order was not delivered: {entries}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let dom = rendered_dom(browser, &format!("http://{}/debug", relay.addr), &dir).await;
    let start = dom.find(r#"data-event-id="order-in-browser""#).unwrap_or_else(|| panic!("no such event in\n{dom}"));
    let event = &dom[dom[..start].rfind("<div").unwrap()..];
    let event = &event[..event[4..].find(r#"<div class="event""#).map_or(event.len(), |end| end + 4)];
    assert!(event.contains(r#"data-state="delivered""#), "{event}");
    assert!(event.contains(r#"<code class="event-id">order-in-browser</code>"#), "the id shows: {event}");
    let payload = section(event, "payload");
    for expected in
        [r#""id": "order-in-browser""#, r#""type": "order_created""#, r#""amount": 12999"#, r#""currency": "USD""#]
    {
        assert!(payload.contains(expected), "the mapped payload lacks {expected}: {payload}");
    }
    let delivery = section(event, "delivery");
    assert!(delivery.contains(r#"data-status="202""#), "{delivery}");
    assert!(delivery.contains("HTTP 202 — batch of 1"), "{delivery}");
    assert!(delivery.contains(r#"{"received":1}"#), "OpenAI's answer shows: {delivery}");
    let input = section(event, "input");
    assert!(input.contains("&lt;personal: 18 characters&gt;"), "the email is masked: {input}");
    assert!(!dom.to_lowercase().contains("jane@example.com"), "the raw email never reaches the page");
    assert!(dom.contains(r#"<p id="status">1 event</p>"#), "{dom}");
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// The `<details data-stage="…">` block of one stage of an event.
fn section<'a>(event: &'a str, stage: &str) -> &'a str {
    let marker = format!(r#"data-stage="{stage}""#);
    let start = event.find(&marker).unwrap_or_else(|| panic!("no {stage} stage in {event}"));
    let end = event[start..].find("</details>").map_or(event.len(), |end| start + end);
    &event[start..end]
}
