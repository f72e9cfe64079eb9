//! One scheduling profile, built: its filters, weighted scorers and picker, and the ranking it
//! runs over a request's candidates. A scheduler has one (aggregated) or two (P/D: decode, then
//! prefill); they share the index, the in-flight accounting and the latency model.

use std::sync::Arc;

use crate::config::Profile;
use crate::decision::Ranked;
use crate::error::Error;
use crate::filters::{self, FilterSpec};
use crate::index::{KvIndex, PrefixMatches};
use crate::inflight::{Cost, InFlight};
use crate::keys::{BlockKey, block_keys};
use crate::latency::{LatencyModel, Prediction};
use crate::pickers::Picker;
use crate::pods::EndpointSet;
use crate::request::{Candidate, EventsState, Prompt, Request};
use crate::scorers::{Needs, ScoreContext, Scorer, ScorerSpec, positions_of};
use crate::time::Timestamp;

/// What the stage prices a candidate with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// The whole request: prefill there, then decode.
    Whole,
    /// A prefill-only request (P/D's prefill pod): one output token.
    Prefill,
}

/// What the shared parts of the scheduler lend a stage for one ranking.
pub(super) struct Shared<'s> {
    pub index: &'s KvIndex,
    pub inflight: &'s InFlight,
    pub latency: Option<&'s LatencyModel>,
    pub expected_output_tokens: u32,
}

/// A stage's ranking of one request's candidates.
pub(super) struct Ranking {
    pub ranked: Vec<Ranked>,
    pub matched_blocks: u32,
    pub total_blocks: u32,
    /// The primary's cost and prediction.
    pub cost: Cost,
    pub predicted: Option<Prediction>,
    /// Every eligible candidate's prediction, in the order they were scored (for SLO verdicts).
    pub predictions: Vec<Prediction>,
}

/// One profile's plugins.
#[derive(Debug)]
pub(super) struct Stage {
    filters: Vec<FilterSpec>,
    scorers: Vec<Box<dyn Scorer>>,
    weights: Vec<f64>,
    weight_sum: f64,
    pub names: Vec<Arc<str>>,
    picker: Picker,
    pub needs: Needs,
    /// Position of an approximate prefix scorer, whose score is the share of a text prompt the
    /// primary was sent before.
    approx: Option<usize>,
}

impl Stage {
    /// The stage of `profile`; `lookup` forces the index lookup (the P/D decider reads it).
    pub fn new(profile: &Profile, lookup: bool) -> Self {
        let scorers: Vec<Box<dyn Scorer>> =
            profile.scorers.iter().map(|s| s.spec.build()).collect();
        let weights: Vec<f64> = profile.scorers.iter().map(|s| s.weight).collect();
        let forced = Needs {
            keys: lookup,
            lookup,
            predict: false,
        };
        let needs = scorers.iter().fold(forced, |n, s| n.union(s.needs()));
        Self {
            filters: profile.filters.iter().map(|f| f.spec.clone()).collect(),
            weight_sum: weights.iter().sum(),
            weights,
            names: profile
                .scorers
                .iter()
                .map(|s| Arc::from(s.name.as_str()))
                .collect(),
            picker: Picker::new(profile.picker.spec.clone()),
            approx: profile
                .scorers
                .iter()
                .position(|s| matches!(s.spec, ScorerSpec::ApproxPrefix(_))),
            scorers,
            needs,
        }
    }

    /// The share of the prompt an approximate prefix scorer says `ranked` was sent before.
    pub fn approx_share(&self, ranked: &Ranked) -> Option<f64> {
        self.approx.and_then(|i| ranked.scores.get(i).copied())
    }

    /// Forgets what the scorers learnt about `endpoint`.
    pub fn forget(&self, endpoint: crate::pods::EndpointId) {
        for scorer in &self.scorers {
            scorer.forget(endpoint);
        }
    }

    /// Filters, scores and orders `candidates` for `request`; tells learning scorers the primary.
    pub fn rank(
        &self,
        shared: &Shared<'_>,
        side: Side,
        request: &Request<'_>,
        candidates: &[Candidate<'_>],
        staleness: &crate::filters::Staleness,
        now: Timestamp,
    ) -> Result<Ranking, Error> {
        let mut eligible = candidates.to_vec();
        filters::apply(request, &self.filters, &mut eligible)?;
        staleness.apply(&mut eligible, now);
        let mut positions = Vec::new();
        positions_of(&eligible, &mut positions);

        let block_size = shared.index.block_size();
        let (keys, total_blocks) = match request.prompt {
            Prompt::Tokens(tokens) => {
                let total = u32::try_from(block_size.full_blocks(tokens.len())).unwrap_or(u32::MAX);
                let keys: Vec<BlockKey> = if self.needs.keys || self.needs.lookup {
                    block_keys(request.partition().root(), tokens, block_size).collect()
                } else {
                    Vec::new()
                };
                (keys, total)
            }
            Prompt::Text(_) | Prompt::Empty => (Vec::new(), 0),
        };
        let mut matches = PrefixMatches::default();
        if self.needs.lookup && !keys.is_empty() {
            let live: EndpointSet = eligible
                .iter()
                .filter(|c| c.events == EventsState::Live)
                .map(|c| c.endpoint.id)
                .collect();
            if !live.is_empty() {
                shared.index.lookup(&keys, &live, &mut matches);
            }
        }
        let prompt_tokens = prompt_tokens(request);
        let output_tokens = match side {
            Side::Whole => request.max_tokens.unwrap_or(shared.expected_output_tokens),
            Side::Prefill => 1,
        };
        let costs: Vec<Cost> = eligible
            .iter()
            .map(|c| {
                let cached = matches
                    .get(c.endpoint.id)
                    .map_or(0.0, |m| f64::from(m.weighted) * f64::from(block_size.get()));
                Cost {
                    prompt_tokens,
                    cached_tokens: (cached as u32).min(prompt_tokens),
                    output_tokens,
                }
            })
            .collect();
        let predictions: Vec<Prediction> = match shared.latency {
            Some(model) if self.needs.predict => {
                for c in &eligible {
                    shared.inflight.reconcile(c.endpoint.id, c.signals);
                }
                let loads = shared
                    .inflight
                    .loads(eligible.iter().map(|c| c.endpoint.id), now);
                // Arrivals per endpoint: the pool's pick rate spread over the candidates.
                let arrivals =
                    loads.first().map_or(0.0, |l| l.pick_rate) / eligible.len().max(1) as f64;
                eligible
                    .iter()
                    .zip(&costs)
                    .zip(&loads)
                    .map(|((c, cost), load)| model.predict(cost, load, c.signals, arrivals))
                    .collect()
            }
            _ => Vec::new(),
        };
        let ctx = ScoreContext {
            request,
            candidates: &eligible,
            costs: &costs,
            predictions: &predictions,
            keys: &keys,
            block_size,
            matches: &matches,
            looked_up: self.needs.lookup,
            positions: &positions,
            now,
        };

        let n = eligible.len();
        let mut scores = vec![0.0; n * self.scorers.len()];
        let mut totals = vec![0.0; n];
        for ((scorer, &weight), column) in self
            .scorers
            .iter()
            .zip(&self.weights)
            .zip(scores.chunks_exact_mut(n))
        {
            scorer.score(&ctx, column);
            for (total, s) in totals.iter_mut().zip(column.iter_mut()) {
                // A scorer's contract is [0, 1]; hold it to it rather than let NaN rank.
                *s = if s.is_nan() { 0.0 } else { s.clamp(0.0, 1.0) };
                *total += weight * *s;
            }
        }
        if self.weight_sum > 0.0 {
            for t in &mut totals {
                *t /= self.weight_sum;
            }
        }

        let mut order = Vec::with_capacity(n);
        self.picker.rank(&totals, &mut order);
        let ranked: Vec<Ranked> = order
            .iter()
            .map(|&i| Ranked {
                endpoint: eligible[i].endpoint.id,
                score: totals[i],
                scores: scores.iter().skip(i).step_by(n).copied().collect(),
            })
            .collect();
        let (Some(primary), Some(&first)) = (ranked.first().map(|r| r.endpoint), order.first())
        else {
            return Err(Error::NoEndpoint(filters::NO_CANDIDATES));
        };
        for scorer in &self.scorers {
            scorer.observe(&ctx, primary);
        }
        Ok(Ranking {
            matched_blocks: matches
                .matches
                .iter()
                .find(|m| m.endpoint == primary)
                .map_or(0, |m| m.blocks),
            total_blocks,
            ranked,
            cost: costs.get(first).copied().unwrap_or_default(),
            predicted: predictions.get(first).copied(),
            predictions,
        })
    }
}

/// The prompt's length in tokens; an untokenized one at about four characters a token, enough
/// to price it (and llm-d's decider estimates the same way).
pub(super) fn prompt_tokens(request: &Request<'_>) -> u32 {
    match request.prompt {
        Prompt::Tokens(t) => u32::try_from(t.len()).unwrap_or(u32::MAX),
        Prompt::Text(t) => u32::try_from(t.len() / 4).unwrap_or(u32::MAX),
        Prompt::Empty => 0,
    }
}
