//! The three indexes behind one interface: each converts the workload's events into its own
//! input (timed apart, as "convert") and applies them (timed, as "apply"), and answers a query
//! given as tokens converted beforehand into its own request hashes.

use std::sync::Arc;

use dynamo_kv_router::indexer::WorkerTask;
use dynamo_kv_router::protocols::{
    BlockHashOptions, ExternalSequenceBlockHash, KvCacheEvent, KvCacheEventData, KvCacheRemoveData,
    KvCacheStoreData, KvCacheStoredBlockData, LocalBlockHash, RouterEvent,
    compute_block_hash_for_seq,
};
use dynamo_kv_router::{ConcurrentRadixTreeCompressed, SyncIndexer};
use kv_index::{ChainBlockMap, ChainIndex, ContentHash, SequenceHash, StoredBlock};
use kvpick_scheduler::events::{BlockRemoved, BlockStored, EngineHash, EventBatch, KvEvent};
use kvpick_scheduler::index::{IndexConfig, KvIndex, PrefixMatches};
use kvpick_scheduler::keys::{BlockKey, BlockSize, Partition, block_keys};
use kvpick_scheduler::pods::{EndpointId, EndpointSet};

use crate::cpu;
use crate::workload::{BLOCK, ENDPOINTS, Event};

const MODEL: &str = "bench-model";

/// kvpick's index.
pub struct Kvpick {
    index: KvIndex,
    cands: EndpointSet,
    out: PrefixMatches,
    pending: Vec<(EndpointId, EventBatch)>,
}

fn ep(i: u32) -> EndpointId {
    match EndpointId::new(i) {
        Some(e) => e,
        None => unreachable!("256 endpoints fit"),
    }
}

impl Kvpick {
    pub fn new() -> Self {
        Self {
            index: KvIndex::new(IndexConfig {
                block_size: BlockSize::new(BLOCK as u32).unwrap_or_default(),
                capacity: usize::MAX,
                ..IndexConfig::default()
            }),
            cands: (0..ENDPOINTS).map(ep).collect(),
            out: PrefixMatches::default(),
            pending: Vec::new(),
        }
    }

    pub fn entries(&self) -> usize {
        self.index.stats().entries
    }

    /// Bytes mapped outside the allocator (huge-page tables).
    pub fn mapped(&self) -> usize {
        self.index.mapped_bytes()
    }

    pub fn convert(&mut self, events: &[Event]) {
        self.pending.clear();
        self.pending.extend(events.iter().map(|e| {
            let (id, ev) = match e {
                Event::Store {
                    ep: e,
                    parent,
                    hashes,
                    tokens,
                } => (
                    *e,
                    KvEvent::BlockStored(BlockStored {
                        block_hashes: hashes.iter().map(|&h| EngineHash(h)).collect(),
                        parent_block_hash: parent.map(EngineHash),
                        token_ids: tokens.clone(),
                        block_size: BLOCK as u32,
                        ..BlockStored::default()
                    }),
                ),
                Event::Remove { ep: e, hashes } => (
                    *e,
                    KvEvent::BlockRemoved(BlockRemoved {
                        block_hashes: hashes.iter().map(|&h| EngineHash(h)).collect(),
                        ..BlockRemoved::default()
                    }),
                ),
            };
            (
                ep(id),
                EventBatch {
                    ts: 0.0,
                    events: vec![ev],
                    data_parallel_rank: None,
                },
            )
        }));
    }

    pub fn apply(&mut self) -> u64 {
        self.pending
            .iter()
            .map(|(e, b)| {
                let r = self.index.apply(*e, MODEL, b);
                r.unknown_parent + r.overflow
            })
            .sum()
    }

    pub fn request(tokens: &[u32]) -> Vec<BlockKey> {
        block_keys(
            Partition::model(MODEL).root(),
            tokens,
            BlockSize::new(BLOCK as u32).unwrap_or_default(),
        )
        .collect()
    }

    /// Per-endpoint matched blocks, in endpoint order.
    pub fn lookup(&mut self, keys: &[BlockKey], scores: &mut Vec<(u32, u32)>) {
        self.index.lookup(keys, &self.cands, &mut self.out);
        scores.clear();
        scores.extend(
            self.out
                .matches
                .iter()
                .map(|m| (m.endpoint.get(), m.blocks)),
        );
    }
}

/// One event as the chain index takes it: worker, parent, stored blocks or removed hashes.
type SgEvent = (
    u32,
    Option<SequenceHash>,
    Vec<StoredBlock>,
    Vec<SequenceHash>,
);

/// SGLang model gateway's chain index (`kv-index`).
pub struct Sglang {
    index: ChainIndex,
    maps: Vec<ChainBlockMap>,
    workers: Vec<u32>,
    pending: Vec<SgEvent>,
}

impl Sglang {
    pub fn new() -> Self {
        let index = ChainIndex::new();
        let workers = (0..ENDPOINTS)
            .map(|e| index.intern_worker(&format!("http://10.0.{}.{}:8000", e / 256, e % 256)))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_default();
        Self {
            index,
            maps: (0..ENDPOINTS).map(|_| ChainBlockMap::new()).collect(),
            workers,
            pending: Vec::new(),
        }
    }

    pub fn entries(&self) -> usize {
        self.index.entry_count()
    }

    pub fn convert(&mut self, events: &[Event]) {
        self.pending.clear();
        self.pending.extend(events.iter().map(|e| {
            match e {
                Event::Store {
                    ep,
                    parent,
                    hashes,
                    tokens,
                } => (
                    *ep,
                    parent.map(SequenceHash),
                    hashes
                        .iter()
                        .zip(tokens.chunks_exact(BLOCK))
                        .map(|(&h, t)| StoredBlock {
                            seq_hash: SequenceHash(h),
                            content_hash: kv_index::compute_content_hash(t),
                        })
                        .collect(),
                    Vec::new(),
                ),
                Event::Remove { ep, hashes } => (
                    *ep,
                    None,
                    Vec::new(),
                    hashes.iter().map(|&h| SequenceHash(h)).collect(),
                ),
            }
        }));
    }

    pub fn apply(&mut self) -> u64 {
        let mut failed = 0;
        for (ep, parent, stored, removed) in &self.pending {
            let (w, map) = (self.workers[*ep as usize], &mut self.maps[*ep as usize]);
            if !stored.is_empty() {
                failed += u64::from(self.index.apply_stored(w, stored, *parent, map).is_err());
            } else {
                self.index.apply_removed(w, removed, map);
            }
        }
        failed
    }

    pub fn request(tokens: &[u32]) -> Vec<ContentHash> {
        kv_index::compute_request_content_hashes(tokens, BLOCK)
    }

    /// Per-endpoint matched blocks (its allocation-free entry point), in endpoint order.
    pub fn lookup(&self, hashes: &[ContentHash], scores: &mut Vec<(u32, u32)>) {
        scores.clear();
        self.index
            .score_into(hashes, |h| h.0, false, |w, s| scores.push((w, s)));
        scores.sort_unstable();
    }

    /// Our endpoint of the index's worker id.
    pub fn endpoint_of(&self, worker: u32) -> u32 {
        self.workers
            .iter()
            .position(|&w| w == worker)
            .unwrap_or(usize::MAX) as u32
    }
}

/// Dynamo's concurrent radix tree (`dynamo-kv-router`), fed through its own event worker loop
/// on a thread of its own, as Dynamo runs it; a batch is applied once its last event is acked.
pub struct Dynamo {
    tree: Arc<ConcurrentRadixTreeCompressed>,
    tx: Option<flume::Sender<WorkerTask>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// `/proc/self/task/<tid>` of the worker thread (its CPU time is the apply's).
    task: String,
    pending: Vec<RouterEvent>,
    next_id: u64,
}

impl Dynamo {
    pub fn new() -> Self {
        let tree = Arc::new(ConcurrentRadixTreeCompressed::new());
        let (tx, rx) = flume::bounded::<WorkerTask>(4096);
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let worker = tree.clone();
        let thread = std::thread::spawn(move || {
            let me = std::fs::read_link("/proc/thread-self")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = tid_tx.send(me);
            let _ = worker.worker(rx, None);
        });
        let task = tid_rx.recv().unwrap_or_default();
        Self {
            tree,
            tx: Some(tx),
            thread: Some(thread),
            task: format!("/proc/{task}/schedstat"),
            pending: Vec::new(),
            next_id: 0,
        }
    }

    /// CPU time of the worker thread so far.
    pub fn worker_cpu_ns(&self) -> u64 {
        cpu::schedstat(&self.task)
    }

    fn event(&mut self, ep: u32, data: KvCacheEventData) -> RouterEvent {
        self.next_id += 1;
        RouterEvent::new(
            u64::from(ep),
            KvCacheEvent {
                event_id: self.next_id,
                data,
                dp_rank: 0,
            },
        )
    }

    pub fn convert(&mut self, events: &[Event]) {
        self.pending.clear();
        for e in events {
            let ev = match e {
                Event::Store {
                    ep,
                    parent,
                    hashes,
                    tokens,
                } => {
                    let local = compute_block_hash_for_seq(
                        tokens,
                        BLOCK as u32,
                        BlockHashOptions::default(),
                    );
                    let blocks = hashes
                        .iter()
                        .zip(local)
                        .map(|(&h, l)| KvCacheStoredBlockData {
                            block_hash: ExternalSequenceBlockHash(h),
                            tokens_hash: l,
                            mm_extra_info: None,
                        })
                        .collect();
                    let data = KvCacheEventData::Stored(KvCacheStoreData {
                        parent_hash: parent.map(ExternalSequenceBlockHash),
                        start_position: None,
                        blocks,
                    });
                    self.event(*ep, data)
                }
                Event::Remove { ep, hashes } => {
                    let data = KvCacheEventData::Removed(KvCacheRemoveData {
                        block_hashes: hashes
                            .iter()
                            .map(|&h| ExternalSequenceBlockHash(h))
                            .collect(),
                    });
                    self.event(*ep, data)
                }
            };
            self.pending.push(ev);
        }
    }

    /// Heap bytes of the pending events (freed by the worker as it applies them).
    pub fn pending_bytes(&self) -> usize {
        self.pending
            .iter()
            .map(|e| match &e.event.data {
                KvCacheEventData::Stored(s) => {
                    s.blocks.capacity() * std::mem::size_of::<KvCacheStoredBlockData>()
                }
                KvCacheEventData::Removed(r) => r.block_hashes.capacity() * 8,
                KvCacheEventData::Cleared => 0,
            })
            .sum()
    }

    /// Sends the pending events and waits until the worker has applied them.
    pub fn apply(&mut self) -> u64 {
        let Some(tx) = &self.tx else { return 0 };
        let mut events = std::mem::take(&mut self.pending);
        let Some(last) = events.pop() else { return 0 };
        for ev in events {
            let _ = tx.send(WorkerTask::Event(ev));
        }
        let (resp, ack) = tokio::sync::oneshot::channel();
        let _ = tx.send(WorkerTask::EventWithAck { event: last, resp });
        u64::from(!ack.blocking_recv().unwrap_or(false))
    }

    pub fn request(tokens: &[u32]) -> Vec<LocalBlockHash> {
        compute_block_hash_for_seq(tokens, BLOCK as u32, BlockHashOptions::default())
    }

    /// Per-endpoint matched blocks, in endpoint order.
    pub fn lookup(&self, hashes: &[LocalBlockHash], scores: &mut Vec<(u32, u32)>) {
        let found = self.tree.find_matches(hashes, false);
        scores.clear();
        scores.extend(found.scores.iter().map(|(w, &s)| (w.worker_id as u32, s)));
        scores.sort_unstable();
    }
}

impl Drop for Dynamo {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
