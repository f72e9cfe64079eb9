//! Applying a `BlockStored`: keys from the event's tokens, re-chunked to the index's block size
//! (split or merged), its KV-cache group and partition, and the engine refs that name its blocks.

use super::super::engine_map::EngineRef;
use super::super::partition::{BlockExtras, block_extras, fold_key};
use super::super::position::{GROUP, WINDOW, shard_of, tag_of};
use super::super::table::WARM;
use crate::events::{BlockStored, ExtraKey, FULL_ATTENTION};
use crate::keys::{BlockKey, Partition};

use super::{Cursor, Writer};

/// How event blocks map onto index blocks.
#[derive(Copy, Clone, Debug)]
enum Shape {
    /// Each event block is `k` index blocks (k = 1: same size).
    Split(u32),
    /// `k` event blocks make one index block.
    Merge(u32),
}

/// Most keys whose buffer an endpoint keeps between events (a larger one is freed).
const MAX_KEPT_KEYS: usize = 4096;

impl Writer<'_> {
    pub(in crate::index) fn stored(&mut self, model: &str, ev: &BlockStored) {
        let n = ev.block_hashes.len() as u64;
        if !self.prefix_group(ev) {
            self.report.non_prefix_group += n;
            return;
        }
        let index_size = self.index.config.block_size.get();
        let size = ev.block_size;
        let shape = if size == index_size {
            Shape::Split(1)
        } else if size > index_size && size.is_multiple_of(index_size) {
            Shape::Split(size / index_size)
        } else if size > 0 && size < index_size && index_size.is_multiple_of(size) {
            Shape::Merge(index_size / size)
        } else {
            self.report.block_size_mismatch += n;
            return;
        };
        let lora = match (ev.lora_name.as_deref(), ev.lora_id) {
            (Some(name), _) => Some(name),
            (None, Some(_)) => {
                self.report.unknown_lora += n;
                return;
            }
            (None, None) => None,
        };
        let complete = ev
            .block_hashes
            .len()
            .min(ev.token_ids.len() / size as usize);
        let parent = ev.parent_block_hash.map(|parent| {
            let part = match shape {
                Shape::Split(k) => k - 1,
                Shape::Merge(_) => 0,
            };
            EngineRef::new(parent.0, part)
        });
        // The parent and the new blocks: their engine-map lines are cold; start all the misses
        // at once.
        std::hint::black_box(
            self.state.map.warm(
                parent.into_iter().chain(
                    ev.block_hashes[..complete]
                        .iter()
                        .map(|h| EngineRef::new(h.0, 0)),
                ),
            ),
        );
        self.report.malformed += n - complete as u64;
        let cursor: Cursor = match parent {
            None => None,
            Some(parent) => {
                match self.state.map.get(parent) {
                    Some((key, pos)) if pos.boundary() => Some((key, pos)),
                    Some(_) => {
                        // The parent ends mid-way through an index block: its tokens are gone.
                        self.report.block_size_mismatch += complete as u64;
                        return;
                    }
                    None => {
                        self.report.unknown_parent += complete as u64;
                        return;
                    }
                }
            }
        };
        let ctx = Stored {
            ev,
            root_model: lora.unwrap_or(model),
            tiers: 1 << ev.medium.unwrap_or_default().tier(),
            complete,
        };
        match shape {
            Shape::Split(k) => {
                self.state.split = k;
                self.split(&ctx, k, cursor);
            }
            Shape::Merge(k) => self.merge(&ctx, k, cursor),
        }
    }

    /// Whether the event's KV-cache group proves prefixes; learns the group's kind on the way.
    fn prefix_group(&mut self, ev: &BlockStored) -> bool {
        let groups = &mut self.state.non_prefix_groups;
        match (ev.kv_cache_spec_kind.as_deref(), ev.group_idx) {
            (Some(kind), group) if kind != FULL_ATTENTION => {
                if let Some(g) = group
                    && !groups.contains(&g)
                {
                    groups.push(g);
                }
                false
            }
            (Some(_), Some(g)) => {
                groups.retain(|&x| x != g);
                true
            }
            (_, group) => !group.is_some_and(|g| groups.contains(&g)),
        }
    }

    /// Event blocks of `k` index blocks each (k = 1: same size).
    fn split(&mut self, ctx: &Stored<'_>, k: u32, mut cursor: Cursor) {
        let index_size = self.index.config.block_size.tokens();
        let size = ctx.ev.block_size as usize;
        // All the keys first: the records they go to can then be warmed together.
        let mut keys = std::mem::take(&mut self.state.keys);
        keys.clear();
        let mut prev = cursor.map(|(key, _)| key);
        for j in 0..ctx.complete {
            let extras = ctx.extras(j, prev.is_none());
            let mut parent = prev.unwrap_or_else(|| ctx.root(extras.salt));
            let tokens = &ctx.ev.token_ids[j * size..(j + 1) * size];
            for (part, chunk) in tokens.chunks_exact(index_size).enumerate() {
                let mut key = parent.chain(chunk);
                if part == 0
                    && let Some(f) = extras.fold
                {
                    key = fold_key(key, f);
                }
                keys.push(key);
                parent = key;
            }
            prev = Some(parent);
        }
        self.warm_stored(cursor, &keys);
        let parts = (size / index_size).max(1);
        for (i, &key) in keys.iter().enumerate() {
            let (j, part) = (i / parts, i % parts);
            debug_assert!(part < k as usize);
            let hash = ctx.ev.block_hashes[j];
            let Some(pos) = self.hold(key, cursor, ctx.tiers, |w, pos, added| {
                w.put(EngineRef::new(hash.0, part as u32), key, pos, added);
            }) else {
                // No room for it: it and the rest of the event (its descendants) are dropped.
                self.report.overflow += (ctx.complete - j) as u64;
                break;
            };
            cursor = Some((key, pos));
        }
        if keys.capacity() <= MAX_KEPT_KEYS {
            self.state.keys = keys;
        }
    }

    /// Warms the records that the blocks `keys`, stored after `cursor`, will go to: the
    /// parent's and one per group they start (those of the first block's shard).
    fn warm_stored(&mut self, cursor: Cursor, keys: &[BlockKey]) {
        let mut tags = [0u32; WARM];
        let mut n = 0;
        let mut warm_shard = None;
        let mut shard = cursor.map_or(0, |(_, pos)| pos.shard());
        let mut offset = cursor.map(|(_, pos)| pos.offset());
        if let Some((_, pos)) = cursor
            && (pos.offset() + 1) % GROUP != 0
        {
            tags[0] = pos.tag();
            n = 1;
            warm_shard = Some(shard);
        }
        for &key in keys {
            let at = match offset {
                Some(o) if (o + 1) % WINDOW != 0 => o + 1,
                _ => {
                    shard = shard_of(&self.index.config.secret, key);
                    0
                }
            };
            offset = Some(at);
            if at % GROUP == 0 && n < WARM && *warm_shard.get_or_insert(shard) == shard {
                tags[n] = tag_of(&self.index.config.secret, key);
                n += 1;
            }
        }
        if let Some(s) = warm_shard {
            // A new block is looked for in a record of its own tag first (a branch stored
            // earlier), so its directory words are read too.
            let secret = self.index.config.secret;
            let table = self.table(s);
            let dirs = table.warm_directory(keys.iter().map(|&k| tag_of(&secret, k)));
            std::hint::black_box(table.warm(&tags[..n]) ^ dirs);
        }
    }

    /// `k` event blocks per index block: only complete groups aligned on the parent form blocks.
    fn merge(&mut self, ctx: &Stored<'_>, k: u32, mut cursor: Cursor) {
        let k = k as usize;
        let size = ctx.ev.block_size as usize;
        let groups = ctx.complete / k;
        self.report.block_size_mismatch += (ctx.complete % k) as u64;
        for g in 0..groups {
            let first = g * k;
            let start = cursor.is_none();
            let mut key = match cursor {
                Some((key, _)) => key,
                None => ctx.root(ctx.extras(first, true).salt),
            };
            key = key.chain(&ctx.ev.token_ids[first * size..(first + k) * size]);
            for j in first..first + k {
                if let Some(f) = ctx.extras(j, start && j == first).fold {
                    key = fold_key(key, f);
                }
            }
            let Some(pos) = self.hold(key, cursor, ctx.tiers, |w, pos, _| {
                // The parts of one index block: none is a copy of it, so none counts as an
                // extra reference.
                for (i, hash) in ctx.ev.block_hashes[first..first + k].iter().enumerate() {
                    w.put(
                        EngineRef::new(hash.0, 0),
                        key,
                        pos.with_boundary(i + 1 == k),
                        true,
                    );
                }
            }) else {
                self.report.overflow += ((groups - g) * k) as u64;
                break;
            };
            cursor = Some((key, pos));
        }
    }
}

/// One `BlockStored` being applied.
struct Stored<'e> {
    ev: &'e BlockStored,
    root_model: &'e str,
    tiers: u8,
    /// Event blocks that have their tokens.
    complete: usize,
}

impl<'e> Stored<'e> {
    fn extras(&self, block: usize, chain_start: bool) -> BlockExtras<'e> {
        let extra: Option<&'e [ExtraKey]> = self
            .ev
            .extra_keys
            .as_ref()
            .and_then(|all| all.get(block))
            .and_then(|keys| keys.as_deref());
        block_extras(
            self.ev.lora_name.as_deref(),
            self.ev.lora_id,
            extra,
            chain_start,
        )
    }

    fn root(&self, salt: Option<&str>) -> BlockKey {
        Partition {
            model: self.root_model,
            cache_salt: salt,
        }
        .root()
    }
}
