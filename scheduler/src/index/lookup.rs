//! Lookup: for each candidate, the longest run of consecutive blocks from block 0 it holds.
//!
//! The request is walked 128 blocks (one [`WINDOW`], one shard, one read lock) at a time, in
//! passes so that cache misses overlap instead of queueing behind each other: the window's key
//! lines are read before the lock (taking it is a fence that would wait for each); under it, each
//! group's two directory words are read and the record whose fingerprint matches picked, then the
//! 16 records' two lines are touched in a loop short enough to have them all in flight. The walk
//! then goes over the groups on warm lines: 8 key compares give the slots that match, a nested
//! record costs one bitset intersection plus its listed run ends, a per-slot record one step per
//! block. Only where the request leaves a record (a branch inside a group) does the walk look up
//! the record that starts there, a dependent miss. No prefetch instruction: `_mm_prefetch` needs
//! `unsafe` here, so every warm-up is a plain load kept by `black_box`.

use super::position::{GROUP, WINDOW, shard_of, tag_of};
use super::record;
use super::secret::IndexSecret;
use super::table::Table;
use super::walk::Walk;
use super::{KvIndex, PrefixMatch, PrefixMatches};
use crate::keys::BlockKey;
use crate::pods::{EndpointId, EndpointSet};

/// Groups per window.
const GROUPS: usize = WINDOW / GROUP;
/// No record.
const NONE: usize = usize::MAX;

impl KvIndex {
    /// For each candidate, the longest run of consecutive blocks from block 0 it holds.
    pub fn lookup(&self, keys: &[BlockKey], candidates: &EndpointSet, out: &mut PrefixMatches) {
        out.total_blocks = keys.len() as u32;
        out.matches.clear();
        let cand = candidates.words();
        let Some(hi) = cand.iter().rposition(|&w| w != 0).map(|i| i + 1) else {
            return;
        };
        if keys.is_empty() {
            return;
        }
        match hi {
            0..=4 => self.walk::<4>(keys, cand, &mut out.matches),
            5..=16 => self.walk::<16>(keys, cand, &mut out.matches),
            _ => self.walk::<{ EndpointId::MAX / 64 }>(keys, cand, &mut out.matches),
        }
    }

    fn walk<const N: usize>(&self, keys: &[BlockKey], cand: &[u64], out: &mut Vec<PrefixMatch>) {
        let mut walk = Walk::<N>::new(self, cand, keys.len() as u32, out);
        let secret = &self.config.secret;
        for (w, window) in keys.chunks(WINDOW).enumerate() {
            let (tags, table) = if w == 0 {
                // A miss (block 0 held by nobody: a new conversation) costs one key and one
                // directory word, not the window's 16 keys and records.
                let table = self.shards[shard_of(secret, window[0])].read();
                if !table.may_hold(tag_of(secret, window[0])) {
                    walk.stop(0);
                    break;
                }
                (group_tags(secret, window), table)
            } else {
                // Before the lock: taking it is a fence, which would wait for each key line's
                // miss.
                let tags = group_tags(secret, window);
                (tags, self.shards[shard_of(secret, window[0])].read())
            };
            walk.new_window();
            if !window_walk(&mut walk, &table, window, &tags, (w * WINDOW) as u32) {
                break;
            }
        }
        walk.finish();
    }
}

/// The record tag of each group's first key. Reads every line of the window's keys (a group's 8
/// keys may straddle two, the second holding the next group's first) in a loop of a few
/// instructions per group, so that their misses overlap.
#[inline(always)]
fn group_tags(secret: &IndexSecret, window: &[BlockKey]) -> [u32; GROUPS] {
    let mut tags = [0u32; GROUPS];
    for (group, tag) in window.chunks(GROUP).zip(tags.iter_mut()) {
        *tag = tag_of(secret, group[0]);
    }
    // The line after the last group's first key (the others are some group's first).
    std::hint::black_box(window.last().map(|k| k.get()));
    tags
}

/// The first record of each group whose fingerprint matches (or [`NONE`]), touching its lines
/// (the one [`Table::find`] would try first).
#[inline(always)]
fn first_records(table: &Table, groups: usize, tags: &[u32; GROUPS], recs: &mut [usize; GROUPS]) {
    for (&tag, rec) in tags.iter().zip(recs.iter_mut()).take(groups) {
        let c = table.cand(tag);
        let (m1, m2) = table.candidates(c);
        let (b, m) = if m1 != 0 { (c.b1, m1) } else { (c.b2, m2) };
        *rec = if m != 0 {
            b * GROUP + (m.trailing_zeros() / 8) as usize
        } else {
            NONE
        };
    }
    // The records' lines, in a loop of a few instructions per record: all their misses are in
    // flight at once (a longer loop would fill the reorder buffer after a few).
    let all = table.records();
    let sink = recs
        .iter()
        .fold(0u64, |s, &i| all.get(i).map_or(s, |r| s ^ r[0] ^ r[GROUP]));
    std::hint::black_box(sink);
}

/// Walks one window of up to 128 blocks starting at `depth`. Returns whether any candidate is
/// alive after it.
#[inline(always)]
fn window_walk<const N: usize>(
    walk: &mut Walk<'_, N>,
    table: &Table,
    window: &[BlockKey],
    tags: &[u32; GROUPS],
    depth: u32,
) -> bool {
    let mut recs = [NONE; GROUPS];
    first_records(table, window.len().div_ceil(GROUP), tags, &mut recs);
    let sets = table.sets();
    let all = table.records();
    for (g, group) in window.chunks(GROUP).enumerate() {
        let at = depth + (g * GROUP) as u32;
        let want: [u64; GROUP] = match group.first_chunk::<GROUP>() {
            Some(full) => full.map(BlockKey::get),
            None => std::array::from_fn(|r| group.get(r).map_or(0, |k| k.get())),
        };
        let mut i = recs[g];
        if all.get(i).is_none_or(|rec| rec[0] != want[0]) {
            // Another record of the same fingerprint, if any, is the group's.
            i = table
                .find_like(tag_of(&table.secret, group[0]), 0, want[0])
                .unwrap_or(NONE);
        }
        let Some(mut rec) = all.get(i) else {
            walk.stop(at);
            return false;
        };
        if at != 0 && group.len() == GROUP && record::nested(rec) {
            // The common case: the whole group in one nested record.
            let differ = group
                .iter()
                .zip(record::keys(rec))
                .fold(0, |d, (k, &x)| d | (k.get() ^ x));
            if differ == 0 {
                if !walk.nested(rec, 0, GROUP, at) {
                    return false;
                }
                continue;
            }
        }
        let mut r = 0;
        if at == 0 {
            // Block 0: its holders among the candidates get their result entries.
            if !walk.segment(rec, 0, 1, 0, sets) || !walk.start() {
                return false;
            }
            r = 1;
        }
        while r < group.len() {
            let run = ((!(record::matches(rec, &want) >> r)).trailing_zeros() as usize)
                .min(group.len() - r);
            if run > 0 {
                if !walk.segment(rec, r, r + run, at, sets) {
                    return false;
                }
                r += run;
                continue;
            }
            // The request leaves this record: the block at `r` starts a record of its own.
            match table.find_like(tag_of(&table.secret, group[r]), r, want[r]) {
                Some(j) => rec = table.record(j),
                None => {
                    walk.stop(at + r as u32);
                    return false;
                }
            }
        }
    }
    true
}
