//! Flow control in the simulator: a picker config with `featureGates: [flowControl]` holds the
//! backlog in the router instead of on the engines, loses nothing while requests wait within
//! `queueTTL`, and refuses (rather than serves late) those that wait past it.
#![allow(clippy::unwrap_used)] // a test crate: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use kvpick_scheduler::EndpointPickerConfig;
use kvpick_sim::des::{RunResult, SimConfig};
use kvpick_sim::engine::Profile;
use kvpick_sim::policy::PolicySpec;
use kvpick_sim::trace::generate::{Arrivals, RateStage, SharedPrefix};

/// The precise-prefix profile with flow control on top: these figures were set for it. Under the
/// latency-predicting default the same burst leaves up to 8 waiting on one engine (not 3): its
/// picks follow predicted cost, not the queue gauge the pacer's room is computed from.
fn policy(name: &str, flow: &str) -> PolicySpec {
    let yaml = EndpointPickerConfig::PRECISE_PREFIX_YAML
        .replace("queueDepthThreshold: 5", "queueDepthThreshold: 0");
    PolicySpec::Inline {
        name: name.into(),
        yaml: Arc::from(format!("{yaml}{flow}")),
    }
}

/// The most requests any engine had waiting in any timeline sample.
fn most_waiting(run: &RunResult) -> u32 {
    run.timeline
        .iter()
        .flat_map(|s| s.waiting.iter().copied())
        .max()
        .unwrap_or(0)
}

#[test]
fn the_backlog_waits_in_the_router_and_past_the_ttl_is_refused() {
    // 80 requests in 2 s against two engines running two sequences each (~4 a second).
    let trace = SharedPrefix {
        groups: 4,
        users_per_group: 5,
        system_len: 64,
        question_len: 32,
        output_len: 200,
        stages: vec![RateStage {
            rate: 40.0,
            duration_s: 2.0,
        }],
        rate_scale: 1.0,
        arrivals: Arrivals::Constant,
        seed: 3,
    }
    .generate()
    .unwrap();
    let mut profile = Profile::named("tiny").unwrap();
    profile.max_num_seqs = 2;
    let cfg = SimConfig {
        engines: 2,
        profile,
        model: Arc::from("qwen3-32b"),
        metrics_interval_us: 50_000,
        kv_event_latency_us: 1_000,
        sample_interval_us: 10_000,
        seed: 1,
        check_invariants: false,
        replicas: Default::default(),
    };
    let gate = "featureGates: [flowControl]\n";
    let policies = [
        policy("legacy", ""),
        policy("flow", &format!("{gate}flowControl: {{queueTTL: 300s}}\n")),
        policy(
            "flow-ttl",
            &format!("{gate}flowControl: {{queueTTL: 3s}}\n"),
        ),
    ];
    let (runs, s) = common::compare(&trace, &policies, &cfg);
    let (legacy, flow, ttl) = (&s[0], &s[1], &s[2]);
    let waiting: Vec<u32> = runs.iter().map(most_waiting).collect();
    eprintln!("most waiting on an engine: {waiting:?}");

    // Without flow control the backlog sits on the engines; with it, in the router.
    assert!(waiting[0] >= 20, "{waiting:?}");
    assert!(waiting[1] <= 3, "{waiting:?}");
    // Nothing lost while the TTL is long, and the pool finishes the burst as fast.
    assert_eq!(
        (legacy.completed, legacy.rejected),
        (trace.requests.len(), 0)
    );
    assert_eq!((flow.completed, flow.rejected), (trace.requests.len(), 0));
    assert!(
        flow.makespan_s < legacy.makespan_s * 1.05,
        "{} vs {}",
        flow.makespan_s,
        legacy.makespan_s
    );
    // A short TTL refuses those that would have waited longer; every request is accounted for.
    assert!(ttl.rejected > 0);
    assert_eq!(ttl.completed + ttl.rejected, trace.requests.len());
    assert!(ttl.ttft.p99 < flow.ttft.p99);
}
