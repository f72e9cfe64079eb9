//! A vLLM KV-event publisher: ZMQ PUB plus the replay ROUTER, as vLLM's `ZmqEventPublisher`.
//!
//! Each batch is encoded with kvpick's codec in the layout chosen (byte for byte what vLLM's
//! msgspec writes), numbered from 0, published as `[topic, seq (u64 BE), payload]` and kept in a
//! bounded buffer of the latest batches. A DEALER sending `["", start_seq]` to the ROUTER gets
//! `["", topic, seq, payload]` for every buffered batch with `seq >= start_seq`, then the end
//! marker `["", "", -1, ""]`, as vLLM 0.32's publisher answers. [`PubCommand::Reset`] models a restarted process: numbering starts over at 0
//! and the buffer empties.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use kvpick_scheduler::events::{
    EncodeOptions, EventBatch, REPLAY_END_SEQ, encode_batch, parse_replay_request, seq_frame,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::FleetError;

/// What the engine driver sends the publisher.
#[derive(Debug)]
pub enum PubCommand {
    /// Publish a batch.
    Batch(EventBatch),
    /// Start numbering at 0 again and forget the buffer (a restarted process).
    Reset,
}

/// Where and how to publish.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// PUB bind address, e.g. `tcp://127.0.0.1:5557` (port 0: any).
    pub bind: String,
    /// ROUTER bind address for replay; none disables replay.
    pub replay_bind: Option<String>,
    /// The topic frame, `kv@<ip:port>@<model>`.
    pub topic: String,
    /// Wire layout.
    pub encoding: EncodeOptions,
    /// Batches kept for replay.
    pub replay_buffer: usize,
}

/// The bound endpoints (ports resolved).
#[derive(Clone, Debug)]
pub struct PublisherEndpoints {
    /// `tcp://ip:port` of the PUB socket.
    pub events: String,
    /// `tcp://ip:port` of the replay ROUTER.
    pub replay: Option<String>,
}

type Buffer = Arc<Mutex<VecDeque<(u64, Bytes)>>>;

fn zmq_err(what: &str, e: zeromq::ZmqError) -> FleetError {
    FleetError::Network(format!("{what}: {e}"))
}

fn message(frames: Vec<Bytes>) -> Option<ZmqMessage> {
    ZmqMessage::try_from(frames).ok()
}

/// Binds the sockets and spawns the publishing and replay tasks on `tracker`; they stop on
/// `cancel` or when `commands` closes.
pub async fn start(
    cfg: PublisherConfig,
    commands: mpsc::Receiver<PubCommand>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<PublisherEndpoints, FleetError> {
    let mut publisher = PubSocket::new();
    let events = publisher
        .bind(&cfg.bind)
        .await
        .map_err(|e| zmq_err(&format!("bind KV-event PUB {}", cfg.bind), e))?
        .to_string();
    let buffer: Buffer = Arc::default();
    let replay = match &cfg.replay_bind {
        None => None,
        Some(addr) => {
            let mut router = RouterSocket::new();
            let ep = router
                .bind(addr)
                .await
                .map_err(|e| zmq_err(&format!("bind KV-event replay ROUTER {addr}"), e))?;
            tracker.spawn(serve_replay(
                router,
                Bytes::from(cfg.topic.clone().into_bytes()),
                buffer.clone(),
                cancel.clone(),
            ));
            Some(ep.to_string())
        }
    };
    tracker.spawn(publish(publisher, cfg, buffer, commands, cancel));
    Ok(PublisherEndpoints { events, replay })
}

async fn publish(
    mut socket: PubSocket,
    cfg: PublisherConfig,
    buffer: Buffer,
    mut commands: mpsc::Receiver<PubCommand>,
    cancel: CancellationToken,
) {
    let topic = Bytes::from(cfg.topic.into_bytes());
    let mut seq = 0u64;
    loop {
        let cmd = tokio::select! {
            _ = cancel.cancelled() => break,
            c = commands.recv() => c,
        };
        let batch = match cmd {
            None => break,
            Some(PubCommand::Reset) => {
                seq = 0;
                buffer.lock().clear();
                continue;
            }
            Some(PubCommand::Batch(b)) => b,
        };
        let payload = match encode_batch(&batch, cfg.encoding) {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                tracing::warn!(error = %e, "KV-event batch not encodable; skipped");
                continue;
            }
        };
        let frames = vec![
            topic.clone(),
            Bytes::copy_from_slice(&seq_frame(seq)),
            payload.clone(),
        ];
        if let Some(m) = message(frames)
            && let Err(e) = socket.send(m).await
        {
            tracing::warn!(error = %e, "KV-event publish failed");
        }
        let mut buf = buffer.lock();
        if buf.len() >= cfg.replay_buffer.max(1) {
            buf.pop_front();
        }
        buf.push_back((seq, payload));
        drop(buf);
        seq += 1;
    }
    socket.close().await;
}

/// The asker's identity (the ROUTER's envelope) and the start sequence of its replay request.
fn replay_start(frames: &[Bytes]) -> Option<(Bytes, u64)> {
    let (id, request) = frames.split_first()?;
    Some((id.clone(), parse_replay_request(request).ok()?))
}

async fn serve_replay(
    mut router: RouterSocket,
    topic: Bytes,
    buffer: Buffer,
    cancel: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => break,
            m = router.recv() => m,
        };
        let frames = match received {
            Ok(m) => m.into_vec(),
            Err(e) => {
                tracing::debug!(error = %e, "replay ROUTER receive failed");
                continue;
            }
        };
        let Some((id, start)) = replay_start(&frames) else {
            tracing::warn!(
                frames = frames.len(),
                "malformed KV-event replay request ignored"
            );
            continue;
        };
        let batches: Vec<(u64, Bytes)> = buffer
            .lock()
            .iter()
            .filter(|(s, _)| *s >= start)
            .cloned()
            .collect();
        let batches = batches.into_iter().map(|(seq, p)| (topic.clone(), seq, p));
        let end = (Bytes::new(), REPLAY_END_SEQ, Bytes::new());
        for (topic, seq, payload) in batches.chain([end]) {
            let frames = vec![
                id.clone(),
                Bytes::new(),
                topic,
                Bytes::copy_from_slice(&seq_frame(seq)),
                payload,
            ];
            let sent = tokio::select! {
                _ = cancel.cancelled() => return,
                r = async {
                    match message(frames) {
                        Some(m) => router.send(m).await.is_ok(),
                        None => false,
                    }
                } => r,
            };
            if !sent {
                break; // the asker went away
            }
        }
    }
    router.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_requests_with_and_without_delimiter() {
        let id = Bytes::from_static(b"peer");
        let seq = Bytes::copy_from_slice(&seq_frame(7));
        assert_eq!(
            replay_start(&[id.clone(), Bytes::new(), seq.clone()]),
            Some((id.clone(), 7))
        );
        assert_eq!(replay_start(&[id.clone(), seq]), Some((id.clone(), 7)));
        assert_eq!(replay_start(&[id.clone(), Bytes::from_static(b"x")]), None);
        assert_eq!(replay_start(&[id]), None);
    }
}
