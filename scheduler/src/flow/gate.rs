//! The queue and its pacing as the two decisions flow control makes, in one place for the
//! endpoint picker and the simulator: what happens to an arriving request, and what one
//! dispatch round lets out.

use std::collections::VecDeque;

use super::{Dispatched, FlowConfig, FlowId, FlowQueue, Queued, Refusal, Ticket};
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
    /// the pool's slots.
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
    /// `pool` says: it goes at once only when nothing waits (no overtaking) and the pool has room.
    pub fn arrive(
        &mut self,
        pool: &PoolSaturation,
        priority: i32,
        flow: FlowId,
        bytes: u64,
        value: T,
        now: Timestamp,
    ) -> Arrival<T> {
        if self.queue.is_empty() && !pool.is_saturated() {
            return Arrival::Go(value);
        }
        self.enqueue(priority, flow, bytes, value, now)
    }

    /// Queues a request whatever the pool's room: one that no endpoint is predicted to serve
    /// within its objectives waits for the next dispatch round that has room, and is picked
    /// again then ([`crate::SloAction::Queue`]).
    pub fn enqueue(
        &mut self,
        priority: i32,
        flow: FlowId,
        bytes: u64,
        value: T,
        now: Timestamp,
    ) -> Arrival<T> {
        match self.queue.push(priority, flow, bytes, value, now) {
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

    /// One dispatch round at `now`: takes out what waited `ttl` (returned, to be refused), then
    /// hands `send` requests, highest priority first, while the pacer's budget lasts. `send`
    /// says whether the request was taken (one whose client already left is not, and costs no
    /// budget). An empty pool has no room to wait for: everything goes on, to its "no endpoint".
    pub fn release(
        &mut self,
        pool: &PoolSaturation,
        now: Timestamp,
        mut send: impl FnMut(Dispatched<T>) -> bool,
    ) -> Vec<T> {
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
