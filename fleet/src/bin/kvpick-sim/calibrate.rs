//! Wiring of `calibrate`: flags → options, the Prometheus queries on a small runtime, the pure
//! fit (`kvpick_sim::calibrate`), files out, and a check run of the simulation.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use kvpick_fleet::prometheus::{self, Prometheus};
use kvpick_sim::calibrate::{self, CalibrateOptions, Calibration};
use kvpick_sim::des::{self, SimConfig};
use kvpick_sim::policy::PolicySpec;
use kvpick_sim::report::Summary;

use crate::cli::CalibrateArgs;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn calibrate(args: CalibrateArgs) -> anyhow::Result<()> {
    let opts = CalibrateOptions {
        selector: args.selector.clone(),
        end: args.end.unwrap_or_else(unix_now),
        window_s: args.window.as_secs_f64(),
        resolution_s: args.resolution.as_secs_f64(),
        base: crate::profile(&args.engine)?,
        groups: args.groups,
        min_gaps: args.min_gaps,
        fit_context: args.fit_context,
    };
    let prom = Prometheus::new(&args.prometheus, args.timeout)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let observed = rt.block_on(prometheus::observe(&prom, &opts))?;
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
        "observed: TTFT mean {:.3} s, ITL mean {:.1} ms, queue mean {:.3} s, prefill mean {:.3} s \
         → the server's own time per request (frontend_us) {:.1} ms",
        o.ttft_s,
        o.itl_s * 1e3,
        o.queue_s,
        o.prefill_s,
        c.profile.frontend_us / 1e3
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
        replicas: Default::default(),
        pd: Default::default(),
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
