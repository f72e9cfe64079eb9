//! Several picker replicas behind one gateway (`ReplicaSetup`): each replica sees only its own
//! reservations between scrapes, so N replicas herd onto the pod each of them believes best.
//! On the Mooncake conversation trace (its first 250 requests, 8 engines), eight unshared replicas of the latency-predicting default
//! profile give a TTFT p90 well above one replica's; the gateway's policy spreads requests as it
//! says; a shared index and per-replica indexes fed at the same moment route identically.
#![allow(clippy::unwrap_used)] // a test crate: a failed unwrap is a failed test

mod common;

use std::path::Path;

use kvpick_sim::des::{RunResult, SimConfig, run};
use kvpick_sim::engine::Profile;
use kvpick_sim::policy::PolicySpec;
use kvpick_sim::replicas::{IndexView, ReplicaRouting, ReplicaSetup, ShareSetup};
use kvpick_sim::report::Summary;
use kvpick_sim::trace::{self, Trace, TraceFormat};

fn config(engines: usize, profile: Profile, replicas: ReplicaSetup) -> SimConfig {
    SimConfig {
        replicas,
        ..common::sim_config(engines, profile)
    }
}

fn replicas(count: usize, routing: ReplicaRouting) -> ReplicaSetup {
    ReplicaSetup {
        count,
        routing,
        ..ReplicaSetup::default()
    }
}

fn go(trace: &Trace, policy: &PolicySpec, cfg: &SimConfig) -> (RunResult, Summary) {
    let r = run(trace, policy, cfg, None).unwrap();
    let s = Summary::of(&r);
    assert_eq!(s.completed, s.requests, "{cfg:?}");
    (r, s)
}

/// The first 250 requests of the Mooncake conversation trace.
fn conversation() -> Trace {
    let mut trace = trace::load(
        &common::traces_dir().join("conversation_trace.jsonl"),
        TraceFormat::Auto,
    )
    .unwrap();
    trace.limit(250);
    trace
}

#[test]
fn eight_unshared_replicas_herd_where_one_does_not() {
    let trace = conversation();
    let profile = Profile::named("h100-tp2-qwen3-32b").unwrap();
    let policy = PolicySpec::PredictedLatency;
    let one = go(
        &trace,
        &policy,
        &config(8, profile.clone(), ReplicaSetup::default()),
    );
    let eight = go(
        &trace,
        &policy,
        &config(8, profile, replicas(8, ReplicaRouting::RoundRobin)),
    );
    eprintln!(
        "{}",
        kvpick_sim::report::table::render(&[one.1.clone(), eight.1.clone()])
    );
    // Round robin: 250 requests over 8 replicas, 31 or 32 each.
    assert!(
        (eight.0.routed_per_replica.iter()).all(|&n| n == 31 || n == 32),
        "{:?}",
        eight.0.routed_per_replica
    );
    assert_eq!(one.0.routed_per_replica, [250]);
    let (p1, p8) = (one.1.ttft.p90, eight.1.ttft.p90);
    // Measured: 16.7 s vs 4.6 s.
    assert!(
        p8 > 2.0 * p1,
        "8 replicas' TTFT p90 {p8:.3} s vs one's {p1:.3} s"
    );
}

#[test]
fn two_replicas_sharing_their_in_flight_load_herd_less() {
    let trace = conversation();
    let profile = Profile::named("h100-tp2-qwen3-32b").unwrap();
    let policy = PolicySpec::PredictedLatency;
    let two = |share: Option<ShareSetup>| {
        let setup = ReplicaSetup {
            share,
            ..replicas(2, ReplicaRouting::RoundRobin)
        };
        go(&trace, &policy, &config(8, profile.clone(), setup)).1
    };
    let (apart, shared) = (two(None), two(Some(ShareSetup::default())));
    eprintln!(
        "{}",
        kvpick_sim::report::table::render(&[apart.clone(), shared.clone()])
    );
    // Measured: TTFT p90 8.2 s apart, 6.3 s sharing every 20 ms (one replica: 4.6 s).
    assert!(
        shared.ttft.p90 < 0.9 * apart.ttft.p90,
        "sharing: TTFT p90 {:.3} s, apart {:.3} s",
        shared.ttft.p90,
        apart.ttft.p90
    );
}

#[test]
fn with_arrivals_spread_over_their_second_sharing_replicas_route_as_one() {
    // The trace's timestamps are whole seconds (up to 16 requests on one): read literally, eight
    // replicas each pick for part of a burst at the same instant, and no sharing can show them
    // each other's picks. Spread over their second, as traffic arrives, sharing closes the gap.
    let mut trace = conversation();
    trace.jitter(kvpick_sim::clock::SimTime::from_millis(1_000), 1);
    let profile = Profile::named("h100-tp2-qwen3-32b").unwrap();
    let policy = PolicySpec::PredictedLatency;
    let eight = |share: Option<ShareSetup>| ReplicaSetup {
        share,
        ..replicas(8, ReplicaRouting::RoundRobin)
    };
    let one = go(
        &trace,
        &policy,
        &config(8, profile.clone(), ReplicaSetup::default()),
    )
    .1;
    let apart = go(&trace, &policy, &config(8, profile.clone(), eight(None))).1;
    let shared = go(
        &trace,
        &policy,
        &config(8, profile, eight(Some(ShareSetup::default()))),
    )
    .1;
    eprintln!(
        "{}",
        kvpick_sim::report::table::render(&[one.clone(), apart.clone(), shared.clone()])
    );
    let (p1, pa, ps) = (one.ttft.p90, apart.ttft.p90, shared.ttft.p90);
    assert!(
        ps < pa && ps < 1.25 * p1,
        "TTFT p90: sharing {ps:.3} s, apart {pa:.3} s, one replica {p1:.3} s"
    );
}

#[test]
fn the_gateway_spreads_and_index_views_agree() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/small.jsonl");
    let trace = trace::load(&path, TraceFormat::Auto).unwrap();
    let mut profile = Profile::named("h100-tp2-qwen3-32b").unwrap();
    profile.kv_blocks = 2000;
    let policy = PolicySpec::PrecisePrefix;
    let shared = go(
        &trace,
        &policy,
        &config(4, profile.clone(), replicas(2, ReplicaRouting::Random)),
    );
    let own = ReplicaSetup {
        index: IndexView::PerReplica { skew_us: 0 },
        ..replicas(2, ReplicaRouting::Random)
    };
    let per_replica = go(&trace, &policy, &config(4, profile.clone(), own.clone()));
    // The same events at the same moments: the same picks.
    assert_eq!(
        format!("{:?}", shared.0.records),
        format!("{:?}", per_replica.0.records)
    );
    // Random routing: both replicas get a fair share of the 287 requests.
    let split = &shared.0.routed_per_replica;
    assert_eq!(split.iter().sum::<u64>(), 287);
    assert!(split.iter().all(|&n| (110..=177).contains(&n)), "{split:?}");
    // A lagging replica's index changes what it sees, so its picks.
    let skewed = ReplicaSetup {
        index: IndexView::PerReplica { skew_us: 2_000_000 },
        ..own
    };
    let lagging = go(&trace, &policy, &config(4, profile, skewed));
    assert_ne!(
        format!("{:?}", shared.0.records),
        format!("{:?}", lagging.0.records)
    );
}
