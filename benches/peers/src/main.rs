//! kvpick's KV block index against SGLang's `kv-index` 2.0.0 (`ChainIndex`) and Dynamo's
//! `dynamo-kv-router` 1.6.1 (`ConcurrentRadixTreeCompressed`), on the same events in one
//! process (issue 18): store (build), churn, four lookup classes, and memory per entry.
//!
//! Rates are per CPU-second of the thread that applies (kvpick and SGLang: this thread; Dynamo:
//! its own event worker thread, which is how Dynamo applies events), read from
//! `/proc/.../schedstat`, so the machine's load does not enter them. "convert" is the work of
//! turning a vLLM event (tokens and engine hashes) into the index's input: the peers take
//! per-block content hashes, which their gateways compute from the tokens; kvpick's apply takes
//! the tokens and computes its keys inside. Lookups are timed per call (wall, interleaved
//! between the three so they share the machine's state), plus CPU per lookup over a pass each.
//! Memory is what the global allocator holds for each index (its deltas while that index
//! applies), plus kvpick's huge-page tables mapped outside it; at the end each index is
//! dropped and what that returns is printed too.
//!
//! `cargo run --release --manifest-path benches/peers/Cargo.toml -- [ENTRIES] [LOOKUPS] [CHURN]`
//! (defaults 12,800,000 entries, 20,000 lookups per class, 40,000 churn operations).
//! `KVPICK_PEERS_ONLY_KVPICK=1` applies the events to kvpick alone (for profiling its writer).
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "a load generator measures wall time"
)]

#[path = "../../src/proc_stats.rs"]
mod cpu;
mod subjects;
mod workload;

use std::alloc::System;
use std::time::Instant;

use cap::Cap;
use subjects::{Dynamo, Kvpick, Sglang};
use workload::{Class, Event, Fleet};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// What one index cost so far.
#[derive(Default, Clone, Copy)]
struct Cost {
    convert_ns: u64,
    apply_ns: u64,
    /// Net bytes the allocator gained while it applied.
    bytes: i64,
    failed: u64,
}

struct Subjects {
    kv: Kvpick,
    sg: Sglang,
    dy: Dynamo,
}

impl Subjects {
    /// Converts and applies `events` on index `which`, adding to `cost`.
    fn apply(&mut self, which: usize, events: &[Event], cost: &mut Cost) {
        let t0 = cpu::thread_ns();
        match which {
            0 => self.kv.convert(events),
            1 => self.sg.convert(events),
            _ => self.dy.convert(events),
        }
        let t1 = cpu::thread_ns();
        cost.convert_ns += t1 - t0;
        let a0 = ALLOC.allocated() as i64;
        match which {
            0 => cost.failed += self.kv.apply(),
            1 => cost.failed += self.sg.apply(),
            _ => {
                let (w0, freed) = (self.dy.worker_cpu_ns(), self.dy.pending_bytes() as i64);
                cost.failed += self.dy.apply();
                cost.apply_ns += self.dy.worker_cpu_ns() - w0;
                cost.bytes += freed;
            }
        }
        if which < 2 {
            cost.apply_ns += cpu::thread_ns() - t1;
        }
        cost.bytes += ALLOC.allocated() as i64 - a0;
    }

    fn lookup(&mut self, which: usize, q: &Query, scores: &mut Vec<(u32, u32)>) {
        match which {
            0 => self.kv.lookup(&q.kv, scores),
            1 => {
                self.sg.lookup(&q.sg, scores);
                for s in scores.iter_mut() {
                    s.0 = self.sg.endpoint_of(s.0);
                }
                scores.sort_unstable();
            }
            _ => self.dy.lookup(&q.dy, scores),
        }
    }
}

/// One query in each index's own request hashes.
struct Query {
    kv: Vec<kvpick_scheduler::keys::BlockKey>,
    sg: Vec<kv_index::ContentHash>,
    dy: Vec<dynamo_kv_router::LocalBlockHash>,
}

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn per_s(blocks: u64, ns: u64) -> f64 {
    blocks as f64 / (ns.max(1) as f64 / 1e9) / 1e6
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn main() {
    let (entries, lookups, churn) = (arg(1, 12_800_000), arg(2, 20_000), arg(3, 40_000));
    let rss0 = cpu::rss_bytes();
    // For profiling kvpick's writer alone: no peers, no lookups.
    let only_kvpick = std::env::var_os("KVPICK_PEERS_ONLY_KVPICK").is_some();
    let mut s = Subjects {
        kv: Kvpick::new(),
        sg: Sglang::new(),
        dy: Dynamo::new(),
    };
    let mut fleet = Fleet::default();
    let mut build = [Cost::default(); 3];
    let (mut events, mut blocks, mut n_events) = (Vec::new(), 0u64, 0u64);
    let mut round = 0;
    while fleet.entries_hint < entries {
        events.clear();
        while events.len() < 256 {
            fleet.next_population(&mut events);
        }
        blocks += events.iter().map(|e| e.blocks() as u64).sum::<u64>();
        n_events += events.len() as u64;
        for k in 0..3 {
            let which = (round + k) % 3;
            if only_kvpick && which != 0 {
                continue;
            }
            s.apply(which, &events, &mut build[which]);
        }
        round += 1;
    }
    let held = [s.kv.entries(), s.sg.entries(), s.kv.entries()];
    println!(
        "workload: {n_events} BlockStored events, {blocks} blocks, {} entries (kvpick) / {} (SGLang), \
         {} hot conversations, RSS {:.0} MB",
        held[0],
        held[1],
        fleet.hot.len(),
        (cpu::rss_bytes() - rss0) as f64 / 1e6
    );
    let mapped = s.kv.mapped() as i64;
    let mem_build: Vec<f64> = (0..3)
        .map(|i| (build[i].bytes + if i == 0 { mapped } else { 0 }) as f64 / held[0] as f64)
        .collect();

    // Lookups, per class: interleaved wall-clock percentiles, then CPU per lookup per index.
    let mut rows = Vec::new();
    let mut scores = [Vec::new(), Vec::new(), Vec::new()];
    for class in Class::ALL.into_iter().filter(|_| !only_kvpick) {
        let query = |i: u64| {
            let t = workload::query(&fleet, class, i ^ (class as u64) << 40);
            Query {
                kv: Kvpick::request(&t),
                sg: Sglang::request(&t),
                dy: Dynamo::request(&t),
            }
        };
        let mut disagree = 0;
        let mut holders = 0;
        let mut wall: [Vec<u64>; 3] = Default::default();
        for i in 0..lookups {
            // Each index's request hashes computed just before its lookup, as a picker does.
            let q = query(i);
            for k in 0..3 {
                let which = (i as usize + k) % 3;
                let t = Instant::now();
                s.lookup(which, &q, &mut scores[which]);
                wall[which].push(t.elapsed().as_nanos() as u64);
            }
            holders += scores[0].len();
            disagree += usize::from(scores[0] != scores[1] || scores[0] != scores[2]);
        }
        // CPU per lookup: passes over 256 queries (their hashes cache-resident, the index not)
        // until 200 ms of CPU, since the kernel accounts CPU time at tick granularity.
        let few: Vec<Query> = (0..256).map(|i| query(i + 1_000_000)).collect();
        let mut cpu_per = [0u64; 3];
        for (which, c) in cpu_per.iter_mut().enumerate() {
            let (t0, mut n) = (cpu::thread_ns(), 0u64);
            while cpu::thread_ns() - t0 < 200_000_000 {
                for q in &few {
                    s.lookup(which, q, &mut scores[which]);
                }
                n += few.len() as u64;
            }
            *c = (cpu::thread_ns() - t0) / n;
        }
        for w in &mut wall {
            w.sort_unstable();
        }
        rows.push((
            class,
            wall,
            cpu_per,
            disagree,
            holders as f64 / lookups as f64,
        ));
    }

    // Churn: each operation removes an endpoint's oldest chain and stores a new one.
    let mut churned = [Cost::default(); 3];
    let mut churn_blocks = 0u64;
    let mut op = 0u64;
    round = 0;
    while op < churn {
        events.clear();
        for _ in 0..128.min(churn - op) {
            fleet.churn(op, &mut events);
            op += 1;
        }
        churn_blocks += events.iter().map(|e| e.blocks() as u64).sum::<u64>();
        for k in 0..3 {
            let which = (round + k) % 3;
            if only_kvpick && which != 0 {
                continue;
            }
            s.apply(which, &events, &mut churned[which]);
        }
        round += 1;
    }
    let held_after = s.kv.entries();

    println!("\n| measure | kvpick | SGLang kv-index | Dynamo CRTC | kvpick vs faster peer |");
    println!("|---|---:|---:|---:|---:|");
    let rate_row = |label: &str, c: &[Cost; 3], blocks: u64, with_convert: bool| {
        let r: Vec<f64> = c
            .iter()
            .map(|c| {
                per_s(
                    blocks,
                    c.apply_ns + if with_convert { c.convert_ns } else { 0 },
                )
            })
            .collect();
        println!(
            "| {label} | {:.2}M | {:.2}M | {:.2}M | {:.2}× |",
            r[0],
            r[1],
            r[2],
            r[0] / r[1].max(r[2])
        );
    };
    rate_row(
        "store (build) blocks/s per CPU-s, apply + convert",
        &build,
        blocks,
        true,
    );
    rate_row(
        "store (build) blocks/s per CPU-s, apply only",
        &build,
        blocks,
        false,
    );
    rate_row(
        "churn (remove + store) blocks/s per CPU-s, apply + convert",
        &churned,
        churn_blocks,
        true,
    );
    rate_row(
        "churn blocks/s per CPU-s, apply only",
        &churned,
        churn_blocks,
        false,
    );
    for (class, wall, cpu_per, disagree, holders) in &rows {
        let (p50, p99): (Vec<u64>, Vec<u64>) =
            wall.iter().map(|w| (pct(w, 0.5), pct(w, 0.99))).unzip();
        let best = |v: &[u64]| v[1].min(v[2]) as f64;
        println!(
            "| lookup p50 / p99, {} ({holders:.0} holders; {disagree} disagreements) | {} / {} ns | {} / {} ns | {} / {} ns | {:.2}× / {:.2}× |",
            class.label(),
            p50[0],
            p99[0],
            p50[1],
            p99[1],
            p50[2],
            p99[2],
            p50[0] as f64 / best(&p50),
            p99[0] as f64 / best(&p99),
        );
        println!(
            "| CPU per lookup (mean), {} | {} ns | {} ns | {} ns | {:.2}× |",
            class.label(),
            cpu_per[0],
            cpu_per[1],
            cpu_per[2],
            cpu_per[0] as f64 / best(cpu_per)
        );
    }
    let mem_churn: Vec<f64> = (0..3)
        .map(|i| {
            (build[i].bytes + churned[i].bytes + if i == 0 { s.kv.mapped() as i64 } else { 0 })
                as f64
                / held_after as f64
        })
        .collect();
    println!(
        "| bytes per entry after build / after churn (allocator + mapped) | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2}× / {:.2}× |",
        mem_build[0],
        mem_churn[0],
        mem_build[1],
        mem_churn[1],
        mem_build[2],
        mem_churn[2],
        mem_build[0] / mem_build[1].min(mem_build[2]),
        mem_churn[0] / mem_churn[1].min(mem_churn[2]),
    );
    println!(
        "\nfailed applies (kvpick unknown parent + overflow / SGLang errors / Dynamo nacks): \
         build {} / {} / {}, churn {} / {} / {}",
        build[0].failed,
        build[1].failed,
        build[2].failed,
        churned[0].failed,
        churned[1].failed,
        churned[2].failed
    );
    // What dropping each index returns to the allocator (kvpick: plus its mapped tables).
    let Subjects { kv, sg, dy } = s;
    let mapped = kv.mapped();
    let mut dropped = Vec::new();
    let a = ALLOC.allocated();
    drop(kv);
    dropped.push(a - ALLOC.allocated() + mapped);
    let a = ALLOC.allocated();
    drop(sg);
    dropped.push(a - ALLOC.allocated());
    let a = ALLOC.allocated();
    drop(dy);
    dropped.push(a - ALLOC.allocated());
    println!(
        "freed on drop, per entry: kvpick {:.1} B, SGLang {:.1} B, Dynamo {:.1} B",
        dropped[0] as f64 / held_after as f64,
        dropped[1] as f64 / held_after as f64,
        dropped[2] as f64 / held_after as f64
    );
}
