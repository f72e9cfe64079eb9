//! One batch as it arrived: the publisher's sequence number, its payload, the memory budget it
//! holds until it is dropped (applied, discarded or cleared with its endpoint), and its events,
//! decoded once by the core's codec whether routing (bind mode, a pod with several ranks) or the
//! worker needs them first.

use bytes::Bytes;
use kvpick_scheduler::EventBatch;
use kvpick_scheduler::events::decode_batch;

use crate::budget::Charge;

#[derive(Debug)]
pub(crate) struct Batch {
    pub seq: u64,
    pub payload: Bytes,
    decoded: Option<Box<EventBatch>>,
    pub charge: Charge,
}

impl Batch {
    pub fn new(seq: u64, payload: Bytes) -> Self {
        Self {
            seq,
            payload,
            decoded: None,
            charge: Charge::none(),
        }
    }

    /// The events, decoded now unless they were already; kept for whoever asks next.
    pub fn events(&mut self) -> Result<&EventBatch, kvpick_scheduler::Error> {
        let decoded = self.take_events()?;
        Ok(self.decoded.insert(decoded))
    }

    /// The events, to apply; the payload and its budget go with the batch.
    pub fn into_events(mut self) -> Result<EventBatch, kvpick_scheduler::Error> {
        self.take_events().map(|d| *d)
    }

    /// The one place a received payload is decoded.
    fn take_events(&mut self) -> Result<Box<EventBatch>, kvpick_scheduler::Error> {
        match self.decoded.take() {
            Some(decoded) => Ok(decoded),
            None => decode_batch(&self.payload).map(Box::new),
        }
    }
}
