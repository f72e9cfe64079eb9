//! A live simulated vLLM fleet: N servers that behave like vLLM on the wire, without a GPU.
//!
//! Each server (a pod, or one data-parallel rank of a pod) is a simulator [`Engine`] driven in
//! real time ([`driver`]) behind vLLM's HTTP API ([`http`]: OpenAI completions and chat, streaming
//! with usage, `/tokenize`, `/metrics` with vLLM's metric names, `/health`) and vLLM's KV-event
//! stream ([`kv_publisher`]: ZMQ PUB in any of vLLM's msgpack layouts, replay ROUTER). The fleet
//! writes the endpoints file kvpick-epp reads ([`endpoints_file`]). Every task is tracked and
//! joined by [`Fleet::shutdown`].
//!
//! Ports: with a base port `P` (HTTP), `K` (KV events) or `R` (replay), pod `i` rank `r` uses
//! `P + i·dp + r` (likewise `K`, `R`); base 0 means any free port.
//!
//! [`Engine`]: kvpick_sim::engine::Engine

pub mod driver;
pub mod endpoints_file;
pub mod histogram;
pub mod http;
pub mod kv_publisher;
pub mod openai;
pub mod respond;
pub mod sidecar;
mod sink;
pub mod stats;
pub mod tokenizer;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use kvpick_scheduler::events::{EncodeOptions, HashEncoding, Topic};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::FleetError;
use driver::{Command, Driver, DriverConfig};
use http::{ServerLimits, ServerState};
use kv_publisher::PublisherConfig;
use kvpick_sim::engine::Profile;
use kvpick_sim::transfer::KvTransfer;
use openai::ModelInfo;
use sidecar::Sidecar;
use stats::EngineStats;

/// Which of vLLM's KV-event msgpack layouts the fleet publishes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvLayout {
    /// Arrays throughout (vLLM before PR #42892).
    Array,
    /// Array batch, map events (vLLM after PR #42892, e.g. 0.26).
    ArrayMap,
    /// Maps throughout.
    Map,
}

impl KvLayout {
    /// The codec options, with int or 8-byte hashes.
    pub fn options(self, bytes_hashes: bool) -> EncodeOptions {
        let o = match self {
            KvLayout::Array => EncodeOptions::ARRAY,
            KvLayout::ArrayMap => EncodeOptions::ARRAY_BATCH_MAP_EVENTS,
            KvLayout::Map => EncodeOptions::MAP,
        };
        o.with_hashes(if bytes_hashes {
            HashEncoding::Bytes
        } else {
            HashEncoding::Int
        })
    }
}

/// How to build a fleet.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Pods.
    pub pods: usize,
    /// Data-parallel ranks per pod (each its own server).
    pub dp: u32,
    /// Address every server binds.
    pub host: IpAddr,
    /// Base HTTP port (0: any).
    pub port: u16,
    /// Base KV-event PUB port (0: any).
    pub kv_port: u16,
    /// Base replay ROUTER port (0: any).
    pub replay_port: u16,
    /// Served model name.
    pub model: Arc<str>,
    /// LoRA adapters served besides the model.
    pub loras: Vec<Arc<str>>,
    /// Engine shape and speed.
    pub profile: Profile,
    /// Simulated seconds per real second (2 runs twice as fast).
    pub speed: f64,
    /// Seed of engine hashes, response ids and fault rolls.
    pub seed: u64,
    /// KV-event wire layout.
    pub kv_encoding: EncodeOptions,
    /// Serve replay.
    pub kv_replay: bool,
    /// Batches kept for replay.
    pub replay_buffer: usize,
    /// Server bounds.
    pub limits: ServerLimits,
    /// Bound of each engine's waiting queue.
    pub max_waiting: usize,
    /// `max_tokens` when a request has none.
    pub default_max_tokens: u32,
    /// Share of generation requests failed with a 500.
    pub error_rate: f64,
    /// How long `/admin/restart` keeps a server down.
    pub restart_downtime: Duration,
    /// How text prompts become tokens.
    pub tokenizer: tokenizer::Tokenizer,
    /// P/D: the first this many pods are prefill pods (`llm-d.ai/role: prefill`), the rest
    /// decode pods (`decode`) whose routing sidecar honours `x-prefiller-host-port`; 0 is an
    /// aggregated fleet with no role labels.
    pub prefill_pods: usize,
    /// P/D: how long a prompt's KV takes to reach a decode pod.
    pub kv_transfer: KvTransfer,
}

impl FleetConfig {
    /// Defaults around `profile`: one pod on 127.0.0.1, any ports, vLLM's default layout.
    pub fn new(profile: Profile, model: &str) -> Self {
        Self {
            pods: 1,
            dp: 1,
            host: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            kv_port: 0,
            replay_port: 0,
            model: Arc::from(model),
            loras: Vec::new(),
            profile,
            speed: 1.0,
            seed: 1,
            kv_encoding: EncodeOptions::default(),
            kv_replay: true,
            replay_buffer: 10_000,
            limits: ServerLimits {
                max_body_bytes: 16 << 20,
                max_connections: 1024,
                header_timeout: Duration::from_secs(30),
            },
            max_waiting: 4096,
            default_max_tokens: 16,
            error_rate: 0.0,
            restart_downtime: Duration::from_millis(500),
            tokenizer: tokenizer::Tokenizer::Fallback,
            prefill_pods: 0,
            kv_transfer: KvTransfer::default(),
        }
    }

    /// Pod `pod`'s `llm-d.ai/role`: none in an aggregated fleet.
    pub fn role(&self, pod: usize) -> Option<&'static str> {
        match (self.prefill_pods, pod < self.prefill_pods) {
            (0, _) => None,
            (_, true) => Some("prefill"),
            (_, false) => Some("decode"),
        }
    }
}

/// One running server.
#[derive(Debug)]
pub struct Server {
    /// Pod index.
    pub pod: usize,
    /// Data-parallel rank.
    pub rank: u32,
    /// Its HTTP address.
    pub address: SocketAddr,
    /// `tcp://ip:port` of its KV-event publisher.
    pub kv_events: String,
    /// `tcp://ip:port` of its replay endpoint.
    pub kv_replay: Option<String>,
    /// Its `llm-d.ai/role` label (P/D fleets).
    pub role: Option<&'static str>,
    stats: Arc<Mutex<EngineStats>>,
    commands: mpsc::Sender<Command>,
}

impl Server {
    /// A copy of its counters.
    pub fn stats(&self) -> EngineStats {
        self.stats.lock().clone()
    }

    /// Sends a fault-injection command (stall, restart) to its engine.
    pub async fn command(&self, c: Command) -> Result<(), FleetError> {
        (self.commands.send(c).await).map_err(|_| FleetError::Network("engine stopped".into()))
    }
}

/// A running fleet.
#[derive(Debug)]
pub struct Fleet {
    servers: Vec<Server>,
    model: Arc<str>,
    block_size: u32,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Every server's address: the decode pods' sidecars call only these.
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Drop for Fleet {
    /// Stops every task even when [`Fleet::shutdown`] was not awaited (they then end unjoined).
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn port(base: u16, index: usize) -> Result<u16, FleetError> {
    if base == 0 {
        return Ok(0);
    }
    u16::try_from(base as usize + index)
        .map_err(|_| FleetError::InvalidConfig(format!("port {base} + {index} is past 65535")))
}

impl Fleet {
    /// Binds and starts every server; on error, whatever started is stopped.
    pub async fn start(cfg: FleetConfig) -> Result<Self, FleetError> {
        if cfg.pods == 0 || cfg.dp == 0 {
            return Err(FleetError::InvalidConfig(
                "--pods and --dp must be positive".into(),
            ));
        }
        if !(cfg.speed.is_finite() && cfg.speed > 0.0) {
            return Err(FleetError::InvalidConfig("--speed must be positive".into()));
        }
        cfg.profile.validate().map_err(kvpick_sim::SimError::from)?;
        cfg.kv_transfer.validate()?;
        if cfg.prefill_pods >= cfg.pods && cfg.prefill_pods > 0 {
            return Err(FleetError::InvalidConfig(
                "--prefill-pods must leave at least one decode pod".into(),
            ));
        }
        let mut fleet = Self {
            servers: Vec::new(),
            model: cfg.model.clone(),
            block_size: cfg.profile.block_size,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            peers: Arc::default(),
        };
        for pod in 0..cfg.pods {
            for rank in 0..cfg.dp {
                match fleet.start_server(&cfg, pod, rank).await {
                    Ok(s) => fleet.servers.push(s),
                    Err(e) => {
                        fleet.shutdown().await;
                        return Err(e);
                    }
                }
            }
        }
        Ok(fleet)
    }

    async fn start_server(
        &self,
        cfg: &FleetConfig,
        pod: usize,
        rank: u32,
    ) -> Result<Server, FleetError> {
        let index = pod * cfg.dp as usize + rank as usize;
        let addr = SocketAddr::new(cfg.host, port(cfg.port, index)?);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| FleetError::Network(format!("bind HTTP {addr}: {e}")))?;
        let address = listener
            .local_addr()
            .map_err(|e| FleetError::Network(format!("local address: {e}")))?;
        let zmq = |p: u16| format!("tcp://{}:{p}", cfg.host);
        let (pub_tx, pub_rx) = mpsc::channel(1024);
        let publisher = PublisherConfig {
            bind: zmq(port(cfg.kv_port, index)?),
            replay_bind: cfg
                .kv_replay
                .then(|| port(cfg.replay_port, index).map(zmq))
                .transpose()?,
            topic: Topic::format(&address.to_string(), &cfg.model),
            encoding: cfg.kv_encoding,
            replay_buffer: cfg.replay_buffer,
        };
        let endpoints =
            kv_publisher::start(publisher, pub_rx, self.cancel.clone(), &self.tracker).await?;
        let seed = xxhash_rust::xxh3::xxh3_64_with_seed(&(index as u64).to_le_bytes(), cfg.seed);
        let stats = Arc::new(Mutex::new(EngineStats::new(cfg.profile.max_model_len)));
        let up = Arc::new(AtomicBool::new(true));
        let driver = Driver::new(
            DriverConfig {
                profile: cfg.profile.clone(),
                model: cfg.model.clone(),
                hash_seed: seed,
                speed: cfg.speed,
                // vLLM stamps its rank on every batch, 0 without data parallelism.
                dp_rank: Some(rank),
                max_waiting: cfg.max_waiting,
                restart_downtime: cfg.restart_downtime,
            },
            stats.clone(),
            pub_tx,
            up.clone(),
        )?;
        let (cmd_tx, cmd_rx) = mpsc::channel(cfg.max_waiting.clamp(16, 65_536));
        self.tracker.spawn(driver.run(cmd_rx, self.cancel.clone()));
        let state = Arc::new(ServerState {
            info: ModelInfo {
                model: cfg.model.clone(),
                loras: cfg.loras.clone(),
                max_model_len: cfg.profile.max_model_len,
                default_max_tokens: cfg.default_max_tokens,
                tokenizer: cfg.tokenizer.clone(),
            },
            rank,
            block_size: cfg.profile.block_size,
            num_gpu_blocks: cfg.profile.kv_blocks,
            max_loras: cfg.loras.len() as u32,
            commands: cmd_tx.clone(),
            stats: stats.clone(),
            up,
            error_rate: Mutex::new((cfg.error_rate, http::error_rng(seed))),
            limits: cfg.limits,
            seed,
            served: AtomicU64::new(0),
            sidecar: (cfg.role(pod) == Some("decode")).then(|| {
                Sidecar::new(
                    address,
                    self.peers.clone(),
                    cfg.kv_transfer,
                    cfg.profile.block_size,
                    cfg.speed,
                )
            }),
            address,
        });
        self.peers.lock().push(address);
        self.tracker.spawn(http::serve(
            listener,
            state,
            self.cancel.clone(),
            self.tracker.clone(),
        ));
        Ok(Server {
            pod,
            rank,
            address,
            kv_events: endpoints.events,
            kv_replay: endpoints.replay,
            role: cfg.role(pod),
            stats,
            commands: cmd_tx,
        })
    }

    /// The servers, pod by pod, rank by rank.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// Served model name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// KV block size of the engines.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Token-weighted prefix-cache hit rate over every engine so far (`prefix_cache_hits /
    /// prefix_cache_queries`), and the queried tokens.
    pub fn prefix_hit_rate(&self) -> (f64, u64) {
        let (hits, queries) = self.servers.iter().fold((0, 0), |(h, q), s| {
            let st = s.stats.lock();
            (h + st.prefix_hits, q + st.prefix_queries)
        });
        (
            if queries == 0 {
                0.0
            } else {
                hits as f64 / queries as f64
            },
            queries,
        )
    }

    /// Stops every server and waits for every task.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}
