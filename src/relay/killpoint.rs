//! Deliberate crashes for the crash-consistency harness (tests/relay/crash.rs): with `ENGINE_KILL_AT=PHASE:N` in
//! its environment, the relay sends itself SIGKILL the N-th time it reaches the kill point named PHASE, so that a
//! kill lands in a chosen phase (inside the ingestion commit, between a batch's send and its mark-as-delivered,
//! during bisection, …) instead of wherever a timer happens to fall. Without the variable a kill point is one
//! atomic load. Not a setting: nothing but the harness sets it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The kill points, as the harness names them (tests/relay/crash.rs cycles through them in this order).
pub const PHASES: [&str; 8] = [
    "ingest.before_commit",
    "ingest.after_commit",
    "deliver.after_send",
    "deliver.bisect",
    "deliver.dead_letter",
    "deliver.after_settle",
    "deliver.drain",
    "prune",
];

struct Armed {
    phase: String,
    at: u64,
    reached: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("ENGINE_KILL_AT").ok()?;
            let (phase, at) = spec.rsplit_once(':')?;
            let at = at.parse().ok().filter(|&n| n > 0)?;
            PHASES.contains(&phase).then(|| Armed { phase: phase.to_string(), at, reached: AtomicU64::new(0) })
        })
        .as_ref()
}

/// Marks that the relay is at kill point `phase`; dies here if the harness asked for it.
pub(super) fn reached(phase: &'static str) {
    let Some(armed) = armed() else { return };
    if armed.phase != phase || armed.reached.fetch_add(1, Ordering::SeqCst) + 1 != armed.at {
        return;
    }
    eprintln!("kill point {phase}:{}: sending SIGKILL to myself", armed.at);
    // A real SIGKILL, not abort(): no handler, no unwinding, no flush, exactly what an operator's `kill -9` does.
    // The thread that reached the point waits here, so it goes no further while the signal is delivered.
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
    std::process::abort();
}
