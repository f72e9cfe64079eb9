//! Any text as a metrics page: the scanner returns, and the signals it gives are in range.
#![no_main]

use kvpick_epp::scrape::prometheus::parse;
use kvpick_scheduler::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|page: &str| {
    let s = parse(page).into_signals(Timestamp::ZERO);
    assert!((0.0..=1.0).contains(&s.kv_usage));
});
