//! What a refit came to: a profile accepted (whole, or with coefficients the windows did not
//! identify kept at their values in use) or rejected, and why; each with its metric label.

use crate::profile::{EngineProfile, StepTimeModel};

/// Why a fit was not used.
#[derive(Clone, Debug, PartialEq)]
pub enum Rejection {
    /// The fit failed (too few or too uniform windows).
    Failed(String),
    /// The windows identify none of the coefficients (see [`Kept`]).
    Unidentified(String),
    /// A coefficient or the fit's quality is out of bounds.
    Implausible(String),
    /// It predicts the held-out windows worse than the starting profile.
    WorseThanStart {
        /// Its held-out RMSE, µs.
        fitted_us: f64,
        /// The starting profile's, µs.
        start_us: f64,
    },
}

impl Rejection {
    /// A metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Failed(_) => "failed",
            Rejection::Unidentified(_) => "unidentified",
            Rejection::Implausible(_) => "implausible",
            Rejection::WorseThanStart { .. } => "worse_than_start",
        }
    }
}

/// A step-time coefficient the online fit may keep at its value in use.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Coefficient {
    /// `overhead_us`.
    Overhead,
    /// `per_prefill_token_us`.
    PerPrefillToken,
    /// `per_decode_seq_us` (with `per_context_token_us`, which the online fit folds into it).
    PerDecodeSeq,
}

impl Coefficient {
    /// In the fit's column order.
    pub const ALL: [Coefficient; 3] = [
        Coefficient::Overhead,
        Coefficient::PerPrefillToken,
        Coefficient::PerDecodeSeq,
    ];

    /// Its name in profiles and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Coefficient::Overhead => "overhead",
            Coefficient::PerPrefillToken => "per_prefill_token",
            Coefficient::PerDecodeSeq => "per_decode_seq",
        }
    }

    /// Its value in `m`, µs.
    pub(super) fn of(self, m: &StepTimeModel) -> f64 {
        match self {
            Coefficient::Overhead => m.overhead_us,
            Coefficient::PerPrefillToken => m.per_prefill_token_us,
            Coefficient::PerDecodeSeq => m.per_decode_seq_us,
        }
    }

    /// `m` with this coefficient as in `kept` (the decode cost with its context cost).
    pub(super) fn keep(self, m: &mut StepTimeModel, kept: &StepTimeModel) {
        match self {
            Coefficient::Overhead => m.overhead_us = kept.overhead_us,
            Coefficient::PerPrefillToken => m.per_prefill_token_us = kept.per_prefill_token_us,
            Coefficient::PerDecodeSeq => {
                m.per_decode_seq_us = kept.per_decode_seq_us;
                m.per_context_token_us = kept.per_context_token_us;
            }
        }
    }
}

/// A coefficient the windows did not identify, kept at its value in use.
#[derive(Clone, Debug, PartialEq)]
pub struct Kept {
    /// Which.
    pub coefficient: Coefficient,
    /// What the fit made of it, µs.
    pub fitted_us: f64,
    /// The fit's estimate over its standard error (0 when fixed at 0).
    pub t: f64,
}

/// What a refit did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The new profile, now current.
    Accepted {
        /// The profile.
        profile: EngineProfile,
        /// Its held-out RMSE, µs.
        fitted_us: f64,
        /// The starting profile's, µs.
        start_us: f64,
        /// Coefficients the windows did not identify, kept at their values in use.
        kept: Vec<Kept>,
    },
    /// Not used; the current profile stays.
    Rejected(Rejection),
}

impl Outcome {
    /// A metric label: `accepted` (every coefficient fitted), `accepted_partial` (some kept at
    /// their values in use, see [`Kept`]), or the rejection's.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted { kept, .. } if kept.is_empty() => "accepted",
            Outcome::Accepted { .. } => "accepted_partial",
            Outcome::Rejected(r) => r.label(),
        }
    }
}
