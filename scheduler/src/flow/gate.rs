//! The queue and its pacing as the two decisions flow control makes, in one place for the
//! endpoint picker and the simulator: what happens to an arriving request, and what one
//! dispatch round lets out.

use std::collections::VecDeque;

use super::{Dispatched, FlowConfig, FlowId, FlowQueue, Leaving, Queued, Refusal, Ticket, Wait};
use crate::saturation::PoolSaturation;
use crate::time::Timestamp;

/// Paces dispatch: the room the pool's last scrapes show, less the requests dispatched since.
#[derive(Debug, Default)]
pub struct Pacer {
    /// When each request the scrapes have not seen yet was dispatched, oldest first.
    unseen: VecDeque<Timestamp>,
}

impl Pacer {
    /// Dispatches allowed now. Requests dispatched at or before the oldest scrape that shows
    /// room count as seen by it.
    pub fn budget(&mut self, pool: &PoolSaturation) -> usize {
        while self.unseen.front().is_some_and(|t| *t <= pool.slots_as_of) {
            self.unseen.pop_front();
        }
        pool.slots.saturating_sub(self.unseen.len())
    }

    /// Records a dispatch at `now`. Called only within a budget, so what it holds stays under
    /// the pool's slots. A look at a request waiting for its objectives counts too, whether or
    /// not it is sent: that paces the looks to the pool's room.
    pub fn dispatched(&mut self, now: Timestamp) {
        self.unseen.push_back(now);
    }
}

/// What happens to an arriving request.
#[derive(Debug)]
pub enum Arrival<T> {
    /// Nothing waits and the pool has room: schedule it now (its value comes back).
    Go(T),
    /// It waits; the displaced requests are refused.
    Queued(Queued<T>),
    /// The queue has no room for it.
    Refused(Refusal),
}

/// A flow-control queue and the pacer that drains it.
#[derive(Debug)]
pub struct FlowGate<T> {
    queue: FlowQueue<T>,
    pacer: Pacer,
}

impl<T> FlowGate<T> {
    /// An empty gate with `config`'s limits.
    pub fn new(config: FlowConfig) -> Self {
        Self {
            queue: FlowQueue::new(config),
            pacer: Pacer::default(),
        }
    }

    /// The waiting requests.
    pub fn queue(&self) -> &FlowQueue<T> {
        &self.queue
    }

    /// A request of `priority` in `flow`, `bytes` long, arrives at `now` while the pool is as
    /// `pool` says: it goes at once only when nothing waits for room (no overtaking; requests
    /// waiting for their objectives are not in its way) and the pool has room.
    pub fn arrive(
        &mut self,
        pool: &PoolSaturation,
        priority: i32,
        flow: FlowId,
        bytes: u64,
        value: T,
        now: Timestamp,
    ) -> Arrival<T> {
        if self.queue.waiting_for_room() == 0 && !pool.is_saturated() {
            return Arrival::Go(value);
        }
        Self::queued(self.queue.push(priority, flow, bytes, value, now))
    }

    /// Queues a request that no endpoint is predicted to serve within its objectives
    /// ([`crate::SloAction::Queue`]), whatever the pool's room: it is let out in a dispatch
    /// round with room and picked again; if still predicted to miss, the caller queues it again
    /// with the same `since` (when it first queued), until [`FlowConfig::may_wait_for_objective`]
    /// says its TTL has passed. Refused a place, it is routed best-effort by the caller.
    pub fn wait_for_objective(
        &mut self,
        priority: i32,
        flow: FlowId,
        bytes: u64,
        value: T,
        since: Timestamp,
    ) -> Arrival<T> {
        Self::queued(
            self.queue
                .push_for(Wait::Objective, priority, flow, bytes, value, since),
        )
    }

    fn queued(pushed: Result<Queued<T>, Refusal>) -> Arrival<T> {
        match pushed {
            Ok(queued) => Arrival::Queued(queued),
            Err(refusal) => Arrival::Refused(refusal),
        }
    }

    /// Takes every waiting request out, in dispatch order (flow control is stopping).
    pub fn drain(&mut self, now: Timestamp) -> Vec<T> {
        std::iter::from_fn(|| self.queue.pop(now).map(|d| d.value)).collect()
    }

    /// Takes a waiting request out (its client went away).
    pub fn cancel(&mut self, ticket: Ticket) -> Option<T> {
        self.queue.cancel(ticket)
    }

    /// One dispatch round at `now`: takes out what waited `ttl` (returned: refused, or routed
    /// best-effort), then hands `send` requests, highest priority first, while the pacer's
    /// budget lasts. `send` says whether the request was taken (one whose client already left is
    /// not, and costs no budget). An empty pool has no room to wait for: everything goes on, to
    /// its "no endpoint".
    pub fn release(
        &mut self,
        pool: &PoolSaturation,
        now: Timestamp,
        mut send: impl FnMut(Dispatched<T>) -> bool,
    ) -> Leaving<T> {
        let expired = self.queue.expire(now);
        let budget = if pool.total == 0 {
            usize::MAX
        } else {
            self.pacer.budget(pool)
        };
        let mut sent = 0;
        while sent < budget {
            let Some(d) = self.queue.pop(now) else { break };
            if send(d) {
                sent += 1;
                self.pacer.dispatched(now);
            }
        }
        expired
    }
}
