//! The index against a naive model under random interleavings of store, remove, clear and
//! eviction across endpoints: same lookups for random requests and candidate sets, same counters,
//! same stats. Plus a concurrent test: readers never see impossible states while writers apply.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kvpick_scheduler::events::{
    BlockRemoved, BlockStored, EngineHash, EventBatch, ExtraKey, KvEvent, Medium,
};
use kvpick_scheduler::index::partition::{block_extras, fold_key};
use kvpick_scheduler::index::{ApplyReport, IndexConfig, KvIndex, PrefixMatches, Tiers};
use kvpick_scheduler::keys::{BlockKey, BlockSize, Partition, block_keys};
use kvpick_scheduler::pods::{EndpointId, EndpointSet};
use proptest::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

const INDEX_BS: u32 = 4;
const MODEL: &str = "m";
/// Endpoint ids spread over several bitset words.
const IDS: [u32; 5] = [0, 1, 63, 64, 130];

fn id(i: u32) -> EndpointId {
    EndpointId::new(i).unwrap()
}

// ---------------------------------------------------------------- the model

#[derive(Default, Clone)]
struct EpModel {
    /// (engine hash, part) → (key, ends an index block).
    refs: HashMap<(u64, u32), (BlockKey, bool)>,
    non_prefix: Vec<u32>,
    split: u32,
}

/// A naive index: the obvious maps, no placement, no sharding.
#[derive(Default)]
struct Model {
    holders: HashMap<BlockKey, BTreeMap<u32, u8>>,
    eps: HashMap<u32, EpModel>,
    weights: [f32; 3],
}

impl Model {
    fn hold(&mut self, ep: u32, key: BlockKey, tiers: u8, r: &mut ApplyReport) {
        let t = self.holders.entry(key).or_default().entry(ep).or_insert(0);
        if *t == 0 {
            r.stored += 1;
        }
        *t |= tiers;
    }

    /// Clears tiers; returns Some(true) if the entry went, Some(false) if reduced, None if absent.
    fn unhold(&mut self, ep: u32, key: BlockKey, tiers: u8) -> Option<bool> {
        let set = self.holders.get_mut(&key)?;
        let t = set.get_mut(&ep)?;
        *t &= !tiers;
        let gone = *t == 0;
        if gone {
            set.remove(&ep);
            if set.is_empty() {
                self.holders.remove(&key);
            }
        }
        Some(gone)
    }

    fn put(
        &mut self,
        ep: u32,
        r: (u64, u32),
        key: BlockKey,
        boundary: bool,
        rep: &mut ApplyReport,
    ) {
        let old = self
            .eps
            .entry(ep)
            .or_default()
            .refs
            .insert(r, (key, boundary));
        if let Some((old, _)) = old
            && old != key
            && self.unhold(ep, old, 7) == Some(true)
        {
            rep.removed += 1;
        }
    }

    fn apply(&mut self, ep: u32, batch: &EventBatch) -> ApplyReport {
        let mut r = ApplyReport::default();
        for ev in &batch.events {
            match ev {
                KvEvent::BlockStored(s) => self.stored(ep, s, &mut r),
                KvEvent::BlockRemoved(rm) => self.removed(ep, rm, &mut r),
                KvEvent::AllBlocksCleared => r.cleared += self.clear(ep) as u64,
            }
        }
        r
    }

    fn stored(&mut self, ep: u32, s: &BlockStored, r: &mut ApplyReport) {
        let n = s.block_hashes.len();
        let st = self.eps.entry(ep).or_default();
        let kind = s.kv_cache_spec_kind.as_deref();
        let prefix = match (kind, s.group_idx) {
            (Some(k), g) if k != "full_attention" => {
                if let Some(g) = g
                    && !st.non_prefix.contains(&g)
                {
                    st.non_prefix.push(g);
                }
                false
            }
            (Some(_), Some(g)) => {
                st.non_prefix.retain(|&x| x != g);
                true
            }
            (_, g) => !g.is_some_and(|g| st.non_prefix.contains(&g)),
        };
        if !prefix {
            r.non_prefix_group += n as u64;
            return;
        }
        let e = s.block_size;
        let (split, merge) = if e == INDEX_BS {
            (1, 1)
        } else if e > INDEX_BS && e.is_multiple_of(INDEX_BS) {
            (e / INDEX_BS, 1)
        } else if e > 0 && e < INDEX_BS && INDEX_BS.is_multiple_of(e) {
            (1, INDEX_BS / e)
        } else {
            r.block_size_mismatch += n as u64;
            return;
        };
        let lora = match (&s.lora_name, s.lora_id) {
            (Some(l), _) => Some(l.as_str()),
            (None, Some(_)) => {
                r.unknown_lora += n as u64;
                return;
            }
            _ => None,
        };
        let complete = n.min(s.token_ids.len() / e as usize);
        r.malformed += (n - complete) as u64;
        let mut parent: Option<BlockKey> = match s.parent_block_hash {
            None => None,
            Some(p) => match st.refs.get(&(p.0, split - 1)) {
                Some(&(k, true)) => Some(k),
                Some(_) => {
                    r.block_size_mismatch += complete as u64;
                    return;
                }
                None => {
                    r.unknown_parent += complete as u64;
                    return;
                }
            },
        };
        if merge == 1 {
            st.split = split;
        }
        let tiers = 1u8 << s.medium.unwrap_or_default().tier();
        let model = lora.unwrap_or(MODEL);
        let extras = |j: usize, start: bool| {
            let x = s
                .extra_keys
                .as_ref()
                .and_then(|a| a.get(j))
                .and_then(|k| k.as_deref());
            block_extras(s.lora_name.as_deref(), s.lora_id, x, start)
        };
        let root = |salt: Option<&str>| {
            Partition {
                model,
                cache_salt: salt,
            }
            .root()
        };
        let e = e as usize;
        if merge == 1 {
            for j in 0..complete {
                let x = extras(j, parent.is_none());
                let mut p = parent.unwrap_or_else(|| root(x.salt));
                for (part, chunk) in s.token_ids[j * e..(j + 1) * e]
                    .chunks_exact(INDEX_BS as usize)
                    .enumerate()
                {
                    let mut key = p.chain(chunk);
                    if part == 0
                        && let Some(f) = x.fold
                    {
                        key = fold_key(key, f);
                    }
                    self.put(ep, (s.block_hashes[j].0, part as u32), key, true, r);
                    self.hold(ep, key, tiers, r);
                    p = key;
                }
                parent = Some(p);
            }
        } else {
            let k = merge as usize;
            r.block_size_mismatch += (complete % k) as u64;
            for g in 0..complete / k {
                let first = g * k;
                let start = parent.is_none();
                let p = parent.unwrap_or_else(|| root(extras(first, true).salt));
                let mut key = p.chain(&s.token_ids[first * e..(first + k) * e]);
                for j in first..first + k {
                    if let Some(f) = extras(j, start && j == first).fold {
                        key = fold_key(key, f);
                    }
                }
                for j in first..first + k {
                    self.put(ep, (s.block_hashes[j].0, 0), key, j + 1 == first + k, r);
                }
                self.hold(ep, key, tiers, r);
                parent = Some(key);
            }
        }
    }

    fn removed(&mut self, ep: u32, rm: &BlockRemoved, r: &mut ApplyReport) {
        let st = self.eps.entry(ep).or_default().clone();
        if rm.group_idx.is_some_and(|g| st.non_prefix.contains(&g)) {
            r.non_prefix_group += rm.block_hashes.len() as u64;
            return;
        }
        let tiers = 1u8 << rm.medium.unwrap_or_default().tier();
        for h in &rm.block_hashes {
            let mut known = false;
            for part in 0..st.split.max(1) {
                let Some(&(key, _)) = self.eps[&ep].refs.get(&(h.0, part)) else {
                    continue;
                };
                known = true;
                match self.unhold(ep, key, tiers) {
                    Some(false) => {}
                    Some(true) => {
                        r.removed += 1;
                        self.eps.entry(ep).or_default().refs.remove(&(h.0, part));
                    }
                    None => {
                        self.eps.entry(ep).or_default().refs.remove(&(h.0, part));
                    }
                }
            }
            if !known {
                r.unknown_removed += 1;
            }
        }
    }

    fn clear(&mut self, ep: u32) -> usize {
        let st = self.eps.entry(ep).or_default();
        let keys: Vec<BlockKey> = st.refs.drain().map(|(_, (k, _))| k).collect();
        keys.into_iter()
            .filter(|&k| self.unhold(ep, k, 7) == Some(true))
            .count()
    }

    fn lookup(&self, keys: &[BlockKey], cands: &EndpointSet) -> Vec<(u32, u32, f64)> {
        let w = |t: u8| {
            (0..3)
                .filter(|i| t & (1 << i) != 0)
                .map(|i| self.weights[i])
                .fold(0.0f32, f32::max) as f64
        };
        let mut out = Vec::new();
        for e in cands.iter() {
            let (mut n, mut sum) = (0u32, 0.0);
            for k in keys {
                match self.holders.get(k).and_then(|s| s.get(&e.get())) {
                    Some(&t) => {
                        n += 1;
                        sum += w(t);
                    }
                    None => break,
                }
            }
            if n > 0 {
                out.push((e.get(), n, sum));
            }
        }
        out
    }

    fn holdings(&self, ep: u32) -> BTreeMap<BlockKey, u8> {
        self.holders
            .iter()
            .filter_map(|(k, s)| s.get(&ep).map(|&t| (*k, t)))
            .collect()
    }
}

// ---------------------------------------------------------------- the workload

/// Token conversations sharing prefixes, over a tiny alphabet.
fn conversations() -> Vec<Vec<u32>> {
    // 40 index blocks each, so chains cross groups (8 blocks) and windows (32 blocks).
    let base: Vec<u32> = (0..160u32).map(|i| i * 7 % 5).collect();
    let mut out = vec![base.clone()];
    for c in 1..6u32 {
        let mut t = base[..(c as usize * 28) % 150].to_vec();
        t.extend((0..160u32).map(|i| (i * c + c) % 5));
        t.truncate(160);
        out.push(t);
    }
    out
}

#[derive(Clone, Debug)]
struct Flavour {
    lora: Option<&'static str>,
    salt: Option<&'static str>,
    /// An image on this event block (folded).
    image_at: Option<usize>,
}

#[derive(Clone, Debug)]
enum Op {
    Store {
        ep: usize,
        conv: usize,
        start: usize,
        len: usize,
        size: u32,
        medium: Option<Medium>,
        flavour: usize,
        group: u8,
        bogus_parent: bool,
    },
    Remove {
        ep: usize,
        conv: usize,
        blocks: Vec<usize>,
        size: u32,
        medium: Option<Medium>,
        flavour: usize,
        group: u8,
    },
    /// Removes blocks of the `back`-th most recent store (same endpoint, content, size).
    RemoveRecent {
        back: usize,
        blocks: Vec<usize>,
        same_medium: bool,
    },
    Cleared {
        ep: usize,
    },
    ClearEndpoint {
        ep: usize,
    },
}

const FLAVOURS: [Flavour; 4] = [
    Flavour {
        lora: None,
        salt: None,
        image_at: None,
    },
    Flavour {
        lora: Some("ad"),
        salt: None,
        image_at: None,
    },
    Flavour {
        lora: None,
        salt: Some("s"),
        image_at: None,
    },
    Flavour {
        lora: None,
        salt: None,
        image_at: Some(1),
    },
];

/// vLLM's hash of event block `j` of a conversation: depends on everything before it.
fn engine_hash(conv: &[u32], f: &Flavour, size: u32, j: usize) -> u64 {
    let mut bytes = format!(
        "{:?}|{size}|",
        (f.lora, f.salt, f.image_at.filter(|&i| i <= j))
    )
    .into_bytes();
    for t in &conv[..(j + 1) * size as usize] {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    xxh3_64(&bytes)
}

fn extra_keys(f: &Flavour, start: usize, len: usize) -> Option<Vec<Option<Vec<ExtraKey>>>> {
    let keys: Vec<Option<Vec<ExtraKey>>> = (start..start + len)
        .map(|j| {
            let mut k = Vec::new();
            if let Some(l) = f.lora {
                k.push(ExtraKey::Str(l.into()));
            }
            if f.image_at == Some(j) {
                k.push(ExtraKey::Array(vec![
                    ExtraKey::Str("img".into()),
                    ExtraKey::Int(0),
                ]));
            }
            if j == 0
                && let Some(s) = f.salt
            {
                k.push(ExtraKey::Str(s.into()));
            }
            (!k.is_empty()).then_some(k)
        })
        .collect();
    keys.iter().any(Option::is_some).then_some(keys)
}

fn group_fields(group: u8) -> (Option<u32>, Option<String>) {
    match group {
        0 => (None, None),
        1 => (Some(0), Some("full_attention".into())),
        2 => (Some(1), Some("sliding_window".into())),
        _ => (Some(1), None),
    }
}

fn event(op: &Op, convs: &[Vec<u32>]) -> (u32, EventBatch) {
    let ev = match op {
        Op::Store {
            ep: _,
            conv,
            start,
            len,
            size,
            medium,
            flavour,
            group,
            bogus_parent,
        } => {
            let (c, f) = (&convs[*conv], &FLAVOURS[*flavour]);
            let max = c.len() / *size as usize;
            let start = (*start).min(max.saturating_sub(1));
            let len = (*len).min(max - start);
            let (group_idx, kind) = group_fields(*group);
            KvEvent::BlockStored(BlockStored {
                block_hashes: (start..start + len)
                    .map(|j| EngineHash(engine_hash(c, f, *size, j)))
                    .collect(),
                parent_block_hash: match (start, bogus_parent) {
                    (_, true) => Some(EngineHash(0xdead)),
                    (0, false) => None,
                    (s, false) => Some(EngineHash(engine_hash(c, f, *size, s - 1))),
                },
                token_ids: c[start * *size as usize..(start + len) * *size as usize].to_vec(),
                block_size: *size,
                lora_id: f.lora.map(|_| 1),
                medium: *medium,
                lora_name: f.lora.map(str::to_owned),
                extra_keys: extra_keys(f, start, len),
                group_idx,
                kv_cache_spec_kind: kind,
                kv_cache_spec_sliding_window: None,
            })
        }
        Op::Remove {
            ep: _,
            conv,
            blocks,
            size,
            medium,
            flavour,
            group,
        } => {
            let c = &convs[*conv];
            let max = c.len() / *size as usize;
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: blocks
                    .iter()
                    .map(|&j| EngineHash(engine_hash(c, &FLAVOURS[*flavour], *size, j % max)))
                    .collect(),
                medium: *medium,
                group_idx: group_fields(*group).0,
            })
        }
        Op::Cleared { .. } | Op::ClearEndpoint { .. } | Op::RemoveRecent { .. } => {
            KvEvent::AllBlocksCleared
        }
    };
    let ep = match op {
        Op::Store { ep, .. }
        | Op::Remove { ep, .. }
        | Op::Cleared { ep }
        | Op::ClearEndpoint { ep } => IDS[*ep],
        Op::RemoveRecent { .. } => unreachable!("resolved to a Remove first"),
    };
    (
        ep,
        EventBatch {
            ts: 0.0,
            events: vec![ev],
            data_parallel_rank: None,
        },
    )
}

fn medium() -> impl Strategy<Value = Option<Medium>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(Medium::Gpu)),
        2 => Just(Some(Medium::Cpu)),
        1 => Just(Some(Medium::Storage)),
    ]
}

/// Operations; `sizes` picks event block sizes per endpoint (fixed per endpoint when evicting).
fn op(mixed_sizes: bool) -> impl Strategy<Value = Op> {
    let size = move |ep: usize| -> BoxedStrategy<u32> {
        if mixed_sizes {
            prop_oneof![6 => Just(4u32), 2 => Just(8), 2 => Just(2), 1 => Just(3)].boxed()
        } else {
            Just([4u32, 8, 4, 4, 8][ep]).boxed()
        }
    };
    let store = (0..5usize).prop_flat_map(move |ep| {
        (
            Just(ep),
            0..6usize,
            prop_oneof![3 => Just(0usize), 2 => 0..40usize],
            prop_oneof![1 => 1..6usize, 1 => 6..48usize],
            size(ep),
            medium(),
            prop_oneof![5 => Just(0usize), 1 => 1..4usize],
            prop_oneof![6 => Just(0u8), 1 => Just(1), 1 => Just(2), 1 => Just(3)],
            prop::bool::weighted(0.05),
        )
            .prop_map(
                |(ep, conv, start, len, size, medium, flavour, group, bogus_parent)| Op::Store {
                    ep,
                    conv,
                    start,
                    len,
                    size,
                    medium,
                    flavour,
                    group,
                    bogus_parent,
                },
            )
    });
    let remove = (0..5usize).prop_flat_map(move |ep| {
        (
            Just(ep),
            prop_oneof![2 => Just(0usize), 1 => 0..6usize],
            prop::collection::vec(prop_oneof![3 => 0..8usize, 1 => 0..40usize], 1..8),
            prop_oneof![3 => Just(if mixed_sizes { 4 } else { [4u32, 8, 4, 4, 8][ep] }), 1 => size(ep)],
            prop_oneof![2 => Just(None), 1 => medium()],
            prop_oneof![5 => Just(0usize), 1 => 1..4usize],
            prop_oneof![6 => Just(0u8), 1 => Just(1), 1 => Just(3)],
        )
            .prop_map(|(ep, conv, blocks, size, medium, flavour, group)| Op::Remove {
                ep,
                conv,
                blocks,
                size,
                medium,
                flavour,
                group,
            })
    });
    let recent = (
        0..4usize,
        prop::collection::vec(0..48usize, 1..6),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(back, blocks, same_medium)| Op::RemoveRecent {
            back,
            blocks,
            same_medium,
        });
    prop_oneof![
        12 => store,
        3 => remove,
        4 => recent,
        1 => (0..5usize).prop_map(|ep| Op::Cleared { ep }),
        1 => (0..5usize).prop_map(|ep| Op::ClearEndpoint { ep }),
    ]
}

/// A request: a conversation prefix under a flavour's partition, and candidates.
#[derive(Clone, Debug)]
struct Probe {
    conv: usize,
    tokens: usize,
    flavour: usize,
    cands: Vec<usize>,
}

fn probe() -> impl Strategy<Value = Probe> {
    (
        0..6usize,
        0..170usize,
        prop_oneof![3 => Just(0usize), 1 => 0..3usize],
        prop::collection::vec(0..5usize, 0..5),
    )
        .prop_map(|(conv, tokens, flavour, cands)| Probe {
            conv,
            tokens,
            flavour,
            cands,
        })
}

fn request_keys(p: &Probe, convs: &[Vec<u32>]) -> Vec<BlockKey> {
    let c = &convs[p.conv];
    let f = &FLAVOURS[p.flavour];
    let root = Partition {
        model: f.lora.unwrap_or(MODEL),
        cache_salt: f.salt,
    }
    .root();
    let bs = BlockSize::new(INDEX_BS).unwrap();
    block_keys(root, &c[..p.tokens.min(c.len())], bs).collect()
}

// ---------------------------------------------------------------- the property

fn check(ops: &[Op], probes: &[Probe], capacity: usize) -> Result<(), TestCaseError> {
    let convs = conversations();
    let config = IndexConfig {
        block_size: BlockSize::new(INDEX_BS).unwrap(),
        capacity,
        tier_weights: [1.0, 0.75, 0.5],
    };
    let index = KvIndex::new(config.clone());
    let mut model = Model {
        weights: config.tier_weights,
        ..Model::default()
    };
    let mut got = PrefixMatches::default();
    let mut stores: Vec<Op> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let resolved;
        let op = match op {
            Op::RemoveRecent {
                back,
                blocks,
                same_medium,
            } => {
                let Some(Op::Store {
                    ep,
                    conv,
                    start,
                    size,
                    medium,
                    flavour,
                    group,
                    ..
                }) = stores.iter().rev().nth(*back).cloned()
                else {
                    continue;
                };
                resolved = Op::Remove {
                    ep,
                    conv,
                    blocks: blocks.iter().map(|b| start + b % 24).collect(),
                    size,
                    medium: if *same_medium {
                        medium
                    } else {
                        Some(Medium::Cpu)
                    },
                    flavour,
                    group: if group == 2 { 3 } else { group },
                };
                &resolved
            }
            Op::Store { .. } => {
                stores.push(op.clone());
                op
            }
            _ => op,
        };
        let (ep, batch) = event(op, &convs);
        let (mut want, mut have) = match op {
            Op::ClearEndpoint { .. } => {
                let n = index.clear_endpoint(id(ep)) as u64;
                let m = model.clear(ep) as u64;
                model.eps.remove(&ep);
                (
                    ApplyReport {
                        cleared: m,
                        ..Default::default()
                    },
                    ApplyReport {
                        cleared: n,
                        ..Default::default()
                    },
                )
            }
            _ => (model.apply(ep, &batch), index.apply(id(ep), MODEL, &batch)),
        };
        if have.evicted > 0 {
            // Sync the model with what the index evicted: only entries it held, only as many as
            // reported, and the index ends within capacity.
            let mut vanished = 0;
            for &e in &IDS {
                let held: BTreeMap<BlockKey, u8> = index
                    .endpoint_holdings(id(e))
                    .into_iter()
                    .map(|(k, t): (BlockKey, Tiers)| (k, t.bits()))
                    .collect();
                for (k, _) in model.holdings(e) {
                    if !held.contains_key(&k) {
                        model.unhold(e, k, 7);
                        model
                            .eps
                            .entry(e)
                            .or_default()
                            .refs
                            .retain(|_, (x, _)| *x != k);
                        vanished += 1;
                    }
                }
            }
            prop_assert_eq!(vanished, have.evicted, "step {}: evictions", step);
            prop_assert!(index.stats().entries <= capacity);
            // Evictions make later `unknown_removed` counts legitimately differ in kind only.
            want.evicted = have.evicted;
        }
        if capacity < usize::MAX {
            have.unknown_removed = 0;
            want.unknown_removed = 0;
        }
        prop_assert_eq!(&have, &want, "step {}: {:?}", step, op);
        for &e in &IDS {
            let held: BTreeMap<BlockKey, u8> = index
                .endpoint_holdings(id(e))
                .into_iter()
                .map(|(k, t)| (k, t.bits()))
                .collect();
            prop_assert_eq!(
                &held,
                &model.holdings(e),
                "step {}: holdings of {}",
                step,
                e
            );
            prop_assert_eq!(index.endpoint_entries(id(e)), held.len());
        }
        let stats = index.stats();
        prop_assert_eq!(stats.keys, model.holders.len());
        prop_assert_eq!(
            stats.entries,
            model.holders.values().map(BTreeMap::len).sum::<usize>()
        );
        let eps: std::collections::BTreeSet<u32> = model
            .holders
            .values()
            .flat_map(|s| s.keys().copied())
            .collect();
        prop_assert_eq!(stats.endpoints, eps.len());
        for p in probes {
            let keys = request_keys(p, &convs);
            let cands: EndpointSet = p.cands.iter().map(|&c| id(IDS[c])).collect();
            index.lookup(&keys, &cands, &mut got);
            let want = model.lookup(&keys, &cands);
            prop_assert_eq!(got.total_blocks as usize, keys.len());
            prop_assert_eq!(
                got.matches.len(),
                want.len(),
                "step {}: {:?} vs {:?}",
                step,
                got.matches,
                want
            );
            for (m, (e, n, w)) in got.matches.iter().zip(&want) {
                prop_assert_eq!((m.endpoint.get(), m.blocks), (*e, *n));
                prop_assert!(
                    (f64::from(m.weighted) - w).abs() < 1e-3,
                    "{} vs {}",
                    m.weighted,
                    w
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn index_agrees_with_model(
        ops in prop::collection::vec(op(true), 1..32),
        probes in prop::collection::vec(probe(), 4),
    ) {
        check(&ops, &probes, usize::MAX)?;
    }

    #[test]
    fn index_agrees_with_model_under_eviction(
        ops in prop::collection::vec(op(false), 1..32),
        probes in prop::collection::vec(probe(), 3),
        capacity in 5usize..60,
    ) {
        check(&ops, &probes, capacity)?;
    }
}

// ---------------------------------------------------------------- concurrency

/// Writers extend chains while readers look them up: a reader never sees a run longer than what
/// was stored, never sees a run shrink (nothing is removed), and sees only the chain's writer.
#[test]
fn readers_never_see_impossible_states() {
    let index = Arc::new(KvIndex::new(IndexConfig::default()));
    let bs = index.block_size();
    let chains: Vec<Vec<u32>> = (0..4u32)
        .map(|c| (0..16 * 200).map(|i| i * 31 + c * 1_000_003).collect())
        .collect();
    let root = Partition::model(MODEL).root();
    let keys: Vec<Vec<BlockKey>> = chains
        .iter()
        .map(|t| block_keys(root, t, bs).collect())
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (c, tokens) in chains.iter().enumerate() {
        let (index, tokens) = (index.clone(), tokens.clone());
        threads.push(std::thread::spawn(move || {
            let blocks = tokens.len() / 16;
            let mut start = 0;
            while start < blocks {
                let len = (blocks - start).min(1 + start % 7);
                let stored = BlockStored {
                    block_hashes: (start..start + len)
                        .map(|j| EngineHash(j as u64 * 10 + c as u64))
                        .collect(),
                    parent_block_hash: (start > 0)
                        .then(|| EngineHash((start as u64 - 1) * 10 + c as u64)),
                    token_ids: tokens[start * 16..(start + len) * 16].to_vec(),
                    block_size: 16,
                    ..Default::default()
                };
                let batch = EventBatch {
                    events: vec![KvEvent::BlockStored(stored)],
                    ..Default::default()
                };
                let r = index.apply(id(c as u32), MODEL, &batch);
                assert_eq!(r.stored, len as u64);
                start += len;
            }
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (index, keys, done) = (index.clone(), keys.clone(), done.clone());
        readers.push(std::thread::spawn(move || {
            let all: EndpointSet = (0..4).map(id).collect();
            let mut seen = [0u32; 4];
            let mut out = PrefixMatches::default();
            let mut rounds = 0u64;
            while !done.load(Ordering::Relaxed) || rounds < 10 {
                rounds += 1;
                for (c, k) in keys.iter().enumerate() {
                    index.lookup(k, &all, &mut out);
                    assert!(
                        out.matches.len() <= 1,
                        "only chain {c}'s writer holds it: {out:?}"
                    );
                    let n = out.get(id(c as u32)).map_or(0, |m| {
                        assert_eq!(m.weighted, m.blocks as f32);
                        m.blocks
                    });
                    assert!(n >= seen[c], "run of chain {c} shrank: {} -> {n}", seen[c]);
                    seen[c] = n;
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let mut out = PrefixMatches::default();
    for (c, k) in keys.iter().enumerate() {
        index.lookup(k, &(0..4).map(id).collect(), &mut out);
        assert_eq!(out.matches.len(), 1);
        assert_eq!(out.get(id(c as u32)).map(|m| m.blocks), Some(200));
    }
    assert_eq!(index.stats().entries, 800);
}
