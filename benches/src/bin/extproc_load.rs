//! Load generator for kvpick-epp's ext_proc path: the picker alone, in process, over real gRPC on
//! loopback.
//!
//! `--concurrency` workers each run ext_proc streams back to back, the way Envoy does in
//! full-duplex mode: request headers, the body in `--chunk`-byte pieces, wait for the picker's
//! headers answer (the decision) and its re-sent body, then response headers and one response
//! body chunk, then close. The pool has `--endpoints` endpoints with varied queue signals, and the
//! index holds `--groups` shared prompt prefixes spread over them, so every request is a real
//! prefix lookup over `--tokens`-token prompts given as token arrays.
//!
//! Reported: requests/s; the picker's own scheduling latency (parse + pick, recorded inside the
//! server by its `kvpick_scheduling_duration_seconds` probe); and the client-observed decision
//! latency (last body byte sent → headers answer received, through gRPC).
//!
//! ```sh
//! cargo run --release -p kvpick-benches --bin extproc_load -- --duration 10
//! ```
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kvpick_benches::extproc_client::{self, percentile};
use kvpick_benches::probe::{Probe, Samples, thread_cpu};
use kvpick_epp::discovery::{Discovered, EndpointSpec};
use kvpick_epp::{Server, Settings};
use kvpick_scheduler::events::{BlockStored, EngineHash, EventBatch, KvEvent};
use kvpick_scheduler::{PodSignals, Timestamp};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// The response body the picker reads usage from.
const USAGE: &[u8] =
    br#"{"choices":[{"text":"ok"}],"usage":{"prompt_tokens":8192,"completion_tokens":1}}"#;

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent ext_proc streams.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Prompt length in tokens (a token array).
    #[arg(long, default_value_t = 8192)]
    tokens: usize,
    /// Endpoints in the pool.
    #[arg(long, default_value_t = 64)]
    endpoints: usize,
    /// Distinct shared prefixes in the index (each held by 1-3 endpoints at various depths).
    #[arg(long, default_value_t = 256)]
    groups: usize,
    /// Request body chunk size sent to the picker, in bytes.
    #[arg(long, default_value_t = 65_536)]
    chunk: usize,
    /// gRPC connections shared by the workers (Envoy opens one per worker thread).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured seconds (after one second of warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Worker threads of the picker's runtime.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Picker config: `default` (predicted-latency-scorer) or `precise-prefix` (the previous
    /// default), to compare the latency scorer's cost.
    #[arg(long, default_value = "default", value_parser = ["default", "precise-prefix"])]
    picker_config: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let samples = Arc::new(Samples::default());
    metrics::set_global_recorder(Probe::new(
        kvpick_epp::telemetry::SCHEDULING,
        samples.clone(),
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The picker and the load generator on separate runtimes, so the picker's CPU can be told
    // apart (by thread name) and the two do not steal each other's worker threads.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads.max(1))
        .thread_name("epp-server")
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("load-client")
        .enable_all()
        .build()?;
    let mut settings = Settings::loopback();
    settings.scrape.interval = Duration::from_secs(3600);
    settings.route.staleness = Duration::from_secs(3600);
    let mut config = match args.picker_config.as_str() {
        "precise-prefix" => kvpick_scheduler::EndpointPickerConfig::precise_prefix(),
        _ => kvpick_scheduler::EndpointPickerConfig::default(),
    };
    config.staleness.max_signal_age = settings.route.staleness;
    settings.scheduler = Some(config);
    let server = server_rt.block_on(Server::bind(settings))?;
    let endpoints: Vec<EndpointSpec> = (0..args.endpoints)
        .map(|i| EndpointSpec {
            metrics: "http://127.0.0.1:1/metrics".into(),
            ..EndpointSpec::serving(
                std::net::SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8000)),
                "m",
            )
        })
        .collect();
    server.pool().reconcile(&Discovered {
        block_size: None,
        endpoints,
    })?;
    let mut rng = SmallRng::seed_from_u64(7);
    for (i, m) in server.pool().view().members.iter().enumerate() {
        let mut s = PodSignals::idle(Timestamp::ZERO);
        s.waiting = (i % 7) as u32;
        s.running = (i % 5) as u32;
        s.kv_usage = (i % 10) as f64 / 10.0;
        m.live.set_signals(s);
        // Stands in for the KV-event subscriber, which marks endpoints whose events flow.
        m.live.set_events(kvpick_scheduler::EventsState::Live);
    }

    // Prompts: `groups` prefixes, each held by 1-3 endpoints to a random depth.
    let index = server.shared().router.scheduler().index().clone();
    let view = server.pool().view();
    let mut bodies = Vec::with_capacity(args.groups);
    let mut next_hash = 1u64;
    for _ in 0..args.groups {
        let tokens: Vec<u32> = (0..args.tokens)
            .map(|_| rng.random_range(0..150_000))
            .collect();
        for _ in 0..rng.random_range(1..=3) {
            let member = &view.members[rng.random_range(0..view.members.len())];
            let blocks = rng.random_range(1..=args.tokens / 16);
            let hashes: Vec<EngineHash> = (0..blocks as u64)
                .map(|h| EngineHash(next_hash + h))
                .collect();
            next_hash += blocks as u64;
            let batch = EventBatch {
                events: vec![KvEvent::BlockStored(BlockStored {
                    block_hashes: hashes,
                    token_ids: tokens[..blocks * 16].to_vec(),
                    block_size: 16,
                    ..Default::default()
                })],
                ..Default::default()
            };
            index.apply(member.endpoint.id, "m", &batch);
        }
        bodies.push(Arc::new(serde_json::to_vec(
            &serde_json::json!({"model": "m", "prompt": tokens, "max_tokens": 16}),
        )?));
    }
    let stats = index.stats();
    let body_bytes = bodies[0].len();

    let url = format!("http://{}", server.grpc_addr().context("no grpc address")?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = server_rt.spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let (total, elapsed, server_cpu, client_lat) =
        client_rt.block_on(load(&args, url, bodies, &samples))?;
    let _ = stop_tx.send(());
    server_rt.block_on(serving)??;
    let mut sched = samples.take();
    sched.sort_by(f64::total_cmp);
    let us = |v: f64| v * 1e6;
    println!(
        "extproc_load: {} streams, {} endpoints, {}-token prompts ({} B bodies, {} B chunks), index {} keys / {} entries",
        args.concurrency,
        args.endpoints,
        args.tokens,
        body_bytes,
        args.chunk,
        stats.keys,
        stats.entries
    );
    println!(
        "threads: picker {}, load generator {}; picker config {}",
        args.server_threads, args.client_threads, args.picker_config
    );
    println!(
        "requests/s:                 {:.0} ({} in {:.1} s)",
        total as f64 / elapsed,
        total,
        elapsed
    );
    println!(
        "picker CPU per request:     {:.0} µs (picker threads: {:.2} CPU-s; one core would serve {:.0} requests/s)",
        us(server_cpu / total as f64),
        server_cpu,
        total as f64 / server_cpu
    );
    println!(
        "scheduling (parse + pick):  p50 {:.0} µs  p99 {:.0} µs  max {:.0} µs  ({} samples)",
        us(percentile(&sched, 0.5)),
        us(percentile(&sched, 0.99)),
        us(sched.last().copied().unwrap_or(f64::NAN)),
        sched.len()
    );
    println!(
        "decision seen by client:    p50 {:.0} µs  p99 {:.0} µs",
        us(percentile(&client_lat, 0.5)),
        us(percentile(&client_lat, 0.99))
    );
    Ok(())
}

/// Runs the workers; returns requests done, measured seconds, picker CPU seconds, and the
/// client-observed decision latencies (sorted).
async fn load(
    args: &Args,
    url: String,
    bodies: Vec<Arc<Vec<u8>>>,
    samples: &Samples,
) -> anyhow::Result<(u64, f64, f64, Vec<f64>)> {
    let clients = extproc_client::connect(&url, args.connections).await?;

    let started = Instant::now();
    let warmup_end = started + Duration::from_secs(1);
    let end = warmup_end + Duration::from_secs_f64(args.duration);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..args.concurrency {
        let mut client = clients[w % clients.len()].clone();
        let bodies = bodies.clone();
        let chunk = args.chunk;
        workers.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(w as u64);
            let mut latencies = Vec::new();
            let mut done = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let body = &bodies[rng.random_range(0..bodies.len())];
                let decided =
                    extproc_client::decide(&mut client, "/v1/completions", body, chunk).await?;
                let latency = decided.latency;
                decided.finish(USAGE).await?;
                if now >= warmup_end {
                    latencies.push(latency.as_secs_f64());
                    done += 1;
                }
            }
            anyhow::Ok((done, latencies))
        });
    }
    tokio::time::sleep_until(warmup_end).await;
    samples.clear();
    let cpu_start = thread_cpu("epp-server");
    let mut total = 0u64;
    let mut client_lat = Vec::new();
    while let Some(r) = workers.join_next().await {
        let (done, lat) = r??;
        total += done;
        client_lat.extend(lat);
    }
    let server_cpu = thread_cpu("epp-server") - cpu_start;
    let elapsed = end.saturating_duration_since(warmup_end).as_secs_f64();
    client_lat.sort_by(f64::total_cmp);
    Ok((total, elapsed, server_cpu, client_lat))
}
