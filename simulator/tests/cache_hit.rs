//! The global prefix-cache analysis against figures computed outside kvpick (the Mooncake paper's,
//! reproduced independently in Python: token-weighted hit Σ min(matched·512, input) / Σ input).
#![allow(clippy::unwrap_used)] // a test crate: a failed unwrap is a failed test

mod common;

use kvpick_sim::cache_hit::analyze;
use kvpick_sim::trace::{self, TraceFormat};

fn check(file: &str, unbounded: f64, lru_3m: f64) {
    let t = trace::load(&common::traces_dir().join(file), TraceFormat::Auto).unwrap();
    let u = analyze(&t, 512, None);
    assert!(u.trace_block_ids);
    assert!(
        (u.hit_rate * 100.0 - unbounded).abs() <= 0.1,
        "{file}: unbounded {:.3}% vs {unbounded}%",
        u.hit_rate * 100.0
    );
    let l = analyze(&t, 512, Some(3_000_000));
    assert!(
        (l.hit_rate * 100.0 - lru_3m).abs() <= 0.1,
        "{file}: 3M-token LRU {:.3}% vs {lru_3m}%",
        l.hit_rate * 100.0
    );
}

#[test]
fn mooncake_conversation_matches_published_hit_rates() {
    check("conversation_trace.jsonl", 37.4, 13.8);
}

#[test]
fn mooncake_synthetic_matches_published_hit_rates() {
    check("synthetic_trace.jsonl", 65.1, 31.5);
}

#[test]
fn token_keys_agree_with_trace_ids() {
    // The same analysis over synthesized tokens (chained keys, partial last blocks keyed by their
    // tokens) gives the same figure as matching the trace's hash ids, on a slice of the trace.
    let mut t = trace::load(
        &common::traces_dir().join("synthetic_trace.jsonl"),
        TraceFormat::Mooncake,
    )
    .unwrap();
    t.limit(300);
    let by_ids = analyze(&t, 512, None);
    t.prefix_block_tokens = None;
    let by_tokens = analyze(&t, 512, None);
    assert!(!by_tokens.trace_block_ids);
    assert!(by_ids.hit_tokens > 0);
    assert_eq!(by_ids.hit_tokens, by_tokens.hit_tokens);
}
