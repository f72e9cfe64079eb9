//! Wiring of `calibrate` and `tune`: flags → options, the Prometheus queries on a small runtime,
//! the searches on threads, files out. Binary only.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use kvpick_sim::calibrate::prometheus::Prometheus;
use kvpick_sim::calibrate::{self, CalibrateOptions, Calibration};
use kvpick_sim::des::{self, SimConfig};
use kvpick_sim::policy::PolicySpec;
use kvpick_sim::report::Summary;
use kvpick_sim::trace::Trace;
use kvpick_sim::tune::{self, Objective, Search, Space, TuneConfig, output};

use crate::cli::{CalibrateArgs, ObjectiveArg, SearchArg, TuneArgs};

/// `30s`, `10m`, `2h`, `1d` or plain seconds.
fn seconds(text: &str, what: &str) -> anyhow::Result<f64> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let mult = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => bail!("{what} {text:?}: unit must be ms, s, m, h or d"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("{what} {text:?}: not a duration"))?;
    if !(v.is_finite() && v > 0.0) {
        bail!("{what} {text:?}: must be positive");
    }
    Ok(v * mult)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn calibrate(args: CalibrateArgs) -> anyhow::Result<()> {
    let opts = CalibrateOptions {
        selector: args.selector.clone(),
        end: args.end.unwrap_or_else(unix_now),
        window_s: seconds(&args.window, "--window")?,
        resolution_s: seconds(&args.resolution, "--resolution")?,
        base: crate::profile(&args.engine)?,
        groups: args.groups,
        min_gaps: args.min_gaps,
        fit_context: args.fit_context,
    };
    if !(args.timeout_s.is_finite() && args.timeout_s > 0.0) {
        bail!("--timeout-s must be positive");
    }
    let prom = Prometheus::new(&args.prometheus, Duration::from_secs_f64(args.timeout_s))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let observed = rt.block_on(calibrate::observe(&prom, &opts))?;
    let cal = calibrate::calibrate(&observed, &opts)?;
    print_calibration(&cal);
    let paths = cal.write(&args.out, args.seed)?;
    if args.check_policy != "none" {
        check(&cal, &args)?;
    }
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    eprintln!("wrote {}", names.join(", "));
    Ok(())
}

fn print_calibration(c: &Calibration) {
    let m = &c.fit.model;
    let o = &c.observed;
    println!(
        "{} engines; step time fitted on {} windows: R² {:.3}, RMSE {:.0} µs",
        c.engines, c.fit.windows, c.fit.r2, c.fit.rmse_us
    );
    println!(
        "  overhead {:.0} µs, per prefill token {:.2} µs, per decoding sequence {:.1} µs, per context token {:.4} µs",
        m.overhead_us, m.per_prefill_token_us, m.per_decode_seq_us, m.per_context_token_us
    );
    for d in &c.fit.dropped {
        println!("  note: {d}");
    }
    println!(
        "workload: {:.2} req/s mean, {:.2} peak; prompt mean {:.0} (p50 {:.0}, p90 {:.0}); output mean {:.0} (p50 {:.0}, p90 {:.0}); prefix hit rate {:.1}%",
        o.rate,
        o.peak_rate,
        c.workload.input.mean,
        c.workload.input.quantile(0.5),
        c.workload.input.quantile(0.9),
        c.workload.output.mean,
        c.workload.output.quantile(0.5),
        c.workload.output.quantile(0.9),
        o.prefix_hit_rate * 100.0
    );
    println!(
        "observed: TTFT mean {:.3} s, ITL mean {:.1} ms, queue mean {:.3} s",
        o.ttft_s,
        o.itl_s * 1e3,
        o.queue_s
    );
}

/// Simulates the synthetic workload on the calibrated profile and compares with the observation.
fn check(c: &Calibration, args: &CalibrateArgs) -> anyhow::Result<()> {
    let policy: PolicySpec = args.check_policy.parse()?;
    let trace = c.workload.generate(args.seed)?;
    if trace.requests.is_empty() {
        return Ok(());
    }
    let cfg = SimConfig {
        engines: c.engines.max(1),
        profile: c.profile.clone(),
        model: Arc::from("calibrated"),
        metrics_interval_us: 50_000,
        kv_event_latency_us: 1_000,
        sample_interval_us: (trace.span().micros() / 300).max(100_000),
        seed: args.seed,
        check_invariants: false,
    };
    let s = Summary::of(&des::run(&trace, &policy, &cfg, None)?);
    let o = &c.observed;
    println!(
        "check ({} engines, {}, {} requests): simulated vs observed: TTFT mean {:.3} vs {:.3} s, ITL mean {:.1} vs {:.1} ms, hit rate {:.1}% vs {:.1}%",
        cfg.engines,
        policy.name(),
        trace.requests.len(),
        s.ttft.mean,
        o.ttft_s,
        s.itl.mean * 1e3,
        o.itl_s * 1e3,
        s.hit_rate * 100.0,
        o.prefix_hit_rate * 100.0
    );
    let json = serde_json::json!({"policy": policy.name(), "simulated": s, "observed": o});
    let path = args.out.join("check.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| path.display().to_string())
}

pub fn tune(args: TuneArgs) -> anyhow::Result<()> {
    let objective = match args.objective {
        ObjectiveArg::TtftP90 => Objective::TtftP90,
        ObjectiveArg::HitRate => Objective::HitRate,
        ObjectiveArg::ThroughputAtSlo => {
            if !(args.slo_ttft_s.is_finite() && args.slo_ttft_s > 0.0) {
                bail!("--slo-ttft-s must be positive");
            }
            Objective::ThroughputAtSlo {
                ttft_slo_s: args.slo_ttft_s,
            }
        }
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
    let profile = crate::profile(&args.engine)?;
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
        sim: SimConfig {
            engines: args.engines,
            profile,
            model: Arc::from(args.model.as_str()),
            metrics_interval_us: crate::ms_to_us(
                args.metrics_interval_ms,
                "--metrics-interval-ms",
            )?,
            kv_event_latency_us: crate::ms_to_us(
                args.kv_event_latency_ms,
                "--kv-event-latency-ms",
            )?,
            sample_interval_us: (span / 300).max(100_000),
            seed: args.seed,
            check_invariants: false,
        },
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
        args.engines,
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
        write_tune(dir, &args, &result, search, cfg.sim.profile.block_size)?;
    }
    Ok(())
}

fn write_tune(
    dir: &Path,
    args: &TuneArgs,
    r: &tune::TuneResult,
    search: Search,
    block_size: u32,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let best = r.best().context("no point evaluated")?;
    let header = format!(
        "Tuned by kvpick-sim tune: {} = {:.4} mean over {} seeds (current config {:.4}, {:+.1}%).\n\
         Use: kvpick-epp --config picker.yaml, or kubectl apply -f configmap.yaml",
        r.objective.label(),
        best.mean,
        r.seeds.len(),
        r.baseline.mean,
        r.gain() * 100.0
    );
    let picker = output::picker_yaml(&r.space, &best.weights, block_size, &header);
    // What is written is what was evaluated: the same text parses to the same config.
    kvpick_scheduler::PickerConfig::parse(&picker).context("the winning picker config")?;
    let write = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| path.display().to_string())
    };
    write("picker.yaml", &picker)?;
    write(
        "configmap.yaml",
        &output::configmap_yaml(&picker, &args.configmap_name, args.namespace.as_deref()),
    )?;
    write("tune.json", &serde_json::to_string_pretty(r)?)?;
    write("summary.md", &output::markdown(r, args.top))?;
    write("landscape.svg", &output::landscape(r, search))?;
    eprintln!(
        "wrote {}/{{picker.yaml,configmap.yaml,tune.json,summary.md,landscape.svg}}",
        dir.display()
    );
    Ok(())
}
