//! Any response body, cut into any chunks: the usage scanner returns and stays within its cap.
#![no_main]

use kvpick_epp::usage::UsageScanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, Vec<u16>, &[u8])| {
    let (sse, cuts, body) = input;
    let mut scanner = UsageScanner::new(sse.then_some("text/event-stream"), 4096);
    let mut rest = body;
    for cut in cuts {
        let (chunk, tail) = rest.split_at((cut as usize).min(rest.len()));
        scanner.feed(chunk);
        rest = tail;
    }
    scanner.feed(rest);
    let _ = scanner.finish();
});
