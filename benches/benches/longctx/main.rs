//! The long-context agentic scenario through kvpick-epp's ext_proc: a fleet of simulated vLLM
//! pods (`kvpick_fleet`: real HTTP `/metrics`, real ZMQ KV events), the `kvpick-epp` binary as its
//! own process reading the fleet's endpoints file, and an open-loop load of requests that share a
//! long system prompt and differ in a question of their own. Each request goes through one
//! full-duplex ext_proc stream (as Envoy sends it); the chosen pod then serves the request's token
//! ids (so it caches them and publishes the blocks, as a vLLM pod would), and the stream's
//! response phase follows when the pod is done.
//!
//! Forms: `text` (a chat body; the picker renders the model's chat template and tokenizes), and
//! `tokens` (a completions body with the same ids as a token array).
//!
//! Reported per form: the picker's CPU from `/proc/PID/stat` (cores used, CPU per request, and
//! the idle cost of following the pods), the decision latency seen by the client (last body byte
//! → decision) and the picker's own scheduling histogram (parse + tokenize + pick), its resident
//! memory, and how often the chosen pod already held the shared prompt.
//!
//! `cargo bench -p kvpick-benches --bench longctx` runs the full scenario (100 endpoints, a
//! 95k-token system prompt + 5k-token questions, 100 requests/s; a release kvpick-epp next to the
//! bench binary, built if missing). Without `--bench` (as `cargo test --benches` runs it) it runs
//! a short, small check that asserts only what holds on a busy machine: every request routed, most
//! requests sent where the shared prompt is cached, memory bounded. No timing is asserted.
#![forbid(unsafe_code)]

mod epp;
mod workload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kvpick_benches::extproc_client::{self, Client, percentile};
use kvpick_fleet::demo::DemoConfig;
use kvpick_fleet::demo::tools::find_epp;
use kvpick_fleet::servers::driver::{Command, End, Progress, Submission};
use kvpick_fleet::{Fleet, FleetConfig};
use tokio::sync::watch;
use tokio::time::Instant;

use epp::Epp;
use workload::{Question, Workload};

const MODEL: &str = "longctx";
/// Resident memory the picker must stay under (its default budget is 3 GiB; this run needs far
/// less).
const MEMORY_BOUND: u64 = 1 << 30;

#[derive(Debug, Parser)]
struct Args {
    /// Set by `cargo bench`: the full scenario; without it, the short check.
    #[arg(long)]
    bench: bool,
    /// Endpoints (simulated pods) [full: 100, short: 16].
    #[arg(long)]
    endpoints: Option<usize>,
    /// Tokens of the shared system prompt [95,000 / 16,000].
    #[arg(long)]
    system_tokens: Option<usize>,
    /// Tokens of each question [5,000 / 1,000].
    #[arg(long)]
    question_tokens: Option<usize>,
    /// Distinct questions, sent round robin [64 / 8].
    #[arg(long)]
    questions: Option<usize>,
    /// Offered requests per second, open loop [100 / 10].
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds per form [20 / 2].
    #[arg(long)]
    duration: Option<f64>,
    /// Unmeasured seconds before each form [5 / 1].
    #[arg(long)]
    warmup: Option<f64>,
    /// Forms, measured one after the other: text, tokens, or mixed (alternating).
    #[arg(long, value_delimiter = ',')]
    forms: Vec<Form>,
    /// The kvpick-epp binary [next to this one, built if missing].
    #[arg(long)]
    epp: Option<PathBuf>,
    /// Extra kvpick-epp flags (repeatable), e.g. --epp-flag=--refresh-metrics-interval=1s.
    #[arg(long = "epp-flag", allow_hyphen_values = true)]
    epp_flags: Vec<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Form {
    Text,
    Tokens,
    Mixed,
}

/// The run's shape, with the mode's defaults filled in.
#[derive(Debug)]
struct Shape {
    endpoints: usize,
    system_tokens: usize,
    question_tokens: usize,
    questions: usize,
    rate: f64,
    duration: f64,
    warmup: f64,
    forms: Vec<Form>,
}

impl Shape {
    fn of(a: &Args) -> Self {
        let full = a.bench;
        let pick = |v: Option<usize>, f: usize, s: usize| v.unwrap_or(if full { f } else { s });
        let pickf = |v: Option<f64>, f: f64, s: f64| v.unwrap_or(if full { f } else { s });
        let forms = match (&a.forms[..], full) {
            ([], true) => vec![Form::Text, Form::Tokens],
            ([], false) => vec![Form::Mixed],
            (f, _) => f.to_vec(),
        };
        Self {
            endpoints: pick(a.endpoints, 100, 16),
            system_tokens: pick(a.system_tokens, 95_000, 16_000),
            question_tokens: pick(a.question_tokens, 5_000, 1_000),
            questions: pick(a.questions, 64, 8),
            rate: pickf(a.rate, 100.0, 10.0),
            duration: pickf(a.duration, 20.0, 2.0),
            warmup: pickf(a.warmup, 5.0, 1.0),
            forms,
        }
    }
}

/// What one request came to.
#[derive(Debug)]
struct Outcome {
    issued: Instant,
    latency: Duration,
    pod: usize,
    cached: u32,
}

const MAX_TOKENS: u32 = 8;

/// One request: the decision, the chosen pod serving the ids, then the response phase.
async fn one(
    mut client: Client,
    fleet: &Fleet,
    pods: &HashMap<String, usize>,
    q: &Question,
    text: bool,
    output_id: u64,
) -> anyhow::Result<Outcome> {
    let issued = Instant::now();
    let (path, body) = if text {
        ("/v1/chat/completions", &q.chat)
    } else {
        ("/v1/completions", &q.tokens)
    };
    let decided = extproc_client::decide(&mut client, path, body, 65_536).await?;
    let pod = *(pods.get(&decided.destination))
        .with_context(|| format!("routed to {}, not a pod", decided.destination))?;
    let (progress, mut rx) = watch::channel(Progress::default());
    fleet.servers()[pod]
        .command(Command::Submit(Submission {
            prompt: q.ids.clone(),
            max_tokens: MAX_TOKENS,
            output_id,
            lora: None,
            transferred: 0,
            progress,
        }))
        .await?;
    let mut cached = None;
    loop {
        {
            let p = rx.borrow_and_update();
            cached = cached.or(p.cached_tokens);
            if let Some(end) = p.end {
                anyhow::ensure!(end == End::Finished, "the pod ended it: {end:?}");
                break;
            }
        }
        rx.changed().await.context("the pod dropped the request")?;
    }
    let usage = format!(
        r#"{{"usage":{{"prompt_tokens":{},"completion_tokens":{MAX_TOKENS}}}}}"#,
        q.ids.len()
    );
    let latency = decided.latency;
    decided.finish(usage.as_bytes()).await?;
    Ok(Outcome {
        issued,
        latency,
        pod,
        cached: cached.unwrap_or(0),
    })
}

/// Readings at a window's two ends.
struct Snapshot {
    at: Instant,
    cpu: f64,
    page: String,
}

async fn snapshot(epp: &Epp) -> anyhow::Result<Snapshot> {
    Ok(Snapshot {
        at: Instant::now(),
        cpu: epp.cpu_seconds()?,
        page: epp.metrics().await?,
    })
}

/// Runs one form open loop: `warmup` s, then a measured window of `duration` s; waits for every
/// request. Returns the outcomes and the window's two snapshots.
async fn run_form(
    shape: &Shape,
    form: Form,
    ctx: &Arc<Ctx>,
    epp: &Epp,
    seq: &mut u64,
) -> anyhow::Result<(Vec<anyhow::Result<Outcome>>, Snapshot, Snapshot)> {
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(shape.warmup);
    let end = window_start + Duration::from_secs_f64(shape.duration);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / shape.rate));
    let mut tasks = tokio::task::JoinSet::new();
    let mut before = None;
    let mut i = 0usize;
    loop {
        let now = tick.tick().await;
        if before.is_none() && now >= window_start {
            before = Some(snapshot(epp).await?);
        }
        if now >= end {
            break;
        }
        let text = match form {
            Form::Text => true,
            Form::Tokens => false,
            Form::Mixed => i.is_multiple_of(2),
        };
        let (ctx, n, id) = (ctx.clone(), i, *seq);
        *seq += 1;
        i += 1;
        tasks.spawn(async move {
            let q = &ctx.work.questions[n % ctx.work.questions.len()];
            let client = ctx.clients[n % ctx.clients.len()].clone();
            let call = one(client, &ctx.fleet, &ctx.pods, q, text, id);
            tokio::time::timeout(Duration::from_secs(300), call)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in 300 s")))
        });
    }
    let after = snapshot(epp).await?;
    let before = before.context("the window never started")?;
    let mut outcomes = Vec::new();
    while let Some(r) = tasks.join_next().await {
        outcomes.push(r?);
    }
    Ok((outcomes, before, after))
}

/// What every request task shares.
struct Ctx {
    fleet: Fleet,
    pods: HashMap<String, usize>,
    clients: Vec<Client>,
    work: Workload,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let shape = Shape::of(&args);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(&args, &shape))
}

async fn run(args: &Args, shape: &Shape) -> anyhow::Result<()> {
    let program = find_epp(args.epp.as_deref())?;
    let work = Workload::new(
        MODEL,
        shape.system_tokens,
        shape.question_tokens,
        shape.questions,
        MAX_TOKENS,
    )?;
    let prompt_tokens = work.questions[0].ids.len();
    let mut profile = DemoConfig::profile();
    profile.name = "longctx".into();
    profile.max_model_len = (prompt_tokens as u32 + 1024).next_multiple_of(1024);
    // The shared prompt plus a dozen questions per pod.
    profile.kv_blocks = ((prompt_tokens + 12 * shape.question_tokens) / 16) as u32 + 64;
    profile.max_num_batched_tokens = 8192;
    profile.step_time.per_prefill_token_us = 10.0;
    let mut cfg = FleetConfig::new(profile, MODEL);
    cfg.pods = shape.endpoints;
    let fleet = Fleet::start(cfg).await?;
    let dir = std::env::temp_dir().join(format!("kvpick-longctx-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let endpoints = dir.join("endpoints.yaml");
    fleet.write_endpoints_file(&endpoints, true)?;
    let mut flags = args.epp_flags.clone();
    if !args.bench {
        // An unoptimised build tokenizes slowly on a busy machine: the check is about routing.
        flags.push("--tokenize-timeout=30s".into());
    }
    let mut epp = Epp::spawn(
        &program,
        &endpoints,
        MODEL,
        &workload::tokenizer_dir(),
        &flags,
        &dir.join("kvpick-epp.log"),
    )?;
    let pods = (fleet.servers().iter().enumerate())
        .map(|(i, s)| (s.address.to_string(), i))
        .collect();
    let clients = ready(&mut epp).await?;
    let ctx = Arc::new(Ctx {
        fleet,
        pods,
        clients,
        work,
    });
    println!(
        "longctx: {} endpoints, {prompt_tokens}-token prompts ({} shared), {} questions, {} req/s offered; kvpick-epp {}",
        shape.endpoints,
        ctx.work.shared_tokens,
        shape.questions,
        shape.rate,
        program.display()
    );
    println!(
        "bodies: chat {} B, token array {} B",
        ctx.work.questions[0].chat.len(),
        ctx.work.questions[0].tokens.len()
    );
    // What following the pods costs with no requests (scrapes, KV-event sockets).
    let idle_from = snapshot(&epp).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_to = snapshot(&epp).await?;
    let idle = (idle_to.cpu - idle_from.cpu) / (idle_to.at - idle_from.at).as_secs_f64();
    println!("idle picker (no requests): {idle:.3} cores");
    let mut seq = 0;
    let mut failures = Vec::new();
    let (mut requests, mut hits) = (0usize, 0usize);
    for &form in &shape.forms {
        let (outcomes, before, after) = run_form(shape, form, &ctx, &epp, &mut seq).await?;
        epp.child.check_alive()?;
        let r = report(
            form,
            &outcomes,
            &before,
            &after,
            idle,
            ctx.work.shared_tokens,
        );
        requests += outcomes.len();
        hits += r;
        failures.extend(outcomes.into_iter().filter_map(Result::err));
    }
    let (rss, hwm) = epp.rss()?;
    println!(
        "kvpick-epp memory: RSS {:.0} MiB, peak {:.0} MiB",
        rss as f64 / 1048576.0,
        hwm as f64 / 1048576.0
    );
    let (hit_rate, _) = ctx.fleet.prefix_hit_rate();
    println!(
        "pods' prefix-cache hit rate (tokens): {:.1}%",
        hit_rate * 100.0
    );
    epp.child.stop();
    if let Ok(ctx) = Arc::try_unwrap(ctx) {
        ctx.fleet.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    // What holds on any machine: every request routed and served, the shared prompt found
    // (the first request of each pod used is cold), memory bounded.
    if let Some(e) = failures.first() {
        anyhow::bail!(
            "{} of {requests} requests failed; first: {e:#}",
            failures.len()
        );
    }
    anyhow::ensure!(
        hits * 2 > requests,
        "only {hits} of {requests} requests went to a pod holding the shared prompt"
    );
    anyhow::ensure!(hwm < MEMORY_BOUND, "kvpick-epp peaked at {hwm} B");
    println!("longctx: all {requests} requests routed; {hits} to a pod holding the shared prompt");
    Ok(())
}

/// Waits until the picker routes a request (pods discovered, scraped and subscribed to).
async fn ready(epp: &mut Epp) -> anyhow::Result<Vec<Client>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let probe = format!(r#"{{"model":"{MODEL}","prompt":[1,2,3],"max_tokens":1}}"#);
    loop {
        epp.child.check_alive()?;
        if let Ok(mut clients) = extproc_client::connect(&epp.grpc_url, 4).await {
            let routed = extproc_client::decide(
                &mut clients[0],
                "/v1/completions",
                probe.as_bytes(),
                65_536,
            )
            .await;
            if let Ok(d) = routed {
                d.finish(b"{}").await?;
                // Let every KV-event subscription settle before the first stored block.
                tokio::time::sleep(Duration::from_secs(2)).await;
                return Ok(clients);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "kvpick-epp not routing after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints one form's figures; returns how many requests went to a pod holding the shared prompt.
fn report(
    form: Form,
    outcomes: &[anyhow::Result<Outcome>],
    before: &Snapshot,
    after: &Snapshot,
    idle: f64,
    shared: usize,
) -> usize {
    let ok: Vec<&Outcome> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    let warm = |o: &&&Outcome| o.cached as usize * 10 >= shared * 9;
    let hits = ok.iter().filter(warm).count();
    let in_window: Vec<&&Outcome> = (ok.iter())
        .filter(|o| o.issued >= before.at && o.issued < after.at)
        .collect();
    let wall = (after.at - before.at).as_secs_f64();
    let cpu = after.cpu - before.cpu;
    let n = in_window.len().max(1) as f64;
    let mut lat: Vec<f64> = in_window.iter().map(|o| o.latency.as_secs_f64()).collect();
    lat.sort_by(f64::total_cmp);
    let sched = epp::delta(
        &epp::histogram(&after.page, "kvpick_scheduling_duration_seconds"),
        &epp::histogram(&before.page, "kvpick_scheduling_duration_seconds"),
    );
    let within_5ms = (sched.iter().find(|b| (b.0 - 0.005).abs() < 1e-9))
        .zip(sched.last())
        .map_or(f64::NAN, |(a, t)| a.1 / t.1.max(1.0));
    let tok = |o: &str| {
        let label = format!("outcome=\"{o}\"");
        epp::counter(&after.page, "kvpick_tokenize_total", &label)
            - epp::counter(&before.page, "kvpick_tokenize_total", &label)
    };
    let pods: std::collections::HashSet<usize> = ok.iter().map(|o| o.pod).collect();
    let ms = |v: f64| v * 1e3;
    println!("== form {form:?}");
    println!(
        "requests: {} sent, {} served; window {:.1} s: {} requests, {:.1} req/s",
        outcomes.len(),
        ok.len(),
        wall,
        in_window.len(),
        in_window.len() as f64 / wall
    );
    println!(
        "picker CPU: {:.3} cores ({:.3} above idle), {:.0} µs per request (/proc/PID/stat)",
        cpu / wall,
        cpu / wall - idle,
        cpu / n * 1e6
    );
    println!(
        "decision seen by client: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or(f64::NAN))
    );
    println!(
        "picker scheduling (parse + tokenize + pick; histogram bounds): p50 ≤ {:.2} ms  p99 ≤ {:.2} ms  {:.1}% within 5 ms",
        ms(epp::bucket_quantile(&sched, 0.5)),
        ms(epp::bucket_quantile(&sched, 0.99)),
        within_5ms * 100.0
    );
    println!(
        "tokenized in the window: {} ok, {} timeout, {} other outcomes",
        tok("ok"),
        tok("timeout"),
        epp::counter(&after.page, "kvpick_tokenize_total", "")
            - epp::counter(&before.page, "kvpick_tokenize_total", "")
            - tok("ok")
            - tok("timeout")
    );
    println!(
        "shared prompt found: {hits} of {} requests went to a pod holding ≥90% of it; {} pods used",
        ok.len(),
        pods.len()
    );
    hits
}
