//! Wiring of the live commands (`fleet`, `load`, `demo`): flags → configurations, a tokio runtime,
//! and Ctrl-C (or SIGTERM) as the way out. Binary only.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kvpick_fleet::demo::{self, DemoConfig};
use kvpick_fleet::load::{self, LoadConfig, report};
use kvpick_fleet::servers::http::ServerLimits;
use kvpick_fleet::servers::tokenizer::Tokenizer;
use kvpick_fleet::{Fleet, FleetConfig};
use tokio_util::sync::CancellationToken;

use crate::cli::{DemoArgs, FleetArgs, LoadArgs};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
            _ = token.cancelled() => return,
        }
        eprintln!("\nstopping (signal received)...");
        token.cancel();
    });
}

pub fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    let profile = crate::profile(&args.engine)?;
    let mut cfg = FleetConfig::new(profile, &args.model);
    cfg.pods = args.pods;
    cfg.prefill_pods = args.prefill_pods;
    cfg.kv_transfer = args.transfer.model();
    cfg.dp = args.dp;
    cfg.host = args.host;
    cfg.port = args.port;
    cfg.kv_port = args.kv_port;
    cfg.replay_port = args.replay_port;
    cfg.loras = args.lora.iter().map(|l| Arc::from(l.as_str())).collect();
    cfg.speed = args.speed;
    cfg.seed = args.seed;
    cfg.kv_encoding = args.kv_layout.options(args.kv_bytes_hashes);
    cfg.kv_replay = !args.no_kv_replay;
    cfg.replay_buffer = args.replay_buffer;
    cfg.limits = ServerLimits {
        max_body_bytes: args.max_body_bytes,
        max_connections: args.max_connections,
        header_timeout: Duration::from_secs(30),
    };
    cfg.max_waiting = args.max_waiting;
    cfg.default_max_tokens = args.default_max_tokens;
    cfg.error_rate = args.error_rate;
    cfg.restart_downtime = args.restart_downtime;
    if let Some(dir) = &args.tokenizer {
        cfg.tokenizer = Tokenizer::load(dir)?;
    }
    if !(0.0..=1.0).contains(&cfg.error_rate) {
        anyhow::bail!("--error-rate must be in [0, 1]");
    }
    runtime()?.block_on(async move {
        let fleet = Fleet::start(cfg).await?;
        println!("{:<6} {:<22} {:<28} replay", "pod", "http", "kv events");
        for s in fleet.servers() {
            println!(
                "{:<6} {:<22} {:<28} {}",
                format!("{}/{}", s.pod, s.rank),
                s.address,
                s.kv_events,
                s.kv_replay.as_deref().unwrap_or("-")
            );
        }
        if let Some(path) = &args.endpoints_file {
            fleet.write_endpoints_file(path, true)?;
            println!("endpoints file: {}", path.display());
        }
        println!("serving until Ctrl-C");
        let stop = CancellationToken::new();
        cancel_on_signal(stop.clone());
        stop.cancelled().await;
        fleet.shutdown().await;
        Ok(())
    })
}

pub fn load(args: LoadArgs) -> anyhow::Result<()> {
    let trace = crate::workload(&args.workload, args.seed)?;
    let cfg = LoadConfig {
        base_url: args.url.clone(),
        model: args.model.clone(),
        api: args.api,
        text: args.text,
        stream: !args.no_stream,
        max_concurrency: args.max_concurrency,
        timeout: args.timeout,
        max_output_tokens: args.max_output_tokens,
    };
    load::check_url(&cfg.base_url)?;
    eprintln!(
        "{}: {} requests over {:.0} s to {} (at most {} in flight)",
        trace.name,
        trace.requests.len(),
        trace.span().secs(),
        cfg.url(),
        cfg.max_concurrency
    );
    runtime()?.block_on(async move {
        let stop = CancellationToken::new();
        cancel_on_signal(stop.clone());
        let records = load::run(&trace, &cfg, &stop).await?;
        stop.cancel();
        let summary = report::summarize(&args.url, &records);
        println!("{}", report::table(std::slice::from_ref(&summary)));
        if let Some(path) = &args.out {
            let json = serde_json::json!({"summary": summary, "requests": records});
            std::fs::write(path, serde_json::to_string_pretty(&json)?)
                .with_context(|| path.display().to_string())?;
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    })
}

pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let cfg = DemoConfig::new(args.quick, args.seed)
        .pods(args.pods)
        .prefill_pods(args.prefill_pods)
        .traffic(args.duration.map(|d| d.as_secs_f64()), args.rate)?;
    let out = match args.out {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("kvpick-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let tools = demo::Tools::find(args.epp.as_deref(), args.install_envoy)?;
    runtime()?.block_on(async move {
        let stop = CancellationToken::new();
        cancel_on_signal(stop.clone());
        let result = demo::run(&cfg, &tools, &out, args.keep_running, &stop).await;
        stop.cancel();
        let result = result?;
        if !result.kvpick_wins() {
            anyhow::bail!("kvpick did not beat the cache-blind baseline in this run");
        }
        Ok(())
    })
}
