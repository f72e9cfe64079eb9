//! Hash maps keyed by values that already are uniform hashes (engine block hashes, content ids,
//! seeded token-cache keys): hashing them again with SipHash only costs time.
//!
//! Only for keys an outsider cannot choose: a key that is an unkeyed hash of client input (block
//! keys, session ids) would let a client pick keys that share their low bits and pile them into
//! one bucket; those maps hash with a keyed hasher instead.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Passes a `u64` key (or a `u128` key's low half) through unchanged; other writes are folded in,
/// for completeness.
#[derive(Clone, Copy, Debug, Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= n as u64;
    }
}

/// Builds [`Prehashed`] hashers.
pub type BuildPrehashed = BuildHasherDefault<Prehashed>;

/// A `HashMap` over already-hashed keys.
pub type PrehashedMap<K, V> = HashMap<K, V, BuildPrehashed>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn a_hash_key_is_its_own_hash() {
        let build = BuildPrehashed::default();
        assert_eq!(build.hash_one(0xdead_beef_u64), 0xdead_beef);
        assert_eq!(build.hash_one((7u128 << 64) | 42), 42);
    }
}
