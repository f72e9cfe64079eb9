//! Hostile inputs (issue 14, item 2): keys and engine hashes chosen to collide, through
//! [`KvIndex::apply`] as KV events deliver them. Colliding block keys come from a secret under
//! which every key collides (`IndexSecret::new(_, 0)`), which stands for an attacker who found
//! many siblings sharing a record tag: the code path is the production one.

use super::*;
use crate::events::{BlockStored, EngineHash};
use crate::keys::{Partition, block_keys};
use crate::pods::EndpointSet;

const BS: u32 = 4;

fn id(i: u32) -> EndpointId {
    EndpointId::new(i).unwrap()
}

fn index(capacity: usize, secret: IndexSecret) -> KvIndex {
    KvIndex::new(IndexConfig {
        block_size: BlockSize::new(BS).unwrap(),
        capacity,
        secret,
        ..IndexConfig::default()
    })
}

fn store(
    ix: &KvIndex,
    ep: u32,
    hashes: std::ops::Range<u64>,
    parent: Option<u64>,
    toks: &[u32],
) -> ApplyReport {
    let ev = BlockStored {
        block_hashes: hashes.map(EngineHash).collect(),
        parent_block_hash: parent.map(EngineHash),
        token_ids: toks.to_vec(),
        block_size: BS,
        ..Default::default()
    };
    ix.apply(
        id(ep),
        "m",
        &EventBatch {
            events: vec![KvEvent::BlockStored(ev)],
            ..Default::default()
        },
    )
}

/// Blocks `ep` matches of `toks`.
fn matched(ix: &KvIndex, toks: &[u32], ep: u32) -> u32 {
    let keys: Vec<_> = block_keys(Partition::model("m").root(), toks, ix.block_size()).collect();
    let mut out = PrefixMatches::default();
    let cands: EndpointSet = (0..8).map(id).collect();
    ix.lookup(&keys, &cands, &mut out);
    out.get(id(ep)).map_or(0, |m| m.blocks)
}

/// A chain of 8 blocks, then `n` siblings of its block 1 (same parent, other tokens): each
/// needs a record of its own tag, and under the colliding secret they all share one.
fn siblings(ix: &KvIndex, ep: u32, n: u32) -> (ApplyReport, Vec<u32>) {
    let base: Vec<u32> = (0..8 * BS).collect();
    let mut total = store(ix, ep, 0..8, None, &base);
    for s in 0..n {
        let toks: Vec<u32> = (0..BS).map(|t| 500_000 * ep + s * BS + t).collect();
        let r = store(
            ix,
            ep,
            100 + u64::from(s)..101 + u64::from(s),
            Some(0),
            &toks,
        );
        total.stored += r.stored;
        total.overflow += r.overflow;
    }
    (total, base)
}

#[test]
fn colliding_sibling_keys_are_dropped_and_counted_and_lookups_go_on() {
    let ix = index(usize::MAX, IndexSecret::new(0x5eed, 0));
    let (r, base) = siblings(&ix, 1, 40);
    // One shard, one tag: 16 records at most (the chain's and 15 siblings'); the rest are
    // refused, not looped on.
    assert_eq!(r.stored + r.overflow, 8 + 40);
    assert_eq!(r.overflow, 40 - 15);
    assert_eq!(matched(&ix, &base, 1), 8);
    let kept: Vec<u32> = base[..BS as usize]
        .iter()
        .copied()
        .chain(500_000..500_000 + BS)
        .collect();
    assert_eq!(matched(&ix, &kept, 1), 2, "a sibling that fit is found");
    let small = ix.table_bytes();
    // More of the same, from more endpoints: refused at no growth.
    for ep in 2..6 {
        let (r, base) = siblings(&ix, ep, 200);
        assert_eq!((r.stored, r.overflow), (8, 200), "{r:?}");
        assert_eq!(matched(&ix, &base, ep), 8, "the shared chain is served");
    }
    // A new chain needs a record of its own: refused whole, counted.
    let other: Vec<u32> = (90_000..90_000 + 8 * BS).collect();
    let r = store(&ix, 6, 0..8, None, &other);
    assert_eq!((r.stored, r.overflow), (0, 8));
    assert_eq!(matched(&ix, &base, 1), 8, "the first chain is still served");
    let after = ix.table_bytes();
    assert!(after < small + 64 * 1024, "{small} -> {after} bytes");
    assert!(ix.mapped_bytes() < 1 << 20);
}

#[test]
fn chance_collisions_under_a_real_secret_cost_nothing() {
    // The same siblings under the fixed secret: every one is stored.
    let ix = index(usize::MAX, IndexSecret::FIXED);
    let (r, base) = siblings(&ix, 1, 300);
    assert_eq!((r.stored, r.overflow), (8 + 300, 0));
    assert_eq!(matched(&ix, &base, 1), 8);
}

#[test]
fn hashes_restored_with_known_content_count_toward_capacity() {
    let ix = index(100, IndexSecret::FIXED);
    let quiet: Vec<u32> = (0..20 * BS).collect();
    store(&ix, 1, 0..20, None, &quiet);
    let one: Vec<u32> = (7000..7000 + BS).collect();
    let mut evicted = 0;
    for h in 0..5000u64 {
        // One block, already held (but after an eviction), under yet another hash: no new
        // entry, but a new reference.
        let r = store(&ix, 2, 10_000 + h..10_001 + h, None, &one);
        assert!(r.stored <= 1);
        evicted += r.evicted;
    }
    assert!(ix.endpoint_entries(id(2)) <= 1);
    assert!(evicted > 0, "the references pushed the index past capacity");
    // 5000 references would take ~120 KB of engine map; within capacity they take ~4 KB.
    assert!(ix.table_bytes() < 40 * 1024, "{}", ix.table_bytes());
    assert_eq!(
        matched(&ix, &quiet, 1),
        20,
        "the quiet endpoint keeps its blocks"
    );
    assert_eq!(matched(&ix, &one, 2), 1);
}
