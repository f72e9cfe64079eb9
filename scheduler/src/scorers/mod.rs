//! Scorers: each rates every eligible candidate of a request in [0, 1]; the profile's weights
//! combine them.
//!
//! A scorer sees one [`ScoreContext`] per request, which the pipeline fills once and shares: the
//! eligible candidates, the prompt's block keys and the KV-index lookup (computed only when some
//! scorer of the profile asks for them, see [`Needs`]). Scorers that learn from routing history
//! (approximate prefix, session affinity) are told the decision through [`Scorer::observe`].
//!
//! | `type` | Scorer | Score |
//! |---|---|---|
//! | `precise-prefix-cache-scorer` | [`PrecisePrefix`] | tier-weighted matched blocks / blocks, from the KV index |
//! | `prefix-cache-scorer` | [`ApproxPrefix`] | matched blocks / blocks, from what was routed where |
//! | `queue-scorer` | [`QueueDepth`] | min-max of `waiting`, shortest = 1 |
//! | `running-requests-size-scorer` | [`RunningRequests`] | min-max of `running`, fewest = 1 |
//! | `kv-cache-utilization-scorer` | [`KvCacheUtilization`] | 1 − KV usage |
//! | `lora-affinity-scorer` | [`LoraAffinity`] | adapter loaded 1, free slot 0.8, else 0 |
//! | `session-affinity-scorer` | [`SessionAffinity`] | last endpoint of the session 1, else 0 |
//! | `predicted-latency-scorer` | [`PredictedLatency`] | fastest predicted TTFT 1; SLO headroom first when objectives are set |

mod approx_prefix;
mod load;
mod lora;
mod precise_prefix;
mod predicted_latency;
mod session;

use std::fmt;

pub use approx_prefix::{ApproxPrefix, ApproxPrefixParams};
pub use load::{KvCacheUtilization, QueueDepth, RunningRequests};
pub use lora::{LoraAffinity, LoraAffinityParams};
pub use precise_prefix::PrecisePrefix;
pub use predicted_latency::{PredictedLatency, PredictedLatencyParams};
pub use session::{SessionAffinity, SessionAffinityParams};

use crate::index::PrefixMatches;
use crate::inflight::Cost;
use crate::keys::{BlockKey, BlockSize};
use crate::latency::Prediction;
use crate::pods::EndpointId;
use crate::request::{Candidate, Request};
use crate::time::Timestamp;

/// What a scorer needs the pipeline to compute before scoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The prompt's block keys at the index's block size (token prompts only).
    pub keys: bool,
    /// The KV-index lookup of those keys over the `Live` candidates (implies `keys`).
    pub lookup: bool,
    /// Each candidate's cost and predicted latency (implies `lookup`).
    pub predict: bool,
}

impl Needs {
    /// What both `self` and `other` need.
    pub fn union(self, other: Needs) -> Needs {
        Needs {
            keys: self.keys || other.keys,
            lookup: self.lookup || other.lookup,
            predict: self.predict || other.predict,
        }
    }
}

/// Everything a scorer may read about one request, computed once per request.
#[derive(Debug)]
pub struct ScoreContext<'r, 'a> {
    /// The request.
    pub request: &'r Request<'a>,
    /// The candidates that passed the filters; scores are written in this order.
    pub candidates: &'r [Candidate<'a>],
    /// Block keys of a token prompt at `block_size`; empty when not needed or not tokens.
    pub keys: &'r [BlockKey],
    /// The index's block size.
    pub block_size: BlockSize,
    /// The index lookup of `keys` over the `Live` candidates; empty when not needed.
    pub matches: &'r PrefixMatches,
    /// Whether `matches` was computed (some scorer of the profile reads the index).
    pub looked_up: bool,
    /// What the request would cost each candidate (prompt, cached there, output), in
    /// candidate order.
    pub costs: &'r [Cost],
    /// Each candidate's predicted latency, in candidate order; empty unless some scorer needs it.
    pub predictions: &'r [Prediction],
    /// Candidate position by endpoint index (`u32::MAX` where absent), see [`positions_of`].
    pub(crate) positions: &'r [u32],
    /// The time of the decision.
    pub now: Timestamp,
}

impl ScoreContext<'_, '_> {
    /// Where `endpoint` sits in [`ScoreContext::candidates`], if it is one.
    #[inline]
    pub fn position(&self, endpoint: EndpointId) -> Option<usize> {
        match self.positions.get(endpoint.index()) {
            Some(&p) if p != u32::MAX => Some(p as usize),
            _ => None,
        }
    }
}

/// Fills `out` (indexed by endpoint index) with each candidate's position, `u32::MAX` elsewhere.
pub(crate) fn positions_of(candidates: &[Candidate<'_>], out: &mut Vec<u32>) {
    let len = candidates
        .iter()
        .map(|c| c.endpoint.id.index() + 1)
        .max()
        .unwrap_or(0);
    out.clear();
    out.resize(len, u32::MAX);
    for (i, c) in candidates.iter().enumerate() {
        out[c.endpoint.id.index()] = i as u32;
    }
}

/// Rates candidates for a request. Implementations are shared by all requests (`&self`), so
/// any state they learn sits behind a lock and stays bounded.
pub trait Scorer: fmt::Debug + Send + Sync {
    /// What the pipeline must compute for this scorer.
    fn needs(&self) -> Needs {
        Needs::default()
    }

    /// Writes the score in [0, 1] of `ctx.candidates[i]` to `out[i]`.
    fn score(&self, ctx: &ScoreContext<'_, '_>, out: &mut [f64]);

    /// Learns that the request of `ctx` was sent to `chosen`.
    fn observe(&self, _ctx: &ScoreContext<'_, '_>, _chosen: EndpointId) {}

    /// Forgets what it learnt about `endpoint` (the endpoint went away; its id may be reused).
    fn forget(&self, _endpoint: EndpointId) {}
}

/// A scorer as configured: which one, with which parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum ScorerSpec {
    /// `precise-prefix-cache-scorer`.
    PrecisePrefix,
    /// `prefix-cache-scorer`.
    ApproxPrefix(ApproxPrefixParams),
    /// `queue-scorer`.
    QueueDepth,
    /// `running-requests-size-scorer`.
    RunningRequests,
    /// `kv-cache-utilization-scorer`.
    KvCacheUtilization,
    /// `lora-affinity-scorer`.
    LoraAffinity(LoraAffinityParams),
    /// `session-affinity-scorer`.
    SessionAffinity(SessionAffinityParams),
    /// `predicted-latency-scorer`.
    PredictedLatency(Box<PredictedLatencyParams>),
}

impl ScorerSpec {
    /// A fresh scorer (with empty history) for this spec.
    pub fn build(&self) -> Box<dyn Scorer> {
        match self {
            ScorerSpec::PrecisePrefix => Box::new(PrecisePrefix),
            ScorerSpec::ApproxPrefix(p) => Box::new(ApproxPrefix::new(p.clone())),
            ScorerSpec::QueueDepth => Box::new(QueueDepth),
            ScorerSpec::RunningRequests => Box::new(RunningRequests),
            ScorerSpec::KvCacheUtilization => Box::new(KvCacheUtilization),
            ScorerSpec::LoraAffinity(p) => Box::new(LoraAffinity::new(p.clone())),
            ScorerSpec::SessionAffinity(p) => Box::new(SessionAffinity::new(p.clone())),
            ScorerSpec::PredictedLatency(p) => Box::new(PredictedLatency::new((**p).clone())),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builds contexts for scorer unit tests.

    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::pods::{Endpoint, PodSignals};
    use crate::request::{EventsState, Prompt};

    /// An endpoint with id `n`, serving model `m`.
    pub(crate) fn endpoint(n: u32) -> Endpoint {
        Endpoint {
            id: EndpointId::new(n).unwrap(),
            address: SocketAddr::from((Ipv4Addr::new(10, 0, 0, n as u8), 8000)),
            model: "m".into(),
            labels: Default::default(),
            rank: 0,
        }
    }

    /// Runs `scorer` over endpoints/signals pairs for `request` and returns the scores.
    pub(crate) fn run(
        scorer: &dyn Scorer,
        request: &Request<'_>,
        pods: &[(Endpoint, PodSignals)],
    ) -> Vec<f64> {
        let candidates: Vec<Candidate<'_>> = pods
            .iter()
            .map(|(endpoint, signals)| Candidate {
                endpoint,
                signals,
                events: EventsState::Live,
            })
            .collect();
        let mut positions = Vec::new();
        positions_of(&candidates, &mut positions);
        let matches = PrefixMatches::default();
        let ctx = ScoreContext {
            request,
            candidates: &candidates,
            keys: &[],
            block_size: BlockSize::DEFAULT,
            matches: &matches,
            looked_up: false,
            costs: &[],
            predictions: &[],
            positions: &positions,
            now: Timestamp::ZERO,
        };
        let mut out = vec![f64::NAN; candidates.len()];
        scorer.score(&ctx, &mut out);
        out
    }

    /// A request for model `m` with no prompt.
    pub(crate) fn request() -> Request<'static> {
        Request::new("m", Prompt::Empty)
    }
}
