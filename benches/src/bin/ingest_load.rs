//! End-to-end KV-event ingestion load: vLLM-format batches published on real ZMQ PUB sockets
//! (in-process, 127.0.0.1), received by kvpick-epp's `KvEvents` (connect mode, frame guard,
//! mailboxes, workers, sequencer), decoded and applied to the `KvIndex`. Reports blocks applied
//! per second at the index, against a baseline measured in the same process: the same payloads
//! decoded and applied on one thread, with no sockets.
//!
//! ```text
//! cargo run --release -p kvpick-benches --bin ingest_load -- \
//!     [--pods 8] [--batches 2000] [--blocks 64] [--workers 2] [--rounds 3]
//! ```
//!
//! Each pod publishes `--batches` batches of one `BlockStored` each, `--blocks` blocks of 16
//! tokens per event, chained 8 events deep (prefixes of 8 × blocks), int hashes spread like
//! digests, vLLM's current layout (array batch, map events). All blocks are distinct, so every
//! block is an index insert.
#![forbid(unsafe_code)]

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kvpick_benches::index_workload::mix;
use kvpick_epp::kv_events::{KvEvents, KvEventsConfig, KvSource};
use kvpick_scheduler::events::{
    BlockStored, EncodeOptions, EngineHash, EventBatch, KvEvent, decode_batch, encode_batch,
    seq_frame,
};
use kvpick_scheduler::{EndpointId, IndexConfig, KvIndex};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};

const BLOCK: u32 = 16;
const CHAIN_EVENTS: u32 = 8;
const MODEL: &str = "bench-model";

#[derive(Debug, Clone, Copy)]
struct Args {
    pods: u32,
    batches: u32,
    blocks: u32,
    workers: usize,
    rounds: u32,
}

fn args() -> Result<Args, Box<dyn Error>> {
    let mut a = Args {
        pods: 8,
        batches: 2000,
        blocks: 64,
        workers: 2,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--pods" => a.pods = value.parse()?,
            "--batches" => a.batches = value.parse()?,
            "--blocks" => a.blocks = value.parse()?,
            "--workers" => a.workers = value.parse()?,
            "--rounds" => a.rounds = value.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    Ok(a)
}

/// Every pod's payloads, in publishing order.
fn payloads(a: Args) -> Result<Vec<Vec<Bytes>>, Box<dyn Error>> {
    let mut token = 0u32;
    let mut hash = 1u64;
    let mut pods = Vec::new();
    for _ in 0..a.pods {
        let mut out = Vec::with_capacity(a.batches as usize);
        let mut parent = None;
        for i in 0..a.batches {
            if i % CHAIN_EVENTS == 0 {
                parent = None;
            }
            let block_hashes: Vec<EngineHash> = (0..a.blocks)
                .map(|_| {
                    hash += 1;
                    EngineHash(mix(hash))
                })
                .collect();
            let n = a.blocks * BLOCK;
            let token_ids: Vec<u32> = (token..token + n).collect();
            token += n;
            let event = BlockStored {
                parent_block_hash: parent,
                block_hashes: block_hashes.clone(),
                token_ids,
                block_size: BLOCK,
                ..BlockStored::default()
            };
            parent = block_hashes.last().copied();
            let batch = EventBatch {
                ts: 1_700_000_000.0 + f64::from(i),
                events: vec![KvEvent::BlockStored(event)],
                data_parallel_rank: Some(0),
            };
            out.push(Bytes::from(encode_batch(&batch, EncodeOptions::default())?));
        }
        pods.push(out);
    }
    Ok(pods)
}

fn index() -> Arc<KvIndex> {
    Arc::new(KvIndex::new(IndexConfig::default()))
}

/// Decode + apply on one thread, no sockets: the ceiling the pipeline is compared with. Also
/// times decoding alone and applying alone (pre-decoded batches, fresh index).
fn baseline(pods: &[Vec<Bytes>]) -> Result<[(u64, Duration); 3], Box<dyn Error>> {
    let index = index();
    let start = Instant::now();
    let mut stored = 0;
    for (p, payloads) in pods.iter().enumerate() {
        let id = EndpointId::new(p as u32).ok_or("too many pods")?;
        for payload in payloads {
            stored += index.apply(id, MODEL, &decode_batch(payload)?).stored;
        }
    }
    let both = (stored, start.elapsed());
    let start = Instant::now();
    let mut decoded = Vec::new();
    for payloads in pods {
        decoded.push(
            payloads
                .iter()
                .map(|p| decode_batch(p))
                .collect::<Result<Vec<_>, _>>()?,
        );
    }
    let decode = (stored, start.elapsed());
    let index = self::index();
    let start = Instant::now();
    for (p, batches) in decoded.iter().enumerate() {
        let id = EndpointId::new(p as u32).ok_or("too many pods")?;
        for batch in batches {
            index.apply(id, MODEL, batch);
        }
    }
    let apply = (stored, start.elapsed());
    Ok([both, decode, apply])
}

struct Pod {
    socket: PubSocket,
    addr: SocketAddr,
    seq: u64,
}

impl Pod {
    async fn bind() -> Result<Self, Box<dyn Error>> {
        let mut socket = PubSocket::new();
        let addr = match socket.bind("tcp://127.0.0.1:0").await? {
            zeromq::Endpoint::Tcp(_, port) => SocketAddr::from(([127, 0, 0, 1], port)),
            other => return Err(format!("unexpected endpoint {other}").into()),
        };
        Ok(Self {
            socket,
            addr,
            seq: 0,
        })
    }

    async fn send(&mut self, payload: Bytes) -> Result<(), Box<dyn Error + Send + Sync>> {
        let frames = vec![
            Bytes::new(),
            Bytes::copy_from_slice(&seq_frame(self.seq)),
            payload,
        ];
        self.seq += 1;
        let message = ZmqMessage::try_from(frames).map_err(|_| "empty message")?;
        self.socket.send(message).await?;
        Ok(())
    }
}

/// One end-to-end round; returns blocks stored and the time from first send to last apply.
async fn round(a: Args, pods: &[Vec<Bytes>]) -> Result<(u64, Duration, String), Box<dyn Error>> {
    let index = index();
    let mut sockets = Vec::new();
    let mut sources = Vec::new();
    for p in 0..a.pods {
        let pod = Pod::bind().await?;
        sources.push(KvSource {
            endpoint: EndpointId::new(p).ok_or("too many pods")?,
            address: SocketAddr::from(([10, 0, (p >> 8) as u8, p as u8], 8000)),
            model: MODEL.into(),
            kv_events: Some(format!("tcp://{}", pod.addr)),
            kv_replay: None,
            rank: 0,
        });
        sockets.push(pod);
    }
    let config = KvEventsConfig {
        workers: a.workers,
        queue_capacity: a.batches as usize + 64,
        ..KvEventsConfig::default()
    };
    let (_tx, rx) = watch::channel(sources);
    let shutdown = CancellationToken::new();
    let kv = KvEvents::start(config, Arc::clone(&index), rx, shutdown.clone()).await?;
    let handle = kv.handle();
    // Subscriptions take: empty batches until every pod has had one applied.
    for (p, pod) in sockets.iter_mut().enumerate() {
        let id = EndpointId::new(p as u32).ok_or("too many pods")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.endpoint_stats(id).is_none_or(|s| s.batches == 0) {
            if Instant::now() > deadline {
                return Err("a pod never connected".into());
            }
            let empty = EventBatch::default();
            pod.send(Bytes::from(encode_batch(&empty, EncodeOptions::default())?))
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let expected: u64 = u64::from(a.pods) * u64::from(a.batches) * u64::from(a.blocks);
    let start = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for (pod, payloads) in sockets.into_iter().zip(pods.iter().cloned()) {
        senders.spawn(async move {
            let mut pod = pod;
            for payload in payloads {
                pod.send(payload).await?;
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(pod)
        });
    }
    let deadline = start + Duration::from_secs(120);
    while handle.totals().blocks_stored < expected {
        if Instant::now() > deadline {
            return Err(format!("stalled at {:?}", handle.totals()).into());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let elapsed = start.elapsed();
    let totals = handle.totals();
    let note = format!(
        "resets {} rejected {}",
        totals.resets, totals.blocks_rejected
    );
    while let Some(done) = senders.join_next().await {
        done?.map_err(|e| e.to_string())?;
    }
    shutdown.cancel();
    kv.join().await;
    Ok((totals.blocks_stored, elapsed, note))
}

/// CPU time this process has used (user + system), from `/proc/self/stat`: with other work
/// on the machine, CPU per block is steadier than wall-clock rates.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rate(blocks: u64, d: Duration) -> f64 {
    blocks as f64 / d.as_secs_f64()
}

fn main() -> Result<(), Box<dyn Error>> {
    let a = args()?;
    let pods = payloads(a)?;
    let bytes: usize = pods.iter().flatten().map(Bytes::len).sum();
    let batches = u64::from(a.pods) * u64::from(a.batches);
    println!(
        "workload: {} pods x {} batches x {} blocks = {} blocks, {:.1} MiB of payload ({} B/block)",
        a.pods,
        a.batches,
        a.blocks,
        batches * u64::from(a.blocks),
        bytes as f64 / (1 << 20) as f64,
        bytes as u64 / (batches * u64::from(a.blocks)),
    );
    let cpu = cpu_time();
    let [both, decode, apply] = baseline(&pods)?;
    let base_cpu = cpu_time().saturating_sub(cpu);
    let base = rate(both.0, both.1);
    println!(
        "baseline decode+apply, 1 thread, no sockets: {:.2} M blocks/s (decode alone {:.2}, apply alone {:.2}; {:.2} CPU-us/block for all three passes)",
        base / 1e6,
        rate(decode.0, decode.1) / 1e6,
        rate(apply.0, apply.1) / 1e6,
        base_cpu.as_secs_f64() * 1e6 / both.0 as f64,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rates = Vec::new();
    for r in 0..a.rounds {
        let cpu = cpu_time();
        let (stored, took, note) = runtime.block_on(round(a, &pods))?;
        let used = cpu_time().saturating_sub(cpu);
        let e2e = rate(stored, took);
        println!(
            "round {r}: {stored} blocks in {:.1} ms: {:.2} M blocks/s end to end ({:.0}% of baseline; {:.0} batches/s; {:.2} CPU-us/block incl. publisher and setup; {note})",
            took.as_secs_f64() * 1e3,
            e2e / 1e6,
            100.0 * e2e / base,
            batches as f64 / took.as_secs_f64(),
            used.as_secs_f64() * 1e6 / stored as f64,
        );
        rates.push(e2e);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    println!(
        "median end to end: {:.2} M blocks/s ({:.2}x baseline); peak RSS {:.0} MiB",
        median / 1e6,
        median / base,
        rss_mib()
    );
    Ok(())
}
