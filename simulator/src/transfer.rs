//! What moving a prompt's KV cache from a prefill engine to a decode engine costs (P/D
//! disaggregation: vLLM's NIXL connector pulls the blocks over RDMA before the decode starts).
//!
//! `time = latency + blocks · per_block + tokens · bytes_per_token / bandwidth`: a fixed cost per
//! transfer (the decode side's request to the prefill side and its notification), a cost per
//! block (one descriptor and RDMA read per block and layer group) and the bytes over the link.
//! The defaults are assumptions, not measurements: Qwen3-32B's KV in bf16 (64 layers × 8 KV
//! heads × 128 dimensions × K and V × 2 bytes = 256 KiB a token) over one 400 Gb/s NIC
//! (50 GB/s), 1 ms a transfer, 2 µs a block. Every value is configurable, and both the
//! simulator and the live fleet's decode pods use this model.

use crate::error::SimError;

/// The transfer model's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KvTransfer {
    /// Fixed cost of one transfer, µs.
    pub latency_us: f64,
    /// Cost of each block, µs.
    pub per_block_us: f64,
    /// KV bytes of one token (all layers, K and V).
    pub bytes_per_token: f64,
    /// Link bandwidth, bytes per second.
    pub bandwidth_bytes_per_s: f64,
}

impl Default for KvTransfer {
    fn default() -> Self {
        Self {
            latency_us: 1_000.0,
            per_block_us: 2.0,
            bytes_per_token: 262_144.0,
            bandwidth_bytes_per_s: 50e9,
        }
    }
}

impl KvTransfer {
    /// Checks every value is finite and the bandwidth positive.
    pub fn validate(&self) -> Result<(), SimError> {
        let ok = [self.latency_us, self.per_block_us, self.bytes_per_token]
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0)
            && self.bandwidth_bytes_per_s.is_finite()
            && self.bandwidth_bytes_per_s > 0.0;
        if ok {
            Ok(())
        } else {
            Err(SimError::InvalidConfig(format!(
                "KV transfer: values must be finite and ≥ 0, the bandwidth > 0: {self:?}"
            )))
        }
    }

    /// How long moving `tokens` tokens' KV in blocks of `block_size` takes, µs.
    pub fn time_us(&self, tokens: u32, block_size: u32) -> u64 {
        let blocks = f64::from(tokens.div_ceil(block_size.max(1)));
        let bytes = f64::from(tokens) * self.bytes_per_token;
        let us =
            self.latency_us + blocks * self.per_block_us + bytes / self.bandwidth_bytes_per_s * 1e6;
        us.max(0.0).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_blocks_and_bytes_add_up() {
        let t = KvTransfer::default();
        // 8192 tokens: 1 ms + 512 blocks × 2 µs + 2 GiB / 50 GB/s (42.9 ms).
        let us = t.time_us(8192, 16);
        assert_eq!(
            us,
            (1_000.0 + 1_024.0 + 8192.0 * 262_144.0 / 50e9 * 1e6_f64).round() as u64
        );
        assert!(t.time_us(16, 16) < t.time_us(17, 16));
        assert!(
            KvTransfer {
                bandwidth_bytes_per_s: 0.0,
                ..t
            }
            .validate()
            .is_err()
        );
        assert!(
            KvTransfer {
                latency_us: f64::NAN,
                ..t
            }
            .validate()
            .is_err()
        );
        assert!(t.validate().is_ok());
    }
}
