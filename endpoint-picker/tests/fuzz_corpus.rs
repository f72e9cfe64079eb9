//! Replays every file of the fuzz corpora (`fuzz/corpus/<target>/`) through the property its
//! fuzz target checks (`fuzz/checks.rs`, the same code), so the seeds and every crash ever found
//! and added there are checked on each `cargo test`, with no fuzzing toolchain.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

#[path = "../fuzz/checks.rs"]
mod checks;

#[path = "../../scheduler/tests/support/corpus.rs"]
mod corpus;

use corpus::replay;

#[test]
fn request_body() {
    replay("request_body", checks::request_body);
}

#[test]
fn prometheus_page() {
    replay("prometheus_page", checks::prometheus_page);
}

#[test]
fn usage_stream() {
    replay("usage_stream", checks::usage_stream);
}

#[test]
fn endpoints_file() {
    replay("endpoints_file", checks::endpoints_file);
}

#[test]
fn dump_stream() {
    replay("dump_stream", checks::dump_stream);
}
