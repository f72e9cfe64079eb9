//! How long one engine step takes, as a function of what the batch holds.
//!
//! ```text
//! t = overhead
//!   + per_prefill_token   · (prompt tokens computed this step)
//!   + per_decode_seq      · (sequences decoding one token)
//!   + per_context_token   · Σ context length of decoding sequences     (KV reads)
//!   + per_attention_pair  · Σ over prefill chunks of n·p + n(n+1)/2   (query × key pairs)
//! ```
//!
//! `overhead` is the memory-bound floor of a forward pass (reading the weights once) plus launch and
//! sampling costs; prefill tokens cost GEMM compute; decode sequences cost per-sequence work; decode
//! attention reads the KV of every context token; prefill attention is quadratic in the chunk's
//! position. Coefficients are microseconds. The profiles are estimates from the hardware's roofline,
//! stated as assumptions, and every coefficient can be overridden (`--step-time k=v,...`).
//! The latency predictor ([`crate::latency`]) uses the same formula to price the work it sends.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The coefficients of the step-time formula, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepTimeModel {
    /// Fixed cost of a step.
    pub overhead_us: f64,
    /// Per prompt token computed.
    pub per_prefill_token_us: f64,
    /// Per decoding sequence.
    pub per_decode_seq_us: f64,
    /// Per context token a decoding sequence attends to.
    pub per_context_token_us: f64,
    /// Per (query, key) pair of prefill attention.
    pub per_attention_pair_us: f64,
}

/// What one scheduled batch holds, for the step-time formula.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchShape {
    /// Prompt tokens computed (chunks of prefills, including recompute after preemption).
    pub prefill_tokens: u64,
    /// Sequences decoding one token.
    pub decode_seqs: u64,
    /// Σ context length of the decoding sequences.
    pub decode_context: u64,
    /// Σ over prefill chunks of n tokens starting at position p: n·p + n(n+1)/2.
    pub attention_pairs: u64,
}

impl StepTimeModel {
    /// Duration of a step over `batch`, in whole microseconds (at least 1).
    pub fn step_us(&self, batch: &BatchShape) -> u64 {
        let t = self.overhead_us
            + self.per_prefill_token_us * batch.prefill_tokens as f64
            + self.per_decode_seq_us * batch.decode_seqs as f64
            + self.per_context_token_us * batch.decode_context as f64
            + self.per_attention_pair_us * batch.attention_pairs as f64;
        (t.round() as u64).max(1)
    }

    /// Applies `key=value[,key=value...]` overrides (keys are the field names without `_us`).
    pub fn apply_overrides(&mut self, spec: &str) -> Result<(), Error> {
        for kv in spec.split(',').filter(|s| !s.trim().is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                Error::InvalidConfig(format!("--step-time: expected key=value, got {kv:?}"))
            })?;
            let v: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    Error::InvalidConfig(format!(
                        "--step-time {k}: not a non-negative number: {v:?}"
                    ))
                })?;
            let field = match k.trim().trim_end_matches("_us") {
                "overhead" => &mut self.overhead_us,
                "per_prefill_token" => &mut self.per_prefill_token_us,
                "per_decode_seq" => &mut self.per_decode_seq_us,
                "per_context_token" => &mut self.per_context_token_us,
                "per_attention_pair" => &mut self.per_attention_pair_us,
                other => {
                    return Err(Error::InvalidConfig(format!(
                        "--step-time: unknown coefficient {other:?} (overhead, per_prefill_token, \
                         per_decode_seq, per_context_token, per_attention_pair)"
                    )));
                }
            };
            *field = v;
        }
        Ok(())
    }

    /// Least-squares fit of the coefficients to measured steps `(batch, microseconds)`, e.g. from a
    /// real engine's step log. Coefficients with no signal in the data (all-zero column) stay 0.
    pub fn fit(samples: &[(BatchShape, f64)]) -> Result<Self, Error> {
        const N: usize = 5;
        let row = |b: &BatchShape| {
            [
                1.0,
                b.prefill_tokens as f64,
                b.decode_seqs as f64,
                b.decode_context as f64,
                b.attention_pairs as f64,
            ]
        };
        // Scale columns to unit max so the normal equations stay well conditioned.
        let mut scale = [0.0f64; N];
        for (b, _) in samples {
            for (s, x) in scale.iter_mut().zip(row(b)) {
                *s = s.max(x.abs());
            }
        }
        let mut a = [[0.0f64; N + 1]; N];
        for (b, t) in samples {
            let x = row(b);
            for i in 0..N {
                let xi = if scale[i] > 0.0 { x[i] / scale[i] } else { 0.0 };
                for j in 0..N {
                    let xj = if scale[j] > 0.0 { x[j] / scale[j] } else { 0.0 };
                    a[i][j] += xi * xj;
                }
                a[i][N] += xi * t;
            }
        }
        for (i, s) in scale.iter().enumerate() {
            if *s == 0.0 {
                a[i] = [0.0; N + 1];
                a[i][i] = 1.0;
            }
        }
        let c = solve(a).ok_or_else(|| {
            Error::InvalidConfig("step-time fit: samples do not determine the coefficients".into())
        })?;
        let k = |i: usize| if scale[i] > 0.0 { c[i] / scale[i] } else { 0.0 };
        Ok(Self {
            overhead_us: k(0),
            per_prefill_token_us: k(1),
            per_decode_seq_us: k(2),
            per_context_token_us: k(3),
            per_attention_pair_us: k(4),
        })
    }
}

/// Gauss-Jordan elimination with partial pivoting on an augmented N×(N+1) system (also the
/// calibration fit's solver).
pub fn solve<const N: usize, const M: usize>(mut a: [[f64; M]; N]) -> Option<[f64; N]> {
    for col in 0..N {
        let pivot = (col..N).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        for r in 0..N {
            if r != col {
                let f = a[r][col] / a[col][col];
                let pivot_row = a[col];
                for (x, p) in a[r].iter_mut().zip(pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    let mut x = [0.0; N];
    for (i, xi) in x.iter_mut().enumerate() {
        *xi = a[i][N] / a[i][i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_recovers_coefficients() {
        let truth = StepTimeModel {
            overhead_us: 10_000.0,
            per_prefill_token_us: 60.0,
            per_decode_seq_us: 20.0,
            per_context_token_us: 0.01,
            per_attention_pair_us: 0.0,
        };
        let samples: Vec<_> = (0..50u64)
            .map(|i| {
                let b = BatchShape {
                    prefill_tokens: (i * 37) % 500,
                    decode_seqs: (i * 13) % 64,
                    decode_context: (i * 7919) % 100_000,
                    attention_pairs: 0,
                };
                (b, truth.step_us(&b) as f64)
            })
            .collect();
        let fit = StepTimeModel::fit(&samples).unwrap();
        assert!((fit.overhead_us - truth.overhead_us).abs() < 2.0, "{fit:?}");
        assert!((fit.per_prefill_token_us - 60.0).abs() < 0.01, "{fit:?}");
        assert_eq!(fit.per_attention_pair_us, 0.0);
    }

    #[test]
    fn overrides_name_bad_keys() {
        let mut m = super::super::EngineProfile::named("h100-tp2-qwen3-32b")
            .unwrap()
            .step_time;
        m.apply_overrides("overhead=5000,per_decode_seq_us=1")
            .unwrap();
        assert_eq!((m.overhead_us, m.per_decode_seq_us), (5000.0, 1.0));
        assert!(
            m.apply_overrides("bogus=1")
                .unwrap_err()
                .to_string()
                .contains("bogus")
        );
        assert!(m.apply_overrides("overhead=-1").is_err());
    }
}
