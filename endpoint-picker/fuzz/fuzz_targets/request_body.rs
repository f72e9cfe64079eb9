//! Any bytes as a request body: `parse` returns a request or an error, never panics, and a parsed
//! request always has a model.
#![no_main]

use kvpick_epp::request::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(r) = parse(body) {
        assert!(!r.model.is_empty());
    }
});
