//! Replays every file of the fuzz corpora (`fuzz/corpus/<target>/`) through the property its
//! fuzz target checks (`fuzz/checks.rs`, the same code), so the seeds and every crash ever found
//! and added there are checked on each `cargo test`, with no fuzzing toolchain.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

#[path = "../fuzz/checks.rs"]
mod checks;

#[path = "support/corpus.rs"]
mod corpus;

use std::path::Path;

use corpus::replay;

#[test]
fn decode_batch() {
    replay("decode_batch", checks::decode_batch_roundtrip);
}

#[test]
fn parse_message() {
    replay("parse_message", checks::parse_message_frames);
}

/// The seeds exercise what they are named for: a PUB message and replay replies parse.
#[test]
fn parse_message_seeds_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/parse_message");
    let pub_msg = std::fs::read(dir.join("seed-pub")).unwrap();
    let frames = checks::frames(&pub_msg);
    let msg = kvpick_scheduler::events::parse_message(&frames).unwrap();
    assert_eq!(msg.topic, b"kv@10.0.0.5:8000@my-model");
    assert!(kvpick_scheduler::events::decode_batch(msg.payload).is_ok());
    for name in ["seed-replay-topic", "seed-replay-old", "seed-replay-end"] {
        let data = std::fs::read(dir.join(name)).unwrap();
        kvpick_scheduler::events::parse_replay_reply(&checks::frames(&data))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
