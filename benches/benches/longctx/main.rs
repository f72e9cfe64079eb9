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
mod report;
mod requests;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kvpick_benches::extproc_client::{self, Client};
use kvpick_fleet::demo::DemoConfig;
use kvpick_fleet::demo::tools::find_epp;
use kvpick_fleet::{Fleet, FleetConfig};
use tokio::time::Instant;

use epp::Epp;
use report::{report, snapshot};
use requests::{Ctx, run_form};
use workload::Workload;

const MODEL: &str = "longctx";
/// Output tokens of every request.
const MAX_TOKENS: u32 = 8;
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
