//! Runs are deterministic for a seed, whatever the number of threads, and the bundled quick-start
//! workload loads and runs under every built-in policy.
#![allow(clippy::unwrap_used)] // a test crate: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::sync::Arc;

use kvpick_sim::des::{SimConfig, run_many};
use kvpick_sim::engine::Profile;
use kvpick_sim::policy::{BUILTIN, PolicySpec};
use kvpick_sim::report::Summary;
use kvpick_sim::trace::{self, TraceFormat};

fn summaries(threads: usize, seed: u64) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/small.jsonl");
    let trace = trace::load(&path, TraceFormat::Auto).unwrap();
    assert!(trace.requests.len() > 200);
    let mut profile = Profile::named("h100-tp2-qwen3-32b").unwrap();
    profile.kv_blocks = 2000;
    let cfg = SimConfig {
        model: Arc::from("m"),
        sample_interval_us: 1_000_000,
        seed,
        ..common::sim_config(4, profile)
    };
    let policies: Vec<PolicySpec> = BUILTIN.iter().map(|p| p.parse().unwrap()).collect();
    run_many(&trace, &policies, &cfg, threads, None)
        .into_iter()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(r.violation, None);
            let s = Summary::of(&r);
            assert_eq!(s.completed, s.requests, "{}", s.policy);
            format!("{s:?} {:?}", r.records)
        })
        .collect()
}

#[test]
fn same_seed_same_results_on_any_thread_count() {
    let a = summaries(1, 7);
    assert_eq!(a, summaries(2, 7));
    assert_ne!(a, summaries(1, 8), "the seed matters (random policy)");
}
