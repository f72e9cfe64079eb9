//! `prometheus_page`: see `checks::prometheus_page` for the property (shared with the corpus replay test).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::prometheus_page(data));
