//! Load generator for the KV block index: prints lookup p50/p99, bytes per entry (counted by the
//! allocator) and RSS for the published workload, plus the apply rate, as Markdown table rows.
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

use cap::Cap;
use kvpick_benches::index_workload::{self as w, Sharing};
use kvpick_scheduler::index::PrefixMatches;

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Nanoseconds this thread has spent on a CPU (to tell the machine's load from our cost).
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
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
        let (heap, rss) = (ALLOC.allocated() - heap0, rss_bytes().saturating_sub(rss0));
        let stats = index.stats();
        let per = |b: usize| b as f64 / stats.entries as f64;
        println!(
            "\n## {sharing:?}: {} entries, {} keys, {} chains",
            stats.entries, stats.keys, pop.chains
        );
        println!(
            "memory: {:.1} B/entry allocated ({:.0} MB), {:.1} B/entry RSS ({:.0} MB), tables {:.1} B/entry",
            per(heap),
            heap as f64 / 1e6,
            per(rss),
            rss as f64 / 1e6,
            per(index.table_bytes())
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
