//! Deterministic synthetic tokens.
//!
//! A trace that names content instead of carrying tokens (a Mooncake hash id, a generated system
//! prompt) gets, for each content id, an endless stream of token ids: token `i` of stream `id` is
//! `splitmix64(id·φ + i) mod VOCAB`. Equal ids give equal tokens, distinct ids give distinct blocks
//! (with probability 1 − 2⁻⁶⁴ per block key), and a prefix of a stream is the prefix of the stream,
//! so a trailing partial block of a Mooncake request is the start of that hash id's 512 tokens.

use kvpick_scheduler::splitmix::{GAMMA, splitmix64};

/// Vocabulary size the synthetic ids are drawn from (Qwen3's, though any size works).
pub const VOCAB: u32 = 151_936;

/// Token `i` of the stream named `id`.
#[inline]
pub fn token(id: u64, i: u32) -> u32 {
    let r = splitmix64(id.wrapping_mul(GAMMA) ^ i as u64);
    // Multiply-shift maps 32 random bits onto [0, VOCAB) without a division.
    (((r >> 32) * VOCAB as u64) >> 32) as u32
}

/// Appends the first `len` tokens of stream `id` to `out`.
pub fn extend(id: u64, len: u32, out: &mut Vec<u32>) {
    out.extend((0..len).map(|i| token(id, i)));
}

/// A content id derived from a namespace and parts (e.g. `("group", g)`), so that generators never
/// collide with each other or with a trace's own ids.
pub fn content_id(namespace: &str, parts: &[u64]) -> u64 {
    let mut h = xxhash_rust::xxh3::xxh3_64(namespace.as_bytes());
    for &p in parts {
        h = splitmix64(h ^ p);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_prefix_closed_and_distinct() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        extend(7, 512, &mut a);
        extend(7, 100, &mut b);
        assert_eq!(&a[..100], &b[..]);
        let mut c = Vec::new();
        extend(8, 512, &mut c);
        assert_ne!(a, c);
        assert!(a.iter().all(|&t| t < VOCAB));
        assert_ne!(content_id("group", &[1]), content_id("question", &[1]));
    }
}
