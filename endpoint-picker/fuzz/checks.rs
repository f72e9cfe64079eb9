//! The properties the fuzz targets check, one function per target, over raw bytes.
//!
//! Shared by the `cargo fuzz` targets (`fuzz_targets/*.rs`) and by the corpus replay test
//! (`tests/fuzz_corpus.rs`), so that every corpus file in the repository is checked on every
//! `cargo test`, with no fuzzing toolchain, by the very code the fuzzer runs.
// Each fuzz target uses one of these functions.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::Path;

use kvpick_scheduler::Timestamp;

/// Any bytes as a request body: `parse` returns a request or an error, never panics, a parsed
/// request always has a model, and `parse` (its token-array fast path first) gives exactly what
/// serde_json alone (`parse_reference`) gives: the same request, or the same error. The same bytes
/// as a body of every other API (Responses, Messages, embeddings, an unknown path): a request with
/// a model, nothing to route on but load, or an error; never a panic. A body whose model a rewrite
/// finds is rewritten to exactly the length it announced, names the new model, and parses as the
/// same request under it.
pub fn request_body(body: &[u8]) {
    use kvpick_epp::cluster_policy::body::model;
    use kvpick_epp::request::{Api, parse, parse_for, parse_reference};
    if let Some(found) = model(body) {
        let (to, to_json) = ("to/\"m\"", r#""to/\"m\"""#);
        let out = found.rewrite(body, to_json);
        assert_eq!(out.len(), found.rewritten_len(body.len(), to_json));
        assert_eq!(model(&out).map(|m| m.name).as_deref(), Some(to));
        if let Ok(mut before) = parse(body) {
            before.model = to.into();
            assert_eq!(parse(&out).unwrap(), before);
        }
    }
    match (parse(body), parse_reference(body)) {
        (Ok(fast), Ok(reference)) => {
            assert!(!fast.model.is_empty());
            assert_eq!(fast, reference);
        }
        (Err(fast), Err(reference)) => assert_eq!(fast.to_string(), reference.to_string()),
        (fast, reference) => panic!("fast path {fast:?} vs serde_json {reference:?}"),
    }
    for api in [Api::Responses, Api::Messages, Api::Embeddings, Api::Other] {
        if let Ok(Some(request)) = parse_for(api, body) {
            assert!(!request.model.is_empty(), "{api:?}");
        }
    }
}

/// Any text as a metrics page: the scanner returns, and the signals it gives are in range.
pub fn prometheus_page(data: &[u8]) {
    let Ok(page) = std::str::from_utf8(data) else {
        return;
    };
    let s = kvpick_epp::scrape::prometheus::parse(page).into_signals(Timestamp::ZERO);
    assert!((0.0..=1.0).contains(&s.kv_usage), "kv_usage {}", s.kv_usage);
}

/// Any response body, cut into chunks: the usage scanner returns, and for a body within its cap
/// the usage it finds does not depend on how the body was cut.
///
/// Layout: byte 0 bit 0 says SSE (`text/event-stream`), bit 1 says no content type (sniffed);
/// byte 1 is the chunk length (0: the whole body at once); the rest is the body.
pub fn usage_stream(data: &[u8]) {
    let [flags, chunk, body @ ..] = data else {
        return;
    };
    let content_type = match flags & 3 {
        0 => Some("application/json"),
        1 => Some("text/event-stream"),
        _ => None,
    };
    const CAP: usize = 4096;
    let scan = |chunk: usize| {
        let mut scanner = kvpick_epp::usage::UsageScanner::new(content_type, CAP);
        for piece in body.chunks(chunk.max(1)) {
            scanner.feed(piece);
        }
        scanner.finish()
    };
    let cut = scan(if *chunk == 0 {
        body.len()
    } else {
        usize::from(*chunk)
    });
    if body.len() <= CAP {
        assert_eq!(cut, scan(body.len()), "the cut changed the usage found");
    }
}

/// Any text as an endpoints file: it parses or is rejected with a message, never panics, and a
/// parsed file has unique addresses.
pub fn endpoints_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = kvpick_epp::discovery::file::parse(Path::new("fuzz.yaml"), text) {
        let unique: HashSet<_> = d.endpoints.iter().map(|e| e.address).collect();
        assert_eq!(unique.len(), d.endpoints.len());
    }
}
