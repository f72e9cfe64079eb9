//! Load generator for the KV block index: prints lookup p50/p99, bytes per entry (counted by the
//! allocator) and RSS for the published workload, plus the apply rate, as Markdown table rows.
//!
//! Lookup latency is measured twice: `lookup:` with cold keys (each request's keys read from
//! 16 MB of pre-generated requests, so the lookup also waits for the keys), and `lookup as the
//! picker calls it:` with the keys computed from the request's tokens just before the lookup, as
//! `Scheduler::pick` does (keys hot in L1).
//!
//! `cargo run --release -p kvpick-benches --bin index_report -- [ENTRIES] [LOOKUPS]`
//! (defaults: 12,800,000 entries, 200,000 lookups per shape; `KVPICK_SHAPES=one|shared` picks one).
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "a load generator measures wall time; the core never reads a clock"
)]

use std::alloc::System;
use std::time::Instant;

use std::collections::HashMap;

use cap::Cap;
use kvpick_benches::index_workload::{self as w, Sharing};
use kvpick_benches::proc_stats::{rss_bytes, thread_ns as cpu_ns};
use kvpick_scheduler::index::{KvIndex, PrefixMatches};
use kvpick_scheduler::keys::BlockKey;
use kvpick_scheduler::pods::EndpointSet;

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// Anonymous memory on transparent huge pages (from `/proc/self/smaps_rollup`).
fn huge_bytes() -> usize {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("AnonHugePages:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The obvious index, for a same-process ratio: std `HashMap` from key to its holders, and a
/// lookup that walks the request until no candidate holds a block.
struct Naive(HashMap<u64, Vec<u16>>);

impl Naive {
    fn from_index(index: &KvIndex) -> Self {
        let mut map: HashMap<u64, Vec<u16>> = HashMap::new();
        for e in 0..w::ENDPOINTS {
            for (key, _) in index.endpoint_holdings(w::endpoint(e)) {
                map.entry(key.get()).or_default().push(e as u16);
            }
        }
        Self(map)
    }

    fn lookup(&self, keys: &[BlockKey], cands: &EndpointSet, out: &mut Vec<(u16, u32)>) {
        out.clear();
        let Some(first) = keys.first().and_then(|k| self.0.get(&k.get())) else {
            return;
        };
        let mut alive: Vec<u16> = first
            .iter()
            .copied()
            .filter(|&e| cands.contains(w::endpoint(u32::from(e))))
            .collect();
        for (i, k) in keys.iter().enumerate().skip(1) {
            let holders = self.0.get(&k.get()).map_or(&[][..], Vec::as_slice);
            alive.retain(|e| {
                let keep = holders.contains(e);
                if !keep {
                    out.push((*e, i as u32));
                }
                keep
            });
            if alive.is_empty() {
                break;
            }
        }
        out.extend(alive.into_iter().map(|e| (e, keys.len() as u32)));
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let entries: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(w::ENTRIES);
    let lookups: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    println!(
        "# index_report: {entries} entries, {} endpoints, {} blocks/request",
        w::ENDPOINTS,
        w::CHAIN_BLOCKS
    );
    // `KVPICK_SHAPES=one` or `shared` runs one shape only.
    let shapes = std::env::var("KVPICK_SHAPES").unwrap_or_default();
    for sharing in [Sharing::OneHolder, Sharing::Shared] {
        let name = if sharing == Sharing::OneHolder {
            "one"
        } else {
            "shared"
        };
        if !shapes.is_empty() && !shapes.split(',').any(|s| s == name) {
            continue;
        }
        let (heap0, rss0) = (ALLOC.allocated(), rss_bytes());
        let index = w::index();
        let (t, cpu0) = (Instant::now(), cpu_ns());
        let pop = w::populate(&index, sharing, entries, |_| {});
        let fill = t.elapsed();
        let fill_cpu = (cpu_ns() - cpu0) as f64 / 1e9;
        // Heap (counted by the allocator) plus the tables the index maps outside it.
        let (heap, rss) = (
            ALLOC.allocated() - heap0 + index.mapped_bytes(),
            rss_bytes().saturating_sub(rss0),
        );
        let stats = index.stats();
        let per = |b: usize| b as f64 / stats.entries as f64;
        println!(
            "\n## {sharing:?}: {} entries, {} keys, {} chains",
            stats.entries, stats.keys, pop.chains
        );
        println!(
            "memory: {:.1} B/entry allocated+mapped ({:.0} MB), {:.1} B/entry RSS ({:.0} MB), tables {:.1} B/entry",
            per(heap),
            heap as f64 / 1e6,
            per(rss),
            rss as f64 / 1e6,
            per(index.table_bytes())
        );
        println!(
            "huge pages: {:.0} MB of the process's anonymous memory",
            huge_bytes() as f64 / 1e6
        );
        println!(
            "populate (incl. generating tokens and events): {:.2} M blocks/s wall, {:.2} M blocks/s per CPU-second ({} blocks in {:.2} s, one thread)",
            pop.blocks_applied as f64 / fill.as_secs_f64() / 1e6,
            pop.blocks_applied as f64 / fill_cpu / 1e6,
            pop.blocks_applied,
            fill.as_secs_f64()
        );
        let requests = w::requests(&pop, 16_384, 11);
        let cands = w::all_endpoints();
        let mut out = PrefixMatches::default();
        // Warm the code (not the data: requests are random over the populated chains).
        for r in requests.iter().take(2_000) {
            index.lookup(r, &cands, &mut out);
        }
        let mut ns = Vec::with_capacity(lookups);
        let (mut matched, mut blocks) = (0usize, 0u64);
        let mut seed = 0x5EED_u64;
        let (wall0, cpu0) = (Instant::now(), cpu_ns());
        for _ in 0..lookups {
            seed = w::mix(seed);
            let r = &requests[(seed % requests.len() as u64) as usize];
            let t = Instant::now();
            index.lookup(r, &cands, &mut out);
            ns.push(t.elapsed().as_nanos() as u64);
            matched += out.matches.len();
            blocks += u64::from(out.longest());
        }
        let (wall, cpu) = (wall0.elapsed().as_nanos() as f64, (cpu_ns() - cpu0) as f64);
        ns.sort_unstable();
        // Cold keys: each request's keys are read from 16 MB of pre-generated requests, so the
        // lookup starts with their misses (a TLB miss, then the lines).
        println!(
            "lookup phase: on CPU {:.0}% of wall time (the rest: other processes); {:.0} ns CPU per lookup incl. timing",
            100.0 * cpu / wall,
            cpu / lookups as f64
        );
        println!(
            "lookup: p50 {} ns, p90 {} ns, p99 {} ns, p99.9 {} ns, mean {:.0} ns ({} lookups; {:.1} holders matched, longest {:.1} blocks on average)",
            percentile(&ns, 0.5),
            percentile(&ns, 0.9),
            percentile(&ns, 0.99),
            percentile(&ns, 0.999),
            ns.iter().sum::<u64>() as f64 / ns.len() as f64,
            lookups,
            matched as f64 / lookups as f64,
            blocks as f64 / lookups as f64
        );
        // The same draw of requests, as the picker calls the index (`Scheduler::pick`): the
        // request's block keys are computed from its tokens (and the candidate set built) just
        // before the lookup, so the keys are hot; only the lookup is timed. Its CPU per lookup is
        // the CPU of this loop minus that of the same loop without the lookups.
        let hot_loop = |look: bool, ns: &mut Vec<u64>, out: &mut PrefixMatches| {
            let (mut tokens, mut seed, mut matched, mut blocks) = (Vec::new(), 0x5EED_u64, 0, 0);
            let cpu0 = cpu_ns();
            for _ in 0..lookups {
                seed = w::mix(seed);
                let chain = w::request_chain(&pop, 11, seed % requests.len() as u64);
                w::chain_tokens(chain, &mut tokens);
                let keys = w::prompt_keys(&tokens);
                let live = w::all_endpoints();
                if look {
                    let t = Instant::now();
                    index.lookup(&keys, &live, out);
                    ns.push(t.elapsed().as_nanos() as u64);
                    matched += out.matches.len();
                    blocks += u64::from(out.longest());
                } else {
                    std::hint::black_box((&keys, &live));
                }
            }
            (cpu_ns() - cpu0, matched, blocks)
        };
        let (prep_cpu, _, _) = hot_loop(false, &mut Vec::new(), &mut out);
        let mut hot = Vec::with_capacity(lookups);
        let (all_cpu, matched, blocks) = hot_loop(true, &mut hot, &mut out);
        hot.sort_unstable();
        println!(
            "lookup as the picker calls it (keys computed from the request's tokens just before; only the lookup timed): p50 {} ns, p90 {} ns, p99 {} ns, p99.9 {} ns, mean {:.0} ns; {:.0} ns CPU per lookup incl. timing ({} lookups; {:.1} holders matched, longest {:.1} blocks on average)",
            percentile(&hot, 0.5),
            percentile(&hot, 0.9),
            percentile(&hot, 0.99),
            percentile(&hot, 0.999),
            hot.iter().sum::<u64>() as f64 / hot.len() as f64,
            all_cpu.saturating_sub(prep_cpu) as f64 / lookups as f64,
            lookups,
            matched as f64 / lookups as f64,
            blocks as f64 / lookups as f64
        );
        if std::env::var("KVPICK_BASELINE").is_ok_and(|v| v == "1") {
            // Interleaved rounds, so both see the same machine load; ratio of medians.
            let naive = Naive::from_index(&index);
            let mut naive_out = Vec::new();
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for round in 0..200u64 {
                for (times, is_ours) in [(&mut ours, true), (&mut theirs, false)] {
                    let t = Instant::now();
                    for i in 0..256u64 {
                        let r =
                            &requests[(w::mix(round << 20 ^ i) % requests.len() as u64) as usize];
                        if is_ours {
                            index.lookup(r, &cands, &mut out);
                        } else {
                            naive.lookup(r, &cands, &mut naive_out);
                        }
                    }
                    times.push(t.elapsed().as_nanos() as u64 / 256);
                }
            }
            ours.sort_unstable();
            theirs.sort_unstable();
            println!(
                "baseline (std HashMap key -> holders, same process, interleaved): {} ns vs ours {} ns per lookup (median of 200 rounds of 256): {:.1}x",
                percentile(&theirs, 0.5),
                percentile(&ours, 0.5),
                percentile(&theirs, 0.5) as f64 / percentile(&ours, 0.5).max(1) as f64
            );
        }
        if sharing == Sharing::OneHolder {
            let stream = w::churn(65_536, 4_096);
            let blocks: usize = stream
                .iter()
                .flat_map(|(_, b)| &b.events)
                .map(|e| match e {
                    kvpick_scheduler::KvEvent::BlockStored(s) => s.block_hashes.len(),
                    kvpick_scheduler::KvEvent::BlockRemoved(r) => r.block_hashes.len(),
                    kvpick_scheduler::KvEvent::AllBlocksCleared => 0,
                })
                .sum();
            let (t, cpu0) = (Instant::now(), cpu_ns());
            for (ep, batch) in &stream {
                index.apply(*ep, w::MODEL, batch);
            }
            let secs = t.elapsed().as_secs_f64();
            let cpu = (cpu_ns() - cpu0) as f64 / 1e9;
            println!(
                "apply churn on the populated index: {:.2} M blocks/s wall, {:.2} M blocks/s per CPU-second ({} batches of store 16 + remove 16, one thread)",
                blocks as f64 / secs / 1e6,
                blocks as f64 / cpu / 1e6,
                stream.len()
            );
        }
    }
}
