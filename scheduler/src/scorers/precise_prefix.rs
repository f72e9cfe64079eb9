//! `precise-prefix-cache-scorer`: how much of the prompt each candidate holds, from the KV index
//! built from the candidates' own KV events.
//!
//! Score = tier-weighted matched blocks / full blocks of the prompt ([`PrefixMatch::weighted`]:
//! a GPU hit counts 1, a CPU hit 0.8 by default). Only candidates whose events are `Live` are
//! looked up: the index cannot vouch for a `Stale` or `Absent` endpoint, which scores 0 here (the
//! approximate `prefix-cache-scorer` covers those). A prompt with no full block scores 0 everywhere.
//!
//! [`PrefixMatch::weighted`]: crate::index::PrefixMatch::weighted

use super::{Needs, ScoreContext, Scorer};

/// Reads the index lookup the pipeline made; see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrecisePrefix;

impl Scorer for PrecisePrefix {
    fn needs(&self) -> Needs {
        Needs {
            keys: true,
            lookup: true,
            predict: false,
        }
    }

    fn score(&self, ctx: &ScoreContext<'_, '_>, out: &mut [f64]) {
        out.fill(0.0);
        let total = ctx.matches.total_blocks;
        if total == 0 {
            return;
        }
        for m in &ctx.matches.matches {
            if let Some(i) = ctx.position(m.endpoint) {
                out[i] = (f64::from(m.weighted) / f64::from(total)).clamp(0.0, 1.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::endpoint;
    use super::super::{ScoreContext, positions_of};
    use super::*;
    use crate::index::{PrefixMatch, PrefixMatches};
    use crate::keys::BlockSize;
    use crate::pods::PodSignals;
    use crate::request::{Candidate, EventsState, Prompt, Request};
    use crate::time::Timestamp;

    #[test]
    fn score_is_weighted_matched_over_total() {
        let eps: Vec<_> = (0..3).map(endpoint).collect();
        let signals = PodSignals::idle(Timestamp::ZERO);
        let candidates: Vec<_> = eps
            .iter()
            .map(|endpoint| Candidate {
                endpoint,
                signals: &signals,
                events: EventsState::Live,
            })
            .collect();
        let mut positions = Vec::new();
        positions_of(&candidates, &mut positions);
        let matches = PrefixMatches {
            total_blocks: 8,
            matches: vec![
                PrefixMatch {
                    endpoint: eps[2].id,
                    blocks: 8,
                    weighted: 8.0,
                },
                PrefixMatch {
                    endpoint: eps[0].id,
                    blocks: 5,
                    weighted: 4.0,
                },
            ],
        };
        let req = Request::new("m", Prompt::Empty);
        let ctx = ScoreContext {
            request: &req,
            candidates: &candidates,
            keys: &[],
            block_size: BlockSize::DEFAULT,
            matches: &matches,
            looked_up: true,
            costs: &[],
            predictions: &[],
            positions: &positions,
            now: Timestamp::ZERO,
        };
        let mut out = [f64::NAN; 3];
        PrecisePrefix.score(&ctx, &mut out);
        assert_eq!(out, [0.5, 0.0, 1.0]);

        let empty = PrefixMatches::default();
        let ctx = ScoreContext {
            request: &req,
            candidates: &candidates,
            keys: &[],
            block_size: BlockSize::DEFAULT,
            matches: &empty,
            looked_up: true,
            costs: &[],
            predictions: &[],
            positions: &positions,
            now: Timestamp::ZERO,
        };
        PrecisePrefix.score(&ctx, &mut out);
        assert_eq!(out, [0.0; 3]);
    }
}
