//! The workers that decode batches and apply them to the index, each owning a fixed share of
//! the endpoints (id modulo the number of workers), so one endpoint's batches are applied in
//! order and by one task, and each endpoint's sequencer state has a single owner.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use kvpick_scheduler::EventsState;
use kvpick_scheduler::{EndpointId, EventBatch};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::Batch;
use super::mailbox::{Item, Mailbox, ReplayDone, RunQueue, Slice};
use super::metrics::EndpointMetrics;
use super::replay;
use super::sequencer::{Effects, HoldLimits, Note, ReplayOutcome, ReplayRequest, Reset, Sequencer};
use super::{DropReason, Shared};

/// Items taken from one mailbox per turn: bounds how long one endpoint holds its worker.
const TURN: usize = 256;

/// One endpoint as its worker knows it.
#[derive(Debug)]
pub(crate) struct Registration {
    pub endpoint: EndpointId,
    pub model: Arc<str>,
    pub rank: u32,
    pub mailbox: Arc<Mailbox>,
    pub replay: Option<SocketAddr>,
    /// Batches arrive through the bound socket: check their rank before sequencing them.
    pub bind_mode: bool,
    pub metrics: Arc<EndpointMetrics>,
    /// Cancels the endpoint's replays when it goes.
    pub cancel: CancellationToken,
}

/// What the manager tells a worker.
#[derive(Debug)]
pub(crate) enum Control {
    Open(Box<Registration>),
    /// Forget the endpoint and drop its blocks.
    Close(EndpointId),
    /// Answered once everything sent before it was handled.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

struct Served {
    reg: Registration,
    seq: Sequencer,
}

/// One worker: its run queue, control channel and endpoints.
pub(crate) struct Worker {
    shared: Arc<Shared>,
    run: Arc<RunQueue>,
    control: mpsc::Receiver<Control>,
    endpoints: HashMap<EndpointId, Served>,
    replays: JoinSet<()>,
}

impl Worker {
    pub fn new(shared: Arc<Shared>, run: Arc<RunQueue>, control: mpsc::Receiver<Control>) -> Self {
        Self {
            shared,
            run,
            control,
            endpoints: HashMap::new(),
            replays: JoinSet::new(),
        }
    }

    /// Serves until `cancel` fires or the manager hangs up; then stops its replays.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                control = self.control.recv() => match control {
                    Some(control) => self.control(control),
                    None => break,
                },
                Some(_) = self.replays.join_next(), if !self.replays.is_empty() => {}
                mailbox = self.run.next() => {
                    self.turn(&mailbox);
                    tokio::task::yield_now().await;
                }
            }
        }
        for served in self.endpoints.values() {
            served.reg.cancel.cancel();
        }
        self.replays.shutdown().await;
    }

    fn control(&mut self, control: Control) {
        match control {
            Control::Open(reg) => {
                let config = &self.shared.config;
                let hold = HoldLimits {
                    batches: config.queue_capacity,
                    bytes: config.queue_bytes,
                };
                let mut seq = Sequencer::new(
                    reg.replay.is_some(),
                    reg.bind_mode,
                    hold,
                    config.replay_cooldown,
                );
                if let Some(anchor) = self.shared.anchors.take_start(reg.endpoint) {
                    seq.anchor(anchor);
                }
                if reg.bind_mode {
                    // No connection to wait for: warm up from the pod's replay buffer now.
                    let mut fx = Fx::new(&self.shared, &reg, &mut self.replays);
                    seq.on_connected(Instant::now(), &mut fx);
                }
                publish_state(&self.shared, &reg, &seq);
                if let Some(old) = self
                    .endpoints
                    .insert(reg.endpoint, Served { reg: *reg, seq })
                {
                    old.reg.cancel.cancel();
                    old.reg.mailbox.close();
                }
            }
            Control::Close(endpoint) => {
                if let Some(served) = self.endpoints.remove(&endpoint) {
                    served.reg.cancel.cancel();
                    served.reg.mailbox.close();
                    self.shared.index.clear_endpoint(endpoint);
                    self.shared.anchors.forget(endpoint);
                    self.shared.states.set(endpoint, EventsState::Absent);
                }
            }
            Control::Barrier(ack) => {
                let _ = ack.send(());
            }
        }
    }

    fn turn(&mut self, mailbox: &Arc<Mailbox>) {
        match self.endpoints.get_mut(&mailbox.endpoint) {
            // Not opened yet (the control message is next): leave the work queued.
            None => {}
            // A mailbox of an endpoint closed since, whose id was reused: it is closed too.
            Some(served) if !Arc::ptr_eq(&served.reg.mailbox, mailbox) => {}
            Some(served) => {
                let slice = mailbox.take(TURN);
                served.reg.metrics.queue_depth(slice.remaining);
                let mut fx = Fx::new(&self.shared, &served.reg, &mut self.replays);
                serve(slice, &mut served.seq, &mut fx);
                if mailbox.overflow_pending() {
                    // Batches were refused since this turn began: not in step, whatever it says.
                    self.shared
                        .states
                        .set(served.reg.endpoint, EventsState::Stale);
                    served.reg.metrics.state(EventsState::Stale);
                } else {
                    publish_state(&self.shared, &served.reg, &served.seq);
                }
            }
        }
        mailbox.finish_turn();
    }
}

fn publish_state(shared: &Shared, reg: &Registration, seq: &Sequencer) {
    let state = seq.state();
    shared.states.set(reg.endpoint, state);
    shared.anchors.publish(reg.endpoint, seq.last());
    reg.metrics.state(state);
}

fn serve(slice: Slice, seq: &mut Sequencer, fx: &mut Fx<'_>) {
    let now = Instant::now();
    if slice.overflowed {
        seq.on_overflow(now, fx);
    }
    if let Some(ReplayDone { id, outcome }) = slice.replay {
        fx.reg
            .metrics
            .replay(matches!(outcome, ReplayOutcome::Done(_)));
        seq.on_replay(id, outcome, now, fx);
    }
    for item in slice.items {
        match item {
            Item::Batch(batch) => {
                if let Some(batch) = fx.admit(batch) {
                    seq.on_batch(batch, now, fx);
                }
            }
            Item::Connected => {
                fx.reg.metrics.connected();
                seq.on_connected(now, fx);
            }
            Item::Disconnected => seq.on_disconnected(),
        }
    }
}

/// The sequencer's effects on one endpoint.
struct Fx<'a> {
    shared: &'a Arc<Shared>,
    reg: &'a Registration,
    replays: &'a mut JoinSet<()>,
}

impl<'a> Fx<'a> {
    fn new(shared: &'a Arc<Shared>, reg: &'a Registration, replays: &'a mut JoinSet<()>) -> Self {
        Self {
            shared,
            reg,
            replays,
        }
    }

    /// Bind mode: a batch whose rank names another endpoint must not enter this endpoint's
    /// sequence, so it is decoded (once) before sequencing. Undecodable ones are dropped here
    /// and show up as a gap.
    fn admit(&self, mut batch: Batch) -> Option<Batch> {
        if !self.reg.bind_mode {
            return Some(batch);
        }
        let rank = match batch.events() {
            Ok(events) => events.data_parallel_rank,
            Err(e) => {
                self.reg.metrics.decode_error(e.label());
                return None;
            }
        };
        if rank.is_some_and(|r| r != self.reg.rank) {
            self.shared.metrics.dropped(DropReason::UnknownTopic);
            return None;
        }
        Some(batch)
    }

    fn decode(&self, batch: Batch) -> Option<EventBatch> {
        match batch.into_events() {
            Ok(decoded) => Some(decoded),
            Err(e) => {
                self.reg.metrics.decode_error(e.label());
                None
            }
        }
    }
}

impl Effects for Fx<'_> {
    fn apply(&mut self, batch: Batch) {
        match self.decode(batch) {
            Some(events) => {
                let report = self
                    .shared
                    .index
                    .apply(self.reg.endpoint, &self.reg.model, &events);
                self.reg.metrics.applied(&report);
            }
            // Its events are lost, so what the index holds can no longer be vouched for.
            None => self.clear(Reset::DecodeError),
        }
    }

    fn clear(&mut self, why: Reset) {
        self.reg.metrics.reset(why);
        self.shared.index.clear_endpoint(self.reg.endpoint);
    }

    fn replay(&mut self, request: ReplayRequest) {
        let Some(addr) = self.reg.replay else {
            return self.reg.mailbox.deliver(ReplayDone {
                id: request.id,
                outcome: ReplayOutcome::Failed,
            });
        };
        let mailbox = Arc::clone(&self.reg.mailbox);
        let cancel = self.reg.cancel.clone();
        let shared = Arc::clone(self.shared);
        self.replays.spawn(async move {
            let fetched = tokio::select! {
                () = cancel.cancelled() => return,
                fetched = async {
                    let _slot = shared.replay_slots.acquire().await;
                    replay::fetch(addr, request.from, shared.replay_bounds(), &shared.metrics).await
                } => fetched,
            };
            let outcome = match fetched {
                Ok(batches) => ReplayOutcome::Done(batches),
                Err(why) => {
                    tracing::warn!(%addr, from = request.from, %why, "KV-event replay failed");
                    ReplayOutcome::Failed
                }
            };
            mailbox.deliver(ReplayDone {
                id: request.id,
                outcome,
            });
        });
    }

    fn note(&mut self, what: Note) {
        if what == Note::Duplicate {
            self.shared.metrics.dropped(DropReason::Duplicate);
        }
        self.reg.metrics.note(what);
    }
}
