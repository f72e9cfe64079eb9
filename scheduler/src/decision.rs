//! Where a request goes and why: the output of [`crate::Scheduler::pick`].

use crate::disagg::PdOutcome;
use crate::inflight::Cost;
use crate::latency::Prediction;
use crate::pods::EndpointId;
use crate::slo::SloVerdict;

/// One ranked endpoint of a decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Its total: the weighted mean of `scores` (weights from the profile), in [0, 1].
    pub score: f64,
    /// Its score from each scorer, in the order of [`crate::Scheduler::scorer_names`].
    pub scores: Vec<f64>,
}

/// Where to send a request, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Endpoints in order of preference: the first is the primary, the rest are fallbacks.
    pub ranked: Vec<Ranked>,
    /// Consecutive blocks from block 0 of the prompt the primary holds, per the KV index (0 when
    /// no scorer of the profile reads the index, or the primary's events are not `Live`).
    pub matched_blocks: u32,
    /// Full blocks in the prompt at the index's block size (0 for a text or empty prompt).
    pub total_blocks: u32,
    /// What the request is expected to cost the primary, for [`crate::Scheduler::reserve`]
    /// (disaggregated: the prompt arrives cached).
    pub cost: Cost,
    /// The primary's predicted latency (when the profile has a latency scorer); disaggregated,
    /// the prefill pod's then the decode pod's ([`crate::disagg::combined`]).
    pub predicted: Option<Prediction>,
    /// Whether any candidate is predicted to meet the request's objectives: the caller routes,
    /// queues or sheds by it ([`SloVerdict::action`]).
    pub slo: SloVerdict,
    /// Under P/D, whether the prompt is prefilled elsewhere and where ([`crate::disagg`]).
    pub pd: PdOutcome,
}

impl Decision {
    /// The primary endpoint.
    pub fn primary(&self) -> Option<EndpointId> {
        self.ranked.first().map(|r| r.endpoint)
    }
}
