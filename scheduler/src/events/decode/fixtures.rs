//! Payloads written by hand, byte by byte, from vLLM's `kv_events.py` and the msgpack spec, and
//! the values they must decode to. Every layout vLLM has shipped, plus the liberties taken.

use super::super::{
    BlockRemoved, BlockStored, EncodeOptions, EngineHash, EventBatch, ExtraKey, KvEvent, Medium,
    decode_batch, encode_batch,
};
use crate::Error;

/// Concatenates the pieces of a hand-written payload.
fn wire(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn stored(batch: &EventBatch, i: usize) -> &BlockStored {
    match &batch.events[i] {
        KvEvent::BlockStored(s) => s,
        other => panic!("event {i} is {other:?}"),
    }
}

/// The oldest layout (vLLM's first KV events, `array_like=True`): a 2-element batch without
/// `data_parallel_rank`, `BlockStored` ending at `lora_id`, `BlockRemoved` without `medium`,
/// and an int timestamp.
#[test]
fn oldest_array_layout() {
    let payload = wire(&[
        &[0x92],                            // batch: fixarray(2) [ts, events]
        &[0xce, 0x65, 0x53, 0xf1, 0x00],    // ts: uint32 1_700_000_000 (an int, read as float)
        &[0x93],                            // events: fixarray(3)
        &[0x96],                            // event 0: fixarray(6) = tag + 5 fields
        &[0xab], b"BlockStored",            // tag: fixstr(11)
        &[0x92, 0x01, 0xff],                // block_hashes: [1, -1]
        &[0xc0],                            // parent_block_hash: nil
        &[0x94, 0x0a, 0x0b, 0x0c, 0x0d],    // token_ids: [10, 11, 12, 13]
        &[0x02],                            // block_size: 2
        &[0xc0],                            // lora_id: nil
        &[0x92],                            // event 1: fixarray(2)
        &[0xac], b"BlockRemoved",           // tag: fixstr(12)
        &[0x91, 0x01],                      // block_hashes: [1]
        &[0x91],                            // event 2: fixarray(1)
        &[0xb0], b"AllBlocksCleared",       // tag: fixstr(16)
    ]);
    let batch = decode_batch(&payload).expect("decodes");
    assert_eq!(batch.ts, 1_700_000_000.0);
    assert_eq!(batch.data_parallel_rank, None);
    assert_eq!(
        batch.events,
        vec![
            KvEvent::BlockStored(BlockStored {
                block_hashes: vec![EngineHash(1), EngineHash(u64::MAX)],
                token_ids: vec![10, 11, 12, 13],
                block_size: 2,
                ..BlockStored::default()
            }),
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: vec![EngineHash(1)],
                ..BlockRemoved::default()
            }),
            KvEvent::AllBlocksCleared,
        ]
    );
}

/// The last array layout (every field up to `kv_cache_spec_sliding_window`), with byte hashes,
/// a LoRA, extra keys, a sliding-window group, one extra trailing element per struct (a newer
/// vLLM's field) that must be skipped, and a data-parallel rank.
#[test]
fn full_array_layout_with_bytes_hashes_and_trailing_fields() {
    let digest: Vec<u8> = (0u8..32).collect(); // a 32-byte digest, last 8 bytes 0x18..=0x1f
    let payload = wire(&[
        &[0x94],                                    // batch: fixarray(4), one more than vLLM's 3
        &[0xcb, 0x41, 0xd9, 0x54, 0xfc, 0x40, 0x20, 0x00, 0x00], // ts: float64 1_700_000_000.5
        &[0x91],                                    // events: fixarray(1)
        &[0x9d],                                    // BlockStored: fixarray(13) = tag + 12
        &[0xab], b"BlockStored",
        &[0x92],                                    // block_hashes: fixarray(2)
        &[0xc4, 0x20], &digest,                     //   bin8(32): folds to 0x18191a1b1c1d1e1f
        &[0xc4, 0x03, 0x01, 0x02, 0x03],            //   bin8(3): zero-extends to 0x010203
        &[0xd3, 0x83, 0x19, 0x93, 0xaf, 0x1d, 0x7c, 0x00, 0x00], // parent: int64 -9e18
        &[0x94, 0x01, 0x02, 0x03, 0x04],            // token_ids: [1, 2, 3, 4]
        &[0x02],                                    // block_size: 2
        &[0x07],                                    // lora_id: 7
        &[0xa3], b"GPU",                            // medium: "GPU"
        &[0xa8], b"sql-lora",                       // lora_name: "sql-lora"
        &[0x92],                                    // extra_keys: fixarray(2), one per block
        &[0x92, 0xa8], b"sql-lora", &[0xa4], b"salt", //   block 0: ("sql-lora", "salt")
        &[0x91, 0x92, 0xa2], b"mm", &[0x05],        //   block 1: (("mm", 5),)
        &[0x01],                                    // group_idx: 1
        &[0xae], b"sliding_window",                 // kv_cache_spec_kind
        &[0xcd, 0x10, 0x00],                        // kv_cache_spec_sliding_window: 4096
        &[0x81, 0xa1], b"x", &[0x90],               // a 13th field from the future: {"x": []}
        &[0x02],                                    // data_parallel_rank: 2
        &[0xa5], b"extra",                          // a 4th batch element: skipped
    ]);
    let batch = decode_batch(&payload).expect("decodes");
    assert_eq!(batch.ts, 1_700_000_000.5);
    assert_eq!(batch.data_parallel_rank, Some(2));
    let s = stored(&batch, 0);
    let expected = BlockStored {
        block_hashes: vec![EngineHash(0x1819_1a1b_1c1d_1e1f), EngineHash(0x01_0203)],
        parent_block_hash: Some(EngineHash(-9_000_000_000_000_000_000i64 as u64)),
        token_ids: vec![1, 2, 3, 4],
        block_size: 2,
        lora_id: Some(7),
        medium: Some(Medium::Gpu),
        lora_name: Some("sql-lora".into()),
        extra_keys: Some(vec![
            Some(vec![ExtraKey::Str("sql-lora".into()), ExtraKey::Str("salt".into())]),
            Some(vec![ExtraKey::Array(vec![ExtraKey::Str("mm".into()), ExtraKey::Int(5)])]),
        ]),
        group_idx: Some(1),
        kv_cache_spec_kind: Some("sliding_window".into()),
        kv_cache_spec_sliding_window: Some(4096),
    };
    assert_eq!(s, &expected);
}

/// vLLM 0.26 (after PR #42892): array batch, map events, `omit_defaults` dropping the unset
/// `kv_cache_spec_sliding_window`. The values are a batch a vLLM 0.26 pod serving Qwen3-8B
/// published (quoted in volcano-sh/kthena#1535), encoded here by hand.
#[test]
fn vllm_0_26_array_batch_with_map_events() {
    let payload = wire(&[
        &[0x93],                                    // batch: fixarray(3)
        &[0xcb, 0x41, 0xda, 0xa8, 0xdb, 0xe0, 0x35, 0x9f, 0xe7], // ts: 1789095808.8378847
        &[0x91],                                    // events: fixarray(1)
        &[0x8b],                                    // fixmap(11): type + 10 fields
        &[0xa4], b"type", &[0xab], b"BlockStored",
        &[0xac], b"block_hashes", &[0x91, 0xcf, 0xda, 0xb8, 0x9b, 0xaa, 0x7b, 0x58, 0x57, 0xc0],
        &[0xb1], b"parent_block_hash", &[0xc0],
        &[0xa9], b"token_ids",
        &[0xdc, 0x00, 0x10],                        // array16(16): fixarray holds up to 15
        &[0xce, 0x00, 0x02, 0x50, 0x5c, 0xcd, 0x03, 0x68, 0xcc, 0xc6, 0xcd, 0x23, 0x68],
        &[0xcd, 0x01, 0x76, 0xcd, 0x01, 0x17, 0xcd, 0x1a, 0x42, 0xcd, 0x01, 0x3b],
        &[0xcd, 0x15, 0xf0, 0x1e, 0xce, 0x00, 0x02, 0x50, 0x5d, 0xcc, 0xc6],
        &[0xce, 0x00, 0x02, 0x50, 0x5c, 0xce, 0x00, 0x01, 0x2d, 0x23, 0xcc, 0xc6],
        &[0xce, 0x00, 0x02, 0x50, 0x73],
        &[0xaa], b"block_size", &[0x10],
        &[0xa7], b"lora_id", &[0xc0],
        &[0xa6], b"medium", &[0xa3], b"GPU",
        &[0xa9], b"lora_name", &[0xc0],
        &[0xaa], b"extra_keys", &[0x91, 0xc0],      // [None]
        &[0xa9], b"group_idx", &[0x00],
        &[0xb2], b"kv_cache_spec_kind", &[0xae], b"full_attention",
        &[0x00],                                    // data_parallel_rank: 0
    ]);
    let batch = decode_batch(&payload).expect("decodes");
    assert_eq!(batch.ts, 1_789_095_808.837_884_7);
    assert_eq!(batch.data_parallel_rank, Some(0));
    let s = stored(&batch, 0);
    assert_eq!(s.block_hashes, vec![EngineHash(15_760_518_052_499_183_552)]);
    assert_eq!(s.parent_block_hash, None);
    assert_eq!(
        s.token_ids,
        vec![
            151644, 872, 198, 9064, 374, 279, 6722, 315, 5616, 30, 151645, 198, 151644, 77091,
            198, 151667
        ]
    );
    assert_eq!((s.block_size, s.lora_id, s.lora_name.as_deref()), (16, None, None));
    assert_eq!(s.medium, Some(Medium::Gpu));
    assert_eq!(s.extra_keys, Some(vec![None]));
    assert_eq!(s.group_idx, Some(0));
    assert_eq!(s.kv_cache_spec_kind.as_deref(), Some(crate::events::FULL_ATTENTION));
    assert_eq!(s.kv_cache_spec_sliding_window, None);
    assert_eq!(s.token_blocks().map(|b| b.count()), Some(1));
    // msgspec's exact bytes, so kvpick's encoder must write them back identically.
    let again = encode_batch(&batch, EncodeOptions::ARRAY_BATCH_MAP_EVENTS).expect("encodes");
    assert_eq!(again, payload);
}

/// Maps throughout, keys in any order, the tag not first, unknown keys (one a vLLM PR proposes,
/// `block_offsets`), a negative int hash, an unknown and a lower-case medium, and no
/// `data_parallel_rank`.
#[test]
fn map_layout_any_key_order_and_unknown_keys() {
    let payload = wire(&[
        &[0x83],                                    // batch: fixmap(3)
        &[0xa6], b"events", &[0x93],                // "events" first: fixarray(3)
        &[0x86],                                    // event 0: fixmap(6), tag not first
        &[0xaa], b"block_size", &[0x01],
        &[0xa9], b"token_ids", &[0x91, 0x2a],       // [42]
        &[0xad], b"block_offsets", &[0x91, 0x00],   // unknown key: skipped
        &[0xac], b"block_hashes", &[0x91, 0xfe],    // [-2]
        &[0xa4], b"type", &[0xab], b"BlockStored",
        &[0xb1], b"parent_block_hash", &[0x05],
        &[0x84],                                    // event 1: fixmap(4)
        &[0xa4], b"type", &[0xac], b"BlockRemoved",
        &[0xa6], b"medium", &[0xa6], b"Certus",     // a connector's own tier: storage
        &[0xa9], b"group_idx", &[0x03],
        &[0xac], b"block_hashes", &[0x92, 0x05, 0x06],
        &[0x82],                                    // event 2: fixmap(2)
        &[0xa6], b"future", &[0x81, 0x01, 0x02],    // unknown key, map value {1: 2}
        &[0xa4], b"type", &[0xb0], b"AllBlocksCleared",
        &[0xa7], b"unknown", &[0xc3],               // unknown batch key
        &[0xa2], b"ts", &[0xca, 0x3f, 0xc0, 0x00, 0x00], // ts: float32 1.5
    ]);
    let batch = decode_batch(&payload).expect("decodes");
    assert_eq!(batch.ts, 1.5);
    assert_eq!(batch.data_parallel_rank, None);
    let s = stored(&batch, 0);
    assert_eq!(s.block_hashes, vec![EngineHash(0xffff_ffff_ffff_fffe)]);
    assert_eq!(s.parent_block_hash, Some(EngineHash(5)));
    assert_eq!((s.token_ids.as_slice(), s.block_size), (&[42][..], 1));
    assert_eq!((s.lora_id, s.medium, s.group_idx), (None, None, None));
    assert_eq!(
        batch.events[1],
        KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: vec![EngineHash(5), EngineHash(6)],
            medium: Some(Medium::Storage),
            group_idx: Some(3),
        })
    );
    assert_eq!(batch.events[2], KvEvent::AllBlocksCleared);

    // Lower-case tiers read as their tier.
    let cpu = wire(&[
        &[0x92, 0x00, 0x91, 0x83],
        &[0xa4], b"type", &[0xac], b"BlockRemoved",
        &[0xac], b"block_hashes", &[0x90],
        &[0xa6], b"medium", &[0xa3], b"cpu",
    ]);
    let batch = decode_batch(&cpu).expect("decodes");
    assert_eq!(
        batch.events,
        vec![KvEvent::BlockRemoved(BlockRemoved {
            medium: Some(Medium::Cpu),
            ..BlockRemoved::default()
        })]
    );
}

/// An offloading placeholder (`token_ids` empty, `block_size` 0) rides in a batch with a normal
/// store: both decode, and only the normal one yields token blocks.
#[test]
fn hash_only_placeholders_are_kept() {
    let payload = wire(&[
        &[0x93, 0x00, 0x92],
        &[0x97, 0xab], b"BlockStored", &[0x91, 0x09, 0xc0, 0x90, 0x00, 0xc0, 0xa3], b"CPU",
        &[0x97, 0xab], b"BlockStored", &[0x91, 0x0a, 0xc0, 0x91, 0x2a, 0x01, 0xc0, 0xc0],
        &[0x00],
    ]);
    let batch = decode_batch(&payload).expect("decodes");
    let (placeholder, normal) = (stored(&batch, 0), stored(&batch, 1));
    assert_eq!((placeholder.block_size, placeholder.medium), (0, Some(Medium::Cpu)));
    assert!(placeholder.token_blocks().is_none());
    assert_eq!(normal.token_blocks().map(|b| b.collect::<Vec<_>>()), Some(vec![&[42u32][..]]));
}

fn malformed(payload: &[u8]) -> String {
    match decode_batch(payload) {
        Err(Error::MalformedEvent(msg)) => msg,
        other => panic!("expected MalformedEvent, got {other:?}"),
    }
}

#[test]
fn errors_say_what_and_where() {
    // A header claiming 2^32 - 1 events in a 6-byte payload fails before reserving anything.
    let msg = malformed(&[0x92, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff]);
    assert!(msg.contains("events") && msg.contains("claims 4294967295"), "{msg}");

    // More events than the limit, even when the bytes are there.
    let mut many = vec![0x92, 0x00, 0xdd, 0x00, 0x01, 0x00, 0x01];
    many.resize(many.len() + 65_537, 0xc0);
    assert!(malformed(&many).contains("exceed the limit of 65536"));

    let event = |body: &[u8]| wire(&[&[0x92, 0x00, 0x91], body]);
    let stored = |tokens: &[u8]| {
        event(&wire(&[&[0x95, 0xab], b"BlockStored", &[0x91, 0x01, 0xc0], tokens, &[0x01]]))
    };
    let msg = malformed(&stored(&[0x91, 0xff]));
    assert!(msg.contains("event 0 (BlockStored) token_ids") && msg.contains("u32"), "{msg}");
    let msg = malformed(&stored(&[0x91, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0]));
    assert!(msg.contains("token_ids") && msg.contains("u32"), "{msg}");
    let msg = malformed(&stored(&[0x91, 0xa1, b'x']));
    assert!(msg.contains("found a string"), "{msg}");

    // A required field missing from a map event.
    let msg = malformed(&event(&wire(&[
        &[0x84, 0xa4], b"type", &[0xab], b"BlockStored",
        &[0xac], b"block_hashes", &[0x90],
        &[0xb1], b"parent_block_hash", &[0xc0],
        &[0xa9], b"token_ids", &[0x90],
    ])));
    assert!(msg.contains("event 0 (BlockStored) block_size: missing"), "{msg}");
    // An array event too short for its required fields.
    let msg = malformed(&event(&wire(&[&[0x92, 0xab], b"BlockStored", &[0x90]])));
    assert!(msg.contains("parent_block_hash: missing"), "{msg}");

    // Trailing bytes, a truncated payload, a batch that is neither array nor map, empty events.
    assert!(malformed(&[0x92, 0x00, 0x90, 0xc0]).contains("1 bytes after the batch"));
    assert!(malformed(&[0x92, 0xcd, 0x01]).contains("ends inside a value"));
    assert!(malformed(&[0xa1, b'x']).contains("expected an array or a map"));
    assert!(malformed(&event(&[0x80])).contains("no type tag"));
    assert!(malformed(&event(&[0x81, 0xa1, b'k', 0x01])).contains("type: missing"));

    // Extra keys nested deeper than the limit.
    let mut deep = vec![0x91, 0x91]; // extra_keys: [ (
    deep.extend(std::iter::repeat_n(0x91, 16)); // 16 nested arrays
    deep.push(0xc0);
    let msg = malformed(&event(&wire(&[
        &[0x99, 0xab], b"BlockStored", &[0x90, 0xc0, 0x90, 0x01, 0xc0, 0xc0, 0xc0], &deep,
    ])));
    assert!(msg.contains("extra_keys") && msg.contains("deeper than 16"), "{msg}");
}

#[test]
fn unknown_event_types_are_their_own_error() {
    let payload = wire(&[&[0x92, 0x00, 0x91, 0x91, 0xab], b"BlockMoved!"]);
    assert_eq!(
        decode_batch(&payload),
        Err(Error::UnsupportedEvent("event 0: unknown type tag \"BlockMoved!\"".into()))
    );
}
