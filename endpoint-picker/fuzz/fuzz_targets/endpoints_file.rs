//! `endpoints_file`: see `checks::endpoints_file` for the property (shared with the corpus replay test).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::endpoints_file(data));
