//! Whether a request's latency objectives can be met anywhere, and what to do when they cannot.
//!
//! The pick ([`crate::Scheduler::pick`]) says whether any eligible endpoint is predicted to meet
//! the request's objectives ([`SloVerdict`]); [`SloVerdict::action`] turns that and the request's
//! priority into what the caller does, as the Gateway API Inference Extension defines priority:
//! a sheddable request (priority < 0) that cannot meet its objectives is refused at once (it
//! would only load the pool to arrive late); any other (critical) waits in flow control, when it
//! is on, for an endpoint predicted to meet them, at most the queue's TTL
//! ([`crate::FlowConfig::may_wait_for_objective`], [`crate::FlowGate::wait_for_objective`]),
//! and then goes best-effort: to the pick's best endpoint, whatever the prediction. The endpoint
//! picker and the simulator both follow this. The reason is a value the caller puts in its
//! response header and metric label, in the vocabulary of the other drop reasons.

use crate::latency::Prediction;
use crate::request::Slo;

/// Which objective no endpoint is predicted to meet (TTFT is named when both miss).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SloMiss {
    /// Time to first token.
    Ttft,
    /// Time per output token.
    Tpot,
}

impl SloMiss {
    /// Which of `slo`'s objectives `p` misses, if any.
    pub fn of(slo: &Slo, p: &Prediction) -> Option<SloMiss> {
        if slo.ttft.is_some_and(|t| p.ttft() > t) {
            Some(SloMiss::Ttft)
        } else if slo.tpot.is_some_and(|t| p.tpot() > t) {
            Some(SloMiss::Tpot)
        } else {
            None
        }
    }

    /// Every miss, for pre-registering metric labels.
    pub const ALL: [SloMiss; 2] = [SloMiss::Ttft, SloMiss::Tpot];

    /// The reason, for `x-kvpick-drop-reason` and metric labels.
    pub fn reason(self) -> &'static str {
        match self {
            SloMiss::Ttft => "slo-ttft-unattainable",
            SloMiss::Tpot => "slo-tpot-unattainable",
        }
    }
}

/// The pick's view of the request's objectives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SloVerdict {
    /// The request has no objective, or the profile predicts no latency.
    #[default]
    NoObjective,
    /// Some eligible endpoint is predicted to meet every objective.
    Met,
    /// No eligible endpoint is predicted to meet them.
    Unattainable(SloMiss),
}

/// What the caller does with a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SloAction {
    /// Send it to the primary.
    Route,
    /// Let it wait in flow control for a round with room, then pick again.
    Queue(SloMiss),
    /// Refuse it (429) with the miss's reason.
    Shed(SloMiss),
}

impl SloVerdict {
    /// The verdict over every eligible candidate's prediction for a request with `slo`.
    pub fn of(slo: &Slo, predictions: &[Prediction]) -> Self {
        if slo.is_empty() || predictions.is_empty() {
            return SloVerdict::NoObjective;
        }
        let mut first = None;
        for p in predictions {
            match SloMiss::of(slo, p) {
                None => return SloVerdict::Met,
                Some(m) => first = Some(first.map_or(m, |f: SloMiss| f.min(m))),
            }
        }
        first.map_or(SloVerdict::Met, SloVerdict::Unattainable)
    }

    /// What to do with a request of `priority` (negative: sheddable) given this verdict, when it
    /// may still wait for its objectives (`can_queue`: flow control is on and its TTL has not
    /// passed) or not.
    pub fn action(self, priority: i32, can_queue: bool) -> SloAction {
        match self {
            SloVerdict::NoObjective | SloVerdict::Met => SloAction::Route,
            SloVerdict::Unattainable(miss) if priority < 0 => SloAction::Shed(miss),
            SloVerdict::Unattainable(miss) if can_queue => SloAction::Queue(miss),
            SloVerdict::Unattainable(_) => SloAction::Route,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheddable_requests_are_shed_critical_ones_wait_or_go() {
        let miss = SloVerdict::Unattainable(SloMiss::Ttft);
        assert_eq!(miss.action(-1, true), SloAction::Shed(SloMiss::Ttft));
        assert_eq!(miss.action(-1, false), SloAction::Shed(SloMiss::Ttft));
        assert_eq!(miss.action(0, true), SloAction::Queue(SloMiss::Ttft));
        assert_eq!(miss.action(10, false), SloAction::Route);
        for v in [SloVerdict::Met, SloVerdict::NoObjective] {
            assert_eq!(v.action(-5, true), SloAction::Route);
        }
        assert_eq!(SloMiss::Tpot.reason(), "slo-tpot-unattainable");
    }

    #[test]
    fn the_verdict_is_met_when_any_candidate_meets() {
        let ms = |ms: u64| Some(std::time::Duration::from_millis(ms));
        let p = |ttft_ms: f64, tpot_ms: f64| Prediction {
            ttft_us: ttft_ms * 1e3,
            tpot_us: tpot_ms * 1e3,
            ..Prediction::default()
        };
        let slo = Slo {
            ttft: ms(500),
            tpot: ms(50),
        };
        let fast_ttft_slow_tpot = p(100.0, 80.0);
        let slow_ttft = p(900.0, 20.0);
        assert_eq!(
            SloVerdict::of(&slo, &[slow_ttft, p(400.0, 40.0)]),
            SloVerdict::Met
        );
        assert_eq!(
            SloVerdict::of(&slo, &[fast_ttft_slow_tpot]),
            SloVerdict::Unattainable(SloMiss::Tpot)
        );
        // Both kinds of miss: TTFT is named.
        assert_eq!(
            SloVerdict::of(&slo, &[fast_ttft_slow_tpot, slow_ttft]),
            SloVerdict::Unattainable(SloMiss::Ttft)
        );
        assert_eq!(
            SloVerdict::of(&Slo::default(), &[slow_ttft]),
            SloVerdict::NoObjective
        );
        assert_eq!(SloVerdict::of(&slo, &[]), SloVerdict::NoObjective);
    }
}
