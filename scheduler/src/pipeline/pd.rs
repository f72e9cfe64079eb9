//! The P/D step after the decode pick: ask the decider, then run the prefill profile.

use super::stage::{Shared, Side, Stage};
use crate::decision::Decision;
use crate::disagg::{Decider, PdOutcome, PrefillPick, combined, decode_cost};
use crate::filters::Staleness;
use crate::request::{Candidate, Prompt, Request};
use crate::time::Timestamp;

/// What the step reads.
pub(super) struct Step<'a> {
    pub main: &'a Stage,
    pub prefill: &'a Stage,
    pub decider: &'a Decider,
    pub shared: &'a Shared<'a>,
    pub staleness: &'a Staleness,
}

impl Step<'_> {
    /// Sets `decision.pd` (and, disaggregated, the decode pod's cost and the end-to-end
    /// prediction) for `request`, whose decode pick `decision` is.
    pub fn run(
        &self,
        request: &Request<'_>,
        candidates: &[Candidate<'_>],
        decision: &mut Decision,
        now: Timestamp,
    ) {
        let Some(primary) = decision.ranked.first() else {
            return;
        };
        let decode_pod = primary.endpoint;
        let prompt = decision.cost.prompt_tokens;
        // What the decode pod holds: the KV index for token prompts; for text, the share an
        // approximate prefix scorer of the decode profile says was sent there (llm-d's source).
        let cached = match request.prompt {
            Prompt::Tokens(_) => decision.cost.cached_tokens,
            Prompt::Text(_) | Prompt::Empty => self.main.approx_share(primary).map_or(0, |share| {
                (share.clamp(0.0, 1.0) * f64::from(prompt)) as u32
            }),
        };
        if !self.decider.disaggregate(prompt, cached) {
            decision.pd = PdOutcome::DecodeOnly;
            return;
        }
        // Prefilling on the decode pod itself would only add a transfer.
        let others: Vec<Candidate<'_>> = candidates
            .iter()
            .filter(|c| c.endpoint.id != decode_pod)
            .copied()
            .collect();
        let ranking = match others.is_empty() {
            true => None,
            false => self
                .prefill
                .rank(
                    self.shared,
                    Side::Prefill,
                    request,
                    &others,
                    self.staleness,
                    now,
                )
                .ok(),
        };
        let Some(r) = ranking else {
            decision.pd = PdOutcome::NoPrefillEndpoint;
            return;
        };
        decision.cost = decode_cost(decision.cost);
        let decode_signals = candidates
            .iter()
            .find(|c| c.endpoint.id == decode_pod)
            .map(|c| c.signals);
        if let (Some(model), Some(signals)) = (self.shared.latency, decode_signals) {
            let load = self.shared.inflight.load(decode_pod, now);
            let decode = model.predict(&decision.cost, &load, signals, 0.0);
            // Priced even when the prefill profile has no latency scorer of its own.
            let prefill = r.predicted.or_else(|| {
                let pod = r.ranked.first()?.endpoint;
                let c = others.iter().find(|c| c.endpoint.id == pod)?;
                let load = self.shared.inflight.load(pod, now);
                Some(model.predict(&r.cost, &load, c.signals, 0.0))
            });
            if let Some(prefill) = prefill {
                decision.predicted = Some(combined(&prefill, &decode));
            }
        }
        decision.pd = PdOutcome::Disaggregated(PrefillPick {
            ranked: r.ranked,
            matched_blocks: r.matched_blocks,
            cost: r.cost,
            predicted: r.predicted,
        });
    }
}
