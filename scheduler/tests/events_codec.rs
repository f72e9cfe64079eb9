//! Properties of the KV-event codec over arbitrary batches and arbitrary bytes. Case counts
//! follow `PROPTEST_CASES` (CI: 2000), default 2048.

mod common;

use kvpick_scheduler::Error;
use kvpick_scheduler::events::{
    EncodeOptions, decode_batch, encode_batch, parse_message, parse_replay_reply,
};
use proptest::prelude::*;

fn options() -> impl Strategy<Value = EncodeOptions> {
    prop::sample::select(&EncodeOptions::ALL[..])
}

/// 2 batch × 2 event × 2 hash encodings make 8 layouts: 8 distinct values are all of them.
#[test]
fn all_layouts_are_the_eight_distinct_ones() {
    let all: std::collections::HashSet<_> = EncodeOptions::ALL.into_iter().collect();
    assert_eq!(all.len(), 8);
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn encode_then_decode_is_identity(batch in common::batch(), opts in options()) {
        let bytes = encode_batch(&batch, opts).expect("encodes");
        prop_assert_eq!(decode_batch(&bytes).expect("decodes"), batch);
    }

    #[test]
    fn every_strict_prefix_is_an_error(batch in common::batch(), opts in options(), cut in any::<prop::sample::Index>()) {
        let bytes = encode_batch(&batch, opts).expect("encodes");
        let cut = cut.index(bytes.len());
        prop_assert!(decode_batch(&bytes[..cut]).is_err(), "prefix of {} / {} bytes decoded", cut, bytes.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_batch(&bytes);
    }

    /// Bytes that start like a batch get much deeper into the decoder than uniform noise.
    #[test]
    fn mutated_batches_never_panic(batch in common::batch(), opts in options(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = encode_batch(&batch, opts).expect("encodes");
        if !bytes.is_empty() {
            for (at, byte) in flips {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
        }
        match decode_batch(&bytes) {
            Ok(_) | Err(Error::MalformedEvent(_) | Error::UnsupportedEvent(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error kind {:?}", other),
        }
    }

    #[test]
    fn frames_never_panic(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 0..6)) {
        let _ = parse_message(&frames);
        let _ = parse_replay_reply(&frames);
    }
}
