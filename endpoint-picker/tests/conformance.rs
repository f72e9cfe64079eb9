//! The conformance suite (`kvpick-conformance`, black-box: real Envoy, stand-in model servers)
//! against the real `kvpick-epp` binary, with fallbacks listed and its test hooks on: every check
//! passes and none is left not applicable.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;
mod faults_util;

use std::net::SocketAddr;

use faults_util::{Epp, MODEL, free_port, write_endpoints};
use kvpick_conformance::report::Outcome;
use kvpick_conformance::{Target, checks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvpick_epp_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let pods: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let file = dir.path().join("pool.yaml");
    let entries: Vec<serde_json::Value> = pods
        .iter()
        .map(|p| serde_json::json!({"address": p.to_string()}))
        .collect();
    write_endpoints(&file, &entries);
    let epp = Epp::start(
        dir.path(),
        "conformance",
        &file,
        &[
            "--fallbacks",
            "2",
            "--conformance-test-hooks",
            "--trust-priority-header",
        ],
    )
    .await;
    let mut target = Target::new(epp.grpc, epp.health, pods);
    target.model = MODEL.into();
    target.sheddable_header = ("x-kvpick-priority".into(), "-1".into());
    target.fallbacks = true;
    target.test_hooks = true;
    let report = checks::run(&target).await.unwrap();
    eprintln!("{report}");
    assert!(
        report
            .checks
            .iter()
            .all(|(_, outcome)| *outcome == Outcome::Passed),
        "{report}\nkvpick-epp's log:\n{}",
        epp.proc.log()
    );
    assert!(report.checks.len() >= 16, "{report}");
}
