//! What a run measures: one record per request, an inter-token-latency histogram, and a timeline.

use kvpick_scheduler::events::EventBatch;
use serde::Serialize;

use crate::clock::SimTime;
use crate::engine::{EngineSink, RequestId};

/// A log-bucketed histogram of microsecond values (≤ 1.6% relative error), for distributions with
/// too many samples to keep (one inter-token gap per generated token).
#[derive(Clone, Debug, Default)]
pub struct LogHistogram {
    counts: Vec<u64>,
    total: u64,
    sum: f64,
}

const SUB: u64 = 64;

impl LogHistogram {
    fn bucket(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as u64; // ≥ 6
        let sub = (v >> (e - 6)) & (SUB - 1);
        (SUB + (e - 6) * SUB + sub) as usize
    }

    fn value(b: usize) -> f64 {
        let b = b as u64;
        if b < SUB {
            return b as f64;
        }
        let e = (b - SUB) / SUB + 6;
        let sub = (b - SUB) % SUB;
        let lo = (SUB + sub) << (e - 6);
        lo as f64 + ((1u64 << (e - 6)) as f64 - 1.0) / 2.0
    }

    /// Adds one value.
    pub fn record(&mut self, v: u64) {
        let b = Self::bucket(v);
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.total += 1;
        self.sum += v as f64;
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &LogHistogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Mean value.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum / self.total as f64
        }
    }

    /// The `q`-quantile (0 ≤ q ≤ 1), or 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(b);
            }
        }
        Self::value(self.counts.len().saturating_sub(1))
    }
}

/// One request's life.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestRecord {
    /// Arrival at the router.
    pub arrival: SimTime,
    /// Engine it was sent to.
    pub engine: u32,
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Output tokens it asked for.
    pub output_target: u32,
    /// First scheduled by its engine.
    pub admitted: Option<SimTime>,
    /// First token.
    pub first_token: Option<SimTime>,
    /// Last token.
    pub finished: Option<SimTime>,
    /// Tokens generated.
    pub output_tokens: u32,
    /// Prompt tokens that hit the engine's prefix cache when first scheduled.
    pub cached_tokens: u32,
    /// Times it was preempted.
    pub preemptions: u32,
    /// Refused: it could never fit an engine.
    pub unfit: bool,
    /// Refused by flow control: the queue was full, or it waited past `queueTTL`.
    pub rejected: bool,
    /// Shed, with the picker's reason: sheddable while the pool was saturated
    /// (`pool-saturated`), or predicted to miss its objectives on every engine
    /// (`slo-ttft-unattainable`, `slo-tpot-unattainable`).
    pub shed: Option<&'static str>,
    /// Routed although no engine was predicted to meet its objectives (a critical request past
    /// its wait, or with flow control off).
    pub slo_best_effort: bool,
    /// Its trace's TTFT objective (µs).
    pub slo_ttft_us: Option<u64>,
    /// Its trace's TPOT objective (µs).
    pub slo_tpot_us: Option<u64>,
    /// When the router picked its engine (later than its arrival when it waited in flow
    /// control): what a predicted TTFT counts from.
    pub routed: Option<SimTime>,
    /// TTFT the router's latency model predicted on the engine it picked (µs), if it has one.
    pub predicted_ttft_us: Option<f64>,
    /// P/D: the engine that prefilled it, when it was disaggregated (`engine` decoded it).
    pub prefill_engine: Option<u32>,
}

impl RequestRecord {
    /// Whether a request whose first token came at `first` and last at `last` met its trace's
    /// objectives.
    pub fn met_slo(&self, first: SimTime, last: SimTime) -> bool {
        let ttft = first.micros().saturating_sub(self.arrival.micros());
        let tpot = last.micros().saturating_sub(first.micros())
            / u64::from(self.output_tokens.saturating_sub(1).max(1));
        self.slo_ttft_us.is_none_or(|t| ttft <= t) && self.slo_tpot_us.is_none_or(|t| tpot <= t)
    }
}

/// One timeline sample.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// When.
    pub t: SimTime,
    /// Waiting requests per engine.
    pub waiting: Vec<u32>,
    /// Running requests per engine.
    pub running: Vec<u32>,
    /// KV usage per engine.
    pub kv_usage: Vec<f64>,
    /// Prompt tokens of the requests first admitted since the previous sample.
    pub admitted_tokens: u64,
    /// Of which hit the prefix cache.
    pub cached_tokens: u64,
}

/// The engines' sink during a run: fills request records, the histogram, and an outbox of KV events.
#[derive(Debug, Default)]
pub struct Recorder {
    /// One record per trace request, by request id.
    pub records: Vec<RequestRecord>,
    /// Inter-token gaps, µs.
    pub itl: LogHistogram,
    /// KV-event batches of the step just finished, for the loop to deliver.
    pub outbox: Vec<EventBatch>,
    /// The profile's time in the server around the engine (µs): first tokens and completions
    /// reach the client this much after the engine step that made them.
    pub frontend_us: u64,
    /// Prompt tokens admitted since the last timeline sample.
    pub window_input: u64,
    /// Of which cached.
    pub window_cached: u64,
    /// First tokens and completions of the step just finished, for the router's in-flight
    /// accounting: (request, finished, when).
    pub lifecycle: Vec<(RequestId, bool, SimTime)>,
    /// P/D: requests whose prefill-only run finished in the step just finished, for the loop to
    /// transfer their KV: (trace request, when).
    pub prefilled: Vec<(usize, SimTime)>,
}

/// The id of trace request `i`'s prefill-only run on a prefill engine (P/D): the request's own
/// id with the top bit set, so that its record is the request's.
pub fn prefill_run(i: usize) -> RequestId {
    RequestId(i as u32 | PREFILL_RUN)
}

const PREFILL_RUN: u32 = 1 << 31;

impl Recorder {
    fn rec(&mut self, req: RequestId) -> &mut RequestRecord {
        &mut self.records[(req.0 & !PREFILL_RUN) as usize]
    }
}

impl EngineSink for Recorder {
    fn admitted(&mut self, req: RequestId, cached_tokens: u32, now: SimTime) {
        let r = self.rec(req);
        if r.admitted.is_some() {
            // P/D: the decode side of a request its prefill engine admitted first; the hit that
            // counts is the prefill engine's.
            return;
        }
        r.admitted = Some(now);
        r.cached_tokens = cached_tokens;
        let input = r.input_tokens as u64;
        self.window_input += input;
        self.window_cached += cached_tokens as u64;
    }

    fn first_token(&mut self, req: RequestId, now: SimTime) {
        if req.0 & PREFILL_RUN != 0 {
            // The prefill-only run's one token is not the client's.
            return;
        }
        let client = now.plus_micros(self.frontend_us);
        let r = self.rec(req);
        r.first_token = Some(client);
        r.output_tokens = 1;
        self.lifecycle.push((req, false, now));
    }

    fn token(&mut self, req: RequestId, gap_us: u64) {
        self.rec(req).output_tokens += 1;
        self.itl.record(gap_us);
    }

    fn finished(&mut self, req: RequestId, now: SimTime) {
        if req.0 & PREFILL_RUN != 0 {
            self.prefilled.push(((req.0 & !PREFILL_RUN) as usize, now));
            return;
        }
        let client = now.plus_micros(self.frontend_us);
        self.rec(req).finished = Some(client);
        self.lifecycle.push((req, true, now));
    }

    fn preempted(&mut self, req: RequestId) {
        self.rec(req).preemptions += 1;
    }

    fn kv_events(&mut self, batch: EventBatch) {
        self.outbox.push(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_sees_tokens_the_frontend_time_after_the_engine_step() {
        let mut rec = Recorder {
            records: vec![RequestRecord::default()],
            frontend_us: 12_000,
            ..Default::default()
        };
        let step = SimTime::ZERO.plus_micros(50_000);
        rec.first_token(RequestId(0), step);
        rec.finished(RequestId(0), step.plus_micros(1_000));
        let r = &rec.records[0];
        assert_eq!(r.first_token, Some(step.plus_micros(12_000)));
        assert_eq!(r.finished, Some(step.plus_micros(13_000)));
        // The router's accounting follows the engine: its slot is free when the step ends.
        assert_eq!(
            rec.lifecycle,
            vec![
                (RequestId(0), false, step),
                (RequestId(0), true, step.plus_micros(1_000))
            ]
        );
    }

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = LogHistogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for q in [0.5, 0.9, 0.99] {
            let want = q * 100_000.0;
            assert!(
                (h.quantile(q) - want).abs() / want < 0.02,
                "{q}: {}",
                h.quantile(q)
            );
        }
        assert!((h.mean() - 50_000.5).abs() < 1e-6);
        let mut g = LogHistogram::default();
        g.merge(&h);
        assert_eq!(g.count(), 100_000);
    }
}
