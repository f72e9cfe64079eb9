//! Any frames: the framing parsers return, never panic; a parsed PUB message's payload and
//! topic go on through the decoder and the topic parser.
#![no_main]

use kvpick_scheduler::events::{Topic, decode_batch, parse_message, parse_replay_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frames: Vec<Vec<u8>>| {
    if let Ok(msg) = parse_message(&frames) {
        let _ = Topic::parse(msg.topic).map(|t| (t.host(), t.port(), t.socket_addr()));
        let _ = decode_batch(msg.payload);
    }
    let _ = parse_replay_reply(&frames);
});
