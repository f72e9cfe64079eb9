//! Wiring of `tune`: flags → a search (`kvpick_sim::tune`), the workloads per seed, the runs on
//! threads with a progress line, the results printed and written; one shard of it
//! (`--shard I/N`); the merge of every shard's results (`tune merge`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, bail};
use kvpick_sim::policy::PolicySpec;
use kvpick_sim::trace::Trace;
use kvpick_sim::tune::shard::{self, Plan, ShardResult};
use kvpick_sim::tune::{self, Objective, Search, Space, TuneConfig, TuneResult, output};

use crate::cli::{MergeArgs, ObjectiveArg, ReportArgs, SearchArg, TuneAction, TuneArgs};

/// Candidate points drawn at most.
const MAX_POINTS: usize = 5_000;

pub fn tune(args: TuneArgs) -> anyhow::Result<()> {
    if let Some(TuneAction::Merge(m)) = args.action {
        return merge(*m);
    }
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
    let points = tune::points(&space, search, MAX_POINTS)?;
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
    let units = match args.shard {
        Some(s) => s.units(points.len() + 1).len(),
        None => points.len() + 1,
    };
    let requests: usize = workloads.iter().map(|(_, t)| t.requests.len()).sum();
    eprintln!(
        "{}: {} points + the current config × {} seeds ({} requests each) on {} × {}, {} jobs{}",
        workloads[0].1.name,
        points.len(),
        seeds.len(),
        requests / seeds.len(),
        args.sim.engines,
        cfg.sim.profile.name,
        jobs,
        match args.shard {
            Some(s) => format!("; shard {}/{}: {units} of them", s.index, s.count),
            None => String::new(),
        }
    );
    let total = (requests * units) as u64;
    let started = SystemTime::now();
    let wall = || started.elapsed().map_or(0.0, |d| d.as_secs_f64());
    if let (Some(s), Some(dir)) = (args.shard, &args.out) {
        let plan = Plan {
            space: args.space.clone(),
            picker: args.picker.clone(),
            search,
            max_points: MAX_POINTS,
            seeds,
            objective,
            current: current.name(),
            block_size: cfg.sim.profile.block_size,
            fingerprint: shard::fingerprint(&workloads, &cfg.sim),
        };
        let r = crate::progress::around("tuning", total, |done| {
            shard::run(&plan, s, &workloads, &current, &cfg, Some(done))
        })?;
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        let path = dir.join(s.file_name());
        std::fs::write(&path, serde_json::to_string_pretty(&r)?)
            .with_context(|| path.display().to_string())?;
        eprintln!(
            "shard {}/{}: {} candidates in {:.1} s wall; wrote {}",
            s.index,
            s.count,
            r.units.len(),
            wall(),
            path.display()
        );
        return Ok(());
    }
    let result = crate::progress::around("tuning", total, |done| {
        tune::evaluate(&workloads, &space, points, &current, &cfg, Some(done))
    })?;
    let files = args.report.files(cfg.sim.profile.block_size);
    report(&result, search, &files, args.out.as_deref())?;
    eprintln!("{:.1} s wall", wall());
    Ok(())
}

impl ReportArgs {
    /// The files a ranking is written to, for engines of `block_size`.
    fn files(&self, block_size: u32) -> output::Files<'_> {
        output::Files {
            block_size,
            configmap_name: &self.configmap_name,
            namespace: self.namespace.as_deref(),
            top: self.top,
        }
    }
}

/// Prints the ranking and the best point, and writes the files into `out` if given.
fn report(
    result: &TuneResult,
    search: Search,
    files: &output::Files<'_>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    println!("{}", output::markdown(result, files.top));
    let best = result.best().context("no point evaluated")?;
    println!(
        "best: {} = {:.4} (current {:.4}): {:+.1}%, better on {}/{} seeds",
        result.objective.label(),
        best.mean,
        result.baseline.mean,
        result.gain() * 100.0,
        best.wins,
        result.seeds.len(),
    );
    if let Some(dir) = out {
        files.write(dir, result, search)?;
        eprintln!(
            "wrote {}/{{picker.yaml,configmap.yaml,tune.json,summary.md,landscape.svg}}",
            dir.display()
        );
    }
    Ok(())
}

/// `tune merge`: every shard's results → the ranking and files of the whole search.
fn merge(args: MergeArgs) -> anyhow::Result<()> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for p in &args.shards {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| p.display().to_string())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("shard-") && n.ends_with(".json"))
                })
                .collect();
            found.sort();
            paths.extend(found);
        } else {
            paths.push(p.clone());
        }
    }
    let shards = paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            serde_json::from_str::<ShardResult>(&text)
                .with_context(|| format!("{}: not a shard result", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let count = shards.len();
    let (plan, result) = shard::merge(shards)?;
    eprintln!(
        "merged {count} shards: {} points + the current config ({}) × {} seeds",
        result.points.len(),
        plan.current,
        plan.seeds.len()
    );
    let files = args.report.files(plan.block_size);
    report(&result, plan.search, &files, Some(&args.out))
}
