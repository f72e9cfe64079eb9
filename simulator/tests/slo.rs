//! Latency objectives in the simulator: a trace's per-request objectives and priorities meet the
//! endpoint picker's own verdicts. Under overload, a sheddable request predicted to miss its
//! objectives on every engine is shed (and counted), a critical one never is; with flow control
//! on, a critical one waits for an engine predicted to meet them, then goes best-effort.
#![allow(clippy::unwrap_used)] // a test crate: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use kvpick_scheduler::{EndpointPickerConfig, Slo};
use kvpick_sim::des::{RunResult, SimConfig};
use kvpick_sim::engine::Profile;
use kvpick_sim::policy::PolicySpec;
use kvpick_sim::trace::generate::{Arrivals, RateStage, SharedPrefix};
use kvpick_sim::trace::{Objective, Trace};

/// Two tiny engines, arrivals (30/s) above what they serve, every request with a 200 ms TTFT
/// objective (an idle engine answers in ~10 ms); every other one sheddable.
fn overload() -> (Trace, SimConfig) {
    let mut trace = SharedPrefix {
        groups: 4,
        users_per_group: 5,
        system_len: 64,
        question_len: 32,
        output_len: 100,
        stages: vec![RateStage {
            rate: 30.0,
            duration_s: 3.0,
        }],
        rate_scale: 1.0,
        arrivals: Arrivals::Poisson,
        seed: 5,
    }
    .generate()
    .unwrap();
    for (i, r) in trace.requests.iter_mut().enumerate() {
        r.objective = Objective {
            priority: if i % 2 == 0 { -1 } else { 0 },
            slo: Slo {
                ttft: Some(Duration::from_millis(200)),
                tpot: None,
            },
        };
    }
    let mut profile = Profile::named("tiny").unwrap();
    profile.max_num_seqs = 4;
    (trace, common::sim_config(2, profile))
}

/// kvpick's default profile (the simulator prices it with the engines' profile) plus `extra`.
fn default_with(name: &str, extra: &str, cfg: &SimConfig) -> PolicySpec {
    let profile = serde_json::to_string(&cfg.profile).unwrap();
    let yaml = EndpointPickerConfig::DEFAULT_YAML.replace(
        "profile: h100-tp2-qwen3-32b",
        &format!("profile: {profile}"),
    );
    PolicySpec::Inline {
        name: name.into(),
        yaml: Arc::from(format!("{yaml}{extra}")),
    }
}

fn shed_priorities(trace: &Trace, run: &RunResult) -> (usize, usize) {
    let shed = |sheddable: bool| {
        run.records
            .iter()
            .zip(&trace.requests)
            .filter(|(r, t)| r.shed.is_some() && (t.objective.priority < 0) == sheddable)
            .count()
    };
    (shed(true), shed(false))
}

#[test]
fn the_sheddable_are_shed_when_predicted_to_miss_and_the_critical_wait_or_go() {
    let (trace, cfg) = overload();
    let policies = [
        PolicySpec::PrecisePrefix,
        default_with("kvpick", "", &cfg),
        default_with(
            "kvpick-flow",
            "featureGates: [flowControl]\nflowControl: {queueTTL: 2s}\n",
            &cfg,
        ),
        default_with(
            "kvpick-flow-50ms",
            "featureGates: [flowControl]\nflowControl: {queueTTL: 50ms}\n",
            &cfg,
        ),
    ];
    let (runs, s) = common::compare(&trace, &policies, &cfg);
    let (blind, kvpick, flow, impatient) = (&s[0], &s[1], &s[2], &s[3]);
    let n = trace.requests.len();
    for (run, s) in runs.iter().zip(&s) {
        assert_eq!(
            s.completed + s.shed + s.rejected + s.unfit,
            n,
            "{}",
            s.policy
        );
        let (sheddable, critical) = shed_priorities(&trace, run);
        assert_eq!(critical, 0, "{}: a critical request was shed", s.policy);
        assert_eq!(sheddable, s.shed, "{}", s.policy);
        eprintln!(
            "{}: shed {}, best-effort {}, SLO met {:?}",
            s.policy, s.shed, s.slo_best_effort, s.slo_met
        );
    }
    // Without a latency model there is no verdict: nothing is shed for its objectives (only
    // the legacy rule's sheddable requests while the pool is saturated).
    assert_eq!((blind.shed_slo, blind.slo_best_effort), (0, 0));
    // The default sheds a good share of the sheddable half for their objective (21 of ~35),
    // routes the critical ones predicted to miss anyway (17), and far more of what it serves
    // meets the objective (65% vs 25%).
    assert!(kvpick.shed_slo >= n / 6, "{} of {n}", kvpick.shed_slo);
    assert!(kvpick.slo_best_effort >= 5, "{}", kvpick.slo_best_effort);
    let met = |s: &kvpick_sim::report::Summary| s.slo_met.unwrap();
    assert!(
        met(kvpick) > met(blind) + 0.2,
        "{} vs {}",
        met(kvpick),
        met(blind)
    );
    // With flow control the critical ones wait for an engine predicted to meet the objective
    // instead of going best-effort at once: within a 2 s TTL they all find one (0 of 17 go
    // best-effort), nobody is refused, and what is served meets it at least as often.
    assert_eq!(flow.rejected, 0);
    assert!(
        flow.slo_best_effort * 3 < kvpick.slo_best_effort,
        "{} vs {}",
        flow.slo_best_effort,
        kvpick.slo_best_effort
    );
    assert!(
        met(flow) >= met(kvpick) - 0.02,
        "{} vs {}",
        met(flow),
        met(kvpick)
    );
    // Past a short TTL they go best-effort rather than being refused.
    assert!(impatient.slo_best_effort > flow.slo_best_effort);
    assert_eq!(impatient.completed + impatient.shed, n);
    // The report names them.
    let table = kvpick_sim::report::table::render(&s);
    assert!(
        table.contains("shed") && table.contains("SLO met %"),
        "{table}"
    );
}
