//! splitmix64: a cheap, well-mixed, deterministic stream of 64-bit values. The one copy shared by
//! the pickers' tie-breaks, the simulator's synthetic tokens and the benchmarks' workloads. Not
//! for anything an outsider could exploit by predicting it (it is not keyed).

/// The stream's increment (2^64 divided by the golden ratio).
pub const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output for state `x`: `x + GAMMA`, mixed.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A splitmix64 stream from a seed.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next value.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let out = splitmix64(self.0);
        self.0 = self.0.wrapping_add(GAMMA);
        out
    }

    /// Uniform in (0, 1].
    #[inline]
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_stream() {
        // The reference splitmix64 from seed 1234567 (Vigna's splitmix64.c).
        let mut s = SplitMix64(1_234_567);
        let first: Vec<u64> = (0..3).map(|_| s.next_u64()).collect();
        assert_eq!(
            first,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
    }

    #[test]
    fn units_stay_in_the_half_open_interval() {
        let mut s = SplitMix64(0);
        assert!((0..10_000).map(|_| s.unit()).all(|u| u > 0.0 && u <= 1.0));
    }
}
