//! One simulated vLLM engine (one pod, or one data-parallel rank): a pure state machine.
//!
//! The caller owns time. [`Engine::add_request`] queues a request; [`Engine::start_step`] schedules
//! the next batch the way vLLM's V1 scheduler does and says how long it runs; at that time the caller
//! calls [`Engine::finish_step`], which advances every scheduled sequence and reports tokens,
//! completions and KV events to an [`EngineSink`]. Nothing here reads a clock or does I/O, so the
//! discrete-event loop and a later real-time "live fleet" (HTTP + ZMQ) drive the same engine.
//!
//! Model: FCFS waiting queue; continuous batching with chunked prefill under
//! `max_num_batched_tokens` and `max_num_seqs`, running sequences first; a paged KV cache of
//! `kv_blocks` blocks of `block_size` tokens with automatic prefix caching ([`kv_cache`]);
//! preemption by recompute (the newest running sequence goes back to the front of the queue) when
//! blocks run out; step durations from the profile's [`StepTimeModel`] (in the core).

mod batcher;
mod invariants;
pub mod kv_cache;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use kvpick_scheduler::events::EventBatch;
use kvpick_scheduler::{BlockSize, PodSignals};
use serde::Serialize;

use crate::clock::SimTime;
use crate::error::SimError;
use kv_cache::{BlockId, KvCache};
/// The engine's profile is the core's, so that the picker's latency model prices work with the
/// very numbers the simulated engines step by.
pub use kvpick_scheduler::profile::{
    BatchShape, EngineProfile as Profile, PROFILES, StepTimeModel,
};

/// A request's id across router and engines (its index in the trace).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u32);

/// A profile from a YAML file with the fields of [`Profile`].
pub fn profile_from_file(path: &Path) -> Result<Profile, SimError> {
    let text = std::fs::read_to_string(path).map_err(|e| SimError::io(path, e))?;
    Profile::parse(&text).map_err(|e| SimError::InvalidConfig(format!("{}: {e}", path.display())))
}

/// A request as the engine receives it.
#[derive(Clone, Debug)]
pub struct EngineRequest {
    /// Its id.
    pub id: RequestId,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Tokens to generate (at least 1).
    pub output_tokens: u32,
    /// Synthetic stream the generated tokens come from.
    pub output_id: u64,
    /// LoRA adapter: its own cache partition.
    pub lora: Option<Arc<str>>,
    /// Leading prompt tokens whose KV arrives from a prefill pod (P/D, vLLM's NIXL connector):
    /// admitted as computed, into blocks of its own, without computing them. 0 otherwise.
    pub transferred: u32,
}

/// Why a request can never run on an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfit {
    /// Prompt + output exceed `max_model_len`.
    TooLong,
    /// Prompt + output need more blocks than the whole cache.
    TooBig,
}

/// What an engine reports while it steps.
pub trait EngineSink {
    /// The request was scheduled for the first time, `cached_tokens` of its prompt hit the cache.
    fn admitted(&mut self, req: RequestId, cached_tokens: u32, now: SimTime);
    /// The request produced its first token.
    fn first_token(&mut self, req: RequestId, now: SimTime);
    /// The request produced another token, `gap_us` after its previous one.
    fn token(&mut self, req: RequestId, gap_us: u64);
    /// The request produced its last token and left the engine.
    fn finished(&mut self, req: RequestId, now: SimTime);
    /// The request was preempted (its KV freed, to be recomputed).
    fn preempted(&mut self, req: RequestId);
    /// KV events of one step, in the order the cache changed.
    fn kv_events(&mut self, batch: EventBatch);
}

/// One sequence inside the engine.
#[derive(Debug)]
struct Seq {
    id: RequestId,
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    output_target: u32,
    generated: u32,
    /// Tokens whose KV is computed.
    computed: u32,
    /// Tokens scheduled in the current step.
    scheduled: u32,
    blocks: Vec<BlockId>,
    /// Engine hashes of the full blocks of `tokens` computed so far.
    hashes: Vec<u64>,
    /// Leading blocks already cached (by a hit or by registering them).
    registered: u32,
    root: u64,
    lora: Option<Arc<str>>,
    output_id: u64,
    admitted: bool,
    last_token: SimTime,
    /// Prompt tokens transferred in, used at the first admission only (a preempted request
    /// recomputes what it lost).
    transferred: u32,
}

/// Counters over an engine's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Steps run.
    pub steps: u64,
    /// Prompt tokens computed (including recompute after preemption).
    pub prefill_tokens: u64,
    /// Tokens generated.
    pub decode_tokens: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Requests accepted.
    pub requests: u64,
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    profile: Profile,
    block_size: BlockSize,
    model: Arc<str>,
    hash_seed: u64,
    cache: KvCache,
    seqs: Vec<Option<Seq>>,
    free_slots: Vec<usize>,
    waiting: VecDeque<usize>,
    running: Vec<usize>,
    batch: Vec<usize>,
    shape: BatchShape,
    events: Vec<kvpick_scheduler::KvEvent>,
    stats: EngineStats,
}

impl Engine {
    /// An idle engine serving `model`; `hash_seed` plays vLLM's per-process hash seed (engine
    /// hashes differ between engines and from kvpick's keys, as in production).
    pub fn new(profile: Profile, model: Arc<str>, hash_seed: u64) -> Result<Self, SimError> {
        profile.validate()?;
        let block_size = BlockSize::new(profile.block_size)
            .ok_or_else(|| SimError::InvalidConfig("block_size must be positive".into()))?;
        Ok(Self {
            cache: KvCache::new(profile.kv_blocks),
            profile,
            block_size,
            model,
            hash_seed,
            seqs: Vec::new(),
            free_slots: Vec::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            batch: Vec::new(),
            shape: BatchShape::default(),
            events: Vec::new(),
            stats: EngineStats::default(),
        })
    }

    /// Its profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Queues `req` at the back of the waiting queue, or refuses it if it can never run here.
    pub fn add_request(&mut self, req: EngineRequest) -> Result<(), Unfit> {
        let total = req.prompt.len() as u64 + req.output_tokens as u64;
        if total > self.profile.max_model_len as u64 {
            return Err(Unfit::TooLong);
        }
        if total.div_ceil(self.block_size.get() as u64) > self.profile.kv_blocks as u64 {
            return Err(Unfit::TooBig);
        }
        let root =
            batcher::partition_root(self.hash_seed, req.lora.as_deref().unwrap_or(&self.model));
        let seq = Seq {
            id: req.id,
            tokens: req.prompt,
            output_target: req.output_tokens.max(1),
            generated: 0,
            computed: 0,
            scheduled: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            registered: 0,
            root,
            lora: req.lora,
            output_id: req.output_id,
            admitted: false,
            last_token: SimTime::ZERO,
            transferred: req.transferred,
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.seqs[s] = Some(seq);
                s
            }
            None => {
                self.seqs.push(Some(seq));
                self.seqs.len() - 1
            }
        };
        self.waiting.push_back(slot);
        self.stats.requests += 1;
        Ok(())
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Requests waiting to be scheduled.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests running.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// The share of KV blocks in use.
    pub fn kv_usage(&self) -> f64 {
        self.cache.usage()
    }

    /// Blocks held by running sequences or cached, for invariant checks.
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Counters so far.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// What vLLM's `/metrics` would say now.
    pub fn signals(&self, now: SimTime) -> PodSignals {
        PodSignals {
            waiting: self.waiting.len() as u32,
            running: self.running.len() as u32,
            kv_usage: self.cache.usage(),
            block_size: Some(self.block_size),
            num_gpu_blocks: Some(self.profile.kv_blocks as u64),
            ..PodSignals::idle(now.timestamp())
        }
    }

    /// Schedules the next batch; returns its duration in microseconds, or `None` when idle.
    pub fn start_step(&mut self, now: SimTime, sink: &mut impl EngineSink) -> Option<u64> {
        self.schedule(now, sink);
        if self.batch.is_empty() {
            return None;
        }
        self.stats.steps += 1;
        Some(self.profile.step_time.step_us(&self.shape))
    }

    /// Completes the batch started by [`Engine::start_step`], at `now`.
    pub fn finish_step(&mut self, now: SimTime, sink: &mut impl EngineSink) {
        self.complete(now, sink);
        if !self.events.is_empty() {
            sink.kv_events(EventBatch {
                ts: now.secs(),
                events: std::mem::take(&mut self.events),
                data_parallel_rank: None,
            });
        }
    }
}
