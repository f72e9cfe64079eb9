//! The index against a naive model under random interleavings of store, remove, clear and
//! eviction across endpoints: same lookups for random requests and candidate sets, same counters,
//! same stats. Plus a concurrent test: readers never see impossible states while writers apply.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kvpick_scheduler::events::{BlockStored, EngineHash, EventBatch, KvEvent, Medium};
use kvpick_scheduler::index::{
    ApplyReport, IndexConfig, IndexSecret, KvIndex, PrefixMatches, Tiers,
};
use kvpick_scheduler::keys::{BlockKey, BlockSize, Partition, block_keys};
use kvpick_scheduler::pods::{EndpointId, EndpointSet};
use proptest::prelude::*;

/// The index's block size (tokens).
pub const INDEX_BS: u32 = 4;
/// The endpoints' served model.
pub const MODEL: &str = "m";
/// Endpoint ids spread over several bitset words.
pub const IDS: [u32; 5] = [0, 1, 63, 64, 130];

fn id(i: u32) -> EndpointId {
    EndpointId::new(i).unwrap()
}

mod model;
mod workload;

use model::Model;
use workload::{Op, Probe, conversations, event, op, probe, request_keys};

// ---------------------------------------------------------------- the property

fn check(ops: &[Op], probes: &[Probe], capacity: usize) -> Result<(), TestCaseError> {
    let convs = conversations();
    let config = IndexConfig {
        block_size: BlockSize::new(INDEX_BS).unwrap(),
        capacity,
        tier_weights: [1.0, 0.75, 0.5],
        secret: IndexSecret::FIXED,
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
                        let st = model.eps.entry(e).or_default();
                        st.refs.retain(|_, (x, _)| *x != k);
                        st.extra.remove(&k);
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
