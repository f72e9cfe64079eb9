//! Shared helpers of the integration tests.

use std::path::PathBuf;
use std::sync::Arc;

use kvpick_sim::des::SimConfig;
use kvpick_sim::engine::Profile;

/// The tests' pool: `engines` engines of `profile` serving `qwen3-32b`, the router's view scraped
/// every 50 ms, KV events 1 ms after their step, no timeline, seed 1, invariants unchecked, one
/// picker replica, aggregated. A test changes what it varies with `..sim_config(engines, profile)`.
#[allow(dead_code)]
pub fn sim_config(engines: usize, profile: Profile) -> SimConfig {
    SimConfig {
        engines,
        profile,
        model: Arc::from("qwen3-32b"),
        metrics_interval_us: 50_000,
        kv_event_latency_us: 1_000,
        sample_interval_us: 0,
        seed: 1,
        check_invariants: false,
        replicas: Default::default(),
        pd: Default::default(),
    }
}

/// The traces folder: `$KVPICK_TRACES`, else the repository's `traces/` (the vendored Mooncake and
/// Azure traces, see `traces/NOTICE.md`). Panics, naming where it looked, when the Mooncake trace is
/// absent: the validation tests must not silently skip.
#[allow(dead_code)]
pub fn traces_dir() -> PathBuf {
    let dir = match std::env::var_os("KVPICK_TRACES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../traces"),
    };
    assert!(
        dir.join("conversation_trace.jsonl").is_file(),
        "Mooncake traces not found in {} (KVPICK_TRACES overrides)",
        dir.display()
    );
    dir
}

/// Runs every policy over `trace` (two threads), prints the comparison table and returns the
/// runs with their summaries, in `policies` order.
#[allow(dead_code)]
pub fn compare(
    trace: &kvpick_sim::trace::Trace,
    policies: &[kvpick_sim::policy::PolicySpec],
    cfg: &kvpick_sim::des::SimConfig,
) -> (
    Vec<kvpick_sim::des::RunResult>,
    Vec<kvpick_sim::report::Summary>,
) {
    let runs: Vec<_> = kvpick_sim::des::run_many(trace, policies, cfg, 2, None)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("run failed: {e}")))
        .collect();
    let summaries: Vec<_> = runs.iter().map(kvpick_sim::report::Summary::of).collect();
    eprintln!("{}", kvpick_sim::report::table::render(&summaries));
    (runs, summaries)
}
