//! Drives one [`Engine`] in real time: the tokio task that makes a simulated vLLM engine run.
//!
//! Between steps it takes the requests and commands that arrived (as vLLM adds requests between
//! steps), calls [`Engine::start_step`], sleeps the step's duration (divided by `speed`), then
//! [`Engine::finish_step`]. What a step produced goes out at once: each request's progress to its
//! waiting HTTP response through a `watch` channel (one slot, latest wins: a slow client sees
//! several tokens at once, as vLLM's output queue coalesces them, and never blocks the engine),
//! KV events to the publisher through a bounded queue (dropped and counted when full), counters
//! and gauges to the shared [`EngineStats`] that `/metrics` renders.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::kv_publisher::PubCommand;
use super::sink::{Live, Sink, unix_now};
use super::stats::EngineStats;
use kvpick_scheduler::events::{EventBatch, KvEvent};
use kvpick_sim::SimTime;
use kvpick_sim::engine::{Engine, EngineRequest, Profile, RequestId, Unfit};

/// Why a request ended without its output.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Prompt + `max_tokens` exceed `max_model_len`.
    TooLong,
    /// It needs more KV blocks than the engine has.
    TooBig,
    /// The waiting queue is at its bound.
    QueueFull,
    /// The engine restarted (fault injection) while it ran.
    Restarted,
    /// The fleet is shutting down.
    ShuttingDown,
}

/// How a request ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Every requested token was generated.
    Finished,
    /// It failed.
    Refused(Refusal),
}

/// What a waiting response knows of its request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Prompt tokens found in the prefix cache, once the request is scheduled.
    pub cached_tokens: Option<u32>,
    /// Tokens generated so far.
    pub generated: u32,
    /// Set once, last.
    pub end: Option<End>,
}

/// A request for the engine.
#[derive(Debug)]
pub struct Submission {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Tokens to generate.
    pub max_tokens: u32,
    /// Names the synthetic output stream (token `i` is `tokens::token(output_id, i)`).
    pub output_id: u64,
    /// LoRA adapter.
    pub lora: Option<Arc<str>>,
    /// Leading prompt tokens whose KV arrived from a prefill pod (P/D; 0 otherwise).
    pub transferred: u32,
    /// Where progress goes.
    pub progress: watch::Sender<Progress>,
}

/// What the driver is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Queue a request.
    Submit(Submission),
    /// Stop stepping for a while (a hung engine; `/metrics` still answers).
    Stall(Duration),
    /// Lose every request and the whole cache, reset the KV-event sequence, stay down a while.
    Restart,
    /// vLLM's `/reset_prefix_cache`: forget every cached block and publish `AllBlocksCleared`;
    /// refused (as vLLM refuses) while requests hold blocks.
    ResetPrefixCache,
}

/// Fixed settings of a driver.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The engine.
    pub profile: Profile,
    /// Served model (cache partition of requests without a LoRA).
    pub model: Arc<str>,
    /// The engine's hash seed (changes on restart, as a new process's would).
    pub hash_seed: u64,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Data-parallel rank, stamped on KV-event batches when the pod has several.
    pub dp_rank: Option<u32>,
    /// Bound of the waiting queue.
    pub max_waiting: usize,
    /// How long a restart keeps the server down.
    pub restart_downtime: Duration,
}

/// The driver's state; [`Driver::run`] is its task.
pub struct Driver {
    cfg: DriverConfig,
    engine: Engine,
    live: HashMap<RequestId, Live>,
    next_id: u32,
    stats: Arc<Mutex<EngineStats>>,
    events: mpsc::Sender<PubCommand>,
    up: Arc<AtomicBool>,
    epoch: Instant,
    restarts: u64,
    /// A prefix-cache reset whose `AllBlocksCleared` waits for the next step (see [`Sink`]).
    cleared: bool,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("model", &self.cfg.model)
            .field("live", &self.live.len())
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A driver for a fresh engine. `up` is the server's health flag (false while restarting).
    pub fn new(
        cfg: DriverConfig,
        stats: Arc<Mutex<EngineStats>>,
        events: mpsc::Sender<PubCommand>,
        up: Arc<AtomicBool>,
    ) -> Result<Self, crate::FleetError> {
        let engine = Engine::new(cfg.profile.clone(), cfg.model.clone(), cfg.hash_seed)?;
        Ok(Self {
            cfg,
            engine,
            live: HashMap::new(),
            next_id: 0,
            stats,
            events,
            up,
            epoch: Instant::now(),
            restarts: 0,
            cleared: false,
        })
    }

    fn now(&self) -> SimTime {
        SimTime((self.epoch.elapsed().as_micros() as f64 * self.cfg.speed) as u64)
    }

    /// Runs until `cancel` or until every command sender is gone; ends every open request.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, cancel: CancellationToken) {
        // Steps back to back are timed from the previous deadline, so sleep overshoot does not
        // accumulate into a slower engine.
        let mut busy_until: Option<Instant> = None;
        'run: loop {
            loop {
                match commands.try_recv() {
                    Ok(c) => {
                        if !self.handle(c, &cancel).await {
                            break 'run;
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => break 'run,
                }
            }
            let now = self.now();
            let step_us = self.with_sink(|engine, sink| engine.start_step(now, sink));
            let Some(us) = step_us else {
                busy_until = None;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    c = commands.recv() => match c {
                        Some(c) => {
                            if self.handle(c, &cancel).await {
                                continue;
                            }
                            break;
                        }
                        None => break,
                    },
                }
            };
            let before = self.engine.stats();
            let real = Duration::from_secs_f64(us as f64 / 1e6 / self.cfg.speed);
            let start = match busy_until {
                Some(t) if t.elapsed() < Duration::from_millis(50) => t,
                _ => Instant::now(),
            };
            let deadline = start + real;
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => {}
            }
            busy_until = Some(deadline);
            let now = self.now();
            self.with_sink(|engine, sink| engine.finish_step(now, sink));
            // A step that changed no block still carries a pending reset out.
            if std::mem::take(&mut self.cleared) {
                self.publish(vec![KvEvent::AllBlocksCleared]);
            }
            let after = self.engine.stats();
            let mut s = self.stats.lock();
            let computed = (after.prefill_tokens + after.decode_tokens)
                - (before.prefill_tokens + before.decode_tokens);
            s.iteration_tokens.observe(computed as f64);
            s.waiting = self.engine.waiting() as u32;
            s.running = self.engine.running() as u32;
            s.kv_usage = self.engine.kv_usage();
        }
        self.abort_all(Refusal::ShuttingDown);
    }

    fn with_sink<R>(&mut self, f: impl FnOnce(&mut Engine, &mut Sink<'_>) -> R) -> R {
        let mut stats = self.stats.lock();
        let mut sink = Sink {
            live: &mut self.live,
            stats: &mut stats,
            events: &self.events,
            dp_rank: self.cfg.dp_rank,
            cleared: &mut self.cleared,
        };
        f(&mut self.engine, &mut sink)
    }

    /// Handles one command; false when cancelled meanwhile.
    async fn handle(&mut self, c: Command, cancel: &CancellationToken) -> bool {
        match c {
            Command::Submit(s) => {
                self.submit(s);
                true
            }
            Command::Stall(d) => pause(d, cancel).await,
            Command::Restart => self.restart(cancel).await,
            Command::ResetPrefixCache => {
                self.reset_prefix_cache();
                true
            }
        }
    }

    fn submit(&mut self, s: Submission) {
        let refuse = |s: &Submission, r| {
            s.progress.send_modify(|p| p.end = Some(End::Refused(r)));
        };
        if self.engine.waiting() >= self.cfg.max_waiting {
            return refuse(&s, Refusal::QueueFull);
        }
        let mut id = RequestId(self.next_id);
        while self.live.contains_key(&id) {
            id = RequestId(id.0.wrapping_add(1));
        }
        self.next_id = id.0.wrapping_add(1);
        let prompt_len = s.prompt.len() as u32;
        let req = EngineRequest {
            id,
            prompt: s.prompt,
            output_tokens: s.max_tokens.max(1),
            output_id: s.output_id,
            lora: s.lora.clone(),
            transferred: s.transferred,
        };
        if let Err(unfit) = self.engine.add_request(req) {
            let r = match unfit {
                Unfit::TooLong => Refusal::TooLong,
                Unfit::TooBig => Refusal::TooBig,
            };
            return s.progress.send_modify(|p| p.end = Some(End::Refused(r)));
        }
        let mut stats = self.stats.lock();
        if let Some(l) = &s.lora {
            *stats.lora_waiting.entry(l.to_string()).or_default() += 1;
            stats.lora_updated = unix_now();
        }
        stats.waiting = self.engine.waiting() as u32;
        drop(stats);
        let arrival = self.now();
        self.live.insert(
            id,
            Live {
                progress: s.progress,
                prompt_len,
                lora: s.lora,
                arrival,
                scheduled: arrival,
                generated: 0,
                running: false,
                transferred: s.transferred,
            },
        );
    }

    async fn restart(&mut self, cancel: &CancellationToken) -> bool {
        self.up.store(false, Ordering::SeqCst);
        self.abort_all(Refusal::Restarted);
        self.restarts += 1;
        let seed = self.cfg.hash_seed ^ self.restarts.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if let Ok(e) = Engine::new(self.cfg.profile.clone(), self.cfg.model.clone(), seed) {
            self.engine = e;
        }
        *self.stats.lock() = EngineStats::new(self.cfg.profile.max_model_len);
        self.cleared = false;
        // In order with the batches before it: the new process numbers from 0 again.
        let sent = tokio::select! {
            _ = cancel.cancelled() => false,
            r = self.events.send(PubCommand::Reset) => r.is_ok(),
        };
        let alive = sent && pause(self.cfg.restart_downtime, cancel).await;
        self.up.store(true, Ordering::SeqCst);
        alive
    }

    fn reset_prefix_cache(&mut self) {
        if !self.live.is_empty() {
            tracing::warn!(
                requests = self.live.len(),
                "prefix cache not reset: requests hold blocks"
            );
            return;
        }
        let seed = self.cfg.hash_seed ^ self.restarts.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        match Engine::new(self.cfg.profile.clone(), self.cfg.model.clone(), seed) {
            Ok(e) => self.engine = e,
            Err(_) => return,
        }
        self.stats.lock().kv_usage = 0.0;
        // Published with the engine's next step, as vLLM does (an idle pod publishes it when its
        // next request arrives).
        self.cleared = true;
    }

    /// Publishes `events` as one batch of this engine's.
    fn publish(&mut self, events: Vec<KvEvent>) {
        let batch = EventBatch {
            ts: unix_now(),
            events,
            data_parallel_rank: self.cfg.dp_rank,
        };
        if self.events.try_send(PubCommand::Batch(batch)).is_err() {
            self.stats.lock().kv_batches_dropped += 1;
        }
    }

    fn abort_all(&mut self, why: Refusal) {
        let mut stats = self.stats.lock();
        for (_, l) in self.live.drain() {
            l.progress.send_modify(|p| p.end = Some(End::Refused(why)));
            stats.aborted += 1;
        }
        stats.lora_running.clear();
        stats.lora_waiting.clear();
    }
}

async fn pause(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}
