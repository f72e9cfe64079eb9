//! The latency model: a candidate's predicted TTFT and TPOT for one request, from its in-flight
//! load ([`crate::inflight`]), its last scrape and the engine profile ([`crate::profile`]).
//!
//! vLLM's V1 scheduler runs the decoding batch first and fills the rest of each step's token
//! budget (`max_num_batched_tokens`) with prefill chunks, first come first served. So the request's
//! first token comes once the prefill work queued ahead of it *and* its own uncached tokens are
//! computed, in steps that each also carry the decode batch:
//!
//! ```text
//! ahead  = reserved uncached tokens not yet prefilled (the oldest one's share done taken off:
//!          the time it has had over its predicted prefill time, attention included)
//!        + external waiting requests × a typical uncached prompt
//! work   = ahead + this request's uncached tokens there (prompt − tier-weighted cached)
//! chunk  = max_num_batched_tokens − decoding sequences
//! TTFT   = ⌈work / chunk⌉ · (overhead + per_decode_seq·decoding + per_context_token·Σ context)
//!        + per_prefill_token · work + per_attention_pair · (its own attention pairs)
//!        + preemption: KV tokens demanded beyond the cache, recomputed
//!        + slot wait: with max_num_seqs taken (decoding + requests ahead), the steps until
//!          enough sequences finish (a full batch finishes one per output/max_num_seqs steps)
//! TPOT   = overhead + per_decode_seq·(decoding + 1) + per_context_token·(Σ context + its own)
//!        + the prefill work queued there spread over its decode
//! cost   = TTFT + own prefill · (arrivals there per second) · TTFT
//! ```
//!
//! The profile's `frontend_us` (the server's own time around the engine) is added to the TTFT
//! the client sees, and to the cost once: it does not hold up later arrivals at the engine.
//!
//! The cost is what the scorer ranks by: on an idle pool it is the TTFT, and as queues build it
//! charges a cache miss for the wait it adds to every later arrival at that endpoint (greedy
//! TTFT alone trades hits for balance under overload, and the queues then grow faster).
//!
//! Deliberately simple and cheap (a few flops per candidate): the point is to see what was just
//! sent, price a cache hit in time rather than as a unitless share, and stay calibratable.

use std::time::Duration;

use crate::inflight::{Cost, EndpointLoad};
use crate::pods::PodSignals;
use crate::profile::EngineProfile;

/// A candidate's predicted latencies for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Prediction {
    /// Time to first token, µs.
    pub ttft_us: f64,
    /// Time per output token after the first, µs.
    pub tpot_us: f64,
    /// Of the TTFT, the time its own uncached prefill takes there, µs: the work it adds to the
    /// endpoint, which every later arrival there waits for too.
    pub prefill_us: f64,
    /// What sending it there costs everyone, µs: its TTFT plus the delay its prefill imposes on
    /// the requests expected to arrive there while it waits (`prefill × arrivals/s × TTFT`).
    pub cost_us: f64,
}

impl Prediction {
    /// TTFT as a duration.
    pub fn ttft(&self) -> Duration {
        Duration::from_secs_f64(self.ttft_us.max(0.0) / 1e6)
    }

    /// TPOT as a duration.
    pub fn tpot(&self) -> Duration {
        Duration::from_secs_f64(self.tpot_us.max(0.0) / 1e6)
    }
}

/// Predicts latencies from an engine profile.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyModel {
    profile: EngineProfile,
}

impl LatencyModel {
    /// A model of engines running `profile`.
    pub fn new(profile: EngineProfile) -> Self {
        Self { profile }
    }

    /// The profile it prices with.
    pub fn profile(&self) -> &EngineProfile {
        &self.profile
    }

    /// The prediction for a request costing `cost` on an endpoint with `load` (whose last scrape
    /// is `signals`) that receives `arrivals` requests per second.
    pub fn predict(
        &self,
        cost: &Cost,
        load: &EndpointLoad,
        signals: &PodSignals,
        arrivals: f64,
    ) -> Prediction {
        let p = &self.profile;
        let t = &p.step_time;
        let decoding = f64::from(load.decode_requests) + f64::from(load.external_running);
        let context = load.decode_context as f64
            + f64::from(load.external_running) * load.typical_context as f64;
        let budget = f64::from(p.max_num_batched_tokens);
        let chunk = (budget - decoding).max(budget / 16.0).max(1.0);
        let fixed =
            t.overhead_us + t.per_decode_seq_us * decoding + t.per_context_token_us * context;
        // Computing `tokens` prefill tokens with `pairs` attention pairs there, in chunks.
        let prefill_time = |tokens: f64, pairs: f64| {
            (tokens / chunk).ceil() * fixed
                + t.per_prefill_token_us * tokens
                + t.per_attention_pair_us * pairs
        };
        // Prefill work ahead: the oldest reservation has been computing for `head_elapsed`, so
        // that share of its predicted time is done. Its attention counts here: a 40k-token
        // prompt's is a quarter of its prefill, and counting tokens alone called it done early
        // (Mooncake synthetic: short requests sent to pods still mid-prefill). The attention of
        // the rest of the queue is left out on purpose: adding it tipped one llm-d seed into a
        // preemption storm (TTFT p90 135 s instead of 12 s, hit rate 95.5% instead of 97.2%).
        let (head_tokens, head_pairs) = (load.head_tokens as f64, load.head_pairs as f64);
        let head_time = prefill_time(head_tokens, head_pairs);
        let gone = if head_time > 0.0 {
            (load.head_elapsed.as_secs_f64() * 1e6 / head_time).min(1.0)
        } else {
            0.0
        };
        let external = f64::from(load.external_waiting);
        let typical = load.typical_uncached as f64;
        let ahead = (load.prefill_tokens as f64 - gone * head_tokens).max(0.0) + external * typical;
        let own = f64::from(cost.uncached_tokens());
        let own_pairs = cost.attention_pairs() as f64;
        let work = ahead + own;
        let mut ttft = prefill_time(work, own_pairs);
        // KV pressure: what does not fit is preempted and recomputed (vLLM's recompute policy).
        // The scrape counts blocks in use; reservations add what they will newly hold (outputs
        // grow over the decode: half on average).
        let capacity = f64::from(p.kv_blocks) * f64::from(p.block_size);
        let scraped = signals.kv_usage.clamp(0.0, 1.0) * capacity;
        let reserved = load.kv_tokens as f64 * 0.5
            + f64::from(load.external_running + load.external_waiting)
                * load.typical_context as f64;
        let demand = reserved.max(scraped) + own + f64::from(cost.output_tokens) / 2.0;
        let overflow = (demand - capacity).max(0.0);
        ttft += t.per_prefill_token_us * overflow;
        // Sequence slots: vLLM schedules at most max_num_seqs sequences, so with the decode
        // batch and the requests ahead filling them this one starts only as sequences finish.
        // Blind to this, the model sent a burst to an engine whose two slots were taken (its
        // queue gauge said 8 waiting) while the other had room.
        let slots = f64::from(p.max_num_seqs.max(1));
        let occupants = decoding + f64::from(load.prefill_requests) + external;
        let excess = (occupants + 1.0 - slots).max(0.0);
        ttft += excess * f64::from(cost.output_tokens.max(1)) / slots * fixed;
        let own_context = f64::from(cost.prompt_tokens) + f64::from(cost.output_tokens) / 2.0;
        let out = f64::from(cost.output_tokens.max(1));
        let tpot = t.overhead_us
            + t.per_decode_seq_us * (decoding + 1.0)
            + t.per_context_token_us * (context + own_context)
            + t.per_prefill_token_us * ahead.min(chunk * out) / out;
        let prefill = own / chunk * fixed
            + t.per_prefill_token_us * own
            + t.per_attention_pair_us * own_pairs;
        Prediction {
            ttft_us: p.frontend_us + ttft,
            tpot_us: tpot,
            prefill_us: prefill,
            cost_us: p.frontend_us + ttft + prefill * arrivals.max(0.0) * ttft / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn model() -> LatencyModel {
        LatencyModel::new(EngineProfile::named("h100-tp2-qwen3-32b").unwrap())
    }

    fn cost(prompt: u32, cached: u32) -> Cost {
        Cost {
            prompt_tokens: prompt,
            cached_tokens: cached,
            output_tokens: 100,
        }
    }

    #[test]
    fn the_frontend_time_is_in_the_ttft_and_once_in_the_cost() {
        let engine_only = model();
        let mut profile = EngineProfile::named("h100-tp2-qwen3-32b").unwrap();
        profile.frontend_us = 12_000.0;
        let with_frontend = LatencyModel::new(profile);
        let idle = PodSignals::idle(Timestamp::ZERO);
        let (c, load) = (cost(4096, 1024), EndpointLoad::default());
        let a = engine_only.predict(&c, &load, &idle, 3.0);
        let b = with_frontend.predict(&c, &load, &idle, 3.0);
        assert!(
            (b.ttft_us - a.ttft_us - 12_000.0).abs() < 1e-6,
            "{a:?} {b:?}"
        );
        assert!(
            (b.cost_us - a.cost_us - 12_000.0).abs() < 1e-6,
            "{a:?} {b:?}"
        );
        assert_eq!((a.tpot_us, a.prefill_us), (b.tpot_us, b.prefill_us));
    }

    #[test]
    fn idle_ttft_is_the_profile_prefill_time() {
        let m = model();
        let idle = PodSignals::idle(Timestamp::ZERO);
        let p = m.predict(&cost(8192, 0), &EndpointLoad::default(), &idle, 0.0);
        // One full step: 10 ms overhead + 8192 × 100 µs + attention pairs.
        let pairs = 8192.0 * 8193.0 / 2.0 * 0.00175;
        assert!(
            (p.ttft_us - (10_000.0 + 819_200.0 + pairs)).abs() < 1.0,
            "{p:?}"
        );
        assert!(
            (p.tpot_us - (10_000.0 + 20.0 + 0.01 * 8242.0)).abs() < 1.0,
            "{p:?}"
        );
    }

    #[test]
    fn cache_hits_queued_work_and_decode_batch_order_candidates() {
        let m = model();
        let idle = PodSignals::idle(Timestamp::ZERO);
        let cold = m.predict(&cost(12_000, 0), &EndpointLoad::default(), &idle, 0.0);
        let warm = m.predict(&cost(12_000, 8_000), &EndpointLoad::default(), &idle, 0.0);
        assert!(warm.ttft_us < cold.ttft_us / 2.0);
        let queued = EndpointLoad {
            prefill_requests: 1,
            prefill_tokens: 12_000,
            head_tokens: 12_000,
            ..EndpointLoad::default()
        };
        let behind = m.predict(&cost(12_000, 8_000), &queued, &idle, 0.0);
        assert!(behind.ttft_us > cold.ttft_us, "{behind:?} vs {cold:?}");
        // Progress on the head shortens the wait, never below the rest of the queue.
        let half = EndpointLoad {
            head_elapsed: Duration::from_millis(600),
            ..queued
        };
        let later = m.predict(&cost(12_000, 8_000), &half, &idle, 0.0);
        assert!(later.ttft_us < behind.ttft_us && later.ttft_us > warm.ttft_us);
        let busy = EndpointLoad {
            decode_requests: 200,
            decode_context: 200 * 7_000,
            ..EndpointLoad::default()
        };
        let slow = m.predict(&cost(12_000, 0), &busy, &idle, 0.0);
        assert!(slow.ttft_us > cold.ttft_us && slow.tpot_us > cold.tpot_us * 1.5);
    }

    #[test]
    fn a_full_batch_makes_the_request_wait_for_a_slot() {
        let mut profile = EngineProfile::named("tiny").unwrap();
        profile.max_num_seqs = 2;
        let m = LatencyModel::new(profile);
        let idle = PodSignals::idle(Timestamp::ZERO);
        let c = Cost {
            prompt_tokens: 96,
            cached_tokens: 0,
            output_tokens: 200,
        };
        let one = EndpointLoad {
            decode_requests: 1,
            decode_context: 200,
            ..EndpointLoad::default()
        };
        let full = EndpointLoad {
            decode_requests: 2,
            decode_context: 400,
            prefill_requests: 2,
            prefill_tokens: 192,
            head_tokens: 96,
            ..EndpointLoad::default()
        };
        let free = m.predict(&c, &one, &idle, 0.0);
        let queued = m.predict(&c, &full, &idle, 0.0);
        // Three sequences must finish first, one per 100 steps of ~5 ms: about 1.5 s.
        assert!(free.ttft_us < 20_000.0, "{free:?}");
        assert!(
            queued.ttft_us > 1.4e6 && queued.ttft_us < 1.7e6,
            "{queued:?}"
        );
    }

    #[test]
    fn kv_overflow_costs_recompute() {
        let m = model();
        let idle = PodSignals::idle(Timestamp::ZERO);
        let full = EndpointLoad {
            kv_tokens: 2 * 307_328,
            ..EndpointLoad::default()
        };
        let roomy = m.predict(&cost(1_000, 0), &EndpointLoad::default(), &idle, 0.0);
        let tight = m.predict(&cost(1_000, 0), &full, &idle, 0.0);
        assert!(tight.ttft_us > roomy.ttft_us + 1_000.0 * 100.0);
    }
}
