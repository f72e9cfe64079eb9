//! Flow control in the simulator, under kvpick's default (latency-predicting) profile: a picker
//! config with `featureGates: [flowControl]` holds the backlog in the router instead of on the
//! engines, loses nothing while requests wait within `queueTTL`, refuses (rather than serves
//! late) those that wait past it, and lets the higher priority out first.
#![allow(clippy::unwrap_used)] // a test crate: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use kvpick_scheduler::EndpointPickerConfig;
use kvpick_sim::des::{RunResult, SimConfig};
use kvpick_sim::engine::Profile;
use kvpick_sim::policy::PolicySpec;
use kvpick_sim::trace::Trace;
use kvpick_sim::trace::generate::{Arrivals, RateStage, SharedPrefix};

/// Two engines running two sequences each (~4 requests a second).
fn config() -> SimConfig {
    let mut profile = Profile::named("tiny").unwrap();
    profile.max_num_seqs = 2;
    SimConfig {
        sample_interval_us: 10_000,
        ..common::sim_config(2, profile)
    }
}

/// 80 requests in 2 s.
fn burst() -> Trace {
    SharedPrefix {
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
    .unwrap()
}

/// kvpick's default profile priced with the engines' own profile (as a calibrated deployment
/// runs it), an engine counting as saturated with anything waiting, and `flow` on top.
fn policy(name: &str, flow: &str, cfg: &SimConfig) -> PolicySpec {
    let profile = serde_json::to_string(&cfg.profile).unwrap();
    let yaml = EndpointPickerConfig::DEFAULT_YAML
        .replace(
            "profile: h100-tp2-qwen3-32b",
            &format!("profile: {profile}"),
        )
        .replace("queueDepthThreshold: 5", "queueDepthThreshold: 0");
    PolicySpec::Inline {
        name: name.into(),
        yaml: Arc::from(format!("{yaml}{flow}")),
    }
}

const GATE: &str = "featureGates: [flowControl]\n";

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
    let (trace, cfg) = (burst(), config());
    let policies = [
        policy("legacy", "", &cfg),
        policy(
            "flow",
            &format!("{GATE}flowControl: {{queueTTL: 300s}}\n"),
            &cfg,
        ),
        policy(
            "flow-ttl",
            &format!("{GATE}flowControl: {{queueTTL: 3s}}\n"),
            &cfg,
        ),
    ];
    let (runs, s) = common::compare(&trace, &policies, &cfg);
    let (legacy, flow, ttl) = (&s[0], &s[1], &s[2]);
    let waiting: Vec<u32> = runs.iter().map(most_waiting).collect();
    eprintln!("most waiting on an engine: {waiting:?}");

    // Without flow control the backlog sits on the engines; with it, in the router: the pacer
    // lets out what the scrapes show room for, and the picks put it where that room is (the
    // latency model sees an engine's two sequence slots taken).
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

#[test]
fn the_higher_priority_leaves_the_queue_first() {
    // Every fourth request of the burst is priority 1, the rest 0.
    let (mut trace, cfg) = (burst(), config());
    for (i, r) in trace.requests.iter_mut().enumerate() {
        r.objective.priority = i32::from(i % 4 == 0);
    }
    let policies = [
        policy("legacy", "", &cfg),
        policy(
            "flow",
            &format!("{GATE}flowControl: {{queueTTL: 300s}}\n"),
            &cfg,
        ),
    ];
    let (runs, s) = common::compare(&trace, &policies, &cfg);
    assert!(s.iter().all(|s| s.completed == trace.requests.len()));
    // Mean TTFT of each priority.
    let mean_ttft = |run: &RunResult, priority: i32| {
        let v: Vec<f64> = run
            .records
            .iter()
            .zip(&trace.requests)
            .filter(|(_, t)| t.objective.priority == priority)
            .map(|(r, _)| r.first_token.unwrap().secs_since(r.arrival))
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (legacy, flow) = (&runs[0], &runs[1]);
    let (high, low) = (mean_ttft(flow, 1), mean_ttft(flow, 0));
    eprintln!(
        "mean TTFT, priority 1 vs 0: legacy {:.2} vs {:.2} s, flow {high:.2} vs {low:.2} s",
        mean_ttft(legacy, 1),
        mean_ttft(legacy, 0)
    );
    // The engines serve in arrival order: priorities make no difference there.
    assert!(mean_ttft(legacy, 1) > mean_ttft(legacy, 0) * 0.7);
    // In the router's queue the high band goes first: a fraction of the others' wait.
    assert!(high * 3.0 < low, "{high} vs {low}");
}
