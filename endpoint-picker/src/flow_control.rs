//! Flow control (`featureGates: [flowControl]`): while the pool is saturated, requests of
//! priority ≥ 0 wait here instead of piling onto the pods' queues, and leave as the pods show
//! room again, highest priority first, fairness ids taking turns.
//!
//! The decisions are the core's ([`kvpick_scheduler::FlowGate`], which the simulator runs too);
//! this module holds the waiting streams' wake-ups and runs the dispatch loop. A request that arrives while nothing
//! waits and the pool has room goes straight on (one atomic load and the saturation pass that
//! shedding makes anyway). A waiting request whose stream goes away leaves the queue at once (a
//! guard cancels its ticket), so the limits count only requests somebody still waits for.
//!
//! A critical request that no endpoint is predicted to serve within its objectives waits here
//! too ([`FlowControl::wait_for_objective`]): each dispatch round with room lets it out for
//! another pick, and past `queueTTL` (or displaced, or refused a place) it goes best-effort
//! instead of being refused, as the core's [`kvpick_scheduler::SloVerdict::action`] says.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kvpick_scheduler::flow::{Arrival, Leaving, Refusal, Ticket};
use kvpick_scheduler::{FlowConfig, FlowGate, FlowId, Timestamp};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use envoy_types::pb::envoy::config::core::v3::HeaderMap;

use crate::error::Error;
use crate::telemetry as t;
use crate::{Shared, shedding};

/// Names the request's flow for fairness; believed only with `--trust-fairness-header` (the
/// gateway sets it, e.g. from the authenticated tenant, and strips what clients send).
pub const FAIRNESS_HEADER: &str = "x-gateway-inference-fairness-id";
/// Drop reasons, in [`shedding::DROP_REASON_HEADER`]: the queue had no room for the request.
pub const QUEUE_FULL: &str = "queue-full";
/// The request waited `queueTTL` without the pool showing room.
pub const QUEUE_EXPIRED: &str = "queue-ttl-expired";
/// A request of a higher priority took the request's place in a full queue.
pub const QUEUE_DISPLACED: &str = "queue-displaced";

/// The request's flow: its fairness id when that header is trusted, else the default flow.
pub fn flow_id(shared: &Shared, headers: Option<&HeaderMap>) -> FlowId {
    let trusted = shared.router.config().trusted_headers.fairness;
    FlowId::new(shedding::trusted_header(headers, FAIRNESS_HEADER, trusted))
}

/// How often the dispatch loop looks at the pool while requests wait: well under a scrape
/// interval, so room is used within a few milliseconds of a scrape showing it.
pub const DISPATCH_TICK: Duration = Duration::from_millis(5);

/// What a request waiting for its objectives does when it is let out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    /// Pick again; if still predicted to miss, wait again.
    Again,
    /// Its wait is over (`queueTTL` passed, displaced, or no place in the queue): route it to
    /// the best endpoint whatever the prediction.
    BestEffort,
}

type Wake = oneshot::Sender<Result<Look, Error>>;

struct State {
    gate: FlowGate<Wake>,
    /// The dispatch loop has ended: nothing would let a new request out.
    closed: bool,
}

/// The queue of requests waiting for room, shared by the streams and the dispatch loop.
pub struct FlowControl {
    config: FlowConfig,
    state: Mutex<State>,
    /// Mirrors the queue's length.
    waiting: AtomicUsize,
    /// Of those, the requests waiting for room, for the lock-free fast path.
    waiting_for_room: AtomicUsize,
    wake: Notify,
}

impl std::fmt::Debug for FlowControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowControl")
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Cancels a waiting request's ticket when its stream stops waiting (answered or gone).
struct Seat<'a> {
    flow: &'a FlowControl,
    ticket: Ticket,
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        let mut s = self.flow.lock();
        if s.gate.cancel(self.ticket).is_some() {
            metrics::counter!(t::FLOW_QUEUE, "outcome" => "cancelled").increment(1);
            self.flow.publish(&s);
        }
    }
}

impl FlowControl {
    /// An empty queue with `config`'s limits.
    pub fn new(config: FlowConfig) -> Self {
        Self {
            state: Mutex::new(State {
                gate: FlowGate::new(config.clone()),
                closed: false,
            }),
            config,
            waiting: AtomicUsize::new(0),
            waiting_for_room: AtomicUsize::new(0),
            wake: Notify::new(),
        }
    }

    /// Whether a request that first waited for its objectives at `since` may wait more at `now`.
    pub fn may_wait_for_objective(&self, since: Option<Timestamp>, now: Timestamp) -> bool {
        self.config.may_wait_for_objective(since, now)
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock panics on input; were it ever to, serving on with the queue
        // as it stands beats refusing all traffic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, s: &State) {
        let queue = s.gate.queue();
        self.waiting.store(queue.len(), Ordering::Relaxed);
        self.waiting_for_room
            .store(queue.waiting_for_room(), Ordering::Relaxed);
        metrics::gauge!(t::FLOW_QUEUE_REQUESTS).set(queue.len() as f64);
        metrics::gauge!(t::FLOW_QUEUE_BYTES).set(queue.bytes() as f64);
    }

    /// Lets a request of `priority` in `flow`, `bytes` long, go on: at once when
    /// nothing waits and the pool has room, else when the dispatch loop lets it out. Refuses
    /// with 429 when the queue is full, the request is displaced or its TTL passes.
    pub async fn admit(
        &self,
        shared: &Shared,
        priority: i32,
        flow: &FlowId,
        bytes: usize,
    ) -> Result<(), Error> {
        self.wait(shared, priority, flow, bytes, None)
            .await
            .map(|_| ())
    }

    /// Makes a critical request that no endpoint is predicted to serve within its objectives
    /// wait for the next dispatch round with room, whatever the pool's room now (the pods'
    /// queues drain meanwhile); `since` is when it first waited for them, which its `queueTTL`
    /// runs from. Never refuses for the queue: past its TTL, displaced or without a place, it
    /// gets [`Look::BestEffort`].
    pub async fn wait_for_objective(
        &self,
        shared: &Shared,
        priority: i32,
        flow: &FlowId,
        bytes: usize,
        since: Timestamp,
    ) -> Result<Look, Error> {
        self.wait(shared, priority, flow, bytes, Some(since)).await
    }

    /// Waits for room (`objective_since` `None`) or for an objective.
    async fn wait(
        &self,
        shared: &Shared,
        priority: i32,
        flow: &FlowId,
        bytes: usize,
        objective_since: Option<Timestamp>,
    ) -> Result<Look, Error> {
        let pool = shedding::pool_saturation(shared);
        // The gate's own rule, read without its lock.
        if objective_since.is_none()
            && self.waiting_for_room.load(Ordering::Relaxed) == 0
            && !pool.is_saturated()
        {
            return Ok(Look::Again);
        }
        let (tx, rx) = oneshot::channel();
        let ticket = {
            let mut s = self.lock();
            if s.closed {
                return Err(Error::ShuttingDown);
            }
            let now = shared.clock.now();
            let (flow, bytes) = (flow.clone(), bytes as u64);
            let arrival = match objective_since {
                Some(since) => s.gate.wait_for_objective(priority, flow, bytes, tx, since),
                None => s.gate.arrive(&pool, priority, flow, bytes, tx, now),
            };
            let queued = match arrival {
                Arrival::Go(_) => return Ok(Look::Again),
                Arrival::Queued(q) => q,
                Arrival::Refused(refusal) => {
                    let why = match refusal {
                        Refusal::TooLarge => "too_large",
                        Refusal::Full => "full",
                    };
                    metrics::counter!(t::FLOW_QUEUE, "outcome" => why).increment(1);
                    return match objective_since {
                        Some(_) => Ok(Look::BestEffort),
                        None => Err(Error::Shed(QUEUE_FULL)),
                    };
                }
            };
            let Leaving {
                refused,
                best_effort,
            } = queued.displaced;
            for d in refused {
                metrics::counter!(t::FLOW_QUEUE, "outcome" => "displaced").increment(1);
                let _ = d.send(Err(Error::Shed(QUEUE_DISPLACED)));
            }
            for d in best_effort {
                metrics::counter!(t::FLOW_QUEUE, "outcome" => "best_effort").increment(1);
                let _ = d.send(Ok(Look::BestEffort));
            }
            metrics::counter!(t::FLOW_QUEUE, "outcome" => "queued").increment(1);
            self.publish(&s);
            queued.ticket
        };
        let _seat = Seat { flow: self, ticket };
        self.wake.notify_one();
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// The dispatch loop: while requests wait, every [`DISPATCH_TICK`] (or at once when one
    /// arrives) expires the overdue and lets out as many as the pool has room for. Ends with
    /// `stop` (the ext_proc server stopping), refusing whatever still waits with a 503.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>, stop: CancellationToken) {
        loop {
            if self.waiting.load(Ordering::Relaxed) == 0 {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = self.wake.notified() => {}
                }
            }
            self.dispatch(&shared);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(DISPATCH_TICK) => {}
            }
        }
        let mut s = self.lock();
        s.closed = true;
        for waiting in s.gate.drain(shared.clock.now()) {
            metrics::counter!(t::FLOW_QUEUE, "outcome" => "shutdown").increment(1);
            let _ = waiting.send(Err(Error::ShuttingDown));
        }
        self.publish(&s);
    }

    /// One round: expire, then dispatch within the pacer's budget.
    fn dispatch(&self, shared: &Shared) {
        let pool = shedding::pool_saturation(shared);
        let now = shared.clock.now();
        let mut s = self.lock();
        let Leaving {
            refused: expired,
            best_effort,
        } = s.gate.release(&pool, now, |d| {
            let taken = d.value.send(Ok(Look::Again)).is_ok();
            if taken {
                metrics::counter!(t::FLOW_QUEUE, "outcome" => "dispatched").increment(1);
                metrics::histogram!(t::FLOW_QUEUE_WAIT).record(d.waited.as_secs_f64());
            }
            taken
        });
        for overdue in expired {
            metrics::counter!(t::FLOW_QUEUE, "outcome" => "expired").increment(1);
            // With no endpoint at all the answer is 503, not "try later".
            let e = if pool.total == 0 {
                Error::NoEndpoint("no endpoint appeared within the queue TTL".into())
            } else {
                Error::Shed(QUEUE_EXPIRED)
            };
            let _ = overdue.send(Err(e));
        }
        for overdue in best_effort {
            metrics::counter!(t::FLOW_QUEUE, "outcome" => "best_effort").increment(1);
            let _ = overdue.send(Ok(Look::BestEffort));
        }
        self.publish(&s);
    }
}
