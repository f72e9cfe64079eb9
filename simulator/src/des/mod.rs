//! The discrete-event loop: arrivals, engine steps, KV-event deliveries and metric scrapes on one
//! simulated clock, ordered by a binary heap of (time, sequence number). Deterministic for a seed:
//! ties are broken by insertion order and every random choice comes from seeded generators.
//!
//! Staleness is part of the result: the router sees engine signals as of the last scrape (every
//! `metrics_interval`) and the precise index sees KV events `kv_event_latency` after the step that
//! produced them.
//!
//! This module holds the loop itself (set-up, the clock, handing each event to its handler); the
//! handlers live by concept: [`route`] (a request from arrival through admission and the picker to
//! an engine), [`step`] (engine steps and the KV events they send), [`observe`] (scrapes, shared
//! in-flight rounds, timeline samples) and [`pd`] (prefill/decode disaggregation).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kvpick_scheduler::PodSignals;
use kvpick_scheduler::events::EventBatch;

use crate::clock::SimTime;
use crate::engine::{Engine, EngineStats, Profile};
use crate::error::SimError;
use crate::metrics::{LogHistogram, Recorder, RequestRecord, Sample};
use crate::policy::{PolicySpec, PoolShape};
use crate::replicas::{ReplicaSetup, Replicas};
use crate::trace::Trace;

mod observe;
mod parallel;
mod pd;
mod route;
mod step;
pub use parallel::run_many;
pub use pd::PdSetup;

/// How the simulated pool and its observation are set up.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of engines.
    pub engines: usize,
    /// Every engine's profile.
    pub profile: Profile,
    /// The served model (cache partition of requests without a LoRA).
    pub model: Arc<str>,
    /// How often the router's view of engine signals is refreshed (µs); 0 = always fresh.
    pub metrics_interval_us: u64,
    /// Delay from a step's end to its KV events reaching the index (µs).
    pub kv_event_latency_us: u64,
    /// Timeline sampling period (µs); 0 = no timeline.
    pub sample_interval_us: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Check every engine's bookkeeping after each step (slow; for tests).
    pub check_invariants: bool,
    /// The picker replicas in front of the engines (default: one).
    pub replicas: ReplicaSetup,
    /// P/D: prefill and decode engines, and the KV transfer between them (default: aggregated).
    pub pd: PdSetup,
}

/// Everything one policy's run produced.
#[derive(Debug)]
pub struct RunResult {
    /// The policy's name.
    pub policy: String,
    /// Per-request records, in trace order.
    pub records: Vec<RequestRecord>,
    /// Inter-token gaps.
    pub itl: LogHistogram,
    /// Timeline samples.
    pub timeline: Vec<Sample>,
    /// Per-engine counters.
    pub engines: Vec<EngineStats>,
    /// When the last event happened.
    pub end: SimTime,
    /// KV-event batches applied to the precise index.
    pub event_batches: u64,
    /// Blocks each engine holds in its prefix cache at the end.
    pub engine_cached_blocks: Vec<usize>,
    /// Entries the precise index holds per engine at the end (fed only by KV events).
    pub index_entries: Option<Vec<usize>>,
    /// The first broken engine invariant, when checking was on.
    pub violation: Option<String>,
    /// Requests each picker replica routed.
    pub routed_per_replica: Vec<u64>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    StepDone(u32),
    /// The oldest undelivered event batch of `engine` reaches index view `view`.
    Deliver {
        engine: u32,
        view: u32,
    },
    /// A replica's scrape of every engine.
    Scrape(u32),
    Sample,
    /// A replica's flow-control dispatch round, while requests wait there.
    Dispatch(u32),
    /// A replica's shared in-flight round.
    Share(u32),
    /// P/D: a request's KV reached its decode engine.
    Transferred(u32),
}

struct Loop<'a> {
    trace: &'a Trace,
    cfg: &'a SimConfig,
    pickers: Replicas,
    engines: Vec<Engine>,
    busy: Vec<bool>,
    /// Event batches on their way, per (index view, engine): `view · engines + engine`.
    inflight: Vec<VecDeque<EventBatch>>,
    pending_deliveries: usize,
    heap: BinaryHeap<Reverse<(SimTime, u64, Event)>>,
    seq: u64,
    rec: Recorder,
    timeline: Vec<Sample>,
    event_batches: u64,
    tokens: Vec<u32>,
    violation: Option<String>,
    pd: pd::PdState,
}

/// Replays `trace` through `policy`; `progress` (if any) counts arrivals handled.
pub fn run(
    trace: &Trace,
    policy: &PolicySpec,
    cfg: &SimConfig,
    progress: Option<&AtomicU64>,
) -> Result<RunResult, SimError> {
    if cfg.engines == 0 {
        return Err(SimError::InvalidConfig(
            "--engines must be at least 1".into(),
        ));
    }
    let shape = PoolShape {
        engines: cfg.engines,
        model: cfg.model.clone(),
        block_size: kvpick_scheduler::BlockSize::new(cfg.profile.block_size)
            .ok_or_else(|| SimError::InvalidConfig("block size must be positive".into()))?,
        profile: cfg.profile.clone(),
        prefill_engines: cfg.pd.prefill_engines,
    };
    cfg.pd.validate(cfg.engines)?;
    let engines = (0..cfg.engines)
        .map(|i| {
            let seed = crate::trace::tokens::content_id("engine-hash-seed", &[cfg.seed, i as u64]);
            Engine::new(cfg.profile.clone(), cfg.model.clone(), seed)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let records = trace
        .requests
        .iter()
        .map(|r| RequestRecord {
            arrival: r.arrival,
            input_tokens: r.input_tokens(),
            output_target: r.output_tokens,
            slo_ttft_us: r.objective.slo.ttft.map(|d| d.as_micros() as u64),
            slo_tpot_us: r.objective.slo.tpot.map(|d| d.as_micros() as u64),
            ..Default::default()
        })
        .collect();
    let signals: Vec<PodSignals> = engines.iter().map(|e| e.signals(SimTime::ZERO)).collect();
    let pickers = Replicas::new(policy, &shape, &cfg.replicas, &signals, cfg.seed)?;
    let mut l = Loop {
        trace,
        cfg,
        busy: vec![false; cfg.engines],
        engines,
        inflight: vec![VecDeque::new(); cfg.engines * cfg.replicas.index_views()],
        pickers,
        pending_deliveries: 0,
        heap: BinaryHeap::new(),
        seq: 0,
        rec: Recorder {
            records,
            frontend_us: cfg.profile.frontend_us.round() as u64,
            ..Default::default()
        },
        timeline: Vec::new(),
        event_batches: 0,
        tokens: Vec::new(),
        violation: None,
        pd: Default::default(),
    };
    if cfg.metrics_interval_us > 0 {
        for r in 0..cfg.replicas.count {
            let phase = cfg.replicas.scrape_phase_us(cfg.metrics_interval_us, r);
            l.push(SimTime::ZERO.plus_micros(phase), Event::Scrape(r as u32));
        }
    }
    if let Some(share) = cfg.replicas.share {
        for r in 0..cfg.replicas.count {
            let phase = share.phase_us(r, cfg.replicas.count);
            l.push(SimTime::ZERO.plus_micros(phase), Event::Share(r as u32));
        }
    }
    if cfg.sample_interval_us > 0 {
        l.push(SimTime::ZERO, Event::Sample);
    }
    let end = l.run(progress)?;
    Ok(RunResult {
        policy: policy.name(),
        records: l.rec.records,
        itl: l.rec.itl,
        timeline: l.timeline,
        engines: l.engines.iter().map(Engine::stats).collect(),
        end,
        event_batches: l.event_batches,
        engine_cached_blocks: l
            .engines
            .iter()
            .map(|e| e.cache().cached_blocks())
            .collect(),
        index_entries: l.pickers.index_entries(),
        violation: l.violation,
        routed_per_replica: l.pickers.routed_per_replica(),
    })
}

impl Loop<'_> {
    fn push(&mut self, t: SimTime, e: Event) {
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, e)));
    }

    fn active(&self, next_arrival: usize) -> bool {
        next_arrival < self.trace.requests.len()
            || self.busy.iter().any(|&b| b)
            || self.pending_deliveries > 0
            || self.pd.busy()
            || self.pickers.queued()
    }

    fn run(&mut self, progress: Option<&AtomicU64>) -> Result<SimTime, SimError> {
        let mut next = 0usize;
        let mut now = SimTime::ZERO;
        let mut unreported = 0u64;
        loop {
            let arrival = self.trace.requests.get(next).map(|r| r.arrival);
            let top = self.heap.peek().map(|Reverse((t, _, _))| *t);
            let take_arrival = match (arrival, top) {
                (Some(a), Some(t)) => a <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_arrival {
                now = arrival.unwrap_or(now);
                self.arrive(next, now)?;
                next += 1;
                unreported += 1;
                if unreported == 256 {
                    if let Some(p) = progress {
                        p.fetch_add(unreported, Ordering::Relaxed);
                    }
                    unreported = 0;
                }
            } else if let Some(Reverse((t, _, e))) = self.heap.pop() {
                now = t;
                self.handle(e, now, next)?;
            }
            // Only the periodic scrape and sample can be left: nothing will change any more.
            if !self.active(next) {
                break;
            }
        }
        if let Some(p) = progress {
            p.fetch_add(unreported, Ordering::Relaxed);
        }
        Ok(now)
    }

    fn handle(&mut self, ev: Event, now: SimTime, next_arrival: usize) -> Result<(), SimError> {
        match ev {
            Event::Dispatch(r) => self.dispatch(r as usize, now)?,
            Event::Transferred(i) => self.transferred(i as usize, now),
            Event::StepDone(e) => self.step_done(e as usize, now),
            Event::Deliver { engine, view } => self.deliver(engine as usize, view as usize),
            Event::Scrape(r) => self.scrape_round(r, now, next_arrival),
            Event::Share(r) => self.share_round(r, now, next_arrival),
            Event::Sample => self.sample(now, next_arrival),
        }
        Ok(())
    }
}
