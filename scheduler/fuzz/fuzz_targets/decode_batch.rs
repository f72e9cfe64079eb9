//! Any bytes: `decode_batch` returns, never panics, and what it accepts survives a round trip
//! through every layout (compared as bytes, so NaN timestamps compare too).
#![no_main]

use kvpick_scheduler::events::{
    EncodeOptions, Encoding, HashEncoding, decode_batch, encode_batch,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = decode_batch(data) else {
        return;
    };
    for batch_enc in [Encoding::Array, Encoding::Map] {
        for events in [Encoding::Array, Encoding::Map] {
            for hashes in [HashEncoding::Int, HashEncoding::Bytes] {
                let opts = EncodeOptions { batch: batch_enc, events, hashes };
                let once = encode_batch(&batch, opts).expect("a decoded batch encodes");
                let again = decode_batch(&once).expect("an encoded batch decodes");
                let twice = encode_batch(&again, opts).expect("re-encodes");
                assert_eq!(once, twice, "round trip changed the batch ({opts:?})");
            }
        }
    }
});
