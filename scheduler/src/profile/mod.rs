//! Engine profiles: what a vLLM engine holds and how long its steps take.
//!
//! One type serves the simulator's engines (which step by it), `kvpick-sim calibrate` (which fits
//! it from a pool's Prometheus histograms) and the latency predictor of the picker
//! ([`crate::latency`], which prices the work it routes with it), so the loop "scrape production →
//! calibrate → route with it" runs on one set of numbers.

pub mod fit;
pub mod online;
mod step_time;

use serde::{Deserialize, Serialize};

use crate::error::Error;
pub use step_time::{BatchShape, StepTimeModel, solve};

/// What an engine is and how fast it runs: its vLLM limits and its step-time coefficients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineProfile {
    /// Name, for reports.
    pub name: String,
    /// KV-cache blocks (vLLM's `num_gpu_blocks`).
    pub kv_blocks: u32,
    /// Tokens per block (vLLM's `--block-size`).
    pub block_size: u32,
    /// Tokens computed per step at most (`--max-num-batched-tokens`).
    pub max_num_batched_tokens: u32,
    /// Sequences running at once at most (`--max-num-seqs`).
    pub max_num_seqs: u32,
    /// Longest prompt + output accepted (`--max-model-len`); longer requests are unfit.
    pub max_model_len: u32,
    /// Step durations.
    pub step_time: StepTimeModel,
    /// What a request spends in the server outside the engine's steps, µs: from its arrival at
    /// the HTTP server to the engine's queue (parsing, tokenization, IPC) plus its first token's
    /// way back out (detokenization, streaming). Part of every TTFT and E2E the client sees;
    /// `kvpick-sim calibrate` reads it from vLLM as mean TTFT − queue time − prefill time.
    /// On the tiny CPU model it is ~12 ms, a third of an idle TTFT; 0 when unknown.
    #[serde(default)]
    pub frontend_us: f64,
}

/// Names of the built-in profiles.
pub const PROFILES: [&str; 3] = ["h100-tp2-qwen3-32b", "h200-tp2-qwen3-32b", "tiny"];

impl EngineProfile {
    /// A built-in profile.
    ///
    /// Assumptions (Qwen3-32B: 64 layers, 64 query / 8 KV heads of 128, BF16 → 64 GB of weights and
    /// 256 KiB of KV per token):
    /// - `h100-tp2-qwen3-32b`, llm-d's benchmark pods (2 × H100 80 GB, tensor parallel 2): 307,328
    ///   KV tokens per pod as llm-d's workload notes state; vLLM's H100 defaults
    ///   (`max_num_batched_tokens` 8192, `max_num_seqs` 1024); overhead 10 ms (32 GB of weights per
    ///   GPU at 3.35 TB/s, plus launch), 0.1 ms per prefill token (64 GFLOP/token on 2 GPUs at about
    ///   a third of peak), 20 µs per decoding sequence, 10 ns per context token read (below the
    ///   raw-bandwidth 39 ns: chosen so that ~200 running 7k-token sequences give llm-d's observed
    ///   ~26 ms inter-token latency, 11 ms when nearly idle), 1.75 ns per prefill attention pair
    ///   (2.1 MFLOP each at ~1.2 PFLOP/s). Not measured here: calibrate with `fit-step-time`.
    /// - `h200-tp2-qwen3-32b`: the same model on 2 × H200 141 GB (NVIDIA Dynamo's Mooncake replay):
    ///   ~190 GB of KV = 724,992 tokens, 4.8 TB/s (overhead 7 ms, 7 ns per context token).
    /// - `tiny`: a small, fast engine for tests and quick looks (256 blocks of 16).
    pub fn named(name: &str) -> Option<Self> {
        let qwen_tp2 = StepTimeModel {
            overhead_us: 10_000.0,
            per_prefill_token_us: 100.0,
            per_decode_seq_us: 20.0,
            per_context_token_us: 0.01,
            per_attention_pair_us: 0.00175,
        };
        Some(match name {
            "h100-tp2-qwen3-32b" => Self {
                name: name.into(),
                kv_blocks: 307_328 / 16,
                block_size: 16,
                max_num_batched_tokens: 8192,
                max_num_seqs: 1024,
                max_model_len: 131_072,
                step_time: qwen_tp2,
                frontend_us: 0.0,
            },
            "h200-tp2-qwen3-32b" => Self {
                name: name.into(),
                kv_blocks: 724_992 / 16,
                block_size: 16,
                max_num_batched_tokens: 8192,
                max_num_seqs: 1024,
                max_model_len: 131_072,
                step_time: StepTimeModel {
                    overhead_us: 7_000.0,
                    per_context_token_us: 0.007,
                    ..qwen_tp2
                },
                frontend_us: 0.0,
            },
            "tiny" => Self {
                name: name.into(),
                kv_blocks: 256,
                block_size: 16,
                max_num_batched_tokens: 512,
                max_num_seqs: 16,
                max_model_len: 4096,
                step_time: StepTimeModel {
                    overhead_us: 5_000.0,
                    per_prefill_token_us: 20.0,
                    per_decode_seq_us: 50.0,
                    per_context_token_us: 0.01,
                    per_attention_pair_us: 0.0,
                },
                frontend_us: 0.0,
            },
            _ => return None,
        })
    }

    /// A profile from YAML with the fields of [`EngineProfile`] (a `profile.yaml` written by
    /// `kvpick-sim calibrate`, or a picker config's inline profile), validated.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let p: EngineProfile = serde_saphyr::from_str(text)
            .map_err(|e| Error::InvalidConfig(format!("engine profile: {e}")))?;
        p.validate()?;
        Ok(p)
    }

    /// Checks that the engine can run at all.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::InvalidConfig(format!("profile {}: {m}", self.name)));
        if self.kv_blocks == 0 || self.block_size == 0 {
            return bad("kv_blocks and block_size must be positive");
        }
        if self.max_num_batched_tokens == 0 || self.max_num_seqs == 0 || self.max_model_len == 0 {
            return bad("max_num_batched_tokens, max_num_seqs and max_model_len must be positive");
        }
        if !(self.frontend_us.is_finite() && self.frontend_us >= 0.0) {
            return bad("frontend_us must be a non-negative number of µs");
        }
        Ok(())
    }

    /// KV capacity in tokens.
    pub fn kv_tokens(&self) -> u64 {
        self.kv_blocks as u64 * self.block_size as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = "name: t\nkv_blocks: 8\nblock_size: 16\nmax_num_batched_tokens: 64\n\
        max_num_seqs: 2\nmax_model_len: 128\nstep_time: {overhead_us: 1, per_prefill_token_us: 1,\
        per_decode_seq_us: 1, per_context_token_us: 0, per_attention_pair_us: 0}\n";

    #[test]
    fn frontend_time_defaults_to_zero_and_must_be_a_non_negative_number() {
        assert_eq!(EngineProfile::parse(TINY).unwrap().frontend_us, 0.0);
        let set = EngineProfile::parse(&format!("{TINY}frontend_us: 12000\n")).unwrap();
        assert_eq!(set.frontend_us, 12_000.0);
        let err = EngineProfile::parse(&format!("{TINY}frontend_us: -1\n")).unwrap_err();
        assert!(err.to_string().contains("frontend_us"), "{err}");
    }
}
