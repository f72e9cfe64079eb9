//! Replays every file of the fuzz corpora (`fuzz/corpus/<target>/`) through the property its
//! fuzz target checks (`fuzz/checks.rs`, the same code), so the seeds and every crash ever found
//! and added there are checked on each `cargo test`, with no fuzzing toolchain.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

fn replay(target: &str, check: fn(&[u8])) {
    for (path, data) in corpus(target) {
        // Printed before the check so that a panic names its input.
        eprintln!("{target}: {}", path.display());
        check(&data);
    }
}

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
