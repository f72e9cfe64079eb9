//! Shared helpers of the integration tests.

use std::path::PathBuf;

/// The shared traces folder: `$KVPICK_TRACES`, else `shared/traces` beside the repository (or
/// beside the worktrees' folder). Panics, naming where it looked, when it is absent: the validation
/// tests must not silently skip.
#[allow(dead_code)]
pub fn traces_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KVPICK_TRACES") {
        return PathBuf::from(dir);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates: Vec<PathBuf> = manifest
        .ancestors()
        .skip(1)
        .take(3)
        .map(|a| a.join("shared/traces"))
        .collect();
    candidates
        .iter()
        .find(|p| p.join("conversation_trace.jsonl").is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!("Mooncake traces not found (set KVPICK_TRACES); looked in {candidates:?}")
        })
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
