//! The properties the fuzz targets check, one function per target, over raw bytes.
//!
//! Shared by the `cargo fuzz` targets (`fuzz_targets/*.rs`) and by the corpus replay test
//! (`tests/fuzz_corpus.rs`), so that every corpus file in the repository is checked on every
//! `cargo test`, with no fuzzing toolchain, by the very code the fuzzer runs.
// Each fuzz target uses one of these functions.
#![allow(dead_code)]

use kvpick_scheduler::events::{
    EncodeOptions, Topic, decode_batch, encode_batch, parse_message, parse_replay_reply,
    parse_replay_request,
};

/// Any bytes: `decode_batch` returns, never panics, and what it accepts survives a round trip
/// through every layout (compared as bytes, so NaN timestamps compare too).
pub fn decode_batch_roundtrip(data: &[u8]) {
    let Ok(batch) = decode_batch(data) else {
        return;
    };
    for opts in EncodeOptions::ALL {
        let once = encode_batch(&batch, opts).expect("a decoded batch encodes");
        let again = decode_batch(&once).expect("an encoded batch decodes");
        let twice = encode_batch(&again, opts).expect("re-encodes");
        assert_eq!(once, twice, "round trip changed the batch ({opts:?})");
    }
}

/// Splits fuzz bytes into ZMQ frames: each frame is a 2-byte big-endian length then that many
/// bytes (cut short at the end), so any frame count and any frame contents are reachable.
pub fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [hi, lo, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let (frame, tail) = rest.split_at(len.min(rest.len()));
        out.push(frame);
        data = tail;
    }
    out
}

/// Any frames: the framing parsers return, never panic; a parsed PUB message's payload and topic
/// go on through the decoder and the topic parser.
pub fn parse_message_frames(data: &[u8]) {
    let frames = frames(data);
    if let Ok(msg) = parse_message(&frames) {
        let _ = Topic::parse(msg.topic).map(|t| (t.host(), t.port(), t.socket_addr()));
        let _ = decode_batch(msg.payload);
    }
    let _ = parse_replay_reply(&frames);
    let _ = parse_replay_request(&frames);
}
