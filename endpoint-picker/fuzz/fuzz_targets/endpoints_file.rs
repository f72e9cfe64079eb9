//! Any text as an endpoints file: it parses or is rejected with a message, never panics, and a
//! parsed file has unique addresses.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use kvpick_epp::discovery::file::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(d) = parse(Path::new("fuzz.yaml"), text) {
        let unique: HashSet<_> = d.endpoints.iter().map(|e| e.address).collect();
        assert_eq!(unique.len(), d.endpoints.len());
    }
});
