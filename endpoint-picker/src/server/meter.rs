//! Charges what the gRPC decoder buffers before kvpick sees a message.
//!
//! tonic reads a message's bytes off the HTTP/2 stream (releasing flow-control window) into its
//! own buffer until the whole message is there, and that buffer keeps its size for the stream's
//! life: a stream that ever carried a 16 MiB message holds about 16 MiB. So HTTP/2 windows alone
//! do not bound a stream; this wrapper around each request body follows the gRPC framing
//! (1-byte flag, 4-byte length, message) and charges the largest message seen so far, beyond
//! the first [`DECODE_FREE`] bytes the stream's set-aside covers, to the budget's request-body
//! bytes. A message that does not fit ends the stream with `RESOURCE_EXHAUSTED` (counted in
//! `kvpick_memory_budget_refused_total{part="request_body_bytes"}`) before its bytes are read.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::budget::{Charge, Part};

/// Bytes of one stream's decode buffer covered by its share of [`crate::budget::STREAM_BYTES`].
pub const DECODE_FREE: usize = 16 << 10;
const PREFIX: usize = 5;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body whose gRPC messages are charged as they arrive.
#[derive(Debug)]
pub struct Metered<B> {
    inner: B,
    charge: Charge,
    ceiling: usize,
    prefix: [u8; PREFIX],
    prefix_got: usize,
    /// Message bytes still to come once the prefix is in.
    remaining: usize,
    /// Bytes of the current message so far, prefix included.
    current: usize,
    /// The largest message so far: what the decoder's buffer has grown to.
    high: usize,
}

impl<B> Metered<B> {
    /// Charges `inner`'s messages to `part` (within the ceiling large bodies have: 7/8 of it).
    pub fn new(inner: B, part: &Arc<Part>) -> Self {
        Self {
            inner,
            charge: Charge::empty(part),
            ceiling: part.limit() - part.limit() / 8,
            prefix: [0; PREFIX],
            prefix_got: 0,
            remaining: 0,
            current: 0,
            high: 0,
        }
    }

    /// Follows the framing through `data`; false when the decoder's growth does not fit.
    fn account(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            let take = if self.prefix_got < PREFIX {
                let take = (PREFIX - self.prefix_got).min(data.len());
                self.prefix[self.prefix_got..self.prefix_got + take].copy_from_slice(&data[..take]);
                self.prefix_got += take;
                if self.prefix_got == PREFIX {
                    let [_, a, b, c, d] = self.prefix;
                    self.remaining = u32::from_be_bytes([a, b, c, d]) as usize;
                }
                take
            } else {
                let take = self.remaining.min(data.len());
                self.remaining -= take;
                take
            };
            self.current += take;
            data = &data[take..];
            if self.prefix_got == PREFIX {
                // A length is known: the decoder reserves it whole.
                self.high = self.high.max(self.current + self.remaining);
                if self.remaining == 0 {
                    self.prefix_got = 0;
                    self.current = 0;
                }
            }
        }
        self.high = self.high.max(self.current);
        let target = self.high.saturating_sub(DECODE_FREE);
        let more = target.saturating_sub(self.charge.held());
        more == 0 || self.charge.grow_within(more, self.ceiling)
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref()
            && !this.account(data)
        {
            tracing::debug!(
                message_bytes = this.high,
                "gRPC message refused: the memory budget is spent"
            );
            let status = tonic::Status::resource_exhausted("kvpick memory budget spent");
            return Poll::Ready(Some(Err(Box::new(status))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(len: usize) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&(len as u32).to_be_bytes());
        v.resize(PREFIX + len, 7);
        v
    }

    #[test]
    fn charges_the_largest_message_beyond_the_free_bytes_and_refuses_past_the_ceiling() {
        let part = Part::new("test_meter", 8 << 20);
        let mut m = Metered::new((), &part);
        // Small messages, split anywhere, cost nothing.
        let small = [framed(100), framed(2000)].concat();
        for piece in small.chunks(3) {
            assert!(m.account(piece));
        }
        assert_eq!(part.used(), 0);
        // A 1 MiB message is charged as soon as its length is known.
        let big = framed(1 << 20);
        assert!(m.account(&big[..6]));
        assert_eq!(part.used(), PREFIX + (1 << 20) - DECODE_FREE);
        assert!(m.account(&big[6..]));
        // A smaller one after it changes nothing (the buffer stays grown).
        assert!(m.account(&framed(10)));
        assert_eq!(part.used(), PREFIX + (1 << 20) - DECODE_FREE);
        // 7 MiB more would pass the ceiling (7/8 of 8 MiB).
        assert!(!m.account(&framed(8 << 20)[..PREFIX]));
        drop(m);
        assert_eq!(part.used(), 0, "dropping the body gives everything back");
    }
}
