//! `lora-affinity-scorer`: prefer endpoints where the request's LoRA adapter is already resident.
//!
//! Loading an adapter costs time and may evict another, so an endpoint that already runs it is
//! best. The signals are vLLM's `vllm:lora_requests_info` (`running_lora_adapters`,
//! `waiting_lora_adapters`, `max_lora`). Like llm-d's scorer of the same name: adapter running →
//! 1, a free adapter slot → 0.8, otherwise 0. An adapter that is only waiting is as good as
//! running when every active adapter fits in `max_lora` (it will load without evicting anyone);
//! when they do not fit it is queued behind a swap, which llm-d rates 0.6, below a free slot.
//! A request for the endpoint's base model needs no adapter and scores 1.

use super::{ScoreContext, Scorer};
use crate::pods::LoraState;

/// Tunables of [`LoraAffinity`].
#[derive(Clone, Debug, PartialEq)]
pub struct LoraAffinityParams {
    /// Score of an endpoint with a free adapter slot (`freeSlotScore`, default 0.8).
    pub free_slot_score: f64,
    /// Score of an endpoint where the adapter waits for a slot (`waitingScore`, default 0.6).
    pub waiting_score: f64,
}

impl Default for LoraAffinityParams {
    fn default() -> Self {
        Self {
            free_slot_score: 0.8,
            waiting_score: 0.6,
        }
    }
}

/// Scores adapter residency; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct LoraAffinity {
    params: LoraAffinityParams,
}

impl LoraAffinity {
    /// A scorer with `params`.
    pub fn new(params: LoraAffinityParams) -> Self {
        Self { params }
    }

    fn rate(&self, lora: &LoraState, adapter: &str) -> f64 {
        if lora.running.iter().any(|a| a == adapter) {
            1.0
        } else if lora.waiting.iter().any(|a| a == adapter) {
            if distinct_active(lora) <= lora.max_loras as usize {
                1.0
            } else {
                self.params.waiting_score
            }
        } else if lora.has_free_slot() {
            self.params.free_slot_score
        } else {
            0.0
        }
    }
}

impl Scorer for LoraAffinity {
    fn score(&self, ctx: &ScoreContext<'_, '_>, out: &mut [f64]) {
        let model = ctx.request.model;
        for (o, c) in out.iter_mut().zip(ctx.candidates) {
            *o = if *c.endpoint.model == *model {
                1.0
            } else {
                self.rate(&c.signals.lora, model)
            };
        }
    }
}

/// Adapters running or waiting, each counted once (the lists are a handful long: no allocation).
fn distinct_active(lora: &LoraState) -> usize {
    let all = || lora.running.iter().chain(&lora.waiting);
    all()
        .enumerate()
        .filter(|&(i, a)| !all().take(i).any(|b| b == a))
        .count()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{endpoint, run};
    use super::*;
    use crate::pods::PodSignals;
    use crate::request::{Prompt, Request};
    use crate::time::Timestamp;

    fn pod(n: u32, max: u32, running: &[&str], waiting: &[&str]) -> (crate::Endpoint, PodSignals) {
        let mut s = PodSignals::idle(Timestamp::ZERO);
        s.lora = LoraState {
            max_loras: max,
            running: running.iter().map(|a| a.to_string()).collect(),
            waiting: waiting.iter().map(|a| a.to_string()).collect(),
        };
        (endpoint(n), s)
    }

    #[test]
    fn running_beats_free_slot_beats_full() {
        let pods = [
            pod(0, 2, &["x"], &[]),
            pod(1, 2, &["y"], &[]),
            pod(2, 2, &["y", "z"], &[]),
            pod(3, 0, &[], &[]),
        ];
        let req = Request::new("x", Prompt::Empty);
        assert_eq!(
            run(&LoraAffinity::default(), &req, &pods),
            [1.0, 0.8, 0.0, 0.0]
        );
    }

    #[test]
    fn waiting_adapter_scores_one_when_it_fits_else_waiting_score() {
        let pods = [
            pod(0, 2, &["y"], &["x"]),
            pod(1, 2, &["y", "z"], &["x", "y"]),
        ];
        let req = Request::new("x", Prompt::Empty);
        let scorer = LoraAffinity::new(LoraAffinityParams {
            free_slot_score: 0.8,
            waiting_score: 0.3,
        });
        assert_eq!(run(&scorer, &req, &pods), [1.0, 0.3]);
    }

    #[test]
    fn base_model_requests_need_no_adapter() {
        let pods = [pod(0, 1, &["y"], &[]), pod(1, 0, &[], &[])];
        assert_eq!(
            run(
                &LoraAffinity::default(),
                &Request::new("m", Prompt::Empty),
                &pods
            ),
            [1.0, 1.0]
        );
    }

    #[test]
    fn distinct_counts_each_adapter_once() {
        let lora = LoraState {
            max_loras: 4,
            running: vec!["a".into(), "b".into()],
            waiting: vec!["b".into(), "c".into(), "a".into()],
        };
        assert_eq!(distinct_active(&lora), 3);
    }
}
