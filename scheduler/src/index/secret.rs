//! The per-process secret that keys where the index puts things.
//!
//! Block keys are unkeyed xxh3 chains and engine hashes come from pods, so anyone who can send
//! KV events (or prompts through a real vLLM) can compute them. Were a record's buckets or an
//! engine hash's home line derived from those values alone, colliding ones could be searched for
//! offline and sent to overfill one bucket pair or one probe run. Both are therefore derived
//! through a keyed mix whose key the binary draws from OS randomness at start-up; the core only
//! takes it as a value (tests and the simulator pass a fixed one). Even so, the tables never
//! rely on it for termination or memory: a record that does not fit is dropped and counted (see
//! `table`).

/// The lane of [`IndexSecret::mix`] for [`IndexSecret::fingerprint`].
const FINGERPRINT: u64 = 0x1f83_d9ab_fb41_bd6b;

/// The key of the index's placement hashes. `Debug` does not print it.
#[derive(Copy, Clone, PartialEq, Eq)]
pub struct IndexSecret([u64; 2]);

impl IndexSecret {
    /// A fixed secret, for tests and the simulator (whose inputs are not adversarial).
    pub const FIXED: IndexSecret = IndexSecret([0x452821e6_38d01377, 0xbe5466cf_34e90c6c]);

    /// A secret from two random words. Draw them from OS randomness in a binary: with a known
    /// secret, colliding keys can be computed. (`new(_, 0)` makes every key collide, which tests
    /// use to drive the overflow paths.)
    pub const fn new(a: u64, b: u64) -> Self {
        Self([a, b])
    }

    /// A secret derived from shared key material (e.g. a Kubernetes Secret every replica of a
    /// pool mounts), so that replicas place blocks alike and one can load another's dump.
    pub fn from_material(material: &[u8]) -> Self {
        let h = xxhash_rust::xxh3::xxh3_128_with_seed(material, 0x6b76_7069_636b_2d69);
        Self([h as u64, (h >> 64) as u64])
    }

    /// A 64-bit check value: two processes compare it to learn whether they share the secret.
    /// It leaves 2^64 candidate secrets for the 128-bit key, so it does not reveal the
    /// placement.
    pub fn fingerprint(&self) -> u64 {
        self.mix(
            self.mix(0x7f4a_7c15_9e37_79b9, FINGERPRINT),
            FINGERPRINT ^ 1,
        )
    }

    /// `x` mixed under the secret, for use `lane` (distinct uses get unrelated outputs).
    #[inline(always)]
    pub(crate) fn mix(&self, x: u64, lane: u64) -> u64 {
        let a = fold(x ^ self.0[0] ^ lane, self.0[1]);
        fold(a ^ 0x243f_6a88_85a3_08d3, 0x9e37_79b9_7f4a_7c15)
    }
}

impl Default for IndexSecret {
    fn default() -> Self {
        Self::FIXED
    }
}

impl std::fmt::Debug for IndexSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexSecret(..)")
    }
}

/// The two halves of the 128-bit product, folded.
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn different_secrets_place_differently_and_debug_hides_them() {
        let (a, b) = (IndexSecret::FIXED, IndexSecret::new(1, 2));
        let differ = (0..64u64).filter(|&x| a.mix(x, 0) != b.mix(x, 0)).count();
        assert_eq!(differ, 64);
        assert_ne!(a.mix(5, 0), a.mix(5, 1));
        assert_eq!(format!("{a:?}"), "IndexSecret(..)");
        // The degenerate secret tests use: everything collides.
        let z = IndexSecret::new(7, 0);
        assert_eq!(z.mix(1, 0), z.mix(2, 0));
    }
}
