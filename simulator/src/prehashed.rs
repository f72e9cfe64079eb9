//! Hash maps keyed by values that already are uniform 64-bit hashes (engine block hashes, block
//! keys, content ids): hashing them again with SipHash only costs time.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Passes a `u64` key through unchanged (other writes are folded in, for completeness).
#[derive(Clone, Copy, Debug, Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A `HashMap` over already-hashed keys.
pub type PrehashedMap<K, V> = HashMap<K, V, BuildHasherDefault<Prehashed>>;
