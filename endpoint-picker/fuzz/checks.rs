//! The properties the fuzz targets check, one function per target, over raw bytes.
//!
//! Shared by the `cargo fuzz` targets (`fuzz_targets/*.rs`) and by the corpus replay test
//! (`tests/fuzz_corpus.rs`), so that every corpus file in the repository is checked on every
//! `cargo test`, with no fuzzing toolchain, by the very code the fuzzer runs.
// Each fuzz target uses one of these functions.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::Path;

use kvpick_scheduler::Timestamp;

/// Any bytes as a request body: `parse` returns a request or an error, never panics, a parsed
/// request always has a model, and `parse` (its token-array fast path first) gives exactly what
/// serde_json alone (`parse_reference`) gives: the same request, or the same error. The same bytes
/// as a body of every other API (Responses, Messages, embeddings, an unknown path): a request with
/// a model, nothing to route on but load, or an error; never a panic. A body whose model a rewrite
/// finds is rewritten to exactly the length it announced, names the new model, and parses as the
/// same request under it.
pub fn request_body(body: &[u8]) {
    use kvpick_epp::cluster_policy::body::model;
    use kvpick_epp::request::{Api, parse, parse_for, parse_reference};
    if let Some(found) = model(body) {
        let (to, to_json) = ("to/\"m\"", r#""to/\"m\"""#);
        let out = found.rewrite(body, to_json);
        assert_eq!(out.len(), found.rewritten_len(body.len(), to_json));
        assert_eq!(model(&out).map(|m| m.name).as_deref(), Some(to));
        if let Ok(mut before) = parse(body) {
            before.model = to.into();
            assert_eq!(parse(&out).unwrap(), before);
        }
    }
    match (parse(body), parse_reference(body)) {
        (Ok(fast), Ok(reference)) => {
            assert!(!fast.model.is_empty());
            assert_eq!(fast, reference);
        }
        (Err(fast), Err(reference)) => assert_eq!(fast.to_string(), reference.to_string()),
        (fast, reference) => panic!("fast path {fast:?} vs serde_json {reference:?}"),
    }
    for api in [Api::Responses, Api::Messages, Api::Embeddings, Api::Other] {
        if let Ok(Some(request)) = parse_for(api, body) {
            assert!(!request.model.is_empty(), "{api:?}");
        }
    }
}

/// Any text as a metrics page: the scanner returns, and the signals it gives are in range.
pub fn prometheus_page(data: &[u8]) {
    let Ok(page) = std::str::from_utf8(data) else {
        return;
    };
    let s = kvpick_epp::scrape::prometheus::parse(page).into_signals(Timestamp::ZERO);
    assert!((0.0..=1.0).contains(&s.kv_usage), "kv_usage {}", s.kv_usage);
}

/// Any response body, cut into chunks: the usage scanner returns, and for a body within its cap
/// the usage it finds does not depend on how the body was cut.
///
/// Layout: byte 0 bit 0 says SSE (`text/event-stream`), bit 1 says no content type (sniffed);
/// byte 1 is the chunk length (0: the whole body at once); the rest is the body.
pub fn usage_stream(data: &[u8]) {
    let [flags, chunk, body @ ..] = data else {
        return;
    };
    let content_type = match flags & 3 {
        0 => Some("application/json"),
        1 => Some("text/event-stream"),
        _ => None,
    };
    const CAP: usize = 4096;
    let scan = |chunk: usize| {
        let mut scanner = kvpick_epp::usage::UsageScanner::new(content_type, CAP);
        for piece in body.chunks(chunk.max(1)) {
            scanner.feed(piece);
        }
        scanner.finish()
    };
    let cut = scan(if *chunk == 0 {
        body.len()
    } else {
        usize::from(*chunk)
    });
    if body.len() <= CAP {
        assert_eq!(cut, scan(body.len()), "the cut changed the usage found");
    }
}

/// Any text as an endpoints file: it parses or is rejected with a message, never panics, and a
/// parsed file has unique addresses.
pub fn endpoints_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = kvpick_epp::discovery::file::parse(Path::new("fuzz.yaml"), text) {
        let unique: HashSet<_> = d.endpoints.iter().map(|e| e.address).collect();
        assert_eq!(unique.len(), d.endpoints.len());
    }
}

/// Any bytes as a peer's index dump read into an empty index whose pool has two endpoints: the
/// loader accepts it or refuses it with an error, never panics; a refused dump leaves nothing
/// behind (no entry, no start anchor); an accepted one leaves a start anchor for each endpoint
/// it loaded and no more entries than the index's capacity.
///
/// Byte 0 picks the shape of the rest: even, length-delimited `DumpItem`s as a peer sends them;
/// odd, a script: chains stored into a source index with the same secret, its real dump, then
/// edits to that dump's messages, so that mutations get past the header. An unedited real dump
/// loads whole: the same entries per endpoint as the source.
pub fn dump_stream(data: &[u8]) {
    use kvpick_epp::bootstrap::Loader;
    use kvpick_epp::kv_events::Anchors;
    use kvpick_epp::query::pb;
    use prost::Message;

    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    // Room for every unedited script's chains (4 × 48 blocks), not for all their duplicates.
    let (pool, target) = dump_pool(256);
    let (items, whole) = if shape % 2 == 0 {
        let mut buf = rest;
        let mut items = Vec::new();
        while !buf.is_empty() && items.len() < 256 {
            match pb::DumpItem::decode_length_delimited(&mut buf) {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        (items, None)
    } else {
        dump_script(rest)
    };
    let view = pool.view();
    let anchors = Anchors::default();
    let mut loader = Loader::new(&target, &view, &anchors);
    let read = items.into_iter().try_for_each(|item| loader.item(item));
    let ids: Vec<_> = view.members.iter().map(|m| m.endpoint.id).collect();
    match loader.conclude(read) {
        Err(e) => {
            assert!(whole.is_none(), "a real dump was refused: {e}");
            for &id in &ids {
                assert_eq!(target.endpoint_entries(id), 0, "{e}");
                assert!(anchors.start(id).is_none(), "{e}");
            }
        }
        Ok(loaded) => {
            let anchored = ids
                .iter()
                .filter(|&&id| anchors.start(id).is_some())
                .count();
            assert_eq!(anchored, loaded.endpoints);
            let held: usize = ids.iter().map(|&id| target.endpoint_entries(id)).sum();
            assert!(held <= target.config().capacity);
            if let Some(source) = whole {
                for (&id, want) in ids.iter().zip(source) {
                    assert_eq!(target.endpoint_entries(id), want);
                }
            }
        }
    }
}

/// The pool of the dump target: an index of `capacity` entries, endpoints 10.0.0.1:8000 and
/// 10.0.0.2:8000.
fn dump_pool(
    capacity: usize,
) -> (
    kvpick_epp::pool::Pool,
    std::sync::Arc<kvpick_scheduler::KvIndex>,
) {
    use kvpick_epp::discovery::Discovered;
    let config = kvpick_scheduler::IndexConfig {
        capacity,
        ..Default::default()
    };
    let index = std::sync::Arc::new(kvpick_scheduler::KvIndex::new(config));
    let pool = kvpick_epp::pool::Pool::new(index.clone(), kvpick_epp::clock::Clock::new());
    let addresses = DUMP_ENDPOINTS.iter().map(|a| a.parse().unwrap());
    pool.reconcile(&Discovered::serving(addresses, "m"))
        .unwrap();
    (pool, index)
}

const DUMP_ENDPOINTS: [&str; 2] = ["10.0.0.1:8000", "10.0.0.2:8000"];

/// A real dump from a script, then edited by it. Byte 0: chains (1 to 4), each three bytes
/// (endpoint, blocks 1 to 48, seed); then entries per message (1 to 16); then edits of three
/// bytes (what, which message, value). Also returns the source's entries per endpoint when no
/// edit was made.
fn dump_script(script: &[u8]) -> (Vec<kvpick_epp::query::pb::DumpItem>, Option<Vec<usize>>) {
    use kvpick_epp::query::dump::{end, entry};
    use kvpick_epp::query::pb::{self, dump_item::Item};
    use kvpick_scheduler::events::{BlockStored, EngineHash, EventBatch, KvEvent};
    use kvpick_scheduler::index::DumpCursor;

    let mut bytes = script.iter().copied();
    let mut next = || bytes.next().unwrap_or(0);
    let (source_pool, source) = dump_pool(1 << 16);
    let view = source_pool.view();
    let chains = 1 + next() % 4;
    for _ in 0..chains {
        let (ep, blocks, seed) = (next() % 2, 1 + u32::from(next()) % 48, u32::from(next()));
        let size = source.block_size().get();
        let tokens: Vec<u32> = (0..blocks * size)
            .map(|i| i * 7 + seed * 100_003 + 1)
            .collect();
        let hashes = (0..u64::from(blocks))
            .map(|j| EngineHash((u64::from(seed) << 32) | (j + 1)))
            .collect();
        let stored = BlockStored {
            block_hashes: hashes,
            token_ids: tokens,
            block_size: size,
            ..Default::default()
        };
        let batch = EventBatch {
            events: vec![KvEvent::BlockStored(stored)],
            ..Default::default()
        };
        source.apply(view.members[usize::from(ep)].endpoint.id, "m", &batch);
    }
    let per_message = 1 + usize::from(next() % 16);
    let mut items = vec![Item::Header(pb::DumpHeader {
        secret_fingerprint: source.config().secret.fingerprint(),
        block_size: source.block_size().get(),
    })];
    let mut counts = Vec::new();
    for (seq, m) in view.members.iter().enumerate() {
        let id = m.endpoint.id;
        counts.push(source.endpoint_entries(id));
        items.push(Item::Begin(pb::DumpBegin {
            address: m.endpoint.address.to_string(),
            seq: seq as u64,
            payload_len: 1,
            payload_hash: 2,
        }));
        let mut cursor = Some(DumpCursor::default());
        while let Some(at) = cursor {
            let chunk = source.dump_chunk(id, at, per_message);
            if !chunk.entries.is_empty() {
                let entries = chunk.entries.iter().map(entry).collect();
                items.push(Item::Entries(pb::DumpEntries { entries }));
            }
            cursor = chunk.next;
        }
        items.push(end(source.dump_facts(id)));
    }
    let mut edited = false;
    while let (Some(what), Some(which), Some(value)) = (bytes.next(), bytes.next(), bytes.next()) {
        edited = true;
        if items.is_empty() {
            break;
        }
        let at = usize::from(which) % items.len();
        match what % 8 {
            0 => drop(items.remove(at)),
            1 => items.insert(at, items[at].clone()),
            2 => {
                let other = (at + 1) % items.len();
                items.swap(at, other);
            }
            edit => edit_item(edit, &mut items[at], value),
        }
    }
    let items = items
        .into_iter()
        .map(|item| pb::DumpItem { item: Some(item) })
        .collect();
    (items, (!edited).then_some(counts))
}

/// Edit `what` (3 to 7) of one dump message, by `value`, where it applies.
fn edit_item(what: u8, item: &mut kvpick_epp::query::pb::dump_item::Item, value: u8) {
    use kvpick_epp::query::pb::{self, dump_item::Item};
    let v = u64::from(value);
    let pick = |n: usize| usize::from(value) % n.max(1);
    match (what, item) {
        (3, Item::Entries(e)) => {
            let at = pick(e.entries.len());
            if let Some(x) = e.entries.get_mut(at) {
                x.key ^= v << (value % 56);
            }
        }
        (4, Item::Entries(e)) => {
            let at = pick(e.entries.len());
            if let Some(x) = e.entries.get_mut(at) {
                x.place ^= 1 << (value % 64);
                x.tiers ^= u32::from(value >> 4);
            }
        }
        (5, Item::Entries(e)) => {
            let at = pick(e.entries.len());
            if let Some(x) = e.entries.get_mut(at) {
                x.parent = Some(x.parent.unwrap_or(0) ^ v);
            }
        }
        (6, Item::End(e)) => {
            e.split ^= u32::from(value) << 4;
            e.non_prefix_groups.push(u32::from(value));
            e.extras.push(pb::DumpExtra {
                key: v,
                count: u32::from(value),
            });
        }
        (7, Item::Begin(b)) => b.address = format!("10.0.0.{}:8000", value % 4),
        _ => {}
    }
}
