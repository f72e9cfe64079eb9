//! The environment, as the binary reads it (clap's own `env`): each case runs `kvpick-epp` with
//! an environment of its own (`env_clear` + the variables), so this test process's environment is
//! never read or changed. Each run stops at argument parsing, on a deliberately bad value.
#![allow(clippy::expect_used)] // test support code outside #[test] fns

use std::process::Command;

/// Runs kvpick-epp with exactly `env` and `args`; returns its stderr (it must fail).
fn fails(env: &[(&str, &str)], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kvpick-epp"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("kvpick-epp runs");
    assert!(!out.status.success(), "{env:?} {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_variable_sets_its_flag() {
    let e = fails(&[("KVPICK_GRPC_PORT", "not-a-port")], &[]);
    assert!(e.contains("not-a-port") && e.contains("--grpc-port"), "{e}");
    let e = fails(&[("KVPICK_REFRESH_METRICS_INTERVAL", "50")], &[]);
    assert!(
        e.contains("--refresh-metrics-interval") && e.contains("unit"),
        "{e}"
    );
}

#[test]
fn a_flag_beats_its_variable() {
    // The variable's bad port is never read: the flag's good one wins, and the run stops on the
    // flag-only mistake instead.
    let e = fails(
        &[("KVPICK_GRPC_PORT", "not-a-port")],
        &["--grpc-port", "7000", "--refresh-metrics-interval", "50"],
    );
    assert!(!e.contains("not-a-port"), "{e}");
    assert!(e.contains("--refresh-metrics-interval"), "{e}");
}

#[test]
fn switches_take_the_usual_true_and_false_words() {
    // `1`, `yes`, `on`, `true` and their opposites are accepted (the run then stops on the bad
    // port); anything else is refused naming the switch.
    for ok in ["1", "yes", "on", "true", "0", "false"] {
        let e = fails(
            &[
                ("KVPICK_EMIT_SCORES", ok),
                ("KVPICK_GRPC_PORT", "not-a-port"),
            ],
            &[],
        );
        assert!(
            e.contains("--grpc-port") && !e.contains("--emit-scores"),
            "{ok}: {e}"
        );
    }
    let e = fails(&[("KVPICK_EMIT_SCORES", "maybe")], &[]);
    assert!(e.contains("maybe") && e.contains("--emit-scores"), "{e}");
}
