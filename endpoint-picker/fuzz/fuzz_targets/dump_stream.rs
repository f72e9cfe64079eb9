//! `dump_stream`: see `checks::dump_stream` for the property (shared with the corpus replay test).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::dump_stream(data));
