//! One scenario per rule of the index: unknown parents, tiers, re-chunking both ways, sliding-window
//! groups, partitions and salts, multimodal folding, eviction, clearing.

use super::*;
use crate::events::{BlockRemoved, BlockStored, EngineHash, ExtraKey, FULL_ATTENTION};
use crate::keys::{Partition, block_keys};
use crate::pods::EndpointSet;

const BS: u32 = 4;

fn id(i: u32) -> EndpointId {
    EndpointId::new(i).unwrap()
}

fn index(capacity: usize) -> KvIndex {
    KvIndex::new(IndexConfig {
        block_size: BlockSize::new(BS).unwrap(),
        capacity,
        tier_weights: [1.0, 0.5, 0.25],
        secret: IndexSecret::FIXED,
    })
}

fn tokens(n_blocks: usize, seed: u32) -> Vec<u32> {
    (0..n_blocks as u32 * BS)
        .map(|i| i * 7 + seed * 1000)
        .collect()
}

fn stored(
    hashes: std::ops::Range<u64>,
    parent: Option<u64>,
    toks: &[u32],
    size: u32,
) -> BlockStored {
    BlockStored {
        block_hashes: hashes.map(EngineHash).collect(),
        parent_block_hash: parent.map(EngineHash),
        token_ids: toks.to_vec(),
        block_size: size,
        ..Default::default()
    }
}

fn apply(ix: &KvIndex, ep: u32, ev: KvEvent) -> ApplyReport {
    ix.apply(
        id(ep),
        "m",
        &EventBatch {
            events: vec![ev],
            ..Default::default()
        },
    )
}

fn store(ix: &KvIndex, ep: u32, s: BlockStored) -> ApplyReport {
    apply(ix, ep, KvEvent::BlockStored(s))
}

fn remove(
    ix: &KvIndex,
    ep: u32,
    hashes: &[u64],
    medium: Option<Medium>,
    group: Option<u32>,
) -> ApplyReport {
    apply(
        ix,
        ep,
        KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: hashes.iter().copied().map(EngineHash).collect(),
            medium,
            group_idx: group,
        }),
    )
}

/// (blocks, weighted) of `ep` for a request of `toks` in partition `p`.
fn run(ix: &KvIndex, p: Partition<'_>, toks: &[u32], ep: u32) -> (u32, f32) {
    let keys: Vec<_> = block_keys(p.root(), toks, ix.block_size()).collect();
    let mut out = PrefixMatches::default();
    let cands: EndpointSet = (0..8).map(id).collect();
    ix.lookup(&keys, &cands, &mut out);
    out.get(id(ep)).map_or((0, 0.0), |m| (m.blocks, m.weighted))
}

const M: Partition<'static> = Partition::model("m");

#[test]
fn chains_continue_through_parents_and_unknown_parents_are_dropped() {
    let ix = index(usize::MAX);
    let t = tokens(80, 1);
    assert_eq!(store(&ix, 1, stored(0..40, None, &t[..160], BS)).stored, 40);
    assert_eq!(
        store(&ix, 1, stored(40..80, Some(39), &t[160..], BS)).stored,
        40
    );
    assert_eq!(run(&ix, M, &t, 1), (80, 80.0));
    // The same continuation on an endpoint that never saw block 39 is not guessed.
    let r = store(&ix, 2, stored(40..80, Some(39), &t[160..], BS));
    assert_eq!((r.stored, r.unknown_parent), (0, 40));
    assert_eq!(run(&ix, M, &t, 2), (0, 0.0));
    assert_eq!(
        ix.stats(),
        IndexStats {
            keys: 80,
            entries: 80,
            endpoints: 1
        }
    );
}

#[test]
fn tiers_are_tracked_per_medium_and_removed_per_medium() {
    let ix = index(usize::MAX);
    let t = tokens(4, 2);
    store(&ix, 1, stored(0..4, None, &t, BS));
    let cpu = BlockStored {
        medium: Some(Medium::Cpu),
        ..stored(0..4, None, &t, BS)
    };
    assert_eq!(store(&ix, 1, cpu).stored, 0, "same entry, one more tier");
    assert_eq!(run(&ix, M, &t, 1), (4, 4.0), "best medium counts");
    let r = remove(&ix, 1, &[0, 1, 2, 3], None, None);
    assert_eq!(r.removed, 0, "the CPU copy remains");
    assert_eq!(run(&ix, M, &t, 1), (4, 2.0));
    assert!(
        ix.endpoint_holdings(id(1))
            .iter()
            .all(|(_, t)| *t == Tiers::of(Medium::Cpu))
    );
    assert_eq!(remove(&ix, 1, &[2], Some(Medium::Cpu), None).removed, 1);
    assert_eq!(run(&ix, M, &t, 1), (2, 1.0), "the run stops at the hole");
    assert_eq!(remove(&ix, 1, &[99], None, None).unknown_removed, 1);
}

#[test]
fn larger_event_blocks_are_split_and_removed_whole() {
    let ix = index(usize::MAX);
    let t = tokens(12, 3);
    // Event blocks of 3 index blocks: hashes 0..4 cover 12 index blocks.
    let r = store(&ix, 1, stored(0..2, None, &t[..24], 3 * BS));
    assert_eq!(r.stored, 6);
    let r = store(&ix, 1, stored(2..4, Some(1), &t[24..], 3 * BS));
    assert_eq!(
        r.stored, 6,
        "the parent resolves to the last part of hash 1"
    );
    assert_eq!(run(&ix, M, &t, 1), (12, 12.0));
    assert_eq!(
        remove(&ix, 1, &[2], None, None).removed,
        3,
        "all parts of hash 2"
    );
    assert_eq!(run(&ix, M, &t, 1), (6, 6.0));
}

#[test]
fn smaller_event_blocks_merge_only_whole_aligned_groups() {
    let ix = index(usize::MAX);
    let t = tokens(4, 4);
    let half = BS / 2;
    // 5 half-blocks from the root: two index blocks, one half left over.
    let r = store(&ix, 1, stored(0..5, None, &t[..10], half));
    assert_eq!((r.stored, r.block_size_mismatch), (2, 1));
    assert_eq!(run(&ix, M, &t, 1), (2, 2.0));
    // The left-over half was never placed: continuing after it is an unknown parent.
    let r = store(&ix, 1, stored(5..8, Some(4), &t[10..16], half));
    assert_eq!((r.stored, r.unknown_parent), (0, 3));
    // Continuing after hash 2 (the first half of index block 1) cannot be placed exactly.
    let r = store(&ix, 1, stored(8..10, Some(2), &t[6..10], half));
    assert_eq!((r.stored, r.block_size_mismatch), (0, 2));
    // Continuing after hash 3 (the end of index block 1) is aligned.
    let r = store(&ix, 1, stored(4..8, Some(3), &t[8..16], half));
    assert_eq!(r.stored, 2);
    assert_eq!(run(&ix, M, &t, 1), (4, 4.0));
    // Removing either half of an index block removes the block.
    assert_eq!(remove(&ix, 1, &[2], None, None).removed, 1);
    assert_eq!(run(&ix, M, &t, 1), (1, 1.0));
    // A size that neither divides nor multiplies is dropped.
    let r = store(&ix, 2, stored(0..2, None, &t[..6], 3));
    assert_eq!(r.block_size_mismatch, 2);
}

#[test]
fn sliding_window_groups_never_prove_or_remove_a_prefix() {
    let ix = index(usize::MAX);
    let t = tokens(4, 5);
    let full = BlockStored {
        group_idx: Some(0),
        kv_cache_spec_kind: Some(FULL_ATTENTION.into()),
        ..stored(0..4, None, &t, BS)
    };
    // Hybrid models publish the same hashes for every group.
    let swa = BlockStored {
        group_idx: Some(1),
        kv_cache_spec_kind: Some("sliding_window".into()),
        ..stored(0..4, None, &t, BS)
    };
    assert_eq!(store(&ix, 1, swa).non_prefix_group, 4);
    assert_eq!(
        run(&ix, M, &t, 1),
        (0, 0.0),
        "a sliding-window store alone is no hit"
    );
    assert_eq!(store(&ix, 1, full).stored, 4);
    // The sliding window evicts its old blocks: removes of group 1 must not touch group 0.
    let r = remove(&ix, 1, &[0, 1], None, Some(1));
    assert_eq!((r.removed, r.non_prefix_group), (0, 2));
    assert_eq!(run(&ix, M, &t, 1), (4, 4.0));
    assert_eq!(remove(&ix, 1, &[3], None, Some(0)).removed, 1);
    assert_eq!(run(&ix, M, &t, 1), (3, 3.0));
}

#[test]
fn partitions_salts_loras_and_multimodal_content() {
    let ix = index(usize::MAX);
    let t = tokens(3, 6);
    let salted = BlockStored {
        extra_keys: Some(vec![Some(vec![ExtraKey::Str("tenant".into())]), None, None]),
        ..stored(0..3, None, &t, BS)
    };
    store(&ix, 1, salted);
    let tenant = Partition {
        model: "m",
        cache_salt: Some("tenant"),
    };
    assert_eq!(run(&ix, tenant, &t, 1), (3, 3.0));
    assert_eq!(run(&ix, M, &t, 1), (0, 0.0), "no salt, no hit");
    let lora = BlockStored {
        lora_name: Some("ad".into()),
        lora_id: Some(1),
        extra_keys: Some(vec![Some(vec![ExtraKey::Str("ad".into())]); 3]),
        ..stored(10..13, None, &t, BS)
    };
    store(&ix, 2, lora);
    assert_eq!(run(&ix, Partition::model("ad"), &t, 2), (3, 3.0));
    assert_eq!(run(&ix, M, &t, 2), (0, 0.0));
    let id_only = BlockStored {
        lora_id: Some(1),
        ..stored(20..23, None, &t, BS)
    };
    assert_eq!(store(&ix, 3, id_only).unknown_lora, 3);
    let image = BlockStored {
        extra_keys: Some(vec![
            None,
            Some(vec![ExtraKey::Array(vec![
                ExtraKey::Str("img".into()),
                ExtraKey::Int(0),
            ])]),
            None,
        ]),
        ..stored(30..33, None, &t, BS)
    };
    assert_eq!(store(&ix, 4, image).stored, 3);
    assert_eq!(
        run(&ix, M, &t, 4),
        (1, 1.0),
        "the image block and its successors never match text"
    );
}

#[test]
fn eviction_takes_from_the_largest_endpoint_and_only_shortens_runs() {
    let ix = index(100);
    let quiet = tokens(20, 7);
    store(&ix, 1, stored(0..20, None, &quiet, BS));
    // A flooding endpoint pushes the index past capacity: it pays, the quiet one does not.
    let mut evicted = 0;
    for c in 0..10u32 {
        let t = tokens(20, 100 + c);
        let h = u64::from(c) * 1000;
        evicted += store(&ix, 2, stored(h..h + 20, None, &t, BS)).evicted;
    }
    assert_eq!(evicted, 120);
    assert_eq!(ix.stats().entries, 100);
    assert_eq!(ix.endpoint_entries(id(1)), 20);
    assert_eq!(run(&ix, M, &quiet, 1), (20, 20.0));
    // Whatever went from the flooder, its runs only got shorter.
    for c in 0..10u32 {
        let t = tokens(20, 100 + c);
        let (blocks, _) = run(&ix, M, &t, 2);
        let held = ix.endpoint_holdings(id(2));
        let keys: Vec<_> = block_keys(M.root(), &t, ix.block_size()).collect();
        assert!(
            keys[..blocks as usize]
                .iter()
                .all(|k| held.iter().any(|(h, _)| h == k))
        );
    }
}

#[test]
fn clearing_an_endpoint_removes_only_its_entries() {
    let ix = index(usize::MAX);
    let t = tokens(40, 8);
    store(&ix, 1, stored(0..40, None, &t, BS));
    store(&ix, 2, stored(0..40, None, &t, BS));
    assert_eq!(apply(&ix, 1, KvEvent::AllBlocksCleared).cleared, 40);
    assert_eq!(run(&ix, M, &t, 1), (0, 0.0));
    assert_eq!(run(&ix, M, &t, 2), (40, 40.0));
    assert_eq!(ix.clear_endpoint(id(2)), 40);
    assert_eq!(ix.stats(), IndexStats::default());
    assert_eq!(ix.clear_endpoint(id(7)), 0);
}
