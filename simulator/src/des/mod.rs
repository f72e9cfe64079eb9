//! The discrete-event loop: arrivals, engine steps, KV-event deliveries and metric scrapes on one
//! simulated clock, ordered by a binary heap of (time, sequence number). Deterministic for a seed:
//! ties are broken by insertion order and every random choice comes from seeded generators.
//!
//! Staleness is part of the result: the router sees engine signals as of the last scrape (every
//! `metrics_interval`) and the precise index sees KV events `kv_event_latency` after the step that
//! produced them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kvpick_scheduler::PodSignals;
use kvpick_scheduler::events::EventBatch;

use crate::admission::{self, Verdict};
use crate::clock::SimTime;
use crate::engine::{Engine, EngineRequest, EngineStats, Profile, RequestId};
use crate::error::SimError;
use crate::metrics::{LogHistogram, Recorder, RequestRecord, Sample};
use crate::policy::{Ask, Picked, PolicySpec, PoolShape};
use crate::replicas::{ReplicaSetup, Replicas};
use crate::trace::Trace;

mod parallel;
mod pd;
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

    /// Replica `r`'s signals as of now when scrapes are instant (`metrics_interval_us` 0).
    fn refresh_signals(&mut self, r: usize, now: SimTime) {
        if self.cfg.metrics_interval_us == 0 {
            self.scrape(r, now);
        }
    }

    /// Replica `r`'s scrape: every engine's signals as of `now`, folded into its in-flight
    /// accounting.
    fn scrape(&mut self, r: usize, now: SimTime) {
        let replica = self.pickers.get_mut(r);
        for (i, (s, e)) in replica.signals.iter_mut().zip(&self.engines).enumerate() {
            *s = e.signals(now);
            replica.router.observe_signals(i, s);
        }
    }

    fn arrive(&mut self, i: usize, now: SimTime) -> Result<(), SimError> {
        let r = self.pickers.assign(i);
        self.refresh_signals(r, now);
        let priority = self.trace.requests[i].objective.priority;
        let replica = self.pickers.get_mut(r);
        let verdict = match &mut replica.admission {
            None => Verdict::Route,
            Some(a) => a.arrive(i, priority, &replica.signals, now),
        };
        match verdict {
            Verdict::Route => self.route(i, r, now),
            Verdict::Rejected => {
                self.rec.records[i].rejected = true;
                Ok(())
            }
            Verdict::Shed => {
                self.rec.records[i].shed = Some(admission::POOL_SATURATED);
                Ok(())
            }
            Verdict::Queued => {
                self.dispatch_at(r, now);
                Ok(())
            }
        }
    }

    /// Makes sure replica `r` has a dispatch round at `at` or earlier.
    fn dispatch_at(&mut self, r: usize, at: SimTime) {
        if !std::mem::replace(&mut self.pickers.get_mut(r).dispatching, true) {
            self.push(at, Event::Dispatch(r as u32));
        }
    }

    /// Replica `r`'s flow-control round: refuse what expired, route what the pool has room for.
    fn dispatch(&mut self, r: usize, now: SimTime) -> Result<(), SimError> {
        self.refresh_signals(r, now);
        let replica = self.pickers.get_mut(r);
        let Some(a) = &mut replica.admission else {
            return Ok(());
        };
        let released = a.release(&replica.signals, now);
        for i in released.expired {
            self.rec.records[i].rejected = true;
        }
        for i in released.route {
            self.route(i, r, now)?;
        }
        let replica = self.pickers.get_mut(r);
        replica.dispatching = false;
        if replica.admission.as_ref().is_some_and(|a| !a.is_empty()) {
            self.dispatch_at(r, now.plus_micros(admission::DISPATCH_TICK_US));
        }
        Ok(())
    }

    /// Replica `r` picks request `i`'s engine and hands it over; or, when no engine is predicted
    /// to meet its objectives, sheds it or lets it wait for one, as the picker does.
    fn route(&mut self, i: usize, r: usize, now: SimTime) -> Result<(), SimError> {
        let trace = self.trace;
        let req = &trace.requests[i];
        req.prompt.materialize(&mut self.tokens);
        let mut may_wait = (self.pickers.get_mut(r).admission.as_ref())
            .is_some_and(|a| a.may_wait_for_objective(i, now));
        let routed = loop {
            let ask = Ask {
                request: i,
                tokens: &self.tokens,
                lora: req.lora.as_deref(),
                session: req.session.as_deref(),
                output: req.output_tokens,
                objective: req.objective,
            };
            let replica = self.pickers.get_mut(r);
            match replica.router.pick(&ask, may_wait, &replica.signals, now)? {
                Picked::Routed(routed) => break routed,
                Picked::Shed(miss) => {
                    self.rec.records[i].shed = Some(miss.reason());
                    if let Some(a) = &mut replica.admission {
                        a.done(i);
                    }
                    return Ok(());
                }
                Picked::Queue(_) => {
                    let priority = req.objective.priority;
                    if (replica.admission.as_mut())
                        .is_some_and(|a| a.wait_for_objective(i, priority, now))
                    {
                        self.dispatch_at(r, now.plus_micros(admission::DISPATCH_TICK_US));
                        return Ok(());
                    }
                    // No place to wait: best-effort now.
                    may_wait = false;
                }
            }
        };
        if let Some(a) = &mut self.pickers.get_mut(r).admission {
            a.done(i);
        }
        let e = routed.engine;
        self.rec.records[i].engine = e as u32;
        self.rec.records[i].routed = Some(now);
        self.rec.records[i].predicted_ttft_us = routed.predicted_ttft_us;
        self.rec.records[i].slo_best_effort = routed.slo_unattainable;
        if let Some(p) = routed.prefill {
            self.start_prefill(i, p, e, now);
            return Ok(());
        }
        let engine_req = EngineRequest {
            id: RequestId(i as u32),
            prompt: std::mem::take(&mut self.tokens),
            output_tokens: req.output_tokens,
            output_id: req.output_id,
            lora: req.lora.clone(),
            transferred: 0,
        };
        if self.engines[e].add_request(engine_req).is_err() {
            self.rec.records[i].unfit = true;
            self.pickers.release(i, now);
            return Ok(());
        }
        if !self.busy[e] {
            self.start_step(e, now);
        }
        Ok(())
    }

    /// Engine `e`'s event batch, on its way to index view `view`.
    fn send_events(&mut self, view: usize, e: usize, batch: EventBatch, now: SimTime) {
        let latency = (self.cfg.replicas).event_latency_us(self.cfg.kv_event_latency_us, view);
        if latency == 0 {
            self.pickers.apply_events(view, e, &batch);
            self.event_batches += 1;
        } else {
            self.inflight[view * self.cfg.engines + e].push_back(batch);
            self.pending_deliveries += 1;
            self.push(
                now.plus_micros(latency),
                Event::Deliver {
                    engine: e as u32,
                    view: view as u32,
                },
            );
        }
    }

    fn start_step(&mut self, e: usize, now: SimTime) {
        match self.engines[e].start_step(now, &mut self.rec) {
            Some(us) => {
                self.busy[e] = true;
                self.push(now.plus_micros(us), Event::StepDone(e as u32));
            }
            None => self.busy[e] = false,
        }
    }

    fn handle(&mut self, ev: Event, now: SimTime, next_arrival: usize) -> Result<(), SimError> {
        match ev {
            Event::Dispatch(r) => self.dispatch(r as usize, now)?,
            Event::Transferred(i) => self.transferred(i as usize, now),
            Event::StepDone(e) => {
                let e = e as usize;
                self.engines[e].finish_step(now, &mut self.rec);
                self.transfer_prefilled();
                for (req, finished, at) in std::mem::take(&mut self.rec.lifecycle) {
                    if finished {
                        self.pickers.release(req.0 as usize, at);
                    } else {
                        self.pickers.first_token(req.0 as usize, at);
                    }
                }
                if self.cfg.check_invariants && self.violation.is_none() {
                    self.violation = self.engines[e]
                        .check_invariants()
                        .err()
                        .map(|v| format!("engine {e} at {now:?}: {v}"));
                }
                let outbox = std::mem::take(&mut self.rec.outbox);
                if self.pickers.wants_events() {
                    let views = self.cfg.replicas.index_views();
                    for batch in outbox {
                        for view in 1..views {
                            self.send_events(view, e, batch.clone(), now);
                        }
                        self.send_events(0, e, batch, now);
                    }
                }
                self.start_step(e, now);
            }
            Event::Deliver { engine, view } => {
                let (e, view) = (engine as usize, view as usize);
                let channel = view * self.cfg.engines + e;
                if let Some(batch) = self.inflight[channel].pop_front() {
                    self.pickers.apply_events(view, e, &batch);
                    self.event_batches += 1;
                    self.pending_deliveries -= 1;
                }
            }
            Event::Scrape(r) => {
                self.scrape(r as usize, now);
                if self.active(next_arrival) {
                    self.push(
                        now.plus_micros(self.cfg.metrics_interval_us),
                        Event::Scrape(r),
                    );
                }
            }
            Event::Share(r) => {
                self.pickers.share(r as usize, now);
                if let (Some(share), true) = (self.cfg.replicas.share, self.active(next_arrival)) {
                    self.push(now.plus_micros(share.interval_us), Event::Share(r));
                }
            }
            Event::Sample => {
                let (input, cached) = (self.rec.window_input, self.rec.window_cached);
                self.rec.window_input = 0;
                self.rec.window_cached = 0;
                self.timeline.push(Sample {
                    t: now,
                    waiting: self.engines.iter().map(|e| e.waiting() as u32).collect(),
                    running: self.engines.iter().map(|e| e.running() as u32).collect(),
                    kv_usage: self.engines.iter().map(Engine::kv_usage).collect(),
                    admitted_tokens: input,
                    cached_tokens: cached,
                });
                if self.active(next_arrival) {
                    self.push(now.plus_micros(self.cfg.sample_interval_us), Event::Sample);
                }
            }
        }
        Ok(())
    }
}
