//! `parse_message`: see `checks::parse_message_frames` (shared with the corpus replay test).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::parse_message_frames(data));
