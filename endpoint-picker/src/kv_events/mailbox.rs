//! Per-endpoint bounded inboxes and the run queue of the worker that drains them.
//!
//! Receivers push into an endpoint's [`Mailbox`] without waiting; a full mailbox refuses the
//! batch and flags an overflow (the worker then resynchronises the endpoint) instead of letting
//! memory grow. A mailbox with work is on its worker's run queue exactly once; the worker takes
//! a bounded slice from it and puts it back at the end if more is left, so one chatty endpoint
//! cannot starve the others sharing its worker.

use std::collections::VecDeque;
use std::sync::Arc;

use kvpick_scheduler::EndpointId;

use crate::budget::Part;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::batch::Batch;
use super::sequencer::ReplayOutcome;

/// What a receiver tells an endpoint's worker, in arrival order.
#[derive(Debug)]
pub(crate) enum Item {
    Batch(Batch),
    /// A new transport connection to the endpoint's publisher.
    Connected,
    /// The connection dropped.
    Disconnected,
}

/// A finished replay, delivered beside the bounded queue so it is never refused.
#[derive(Debug)]
pub(crate) struct ReplayDone {
    pub id: u64,
    pub outcome: ReplayOutcome,
}

/// What [`Mailbox::push`] did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// The queue was full: the item was dropped and the endpoint will be resynchronised.
    Overflow,
    /// The endpoint is gone.
    Closed,
}

/// Work taken from a mailbox in one turn.
#[derive(Debug, Default)]
pub(crate) struct Slice {
    pub overflowed: bool,
    pub replay: Option<ReplayDone>,
    pub items: Vec<Item>,
    /// Items left behind for the next turn.
    pub remaining: usize,
}

#[derive(Debug, Default)]
struct Inbox {
    items: VecDeque<Item>,
    /// Payload bytes of the queued batches.
    bytes: usize,
    replay: Option<ReplayDone>,
    overflowed: bool,
    scheduled: bool,
    closed: bool,
}

impl Inbox {
    fn has_work(&self) -> bool {
        !self.items.is_empty() || self.replay.is_some() || self.overflowed
    }
}

/// One endpoint's inbox.
#[derive(Debug)]
pub(crate) struct Mailbox {
    pub endpoint: EndpointId,
    capacity: usize,
    max_bytes: usize,
    /// The budget's KV-event part: a batch is queued only if it fits there too, and holds its
    /// charge until it is dropped.
    budget: Option<Arc<Part>>,
    inbox: Mutex<Inbox>,
    run: Arc<RunQueue>,
}

impl Mailbox {
    /// A mailbox holding at most `capacity` items and `max_bytes` bytes of payload.
    #[cfg(test)]
    pub fn new(
        endpoint: EndpointId,
        capacity: usize,
        max_bytes: usize,
        run: Arc<RunQueue>,
    ) -> Arc<Self> {
        Self::charged(endpoint, capacity, max_bytes, None, run)
    }

    /// A mailbox holding at most `capacity` items and `max_bytes` bytes of payload, each batch
    /// also charged to `budget`.
    pub fn charged(
        endpoint: EndpointId,
        capacity: usize,
        max_bytes: usize,
        budget: Option<Arc<Part>>,
        run: Arc<RunQueue>,
    ) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            capacity: capacity.max(1),
            max_bytes,
            budget,
            inbox: Mutex::new(Inbox::default()),
            run,
        })
    }

    /// Queues an item, or refuses it when full (flagging the overflow) or closed.
    pub fn push(self: &Arc<Self>, mut item: Item) -> Pushed {
        let mut inbox = self.inbox.lock();
        if inbox.closed {
            return Pushed::Closed;
        }
        let size = item_bytes(&item);
        let pushed = if inbox.items.len() >= self.capacity
            || inbox.bytes + size > self.max_bytes
            || !self.charge(&mut item)
        {
            inbox.overflowed = true;
            Pushed::Overflow
        } else {
            inbox.bytes += size;
            inbox.items.push_back(item);
            Pushed::Queued
        };
        self.schedule(&mut inbox);
        pushed
    }

    /// Charges a batch to the budget, if there is one; `false` when it does not fit.
    fn charge(&self, item: &mut Item) -> bool {
        match (&self.budget, item) {
            (Some(part), Item::Batch(batch)) => match part.try_charge(batch.payload.len()) {
                Some(charge) => {
                    batch.charge = charge;
                    true
                }
                None => false,
            },
            _ => true,
        }
    }

    /// Hands a replay's outcome to the worker; a closed mailbox drops it.
    pub fn deliver(self: &Arc<Self>, done: ReplayDone) {
        let mut inbox = self.inbox.lock();
        if !inbox.closed {
            inbox.replay = Some(done);
            self.schedule(&mut inbox);
        }
    }

    /// Takes up to `max` items plus any overflow flag and replay outcome.
    pub fn take(&self, max: usize) -> Slice {
        let mut inbox = self.inbox.lock();
        let n = inbox.items.len().min(max);
        let items: Vec<Item> = inbox.items.drain(..n).collect();
        inbox.bytes -= items.iter().map(item_bytes).sum::<usize>();
        Slice {
            overflowed: std::mem::take(&mut inbox.overflowed),
            replay: inbox.replay.take(),
            items,
            remaining: inbox.items.len(),
        }
    }

    /// After a turn: back on the run queue if work is left, else unscheduled.
    pub fn finish_turn(self: &Arc<Self>) {
        let mut inbox = self.inbox.lock();
        inbox.scheduled = false;
        if !inbox.closed && inbox.has_work() {
            self.schedule(&mut inbox);
        }
    }

    /// Refuses everything from now on and drops what is queued.
    pub fn close(&self) {
        let mut inbox = self.inbox.lock();
        inbox.closed = true;
        inbox.items = VecDeque::new();
        inbox.bytes = 0;
        inbox.replay = None;
    }

    /// Whether items were refused since the last [`Mailbox::take`].
    pub fn overflow_pending(&self) -> bool {
        self.inbox.lock().overflowed
    }

    /// Items queued now.
    #[cfg(test)]
    pub fn depth(&self) -> usize {
        self.inbox.lock().items.len()
    }

    fn schedule(self: &Arc<Self>, inbox: &mut Inbox) {
        if !inbox.scheduled {
            inbox.scheduled = true;
            self.run.ready.lock().push_back(Arc::clone(self));
            self.run.notify.notify_one();
        }
    }
}

fn item_bytes(item: &Item) -> usize {
    match item {
        Item::Batch(batch) => batch.payload.len(),
        Item::Connected | Item::Disconnected => 0,
    }
}

/// The mailboxes with work, for one worker. Holds each at most once, so it is bounded by the
/// number of endpoints the worker serves.
#[derive(Debug, Default)]
pub(crate) struct RunQueue {
    ready: Mutex<VecDeque<Arc<Mailbox>>>,
    notify: Notify,
}

impl RunQueue {
    /// The next mailbox with work, waiting for one.
    pub async fn next(&self) -> Arc<Mailbox> {
        loop {
            if let Some(mailbox) = self.ready.lock().pop_front() {
                return mailbox;
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn batch(seq: u64) -> Item {
        Item::Batch(Batch::new(seq, Bytes::new()))
    }

    fn seqs(slice: &Slice) -> Vec<u64> {
        let seq = |i: &Item| match i {
            Item::Batch(b) => b.seq,
            _ => u64::MAX,
        };
        slice.items.iter().map(seq).collect()
    }

    #[tokio::test]
    async fn bounded_fair_and_closable() {
        let run = Arc::new(RunQueue::default());
        let id = |n| EndpointId::new(n).unwrap();
        let (a, b) = (
            Mailbox::new(id(1), 3, 1 << 20, run.clone()),
            Mailbox::new(id(2), 3, 1 << 20, run.clone()),
        );
        for seq in 0..4 {
            let want = if seq < 3 {
                Pushed::Queued
            } else {
                Pushed::Overflow
            };
            assert_eq!(a.push(batch(seq)), want);
        }
        assert_eq!(b.push(batch(7)), Pushed::Queued);
        // `a` is scheduled once however many items it got; `b` comes next.
        let first = run.next().await;
        assert_eq!(first.endpoint, id(1));
        let slice = first.take(2);
        assert!(slice.overflowed);
        assert_eq!((seqs(&slice), slice.remaining), (vec![0, 1], 1));
        first.finish_turn();
        assert_eq!(run.next().await.endpoint, id(2));
        let again = run.next().await;
        assert_eq!(seqs(&again.take(8)), vec![2]);
        again.finish_turn();
        // Bytes bound too: 2 items of 6 bytes fit in 12, a third does not.
        let c = Mailbox::new(id(3), 10, 12, run.clone());
        let sized = |n: usize| Item::Batch(Batch::new(0, Bytes::from(vec![0u8; n])));
        assert_eq!(c.push(sized(6)), Pushed::Queued);
        assert_eq!(c.push(sized(6)), Pushed::Queued);
        assert_eq!(c.push(sized(1)), Pushed::Overflow);
        assert_eq!(c.take(1).items.len(), 1);
        assert_eq!(c.push(sized(6)), Pushed::Queued);
        // The budget bounds all mailboxes together, and a batch gives its charge back when
        // dropped.
        let part = Part::new("test", 10);
        let d = Mailbox::charged(id(4), 10, 100, Some(part.clone()), run.clone());
        let e = Mailbox::charged(id(5), 10, 100, Some(part.clone()), run.clone());
        assert_eq!(d.push(sized(6)), Pushed::Queued);
        assert_eq!(e.push(sized(6)), Pushed::Overflow);
        assert_eq!(part.used(), 6);
        drop(d.take(1));
        assert_eq!((part.used(), e.push(sized(6))), (0, Pushed::Queued));
        a.close();
        assert_eq!(a.push(batch(9)), Pushed::Closed);
        assert_eq!(a.depth(), 0);
    }
}
