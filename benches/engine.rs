//! Divan benchmarks of each stage on the generated dataset: compiling the default preset, applying it to the
//! events of each route, the NDJSON pipeline (read, map, write) with and without identity memory, and explaining
//! against applying. `cargo bench --bench engine` (events: see `support/dataset.rs`). Read the numbers as ratios
//! between benchmarks of one run: machines here are shared and noisy.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::Write;
use std::sync::OnceLock;

use divan::Bencher;
use signal_engine::identity::MemoryStore;
use signal_engine::{presets, CompileOptions, Context, Outcome, Plan};

// The allocator the `engine` binary ships with (src/main.rs), so that the library costs here what it costs in
// `engine run`, `engine explain` and the relay. glibc's malloc makes explaining, which allocates several times as
// often as applying, about a tenth dearer against applying (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/dataset.rs"]
mod dataset;
use dataset::{events, NOW_MS};

/// Events per benchmark iteration for the pipeline and explain benchmarks.
const SAMPLE: usize = 2_000;

fn main() {
    divan::main();
}

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| presets::OPENAI_ADS.compile(&CompileOptions::default()).plan.expect("the preset compiles"))
}

fn dataset() -> &'static str {
    static EVENTS: OnceLock<String> = OnceLock::new();
    EVENTS.get_or_init(events)
}

/// The dataset's events by what routes them: `page` or a track event's name (the dataset has no identify calls).
fn by_route() -> &'static BTreeMap<String, Vec<&'static str>> {
    static ROUTES: OnceLock<BTreeMap<String, Vec<&'static str>>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let mut routes: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for line in dataset().lines() {
            let event: serde_json::Value = serde_json::from_str(line).expect("valid event");
            let route = match event["type"].as_str() {
                Some("track") => event["event"].as_str().unwrap_or("track").to_string(),
                other => other.unwrap_or("none").to_string(),
            };
            let events = routes.entry(route).or_default();
            if events.len() < SAMPLE {
                events.push(line);
            }
        }
        routes
    })
}

fn sample() -> Vec<&'static str> {
    dataset().lines().take(SAMPLE).collect()
}

#[divan::bench]
fn compile_default_preset() -> Plan {
    presets::OPENAI_ADS.compile(&CompileOptions::default()).plan.expect("the preset compiles")
}

const ROUTES: &[&str] = &[
    "page",
    "Product Viewed",
    "Product Added",
    "Checkout Started",
    "Order Completed",
    "Lead Generated",
    "Signed Up",
    "Trial Started",
    "Subscription Started",
    "Button Clicked",
];

/// One event of a route, stateless; the events of the route are taken in turn.
#[divan::bench(args = ROUTES)]
fn apply_route(bencher: Bencher, route: &str) {
    let events = by_route().get(route).unwrap_or_else(|| panic!("the dataset has {route} events"));
    let plan = plan();
    let mut next = 0;
    bencher.bench_local(|| {
        next = (next + 1) % events.len();
        plan.apply_str(black_box(events[next]), &mut Context::stateless(NOW_MS))
    });
}

/// NDJSON in, NDJSON out, as `engine run` does it, stateless and with identity memory.
#[divan::bench(args = [false, true], counter = divan::counter::ItemsCount::new(SAMPLE))]
fn pipeline(bencher: Bencher, remembering: bool) {
    let events = sample();
    let plan = plan();
    bencher.with_inputs(|| (MemoryStore::default(), Vec::with_capacity(SAMPLE * 600))).bench_local_values(
        |(mut memory, mut out)| {
            for line in &events {
                let mut context =
                    if remembering { Context::with_identity(NOW_MS, &mut memory) } else { Context::stateless(NOW_MS) };
                if let Outcome::Mapped(event) = plan.apply_str(line, &mut context) {
                    out.extend_from_slice(event.json.as_bytes());
                    out.write_all(b"\n").expect("in memory");
                }
            }
            out
        },
    );
}

/// Applying and explaining the same events with identity memory: explaining should cost at most twice applying.
#[divan::bench(args = ["apply", "explain"], counter = divan::counter::ItemsCount::new(SAMPLE))]
fn explain_against_apply(bencher: Bencher, how: &str) {
    let events = sample();
    let plan = plan();
    bencher.with_inputs(MemoryStore::default).bench_local_values(|mut memory| {
        let mut context = Context::with_identity(NOW_MS, &mut memory);
        for line in &events {
            if how == "explain" {
                black_box(signal_engine::explain::explain(plan, line, &mut context));
            } else {
                black_box(plan.apply_str(line, &mut context));
            }
        }
    });
}
