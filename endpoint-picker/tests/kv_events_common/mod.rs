//! What the KV-event ingestion tests share: a harness around [`KvEvents`], a publisher that
//! speaks vLLM's wire format through the codec's encoder (PUB plus a ROUTER replay server that
//! behaves like vLLM's), batch builders and index probes. Real sockets on 127.0.0.1 only.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kvpick_epp::kv_events::{KvEvents, KvEventsConfig, KvEventsHandle, KvSource};
use kvpick_scheduler::EventsState;
use kvpick_scheduler::events::{
    BlockRemoved, BlockStored, EncodeOptions, EngineHash, EventBatch, KvEvent, Medium, Topic,
    encode_batch, seq_frame,
};
use kvpick_scheduler::keys::{BlockSize, Partition, block_keys};
use kvpick_scheduler::{EndpointId, EndpointSet, IndexConfig, KvIndex, PrefixMatches};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeromq::prelude::*;
use zeromq::{PubSocket, RouterSocket, ZmqMessage};

pub const MODEL: &str = "test-model";
pub const BS: u32 = 16;

/// Settings that make reconnects and replays quick enough for tests.
pub fn config() -> KvEventsConfig {
    KvEventsConfig {
        connect_timeout: Duration::from_millis(500),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        replay_timeout: Duration::from_secs(2),
        replay_cooldown: Duration::from_millis(300),
        stats_interval: Duration::from_millis(100),
        ..KvEventsConfig::default()
    }
}

pub fn id(n: u32) -> EndpointId {
    EndpointId::new(n).unwrap()
}

pub fn source(
    n: u32,
    address: &str,
    events: Option<SocketAddr>,
    replay: Option<SocketAddr>,
) -> KvSource {
    KvSource {
        endpoint: id(n),
        address: address.parse().unwrap(),
        model: MODEL.into(),
        kv_events: events.map(|a| format!("tcp://{a}")),
        kv_replay: replay.map(|a| format!("tcp://{a}")),
        rank: 0,
    }
}

/// Ingestion running against its own index.
pub struct Harness {
    pub index: Arc<KvIndex>,
    pub handle: KvEventsHandle,
    pub sources: watch::Sender<Vec<KvSource>>,
    pub bound: Vec<SocketAddr>,
    kv: Option<KvEvents>,
    shutdown: CancellationToken,
}

impl Harness {
    pub async fn start(config: KvEventsConfig, sources: Vec<KvSource>) -> Self {
        Self::with_index(config, IndexConfig::default(), sources).await
    }

    pub async fn with_index(
        config: KvEventsConfig,
        index: IndexConfig,
        sources: Vec<KvSource>,
    ) -> Self {
        let index = Arc::new(KvIndex::new(index));
        let (tx, rx) = watch::channel(sources);
        let shutdown = CancellationToken::new();
        let kv = KvEvents::start(config, Arc::clone(&index), rx, shutdown.clone())
            .await
            .expect("ingestion starts");
        Self {
            index,
            handle: kv.handle(),
            sources: tx,
            bound: kv.bound().to_vec(),
            kv: Some(kv),
            shutdown,
        }
    }

    /// Blocks of `tokens` (from block 0) endpoint `n` holds, and their tier-weighted sum.
    pub fn held(&self, n: u32, tokens: &[u32]) -> (u32, f32) {
        let keys: Vec<_> = block_keys(
            Partition::model(MODEL).root(),
            tokens,
            BlockSize::new(BS).unwrap(),
        )
        .collect();
        let mut out = PrefixMatches::default();
        let candidates: EndpointSet = [id(n)].into_iter().collect();
        self.index.lookup(&keys, &candidates, &mut out);
        out.get(id(n)).map_or((0, 0.0), |m| (m.blocks, m.weighted))
    }

    pub fn blocks(&self, n: u32, tokens: &[u32]) -> u32 {
        self.held(n, tokens).0
    }

    pub fn state(&self, n: u32) -> EventsState {
        self.handle.state(id(n))
    }

    pub fn stats(&self, n: u32) -> kvpick_epp::kv_events::EndpointStats {
        self.handle.endpoint_stats(id(n)).unwrap_or_default()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(kv) = self.kv.take() {
            tokio::time::timeout(Duration::from_secs(5), kv.join())
                .await
                .expect("ingestion shuts down promptly");
        }
    }
}

/// Polls `ready` until it holds, or fails the test with `what` after `within`.
pub async fn wait_for(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub const WAIT: Duration = Duration::from_secs(5);

/// `blocks` blocks of distinct tokens, chain `chain` (tokens never collide across chains).
pub fn tokens(chain: u32, blocks: u32) -> Vec<u32> {
    (0..blocks * BS).map(|i| chain * 1_000_000 + i).collect()
}

/// Engine hashes of chain `chain`, one per block.
pub fn hashes(chain: u32, blocks: u32) -> Vec<EngineHash> {
    (0..blocks)
        .map(|i| EngineHash(u64::from(chain) << 32 | u64::from(i) | 1 << 63))
        .collect()
}

/// `BlockStored` for blocks `from..to` of chain `chain` (parent: block `from - 1`).
pub fn stored(chain: u32, from: u32, to: u32, medium: Option<Medium>) -> KvEvent {
    let all = tokens(chain, to);
    let h = hashes(chain, to);
    KvEvent::BlockStored(BlockStored {
        block_hashes: h[from as usize..].to_vec(),
        parent_block_hash: from.checked_sub(1).map(|p| h[p as usize]),
        token_ids: all[(from * BS) as usize..].to_vec(),
        block_size: BS,
        medium,
        ..BlockStored::default()
    })
}

pub fn removed(chain: u32, from: u32, to: u32) -> KvEvent {
    KvEvent::BlockRemoved(BlockRemoved {
        block_hashes: hashes(chain, to)[from as usize..].to_vec(),
        ..BlockRemoved::default()
    })
}

pub fn batch(events: Vec<KvEvent>) -> EventBatch {
    EventBatch {
        ts: 1_700_000_000.5,
        events,
        data_parallel_rank: None,
    }
}

/// The (seq, payload) history a replay server answers from.
pub type History = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// A vLLM-like publisher: PUB (bound, or connected to a bound kvpick), a sequence counter, and
/// the history its replay server (if started) answers from.
pub struct Publisher {
    socket: PubSocket,
    pub addr: Option<SocketAddr>,
    pub topic: String,
    pub opts: EncodeOptions,
    pub rank: Option<u32>,
    pub next_seq: u64,
    pub history: History,
    replay: Option<(SocketAddr, JoinHandle<()>)>,
    /// Bind mode from another loopback address: the relay that connects from it.
    forward: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Binds a PUB on 127.0.0.1 (connect mode: kvpick connects to it).
    pub async fn bind(opts: EncodeOptions) -> Self {
        Self::bind_at("127.0.0.1:0".parse().unwrap(), opts).await
    }

    pub async fn bind_at(addr: SocketAddr, opts: EncodeOptions) -> Self {
        let mut socket = PubSocket::new();
        let bound = match socket
            .bind(&format!("tcp://{addr}"))
            .await
            .expect("PUB binds")
        {
            zeromq::Endpoint::Tcp(_, port) => SocketAddr::from(([127, 0, 0, 1], port)),
            other => panic!("unexpected endpoint {other}"),
        };
        Self::new(socket, Some(bound), String::new(), opts)
    }

    /// Connects a PUB to kvpick's bound SUB (bind mode) with `topic`. As a pod connects from its
    /// own IP, a topic naming a loopback address other than 127.0.0.1 connects from that address
    /// (through a relay bound to it); any other topic connects from 127.0.0.1.
    pub async fn connect(to: SocketAddr, topic: String, opts: EncodeOptions) -> Self {
        let from = topic
            .split('@')
            .nth(1)
            .and_then(|host| host.parse::<SocketAddr>().ok())
            .map(|a| a.ip())
            .filter(|ip| ip.is_loopback() && *ip != std::net::Ipv4Addr::LOCALHOST);
        let (target, forward) = match from {
            Some(ip) => {
                let (addr, task) = connect_from(ip, to).await;
                (addr, Some(task))
            }
            None => (to, None),
        };
        let mut socket = PubSocket::new();
        socket
            .connect(&format!("tcp://{target}"))
            .await
            .expect("PUB connects");
        let mut p = Self::new(socket, None, topic, opts);
        p.forward = forward;
        p
    }

    fn new(
        socket: PubSocket,
        addr: Option<SocketAddr>,
        topic: String,
        opts: EncodeOptions,
    ) -> Self {
        Self {
            socket,
            addr,
            topic,
            opts,
            rank: None,
            next_seq: 0,
            history: History::default(),
            replay: None,
            forward: None,
        }
    }

    /// Starts a ROUTER replay server over this publisher's history; `with_topic` answers
    /// `["", topic, seq, payload]` instead of `["", seq, payload]`.
    pub async fn serve_replay(&mut self, with_topic: bool) -> SocketAddr {
        let (addr, task) = replay_server(
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(&self.history),
            with_topic.then(|| self.topic.clone()),
        )
        .await;
        self.replay = Some((addr, task));
        addr
    }

    pub fn replay_addr(&self) -> Option<SocketAddr> {
        self.replay.as_ref().map(|(a, _)| *a)
    }

    fn encode(&mut self, mut batch: EventBatch) -> (u64, Vec<u8>) {
        batch.data_parallel_rank = batch.data_parallel_rank.or(self.rank);
        let payload = encode_batch(&batch, self.opts).expect("encodes");
        let seq = self.next_seq;
        self.next_seq += 1;
        self.history.lock().push((seq, payload.clone()));
        (seq, payload)
    }

    /// Publishes a batch with the next sequence number.
    pub async fn send(&mut self, batch: EventBatch) -> u64 {
        let (seq, payload) = self.encode(batch);
        let frames = vec![
            self.topic.clone().into_bytes(),
            seq_frame(seq).to_vec(),
            payload,
        ];
        self.send_raw(frames).await;
        seq
    }

    /// Numbers and records a batch (so replay has it) without publishing it: a lost batch.
    pub fn lose(&mut self, batch: EventBatch) -> u64 {
        self.encode(batch).0
    }

    pub async fn send_raw(&mut self, frames: Vec<Vec<u8>>) {
        let frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
        let message = ZmqMessage::try_from(frames).expect("at least one frame");
        self.socket.send(message).await.expect("PUB sends");
    }

    /// Behaves as a freshly started pod: sequence back to 0, empty history.
    pub fn restart_sequence(&mut self) {
        self.next_seq = 0;
        self.history.lock().clear();
    }

    /// Publishes empty batches until endpoint `n` has applied one: the subscription is live.
    pub async fn sync(&mut self, h: &Harness, n: u32) {
        let deadline = Instant::now() + WAIT;
        let before = h.stats(n).batches;
        while h.stats(n).batches == before {
            assert!(
                Instant::now() < deadline,
                "endpoint {n} never received a batch"
            );
            self.send(batch(Vec::new())).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn close(mut self) {
        if let Some((_, task)) = self.replay.take() {
            task.abort();
            let _ = task.await;
        }
        if let Some(task) = self.forward.take() {
            task.abort();
        }
        let _ = self.socket.close().await;
    }
}

/// A replay ROUTER like vLLM's: for `["", start_seq]` it sends every buffered batch with
/// `seq >= start_seq`, then `["", -1, ""]`.
pub async fn replay_server(
    at: SocketAddr,
    history: History,
    topic: Option<String>,
) -> (SocketAddr, JoinHandle<()>) {
    let mut router = RouterSocket::new();
    let addr = match router
        .bind(&format!("tcp://{at}"))
        .await
        .expect("ROUTER binds")
    {
        zeromq::Endpoint::Tcp(_, port) => SocketAddr::from(([127, 0, 0, 1], port)),
        other => panic!("unexpected endpoint {other}"),
    };
    let task = tokio::spawn(async move {
        while let Ok(request) = router.recv().await {
            let frames = request.into_vec();
            let [client, _, start] = frames.as_slice() else {
                continue;
            };
            let start = u64::from_be_bytes(start.as_ref().try_into().unwrap_or([0; 8]));
            let batches: Vec<(u64, Vec<u8>)> = history
                .lock()
                .iter()
                .filter(|(s, _)| *s >= start)
                .cloned()
                .collect();
            let end = (u64::MAX, Vec::new());
            for (seq, payload) in batches.into_iter().chain([end]) {
                let mut reply = vec![client.clone(), Bytes::new()];
                if let Some(t) = &topic {
                    reply.push(Bytes::from(t.clone()));
                }
                reply.extend([
                    Bytes::copy_from_slice(&seq_frame(seq)),
                    Bytes::from(payload),
                ]);
                if router
                    .send(ZmqMessage::try_from(reply).unwrap())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    (addr, task)
}

pub fn topic_for(address: &str) -> String {
    Topic::format(address, MODEL)
}

/// A ZMTP 3.0 greeting (NULL mechanism, as client) and a READY command for `socket_type`.
pub fn zmtp_hello(socket_type: &str) -> Vec<u8> {
    let mut g = vec![0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[12..16].copy_from_slice(b"NULL");
    let mut body = vec![5u8];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    g.extend([0x04, body.len() as u8]);
    g.extend(body);
    g
}

/// A message frame header announcing `len` bytes (long form), with nothing behind it.
pub fn huge_frame_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x02u8];
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// A loopback listener whose every connection is relayed to `to` from source address `from`:
/// how a test stands in for a pod connecting from its own IP. Returns the listener's address.
pub async fn connect_from(from: std::net::IpAddr, to: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut relays = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(from, 0)).unwrap();
            let Ok(mut outbound) = socket.connect(to).await else {
                continue;
            };
            relays.spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (addr, task)
}
