//! vLLM V1-style scheduling of one step, and its completion.
//!
//! Per step, with a budget of `max_num_batched_tokens`:
//! 1. Running sequences first, in order: each gets what it still has to compute (a decode: 1 token;
//!    an unfinished prefill: the rest of its prompt), cut to the budget. If its blocks cannot be
//!    allocated, the *last* running sequence is preempted (blocks freed, progress reset, back to the
//!    front of the waiting queue) until they can, or until it is itself the one preempted.
//! 2. If nothing was preempted, waiting sequences in FCFS order while budget and `max_num_seqs`
//!    allow: the longest cached prefix of full blocks is taken (at least one token is always
//!    computed), the rest is scheduled as a chunk; the queue stops at the first one that does not
//!    get its blocks (no skipping ahead).
//!
//! At completion, newly full blocks are cached (emitting `BlockStored`) and every sequence whose KV
//! is caught up samples a token.

use kvpick_scheduler::events::{BlockStored, EngineHash, ExtraKey, KvEvent, Medium};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::{Engine, EngineSink, Seq};
use crate::clock::SimTime;
use crate::trace::tokens;

/// Root of an engine's hash chain for a cache partition (model or LoRA adapter).
pub(super) fn partition_root(hash_seed: u64, partition: &str) -> u64 {
    let mut buf = hash_seed.to_le_bytes().to_vec();
    buf.extend_from_slice(partition.as_bytes());
    xxh3_64(&buf)
}

/// The engine's own chained block hash: not kvpick's key (different seed and mixing), as vLLM's
/// `sha256`/`hash_fn` chain is not, so the index must map engine hashes to its keys as in production.
fn block_hash(parent: u64, block: &[u32]) -> u64 {
    xxh3_64_with_seed(
        bytemuck::cast_slice(block),
        parent.rotate_left(29) ^ 0x0ddb_a11c_0ffe_e5e7,
    )
}

impl Seq {
    fn len(&self) -> u32 {
        self.tokens.len() as u32
    }

    /// Extends `hashes` over every full block of `tokens`.
    fn hash_full_blocks(&mut self, bs: usize) {
        let full = self.tokens.len() / bs;
        while self.hashes.len() < full {
            let i = self.hashes.len();
            let parent = if i == 0 {
                self.root
            } else {
                self.hashes[i - 1]
            };
            self.hashes
                .push(block_hash(parent, &self.tokens[i * bs..(i + 1) * bs]));
        }
    }
}

impl Engine {
    fn seq(&self, slot: usize) -> &Seq {
        self.seqs[slot]
            .as_ref()
            .unwrap_or_else(|| unreachable!("live slot {slot}"))
    }

    fn seq_mut(&mut self, slot: usize) -> &mut Seq {
        self.seqs[slot]
            .as_mut()
            .unwrap_or_else(|| unreachable!("live slot {slot}"))
    }

    /// Blocks `slot` needs in total to hold `tokens` tokens, minus those it has.
    fn blocks_short(&self, slot: usize, tokens: u32) -> u32 {
        let need = tokens.div_ceil(self.block_size.get());
        need.saturating_sub(self.seq(slot).blocks.len() as u32)
    }

    fn grow(&mut self, slot: usize, n: u32) {
        for _ in 0..n {
            let b = self
                .cache
                .allocate(&mut self.events)
                .unwrap_or_else(|| unreachable!("free blocks were checked"));
            self.seq_mut(slot).blocks.push(b);
        }
    }

    fn preempt(&mut self, slot: usize, sink: &mut impl EngineSink) {
        let seq = self.seqs[slot].as_mut().unwrap_or_else(|| unreachable!());
        let blocks = std::mem::take(&mut seq.blocks);
        seq.computed = 0;
        seq.registered = 0;
        seq.scheduled = 0;
        let id = seq.id;
        self.cache.release(&blocks);
        self.waiting.push_front(slot);
        self.stats.preemptions += 1;
        sink.preempted(id);
    }

    pub(super) fn schedule(&mut self, now: SimTime, sink: &mut impl EngineSink) {
        self.batch.clear();
        self.shape = Default::default();
        let mut budget = self.profile.max_num_batched_tokens;
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let slot = self.running[i];
            let (len, computed) = (self.seq(slot).len(), self.seq(slot).computed);
            let n = (len - computed).min(budget);
            let short = self.blocks_short(slot, computed + n);
            let mut fits = true;
            while short > self.cache.free_blocks() {
                let victim = self.running.pop().unwrap_or_else(|| unreachable!());
                self.preempt(victim, sink);
                preempted = true;
                if victim == slot {
                    fits = false;
                    break;
                }
            }
            if !fits {
                break;
            }
            self.grow(slot, short);
            self.take(slot, n);
            budget -= n;
            i += 1;
        }
        let bs = self.block_size.tokens();
        while !preempted
            && budget > 0
            && self.running.len() < self.profile.max_num_seqs as usize
            && let Some(&slot) = self.waiting.front()
        {
            // Longest cached prefix, keeping at least one token to compute.
            let seq = self.seqs[slot].as_mut().unwrap_or_else(|| unreachable!());
            seq.hash_full_blocks(bs);
            let max_hit = (seq.len() as usize - 1) / bs;
            let hit_blocks = self.cache.prefix_hits(&seq.hashes[..max_hit]);
            let hit_tokens = (hit_blocks * bs) as u32;
            // KV pulled from a prefill pod counts as computed, in blocks of its own.
            let start = hit_tokens.max(seq.transferred.min(seq.len() - 1));
            let n = (seq.len() - start).min(budget);
            let new_blocks = (start + n).div_ceil(bs as u32) - hit_blocks as u32;
            let revived = seq.hashes[..hit_blocks]
                .iter()
                .filter(|h| {
                    self.cache
                        .lookup(**h)
                        .is_some_and(|b| self.cache.is_free(b))
                })
                .count() as u32;
            if new_blocks + revived > self.cache.free_blocks() {
                break;
            }
            self.waiting.pop_front();
            let hits: Vec<_> = seq.hashes[..hit_blocks]
                .iter()
                .filter_map(|h| self.cache.lookup(*h))
                .collect();
            for &b in &hits {
                self.cache.acquire(b);
            }
            let seq = self.seqs[slot].as_mut().unwrap_or_else(|| unreachable!());
            seq.blocks = hits;
            seq.computed = start;
            seq.transferred = 0;
            seq.registered = hit_blocks as u32;
            if !seq.admitted {
                seq.admitted = true;
                sink.admitted(seq.id, hit_tokens, now);
            }
            self.grow(slot, new_blocks);
            self.running.push(slot);
            self.take(slot, n);
            budget -= n;
        }
    }

    /// Puts `n` tokens of `slot` into the batch.
    fn take(&mut self, slot: usize, n: u32) {
        let seq = self.seqs[slot].as_mut().unwrap_or_else(|| unreachable!());
        seq.scheduled = n;
        let p = seq.computed as u64;
        let prompt_len = seq.len() - seq.generated;
        if seq.computed >= prompt_len && n == 1 {
            self.shape.decode_seqs += 1;
            self.shape.decode_context += p + 1;
        } else {
            let n = n as u64;
            self.shape.prefill_tokens += n;
            self.shape.attention_pairs += n * p + n * (n + 1) / 2;
        }
        self.batch.push(slot);
    }

    pub(super) fn complete(&mut self, now: SimTime, sink: &mut impl EngineSink) {
        let bs = self.block_size.tokens();
        let mut finished = Vec::new();
        let batch = std::mem::take(&mut self.batch);
        for &slot in &batch {
            let seq = self.seqs[slot].as_mut().unwrap_or_else(|| unreachable!());
            if seq.scheduled == 0 {
                continue; // preempted after being scheduled in this step
            }
            seq.computed += seq.scheduled;
            seq.scheduled = 0;
            // Cache the blocks that became full.
            seq.hash_full_blocks(bs);
            let full = (seq.computed as usize / bs).min(seq.blocks.len());
            let mut run: Option<BlockStored> = None;
            for b in seq.registered as usize..full {
                let hash = seq.hashes[b];
                if let Some(twin) = self.cache.lookup(hash) {
                    // Another request computed the same block meanwhile: share its cached copy
                    // and free ours, so every block this one holds past its prefix stays cached.
                    self.cache.acquire(twin);
                    self.cache.release(&[seq.blocks[b]]);
                    seq.blocks[b] = twin;
                    if let Some(r) = run.take() {
                        self.events.push(KvEvent::BlockStored(r));
                    }
                } else if self.cache.register(seq.blocks[b], hash) {
                    let stored = run.get_or_insert_with(|| BlockStored {
                        parent_block_hash: (b > 0).then(|| EngineHash(seq.hashes[b - 1])),
                        block_size: bs as u32,
                        medium: Some(Medium::Gpu),
                        lora_name: seq.lora.as_deref().map(str::to_owned),
                        // As vLLM 0.32 fills them: one extra-keys entry per block (the LoRA name
                        // when there is one), KV-cache group 0, full attention.
                        extra_keys: Some(Vec::new()),
                        group_idx: Some(0),
                        kv_cache_spec_kind: Some("full_attention".to_owned()),
                        ..Default::default()
                    });
                    stored.block_hashes.push(EngineHash(hash));
                    if let Some(keys) = stored.extra_keys.as_mut() {
                        keys.push(
                            seq.lora
                                .as_deref()
                                .map(|l| vec![ExtraKey::Str(l.to_owned())]),
                        );
                    }
                    stored
                        .token_ids
                        .extend_from_slice(&seq.tokens[b * bs..(b + 1) * bs]);
                } else if let Some(r) = run.take() {
                    self.events.push(KvEvent::BlockStored(r));
                }
            }
            if let Some(r) = run {
                self.events.push(KvEvent::BlockStored(r));
            }
            seq.registered = full as u32;
            if seq.computed < seq.len() {
                continue; // a prefill chunk: no token yet
            }
            // Caught up: sample a token.
            if seq.generated == 0 {
                sink.first_token(seq.id, now);
            } else {
                sink.token(seq.id, now.micros().saturating_sub(seq.last_token.micros()));
            }
            seq.last_token = now;
            seq.generated += 1;
            self.stats.decode_tokens += 1;
            if seq.generated >= seq.output_target {
                finished.push(slot);
            } else {
                let t = tokens::token(seq.output_id, seq.generated - 1);
                seq.tokens.push(t);
            }
        }
        self.stats.prefill_tokens += self.shape.prefill_tokens;
        self.batch = batch;
        if finished.is_empty() {
            return;
        }
        for slot in finished {
            let Some(seq) = self.seqs[slot].take() else {
                continue;
            };
            self.cache.release(&seq.blocks);
            self.free_slots.push(slot);
            sink.finished(seq.id, now);
        }
        let seqs = &self.seqs;
        self.running.retain(|&s| seqs[s].is_some());
    }
}
