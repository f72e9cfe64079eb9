//! `decode_batch`: see `checks::decode_batch_roundtrip` (shared with the corpus replay test).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::decode_batch_roundtrip(data));
