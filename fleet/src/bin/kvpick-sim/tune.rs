//! Wiring of `tune`: flags → a search (`kvpick_sim::tune`), the workloads per seed, the runs on
//! threads with a progress line, the results printed and written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use anyhow::{Context, bail};
use kvpick_sim::policy::PolicySpec;
use kvpick_sim::trace::Trace;
use kvpick_sim::tune::{self, Objective, Search, Space, TuneConfig, output};

use crate::cli::{ObjectiveArg, SearchArg, TuneArgs};

pub fn tune(args: TuneArgs) -> anyhow::Result<()> {
    let objective = match args.objective {
        ObjectiveArg::TtftP90 => Objective::TtftP90,
        ObjectiveArg::HitRate => Objective::HitRate,
        ObjectiveArg::ThroughputAtSlo => Objective::ThroughputAtSlo {
            ttft_slo_s: args.slo_ttft.as_secs_f64(),
        },
    };
    let space = Space::parse(&args.space, &args.picker)?;
    let search = match args.search {
        SearchArg::Grid => Search::Grid {
            levels: args.levels,
        },
        SearchArg::Random => Search::Random {
            points: args.points,
            seed: args.seed,
        },
    };
    let points = tune::points(&space, search, 5_000)?;
    if points.is_empty() || args.seeds == 0 {
        bail!("nothing to evaluate: the space has no non-zero point, or --seeds is 0");
    }
    let seeds: Vec<u64> = (0..args.seeds).map(|i| args.seed + i).collect();
    // A trace file is loaded once; a generated workload is regenerated per seed.
    let mut workloads: Vec<(u64, Arc<Trace>)> = Vec::new();
    for &s in &seeds {
        let reuse = args.workload.trace.is_some() && args.workload.sample.is_none();
        let t = match workloads.first() {
            Some((_, t)) if reuse => t.clone(),
            _ => Arc::new(crate::workload(&args.workload, s)?),
        };
        workloads.push((s, t));
    }
    let current = match &args.current {
        Some(p) => PolicySpec::Config(p.clone()),
        None => PolicySpec::PrecisePrefix,
    };
    let span = workloads[0].1.span().micros();
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let cfg = TuneConfig {
        sim: crate::sim_config(&args.sim, (span / 300).max(100_000), args.seed)?,
        objective,
        jobs,
    };
    let requests: usize = workloads.iter().map(|(_, t)| t.requests.len()).sum();
    eprintln!(
        "{}: {} points + the current config × {} seeds ({} requests each) on {} × {}, {} jobs",
        workloads[0].1.name,
        points.len(),
        seeds.len(),
        requests / seeds.len(),
        args.sim.engines,
        cfg.sim.profile.name,
        jobs
    );
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let total = (requests * (points.len() + 1)) as u64;
    let started = SystemTime::now();
    let result = std::thread::scope(|s| {
        let bar = s.spawn(|| crate::progress::draw("tuning", &done, total, &stop));
        let r = tune::evaluate(&workloads, &space, points, &current, &cfg, Some(&done));
        stop.store(true, Ordering::Relaxed);
        let _ = bar.join();
        r
    })?;
    let wall = started.elapsed().map_or(0.0, |d| d.as_secs_f64());
    println!("{}", output::markdown(&result, args.top));
    let best = result.best().context("no point evaluated")?;
    println!(
        "best: {} = {:.4} (current {:.4}): {:+.1}%, better on {}/{} seeds; {:.1} s wall",
        objective.label(),
        best.mean,
        result.baseline.mean,
        result.gain() * 100.0,
        best.wins,
        seeds.len(),
        wall
    );
    if let Some(dir) = &args.out {
        let files = output::Files {
            block_size: cfg.sim.profile.block_size,
            configmap_name: &args.configmap_name,
            namespace: args.namespace.as_deref(),
            top: args.top,
        };
        files.write(dir, &result, search)?;
        eprintln!(
            "wrote {}/{{picker.yaml,configmap.yaml,tune.json,summary.md,landscape.svg}}",
            dir.display()
        );
    }
    Ok(())
}
