//! The replay client: asks a pod's replay ROUTER for its buffered batches from a sequence number
//! on (DEALER sends `["", start_seq]`; the pod answers one message per batch, then the end
//! marker). A fresh DEALER per request, so a late answer to an abandoned request cannot mix in.
//! Bounded in time and in bytes; the framing is the codec's ([`parse_replay_reply`]).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use kvpick_scheduler::events::{ReplayReply, parse_replay_reply, replay_request};
use tokio::time::Instant;
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use super::batch::Batch;
use super::guard::{self, Limits};
use super::metrics::IngestMetrics;
use super::subscriber::count_end;

/// Bounds of one replay.
#[derive(Clone, Debug)]
pub(crate) struct ReplayBounds {
    pub connect_timeout: Duration,
    /// From request to end marker.
    pub timeout: Duration,
    /// Payload bytes over all replies.
    pub max_bytes: usize,
    pub limits: Limits,
    /// The budget's KV-event part: every reply is charged as it arrives.
    pub budget: std::sync::Arc<crate::budget::Part>,
}

/// Every batch the pod still buffers from `from` on, in order, or why not.
pub(crate) async fn fetch(
    addr: SocketAddr,
    from: u64,
    bounds: ReplayBounds,
    metrics: &IngestMetrics,
) -> Result<Vec<Batch>, String> {
    let deadline = Instant::now() + bounds.timeout;
    let link = guard::dial(addr, bounds.limits, bounds.connect_timeout)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let timeout = bounds.timeout;
    let result = tokio::time::timeout_at(deadline, exchange(&link.endpoint, from, bounds)).await;
    count_end(metrics, link.close().await);
    result.map_err(|_| format!("no end marker from {addr} within {timeout:?}"))?
}

async fn exchange(endpoint: &str, from: u64, bounds: ReplayBounds) -> Result<Vec<Batch>, String> {
    let mut options = SocketOptions::default();
    options.connect_timeout(bounds.connect_timeout);
    let mut dealer = DealerSocket::with_options(options);
    dealer
        .connect(endpoint)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let request: Vec<Bytes> = replay_request(from).into_iter().map(Bytes::from).collect();
    let request = ZmqMessage::try_from(request).map_err(|e| format!("request: {e}"))?;
    dealer
        .send(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut batches: Vec<Batch> = Vec::new();
    let mut bytes = 0usize;
    loop {
        let frames = dealer
            .recv()
            .await
            .map_err(|e| format!("recv: {e}"))?
            .into_vec();
        let (seq, payload) = match parse_replay_reply(&frames).map_err(|e| e.to_string())? {
            ReplayReply::End => return Ok(batches),
            ReplayReply::Batch(message) => (message.seq, message.payload.clone()),
        };
        if seq < from || batches.last().is_some_and(|b| b.seq >= seq) {
            return Err(format!(
                "replayed seq {seq} out of order (asked from {from})"
            ));
        }
        bytes += payload.len();
        if bytes > bounds.max_bytes {
            return Err(format!("replay exceeds {} bytes", bounds.max_bytes));
        }
        let mut batch = Batch::new(seq, payload);
        batch.charge = bounds
            .budget
            .try_charge(batch.payload.len())
            .ok_or("the memory budget for KV events is spent")?;
        batches.push(batch);
    }
}
