//! A bounded soak: the demo stack (a simulated vLLM fleet, the `kvpick-epp` binary and a real
//! Envoy in front, started by `kvpick_fleet::demo::stack`) under open-loop load at a fraction of a
//! capacity measured first, with pod churn (a pod restarted every `--churn-every` seconds: its
//! in-flight requests fail, its cache and KV-event sequence start over, it is down a while).
//!
//! ```text
//! cargo run --release -p kvpick-benches --bin soak -- --epp target/release/kvpick-epp \
//!     [--duration 120] [--pods 4] [--load 0.8] [--churn-every 20] [--calibrate 10]
//! ```
//!
//! Reports requests lost (every failure except those in flight at a pod when it was restarted,
//! which the pod answers "the engine restarted"), p50/p99 latency of the first and the last
//! window (a minute, or half of a shorter run) and kvpick-epp's resident memory over the run.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use kvpick_fleet::FleetConfig;
use kvpick_fleet::demo::stack::Stack;
use kvpick_fleet::demo::{DemoConfig, Tools};
use kvpick_fleet::load::client::{HttpClient, client, send};
use kvpick_fleet::servers::driver::Command;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const MODEL: &str = "kvpick-soak";
/// What a pod answers for requests it was serving when it restarted.
const RESTARTED: &str = "the engine restarted";

#[derive(Parser, Debug)]
struct Args {
    /// The kvpick-epp binary (a release build for meaningful figures).
    #[arg(long)]
    epp: PathBuf,
    /// Soak length, s.
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// Simulated pods (the demo engine profile).
    #[arg(long, default_value_t = 4)]
    pods: usize,
    /// Offered load as a fraction of the measured capacity.
    #[arg(long, default_value_t = 0.8)]
    load: f64,
    /// Restart one pod (round robin) every this many seconds; 0 for none.
    #[arg(long, default_value_t = 20)]
    churn_every: u64,
    /// How long a restarted pod stays down, ms.
    #[arg(long, default_value_t = 2000)]
    downtime_ms: u64,
    /// Capacity measurement length, s (closed loop, `--calibrate-concurrency` clients).
    #[arg(long, default_value_t = 10)]
    calibrate: u64,
    #[arg(long, default_value_t = 128)]
    calibrate_concurrency: usize,
    /// Shared system prompts, their length and the per-request question length (tokens).
    #[arg(long, default_value_t = 8)]
    groups: u32,
    #[arg(long, default_value_t = 1000)]
    system_len: u32,
    #[arg(long, default_value_t = 100)]
    question_len: u32,
    #[arg(long, default_value_t = 16)]
    output_len: u32,
    /// Requests in flight at most (arrivals past it are counted as not sent).
    #[arg(long, default_value_t = 2048)]
    max_in_flight: usize,
    /// Logs and configs; a fresh directory under the system temp dir by default.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// One request: when it was sent (s into the phase), how long it took, how it ended.
#[derive(Clone, Debug)]
struct Rec {
    at_s: f64,
    latency_s: f64,
    error: Option<String>,
}

struct Load {
    http: HttpClient,
    url: String,
    args: Args,
}

impl Load {
    fn body(&self, rng: &mut SmallRng) -> Bytes {
        let a = &self.args;
        let group = rng.random_range(0..a.groups);
        let mut tokens: Vec<u32> = (0..a.system_len)
            .map(|i| 1000 + (group * 1_000_003 + i * 7919) % 30_000)
            .collect();
        tokens.extend((0..a.question_len).map(|_| rng.random_range(1000..31_000)));
        let body = serde_json::json!({"model": MODEL, "prompt": tokens,
            "max_tokens": a.output_len});
        Bytes::from(body.to_string())
    }

    async fn one(&self, body: Bytes, start: Instant) -> Rec {
        let sent = Instant::now();
        let out = send(&self.http, &self.url, body, false, Duration::from_secs(60)).await;
        Rec {
            at_s: (sent - start).as_secs_f64(),
            latency_s: sent.elapsed().as_secs_f64(),
            error: out.error,
        }
    }
}

/// Completed requests per second with `concurrency` clients in a closed loop (after 2 s).
async fn capacity(load: &Arc<Load>, secs: u64, concurrency: usize) -> f64 {
    let start = Instant::now();
    let end = start + Duration::from_secs(secs + 2);
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..concurrency {
        let (load, done) = (load.clone(), done.clone());
        tasks.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(load.args.seed ^ ((c as u64) << 32));
            while Instant::now() < end {
                let r = load.one(load.body(&mut rng), start).await;
                done.lock().push(r);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let counted = done
        .lock()
        .iter()
        .filter(|r| r.error.is_none() && r.at_s + r.latency_s >= 2.0)
        .filter(|r| r.at_s + r.latency_s < (secs + 2) as f64)
        .count();
    counted as f64 / secs as f64
}

/// kvpick-epp's pid: the process whose command line names this stack's endpoints file.
fn epp_pid(endpoints: &Path) -> Option<u32> {
    let want = endpoints.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        let is_epp = args.first()?.ends_with(b"kvpick-epp");
        (is_epp && args.contains(&want.as_bytes())).then_some(pid)
    })
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.load > 0.0 && args.duration > 0 && args.calibrate > 0) {
        bail!("--load, --duration and --calibrate must be positive");
    }
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("kvpick-soak-{}", std::process::id()))
    });
    let tools = Tools::find(Some(&args.epp), false)?;
    let mut fleet = FleetConfig::new(DemoConfig::profile(), MODEL);
    fleet.pods = args.pods;
    fleet.seed = args.seed;
    fleet.restart_downtime = Duration::from_millis(args.downtime_ms);
    let cancel = CancellationToken::new();
    let stack = Stack::start(fleet, true, &tools, &out, &cancel).await?;
    let pid = epp_pid(&out.join("endpoints.yaml")).context("kvpick-epp's pid not found")?;
    let load = Arc::new(Load {
        http: client(args.max_in_flight),
        url: format!("http://{}/v1/completions", stack.gateway),
        args,
    });
    let a = &load.args;
    eprintln!(
        "soak: {} pods, Envoy at {}, kvpick-epp pid {pid}; logs in {}",
        a.pods,
        stack.gateway,
        out.display()
    );
    let cap = capacity(&load, a.calibrate, a.calibrate_concurrency).await;
    let rate = cap * a.load;
    eprintln!(
        "soak: capacity {cap:.1} req/s ({} clients, {} s); offering {rate:.1} req/s for {} s",
        a.calibrate_concurrency, a.calibrate, a.duration
    );
    if rate <= 0.0 {
        stack.stop().await;
        bail!("no request completed while measuring capacity");
    }

    let start = Instant::now();
    let end = start + Duration::from_secs(a.duration);
    let recs = Arc::new(Mutex::new(Vec::new()));
    let rss = Arc::new(Mutex::new(vec![(0.0, rss_kib(pid).unwrap_or(0))]));
    let stack = Arc::new(stack);
    let mut background = tokio::task::JoinSet::new();
    // Pod churn, round robin.
    let restarts = Arc::new(Mutex::new(Vec::new()));
    if a.churn_every > 0 {
        let (stack, restarts, every) = (stack.clone(), restarts.clone(), a.churn_every);
        background.spawn(async move {
            let mut k = 0;
            while Instant::now() + Duration::from_secs(every) < end {
                tokio::time::sleep(Duration::from_secs(every)).await;
                let servers = stack.fleet.servers();
                let server = &servers[k % servers.len()];
                let t = start.elapsed().as_secs_f64();
                if server.command(Command::Restart).await.is_ok() {
                    restarts.lock().push((t, server.address));
                }
                k += 1;
            }
        });
    }
    // kvpick-epp's memory, every second.
    {
        let rss = rss.clone();
        background.spawn(async move {
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let kib = rss_kib(pid).unwrap_or(0);
                rss.lock().push((start.elapsed().as_secs_f64(), kib));
            }
        });
    }
    // Open-loop Poisson arrivals.
    let permits = Arc::new(Semaphore::new(a.max_in_flight));
    let mut rng = SmallRng::seed_from_u64(a.seed);
    let mut requests = tokio::task::JoinSet::new();
    let (mut next, mut not_sent) = (start, 0u64);
    while next < end {
        tokio::time::sleep_until(next).await;
        let gap = -(1.0 - rng.random::<f64>()).ln() / rate;
        next += Duration::from_secs_f64(gap);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            not_sent += 1;
            continue;
        };
        let (load, recs, body) = (load.clone(), recs.clone(), load.body(&mut rng));
        requests.spawn(async move {
            let r = load.one(body, start).await;
            recs.lock().push(r);
            drop(permit);
        });
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    while background.join_next().await.is_some() {}
    let alive = Arc::into_inner(stack).map(|mut s| (s.check_alive(), s));

    let recs = std::mem::take(&mut *recs.lock());
    let restarts = std::mem::take(&mut *restarts.lock());
    let rss = std::mem::take(&mut *rss.lock());
    report(a, cap, rate, &recs, &restarts, &rss, not_sent);
    if let Some((alive, stack)) = alive {
        stack.stop().await;
        alive?;
    }
    Ok(())
}

fn report(
    a: &Args,
    cap: f64,
    rate: f64,
    recs: &[Rec],
    restarts: &[(f64, std::net::SocketAddr)],
    rss: &[(f64, u64)],
    not_sent: u64,
) {
    let ok = recs.iter().filter(|r| r.error.is_none()).count();
    let in_flight_at_restart = recs
        .iter()
        .filter(|r| r.error.as_deref().is_some_and(|e| e.contains(RESTARTED)))
        .count();
    let mut lost: BTreeMap<String, usize> = BTreeMap::new();
    for e in recs.iter().filter_map(|r| r.error.as_deref()) {
        if !e.contains(RESTARTED) {
            *lost.entry(e.chars().take(80).collect()).or_default() += 1;
        }
    }
    let lost_total: usize = lost.values().sum();
    let d = a.duration as f64;
    let w = (d / 2.0).min(60.0);
    let window = |from: f64, to: f64| -> Vec<f64> {
        recs.iter()
            .filter(|r| r.error.is_none() && r.at_s >= from && r.at_s < to)
            .map(|r| r.latency_s * 1e3)
            .collect()
    };
    let (first, last) = (window(0.0, w), window(d - w, d));
    let (p50a, p99a) = (quantile(first.clone(), 0.5), quantile(first, 0.99));
    let (p50b, p99b) = (quantile(last.clone(), 0.5), quantile(last, 0.99));
    let rss_at = |t: f64| {
        rss.iter()
            .min_by(|x, y| (x.0 - t).abs().total_cmp(&(y.0 - t).abs()))
            .map_or(0, |x| x.1)
    };
    let rss_max = rss.iter().map(|x| x.1).max().unwrap_or(0);
    println!(
        "soak: {} s, {} pods, capacity {cap:.1} req/s, offered {rate:.1} req/s ({:.0}%), \
         {} restarts (every {} s, {} ms down)",
        a.duration,
        a.pods,
        a.load * 100.0,
        restarts.len(),
        a.churn_every,
        a.downtime_ms
    );
    println!(
        "requests: {} sent, {ok} ok, {in_flight_at_restart} in flight at a restarted pod, \
         {lost_total} lost ({:.3}%), {not_sent} not sent (generator at --max-in-flight)",
        recs.len(),
        100.0 * lost_total as f64 / recs.len().max(1) as f64
    );
    for (why, n) in &lost {
        println!("  lost {n}: {why}");
    }
    println!(
        "latency (ok, end to end): first {w:.0} s p50 {p50a:.1} ms p99 {p99a:.1} ms; \
         last {w:.0} s p50 {p50b:.1} ms p99 {p99b:.1} ms; p99 drift {:+.1}%",
        100.0 * (p99b / p99a - 1.0)
    );
    println!(
        "kvpick-epp RSS: {} KiB at start, {} KiB after {w:.0} s, {} KiB at the end, max {rss_max} KiB",
        rss_at(0.0),
        rss_at(w),
        rss_at(d)
    );
}
