//! The random workload: conversations sharing prefixes, flavours (LoRA, salt, image), and
//! operations turned into vLLM events.

use kvpick_scheduler::events::{
    BlockRemoved, BlockStored, EngineHash, EventBatch, ExtraKey, KvEvent, Medium,
};
use kvpick_scheduler::keys::{BlockKey, BlockSize, Partition, block_keys};
use proptest::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

use crate::{IDS, INDEX_BS, MODEL};

/// Token conversations sharing prefixes, over a tiny alphabet.
pub fn conversations() -> Vec<Vec<u32>> {
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
pub struct Flavour {
    pub lora: Option<&'static str>,
    pub salt: Option<&'static str>,
    /// An image on this event block (folded).
    pub image_at: Option<usize>,
}

#[derive(Clone, Debug)]
pub enum Op {
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

pub const FLAVOURS: [Flavour; 4] = [
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
pub fn engine_hash(conv: &[u32], f: &Flavour, size: u32, j: usize) -> u64 {
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

pub fn extra_keys(f: &Flavour, start: usize, len: usize) -> Option<Vec<Option<Vec<ExtraKey>>>> {
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

pub fn group_fields(group: u8) -> (Option<u32>, Option<String>) {
    match group {
        0 => (None, None),
        1 => (Some(0), Some("full_attention".into())),
        2 => (Some(1), Some("sliding_window".into())),
        _ => (Some(1), None),
    }
}

pub fn event(op: &Op, convs: &[Vec<u32>]) -> (u32, EventBatch) {
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

pub fn medium() -> impl Strategy<Value = Option<Medium>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(Medium::Gpu)),
        2 => Just(Some(Medium::Cpu)),
        1 => Just(Some(Medium::Storage)),
    ]
}

/// Operations; `sizes` picks event block sizes per endpoint (fixed per endpoint when evicting).
pub fn op(mixed_sizes: bool) -> impl Strategy<Value = Op> {
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
pub struct Probe {
    pub conv: usize,
    pub tokens: usize,
    pub flavour: usize,
    pub cands: Vec<usize>,
}

pub fn probe() -> impl Strategy<Value = Probe> {
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

pub fn request_keys(p: &Probe, convs: &[Vec<u32>]) -> Vec<BlockKey> {
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
