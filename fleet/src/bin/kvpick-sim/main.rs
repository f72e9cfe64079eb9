//! `kvpick-sim`: replays request traces through kvpick's scheduler against simulated vLLM engines
//! (`kvpick_sim`, pure), and runs them live (`kvpick_fleet`). Wiring only: parse arguments, load or
//! generate the trace, run the policies or the fleet, write the reports.
#![forbid(unsafe_code)]

mod calibrate;
mod cli;
mod live;
mod progress;
mod tune;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use anyhow::{Context, bail};
use clap::Parser;
use kvpick_sim::des::{self, PdSetup, SimConfig};
use kvpick_sim::engine::{BatchShape, PROFILES, Profile, StepTimeModel};
use kvpick_sim::policy::PolicySpec;
use kvpick_sim::replicas::{IndexView, ReplicaRouting, ReplicaSetup, ShareSetup};
use kvpick_sim::report::{self, Summary};
use kvpick_sim::trace::generate::{Chat, SharedPrefix, parse_stages};
use kvpick_sim::trace::{self, Trace};

use cli::{Cli, Command, GenArgs, Generator, ProfileArgs, RunArgs, SimArgs, WorkloadArgs};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The fleet, the load generator and the demo report through `tracing` (a pod that failed, a
    // KV-event batch dropped): print it on stderr, `RUST_LOG` to change the level.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Generate { gen_, out } => {
            let trace = generated(&gen_, 1)?.context("--generate is required")?;
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&out).with_context(|| out.display().to_string())?,
            );
            trace::jsonl::write(&trace, &mut f).with_context(|| out.display().to_string())?;
            eprintln!(
                "{}: {} requests ({})",
                out.display(),
                trace.requests.len(),
                trace.name
            );
            Ok(())
        }
        Command::CacheHit {
            trace,
            format,
            block_tokens,
            capacity_tokens,
        } => {
            let t = trace::load(&trace, format)?;
            let r = kvpick_sim::cache_hit::analyze(&t, block_tokens, capacity_tokens);
            println!(
                "{}: {} requests, {} input tokens, hit {} tokens = {:.2}% ({}-token blocks{}, capacity {})",
                trace.display(),
                r.requests,
                r.input_tokens,
                r.hit_tokens,
                r.hit_rate * 100.0,
                r.block_tokens,
                if r.trace_block_ids {
                    ", the trace's hash ids"
                } else {
                    ", keys over tokens"
                },
                capacity_tokens.map_or("unbounded".into(), |c| format!("{c} tokens LRU")),
            );
            Ok(())
        }
        Command::FitStepTime { samples, profile } => fit(&samples, &profile),
        Command::Fleet(args) => live::fleet(*args),
        Command::Load(args) => live::load(*args),
        Command::Demo(args) => live::demo(*args),
        Command::Calibrate(args) => calibrate::calibrate(*args),
        Command::Tune(args) => tune::tune(*args),
        Command::Profiles => {
            for name in PROFILES {
                if let Some(p) = Profile::named(name) {
                    println!("---\n{}", serde_saphyr::to_string(&p)?);
                }
            }
            Ok(())
        }
    }
}

fn generated(g: &GenArgs, default_seed: u64) -> anyhow::Result<Option<Trace>> {
    let seed = g.gen_seed.unwrap_or(default_seed);
    let stages = |default: &str| match &g.stages {
        Some(given) => Ok(given.clone()),
        None => parse_stages(default),
    };
    Ok(Some(match g.generate {
        None => return Ok(None),
        Some(Generator::SharedPrefix | Generator::LlmD) => {
            let base = SharedPrefix::llm_d_benchmark(seed);
            let llm_d = g.generate == Some(Generator::LlmD);
            let pick =
                |v: Option<u32>, llm: u32, plain: u32| v.unwrap_or(if llm_d { llm } else { plain });
            SharedPrefix {
                groups: pick(g.groups, base.groups, 8),
                users_per_group: pick(g.users_per_group, base.users_per_group, 4),
                system_len: pick(g.system_len, base.system_len, 2000),
                question_len: pick(g.question_len, base.question_len, 200),
                output_len: pick(g.output_len, base.output_len, 100),
                stages: stages(if llm_d { "llm-d" } else { "5:60s" })?,
                rate_scale: g.rate_scale.unwrap_or(1.0),
                arrivals: g.arrivals,
                seed,
            }
            .generate()?
        }
        Some(Generator::Chat) => Chat {
            system_prompts: g.system_prompts,
            system_len: g.system_len.unwrap_or(1000),
            turns: g.turns,
            user_len: g.user_len,
            answer_len: g.output_len.unwrap_or(200),
            think_time_s: g.think_time.as_secs_f64(),
            stages: stages("0.5:120s")?,
            arrivals: g.arrivals,
            seed,
        }
        .generate()?,
    }))
}

fn profile(args: &ProfileArgs) -> anyhow::Result<Profile> {
    let mut p = match &args.profile_file {
        Some(f) => kvpick_sim::engine::profile_from_file(f)?,
        None => Profile::named(&args.profile).with_context(|| {
            format!(
                "unknown profile {:?}; built-in: {}",
                args.profile,
                PROFILES.join(", ")
            )
        })?,
    };
    p.kv_blocks = args.kv_blocks.unwrap_or(p.kv_blocks);
    p.block_size = args.block_size.unwrap_or(p.block_size);
    p.max_num_batched_tokens = args
        .max_num_batched_tokens
        .unwrap_or(p.max_num_batched_tokens);
    p.max_num_seqs = args.max_num_seqs.unwrap_or(p.max_num_seqs);
    p.max_model_len = args.max_model_len.unwrap_or(p.max_model_len);
    if let Some(spec) = &args.step_time {
        p.step_time.apply_overrides(spec)?;
    }
    p.validate()?;
    Ok(p)
}

/// Microseconds, the simulator's clock unit.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The simulation `run` and `tune` set up from their shared options.
fn sim_config(args: &SimArgs, sample_interval_us: u64, seed: u64) -> anyhow::Result<SimConfig> {
    Ok(SimConfig {
        engines: args.engines,
        profile: profile(&args.engine)?,
        model: Arc::from(args.model.as_str()),
        metrics_interval_us: micros(args.metrics_interval),
        kv_event_latency_us: micros(args.kv_event_latency),
        sample_interval_us,
        seed,
        check_invariants: false,
        replicas: replica_setup(&args.replicas)?,
        pd: PdSetup {
            prefill_engines: args.prefill_engines,
            transfer: args.transfer.model(),
        },
    })
}

/// The picker replicas `run` and `tune` simulate.
fn replica_setup(args: &cli::ReplicaArgs) -> anyhow::Result<ReplicaSetup> {
    if args.replica_index == cli::ReplicaIndexArg::Shared && !args.replica_event_skew.is_zero() {
        bail!("--replica-event-skew needs --replica-index per-replica");
    }
    Ok(ReplicaSetup {
        count: args.replicas as usize,
        routing: match args.replica_routing {
            cli::ReplicaRoutingArg::Random => ReplicaRouting::Random,
            cli::ReplicaRoutingArg::RoundRobin => ReplicaRouting::RoundRobin,
        },
        index: match args.replica_index {
            cli::ReplicaIndexArg::Shared => IndexView::Shared,
            cli::ReplicaIndexArg::PerReplica => IndexView::PerReplica {
                skew_us: micros(args.replica_event_skew),
            },
        },
        share: args.share_inflight.map(|interval| ShareSetup {
            interval_us: micros(interval),
            staleness_us: micros(args.share_inflight_staleness),
        }),
    })
}

/// The trace a command runs: loaded or generated, then scaled, sampled and cut.
fn workload(w: &WorkloadArgs, seed: u64) -> anyhow::Result<Trace> {
    let mut trace = match (&w.trace, generated(&w.gen_, seed)?) {
        (Some(path), None) => trace::load(path, w.format)?,
        (None, Some(t)) => t,
        _ => bail!("give either --trace FILE or --generate KIND"),
    };
    if let Some(f) = w.time_scale {
        trace.scale_time(f)?;
    }
    if let Some(window) = w.arrival_jitter {
        trace.jitter(kvpick_sim::clock::SimTime(micros(window)), seed);
    }
    if let Some(f) = w.sample {
        trace.sample(f, seed)?;
    }
    if let Some(n) = w.limit {
        trace.limit(n);
    }
    if trace.requests.is_empty() {
        bail!("the trace has no request");
    }
    Ok(trace)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let trace = workload(&args.workload, args.seed)?;
    let policies = args
        .policies
        .iter()
        .map(|p| p.trim().parse::<PolicySpec>())
        .collect::<Result<Vec<_>, _>>()?;
    let span = trace.span().micros();
    let sample_interval_us = match args.sample_interval {
        Some(d) => micros(d),
        None => (span / 300).max(100_000),
    };
    let cfg = sim_config(&args.sim, sample_interval_us, args.seed)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    eprintln!(
        "{}: {} requests over {:.0} s, {} input tokens; {} × {} ({} KV tokens each); {} picker replica(s); {} policies on {} threads",
        trace.name,
        trace.requests.len(),
        trace.span().secs(),
        trace.input_tokens(),
        cfg.engines,
        cfg.profile.name,
        cfg.profile.kv_tokens(),
        cfg.replicas.count,
        policies.len(),
        threads.min(policies.len()),
    );
    let total = (trace.requests.len() * policies.len()) as u64;
    let started = SystemTime::now();
    let results = progress::around("simulating", total, |done| {
        des::run_many(&trace, &policies, &cfg, threads, Some(done))
    });
    let wall = started.elapsed().map_or(0.0, |d| d.as_secs_f64());
    let runs = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let summaries: Vec<Summary> = runs.iter().map(Summary::of).collect();
    println!("{}", report::table::render(&summaries));
    println!(
        "simulated {} requests × {} policies in {wall:.2} s wall ({:.0} simulated requests/s)",
        trace.requests.len(),
        runs.len(),
        total as f64 / wall.max(1e-9)
    );
    if let Some(dir) = &args.out {
        write_outputs(dir, &trace, &args, &cfg, &runs, &summaries)?;
    }
    Ok(())
}

fn write_outputs(
    dir: &Path,
    trace: &Trace,
    args: &RunArgs,
    cfg: &SimConfig,
    runs: &[des::RunResult],
    summaries: &[Summary],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let settings = serde_json::json!({
        "trace": args.workload.trace, "generate": args.workload.gen_.generate.map(|g| format!("{g:?}")),
        "requests": trace.requests.len(), "engines": cfg.engines, "profile": cfg.profile,
        "policies": args.policies, "metrics_interval_us": cfg.metrics_interval_us,
        "kv_event_latency_us": cfg.kv_event_latency_us, "seed": cfg.seed,
        "replicas": cfg.replicas.count, "replica_routing": format!("{:?}", cfg.replicas.routing),
        "replica_index": format!("{:?}", cfg.replicas.index),
        "time_scale": args.workload.time_scale, "sample": args.workload.sample,
        "limit": args.workload.limit,
    });
    let write = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| path.display().to_string())
    };
    let json = report::json::report(&trace.name, settings, runs, summaries);
    write("results.json", &serde_json::to_string_pretty(&json)?)?;
    write("summary.md", &report::table::markdown(summaries))?;
    for (name, svg) in report::plots(runs, summaries) {
        write(name, &svg)?;
    }
    if args.records {
        for run in runs {
            let mut body = String::new();
            for r in &run.records {
                body.push_str(&serde_json::to_string(r)?);
                body.push('\n');
            }
            write(&format!("requests-{}.jsonl", run.policy), &body)?;
        }
    }
    eprintln!("wrote {}/{{results.json,summary.md,*.svg}}", dir.display());
    Ok(())
}

fn fit(samples: &Path, profile: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(samples).with_context(|| samples.display().to_string())?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let v: Vec<f64> = line
            .split(',')
            .map(|f| f.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}:{}: not numbers", samples.display(), i + 1))?;
        let [p, d, c, a, t] = v[..] else {
            bail!("{}:{}: expected 5 fields", samples.display(), i + 1);
        };
        let shape = BatchShape {
            prefill_tokens: p as u64,
            decode_seqs: d as u64,
            decode_context: c as u64,
            attention_pairs: a as u64,
        };
        rows.push((shape, t));
    }
    let mut p = Profile::named(profile).context("unknown profile")?;
    p.step_time = StepTimeModel::fit(&rows)?;
    p.name = format!("{profile}-fitted");
    print!("{}", serde_saphyr::to_string(&p)?);
    Ok(())
}
