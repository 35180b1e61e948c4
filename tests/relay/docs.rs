//! What the README and `relay.example.yaml` say about the relay stays true: the example configurations start a
//! relay, and the metrics the README lists are the ones `/metrics` serves.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use signal_engine::relay::config::RelayConfig;
use signal_engine::relay::start;

use crate::relay::fake_openai::{FakeOpenAi, Scripted};
use crate::relay::process::client;
use crate::relay::{config, data_dir, order, post, API_KEY, PIXEL};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn readme_section() -> String {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("the README");
    let start = readme.find("## Running the relay").expect("the README has a section on running the relay");
    let end = start + 2 + readme[start + 2..].find("\n## ").expect("a section after it");
    readme[start..end].to_string()
}

/// Every environment variable a configuration may name is set, with a value long enough for a key.
fn env(name: &str) -> Option<String> {
    Some(format!("value-of-{name}"))
}

/// Loads `yaml` as if it were a file of the repository root (where relative mapping paths resolve).
fn load_at_root(name: &str, yaml: &str) -> RelayConfig {
    let path = Path::new(ROOT).join(format!(".{name}-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).expect("config written");
    let loaded = RelayConfig::load(&path, &env);
    std::fs::remove_file(&path).ok();
    loaded.unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Starts a relay with `config` on a free port and a fresh data directory, which compiles every pixel's mapping
/// with its parameters, and stops it. Returns the pixels' (name, pixel id).
async fn starts(name: &str, mut config: RelayConfig) -> Vec<(String, String)> {
    let pixels = config.integrations.iter().map(|i| (i.name.clone(), i.pixel_id.clone())).collect();
    let dir = data_dir(name);
    config.listen = "127.0.0.1:0".parse().unwrap();
    if config.admin.listen.is_some() {
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    }
    config.data_dir = dir.join("data");
    let relay = start(config).await.unwrap_or_else(|e| panic!("{name} does not start: {e}"));
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();
    pixels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_example_yaml_starts_with_its_two_pixels() {
    let config = RelayConfig::load(&Path::new(ROOT).join("relay.example.yaml"), &env).unwrap_or_else(|e| panic!("{e}"));
    let pixels: Vec<(&str, &str, bool)> =
        config.integrations.iter().map(|i| (i.name.as_str(), i.pixel_id.as_str(), i.validate_only)).collect();
    assert_eq!(pixels, [("shop", "px_shop_123", false), ("brand", "px_brand_456", true)]);
    assert_eq!(config.integrations[0].params["consent_category"], "advertising");
    assert_eq!(config.ingestion.keys.len(), 2);
    assert!(config.ingestion.keys[1].hmac_secret.is_some());
    assert!(!config.debug && !config.dry_run);
    assert_eq!(config.identity_ttl, Duration::from_secs(90 * 86_400));
    assert_eq!(config.data_dir, Path::new(ROOT).join("relay-data"));
    assert_eq!(starts("relay-example", config).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_relay_yaml_examples_start() {
    let section = readme_section();
    let blocks: Vec<&str> = section.split("```yaml\n").skip(1).map(|b| &b[..b.find("```").unwrap()]).collect();
    assert_eq!(blocks.len(), 4, "a single-pixel and an integrations example, a fleet's store, the console's settings");
    let pixel = |name: &str, id: &str| (name.to_string(), id.to_string());
    assert_eq!(
        starts("readme-single", load_at_root("readme-single", blocks[0])).await,
        [pixel("default", "px_shop_123")]
    );
    assert_eq!(
        starts("readme-integrations", load_at_root("readme-integrations", blocks[1])).await,
        [pixel("shop", "px_shop_123"), pixel("brand", "px_brand_456")]
    );
    let fleet = load_at_root("readme-fleet", &format!("{}{}", blocks[0], blocks[2]));
    match fleet.store {
        signal_engine::relay::config::StoreKind::Postgres { pool_size, lease, .. } => {
            assert_eq!((pool_size, lease), (8, Duration::from_millis(70_000)), "the defaults the README states")
        }
        other => panic!("the fleet's example configures {other:?}"),
    }
    let with_console = load_at_root("readme-console", &format!("{}{}", blocks[0], blocks[3]));
    assert_eq!(with_console.admin.listen, Some("127.0.0.1:8089".parse().unwrap()));
    assert!(with_console.admin.token.is_some(), "the token is read from admin.token_env");
    assert_eq!(starts("readme-console", with_console).await, [pixel("default", "px_shop_123")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_lists_exactly_the_metrics_the_relay_serves() {
    let fake = FakeOpenAi::start(API_KEY, &[PIXEL]).await;
    // One 503 first, so that a retry and the latency of a request are recorded too.
    fake.script([Scripted::Status(503, None)]);
    let dir = data_dir("metrics-doc");
    let relay = start(config(&dir, &fake, "")).await.expect("the relay starts");
    assert_eq!(post(&relay, "/v1/t", &order("metrics-1")).await.0, 200);
    fake.wait_for(1, Duration::from_secs(30)).await;
    // The fake has the event before the relay has heard its answer and counted it (match quality included).
    let metrics =
        || async { client().get(format!("http://{}/metrics", relay.addr)).send().await.unwrap().text().await.unwrap() };
    crate::relay::eventually("the relay counts the delivered event", Duration::from_secs(30), || async {
        metrics().await.contains(r#"signal_relay_events_delivered_total{pixel="default"} 1"#)
    })
    .await;
    let text = metrics().await;
    relay.stop().await;
    std::fs::remove_dir_all(&dir).ok();

    let served: BTreeSet<String> = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap())
        .map(|name| ["_bucket", "_sum", "_count"].iter().fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n)))
        .map(str::to_string)
        .collect();
    let section = readme_section();
    let documented: BTreeSet<String> = section
        .split('`')
        .filter(|word| word.starts_with("signal_relay_") && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(str::to_string)
        .collect();
    assert_eq!(documented, served, "README lists (left) vs /metrics serves (right):\n{text}");
    assert!(text.contains(r#"signal_relay_requests_retried_total{pixel="default",reason="HTTP 503"} 1"#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_integrations_every_event_goes_to_each_pixel_and_validate_only_is_sent_as_configured() {
    let fake = FakeOpenAi::start(API_KEY, &["px_shop", "px_brand"]).await;
    let dir = data_dir("integrations");
    let developer_docs = Path::new(ROOT).join("mappings/openai_ads_developer_docs.map");
    let yaml = [
        "listen: 127.0.0.1:0".to_string(),
        "data_dir: data".to_string(),
        "batch: {linger_ms: 20}".to_string(),
        "integrations:".to_string(),
        format!("  - {{name: shop, pixel_id: px_shop, api_key: {API_KEY}, endpoint: '{}'}}", fake.url),
        format!("  - name: brand\n    pixel_id: px_brand\n    api_key: {API_KEY}\n    endpoint: '{}'", fake.url),
        format!("    mapping: '{}'\n    validate_only: true", developer_docs.display()),
    ]
    .join("\n");
    std::fs::write(dir.join("relay.yaml"), yaml).unwrap();
    let config = RelayConfig::load(&dir.join("relay.yaml"), &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let relay = start(config).await.expect("the relay starts");
    for id in ["two-1", "two-2"] {
        assert_eq!(post(&relay, "/v1/t", &order(id)).await.0, 200);
    }
    let events_to = |pid: &str| -> usize {
        fake.requests().iter().filter(|r| r.pid.as_deref() == Some(pid)).map(|r| r.events).sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while events_to("px_shop") < 2 || events_to("px_brand") < 2 {
        assert!(std::time::Instant::now() < deadline, "not every event reached both pixels: {:?}", fake.requests());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.stop().await;
    assert_eq!((events_to("px_shop"), events_to("px_brand")), (2, 2));
    for request in fake.requests() {
        let brand = request.pid.as_deref() == Some("px_brand");
        assert_eq!(request.validate_only, brand, "validate_only is sent for the brand pixel only");
    }
    // OpenAI records only the shop pixel's events: the brand pixel's were validated, not kept.
    assert_eq!(fake.accepted().len(), 2);
    std::fs::remove_dir_all(&dir).ok();
}
