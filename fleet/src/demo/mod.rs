//! The one-command demo: the same shared-prefix workload sent through a real Envoy to a simulated
//! vLLM fleet three times, routed by kvpick-epp first without KV events (it then sees only the
//! pods' load: cache-blind), then with them under the previous default profile (precise prefix,
//! KV utilization, queue), then under kvpick's default (the latency-predicting profile, priced
//! with the fleet's engine profile as a calibrated deployment is), measured at the client each
//! time.
//!
//! Each pass gets a fresh stack ([`stack`]: fleet, kvpick-epp, Envoy), so each starts with cold
//! caches. The workload is the simulator's shared-prefix generator, sized so that the pods'
//! caches cannot each hold every group's system prompt: routing decides the hit rate. The
//! comparison (TTFT percentiles, throughput, prefix hit rate from `usage` and from the fleet's
//! own counters), a TTFT plot, kvpick's metrics and every log go to the output directory.

pub mod procs;
pub mod stack;
pub mod tools;

use std::path::Path;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::FleetError;
use crate::load::report::{self, LoadSummary, Record};
use crate::load::{self, ApiKind, LoadConfig};
use crate::servers::FleetConfig;
use kvpick_sim::engine::{Profile, StepTimeModel};
use kvpick_sim::trace::generate::{Arrivals, RateStage, SharedPrefix};
use stack::Stack;
pub use tools::Tools;

/// What the demo runs.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Simulated pods.
    pub pods: usize,
    /// Their engine.
    pub profile: Profile,
    /// The workload.
    pub workload: SharedPrefix,
    /// Served model name.
    pub model: String,
    /// Seed of the fleet.
    pub seed: u64,
    /// P/D: prefill pods among `pods`; the kvpick pass then runs llm-d's P/D config
    /// ([`kvpick_scheduler::EndpointPickerConfig::PD_YAML`] at the demo's block size and a
    /// 256-token threshold), the cache-blind pass serves every pod aggregated.
    pub prefill_pods: usize,
}

impl DemoConfig {
    /// The demo's engine: small and fast enough for a laptop, a KV cache of 10,240 tokens (five
    /// 2,000-token system prompts), prefill at 40 µs a token, so a cache hit saves ~80 ms of TTFT.
    pub fn profile() -> Profile {
        Profile {
            name: "demo".into(),
            kv_blocks: 640,
            block_size: 16,
            max_num_batched_tokens: 2048,
            max_num_seqs: 64,
            max_model_len: 8192,
            step_time: StepTimeModel {
                overhead_us: 4000.0,
                per_prefill_token_us: 40.0,
                per_decode_seq_us: 100.0,
                per_context_token_us: 0.01,
                per_attention_pair_us: 0.0,
            },
            frontend_us: 0.0,
        }
    }

    /// 4 pods; 8 groups × 2,000-token system prompts, 4 users × 100-token questions, 24 output
    /// tokens; Poisson arrivals at 6/s for 20 s (`quick`) or 8/s for 60 s.
    pub fn new(quick: bool, seed: u64) -> Self {
        let (rate, duration_s) = if quick { (6.0, 20.0) } else { (8.0, 60.0) };
        Self {
            pods: 4,
            profile: Self::profile(),
            workload: SharedPrefix {
                groups: 8,
                users_per_group: 4,
                system_len: 2000,
                question_len: 100,
                output_len: 24,
                stages: vec![RateStage { rate, duration_s }],
                rate_scale: 1.0,
                arrivals: Arrivals::Poisson,
                seed,
            },
            model: "kvpick-demo".into(),
            seed,
            prefill_pods: 0,
        }
    }

    /// Sets the number of prefill pods (P/D; 0: aggregated).
    pub fn prefill_pods(mut self, n: usize) -> Self {
        self.prefill_pods = n;
        self
    }

    /// Sets the number of pods.
    pub fn pods(mut self, pods: usize) -> Self {
        self.pods = pods;
        self
    }

    /// Overrides the traffic's duration and rate.
    pub fn traffic(
        mut self,
        duration_s: Option<f64>,
        rate: Option<f64>,
    ) -> Result<Self, FleetError> {
        let stage = &mut self.workload.stages[0];
        stage.duration_s = duration_s.unwrap_or(stage.duration_s);
        stage.rate = rate.unwrap_or(stage.rate);
        if !(stage.rate > 0.0 && stage.duration_s > 0.0) {
            return Err(FleetError::InvalidConfig(
                "--rate and --duration must be positive".into(),
            ));
        }
        Ok(self)
    }
}

/// The outcome of a demo.
#[derive(Clone, Debug)]
pub struct DemoResult {
    /// Cache-blind first, then the previous default (precise prefix), then kvpick's default.
    pub runs: Vec<LoadSummary>,
    /// The printed comparison.
    pub report: String,
}

impl DemoResult {
    /// Whether kvpick's default had a higher client-measured hit rate and a lower TTFT p90 than
    /// cache-blind routing.
    pub fn kvpick_wins(&self) -> bool {
        match &self.runs[..] {
            [blind, _, kvpick] => {
                kvpick.client_hit_rate > blind.client_hit_rate && kvpick.ttft.p90 < blind.ttft.p90
            }
            _ => false,
        }
    }
}

/// The passes: label, whether kvpick-epp gets the KV-event publishers.
const PASSES: [(&str, bool); 3] = [
    ("cache-blind", false),
    ("precise-prefix", true),
    ("kvpick", true),
];

/// kvpick-epp's arguments for pass `label`, its files written to `dir`: the previous default's
/// config for `precise-prefix`; for `kvpick`, llm-d's P/D config with prefill pods, else the
/// built-in default priced with the fleet's `profile` (`--engine-profile`, as `kvpick-sim
/// calibrate` writes it); nothing for cache-blind (it has no index to read).
fn pass_args(label: &str, cfg: &DemoConfig, dir: &Path) -> Result<Vec<String>, FleetError> {
    let (flag, name, text) = match label {
        "precise-prefix" => (
            "--config",
            "picker-config.yaml",
            kvpick_scheduler::EndpointPickerConfig::PRECISE_PREFIX_YAML.to_owned(),
        ),
        "kvpick" if cfg.prefill_pods > 0 => {
            ("--config", "pd.yaml", pd_config(cfg.profile.block_size))
        }
        // JSON is YAML.
        "kvpick" => (
            "--engine-profile",
            "profile.yaml",
            serde_json::to_string_pretty(&cfg.profile)
                .map_err(|e| FleetError::InvalidConfig(format!("demo profile: {e}")))?,
        ),
        _ => return Ok(Vec::new()),
    };
    std::fs::create_dir_all(dir).map_err(|e| FleetError::io(dir, e))?;
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| FleetError::io(&path, e))?;
    Ok(vec![flag.to_owned(), path.display().to_string()])
}

/// llm-d's P/D config as kvpick ships it, at `block_size` and a 256-token threshold.
fn pd_config(block_size: u32) -> String {
    kvpick_scheduler::EndpointPickerConfig::PD_YAML
        .replace("blockSize: 16 ", &format!("blockSize: {block_size} "))
        .replace("nonCachedTokens: 2048", "nonCachedTokens: 256")
}

/// Runs the passes, writes `out/`, prints and returns the comparison. With `keep_running`, the
/// kvpick stack stays up after the comparison until `cancel`.
pub async fn run(
    cfg: &DemoConfig,
    tools: &Tools,
    out: &Path,
    keep_running: bool,
    cancel: &CancellationToken,
) -> Result<DemoResult, FleetError> {
    let trace = cfg.workload.generate()?;
    eprintln!(
        "demo: {} pods ({} KV tokens each), {}: {} requests over {:.0} s, three times through Envoy → kvpick-epp",
        cfg.pods,
        cfg.profile.kv_tokens(),
        trace.name,
        trace.requests.len(),
        trace.span().secs()
    );
    let load_cfg = |gateway: std::net::SocketAddr| LoadConfig {
        base_url: format!("http://{gateway}"),
        model: cfg.model.clone(),
        api: ApiKind::Completions,
        text: false,
        stream: true,
        max_concurrency: 256,
        timeout: std::time::Duration::from_secs(120),
        max_output_tokens: None,
    };
    let mut fleet_cfg = FleetConfig::new(cfg.profile.clone(), &cfg.model);
    fleet_cfg.pods = cfg.pods;
    fleet_cfg.seed = cfg.seed;
    fleet_cfg.prefill_pods = cfg.prefill_pods;
    let mut runs = Vec::new();
    let mut all_records: Vec<(String, Vec<Record>)> = Vec::new();
    let mut kept = None;
    for (label, kv_events) in PASSES {
        eprintln!("demo: {label}: starting the fleet, kvpick-epp and envoy...");
        let dir = out.join(label);
        let epp_args = pass_args(label, cfg, &dir)?;
        let mut stack =
            Stack::start_with(fleet_cfg.clone(), kv_events, tools, &epp_args, &dir, cancel).await?;
        eprintln!(
            "demo: {label}: sending {} requests through http://{}",
            trace.requests.len(),
            stack.gateway
        );
        let records = load::run(&trace, &load_cfg(stack.gateway), cancel).await;
        let alive = stack.check_alive();
        let metrics = stack.epp_metrics_text().await;
        let (fleet_hit, _) = stack.fleet.prefix_hit_rate();
        if let Ok(text) = &metrics {
            let path = dir.join("kvpick-metrics.txt");
            std::fs::write(&path, text).map_err(|e| FleetError::io(&path, e))?;
        }
        if keep_running && kv_events {
            kept = Some(stack);
        } else {
            stack.stop().await;
        }
        let records = records?;
        alive?;
        if cancel.is_cancelled() {
            return Err(FleetError::Process("interrupted".into()));
        }
        let mut summary = report::summarize(label, &records);
        summary.server_hit_rate = Some(fleet_hit);
        let path = dir.join("requests.json");
        let json = serde_json::to_string_pretty(&records).unwrap_or_default();
        std::fs::write(&path, json).map_err(|e| FleetError::io(&path, e))?;
        runs.push(summary);
        all_records.push((label.to_owned(), records));
    }
    let plot_input: Vec<(String, &[Record])> = all_records
        .iter()
        .map(|(l, r)| (l.clone(), &r[..]))
        .collect();
    let plot = out.join("ttft_cdf.svg");
    std::fs::write(&plot, report::ttft_plot(&plot_input)).map_err(|e| FleetError::io(&plot, e))?;
    let results = out.join("results.json");
    let json = json!({"pods": cfg.pods, "profile": cfg.profile, "workload": trace.name,
                      "requests": trace.requests.len(), "runs": runs});
    std::fs::write(
        &results,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )
    .map_err(|e| FleetError::io(&results, e))?;
    let mut text = format!(
        "\n{}\nSame workload, same fleet, routed through Envoy by kvpick-epp: cache-blind = without the\n\
         pods' KV events (load only); precise-prefix = with them, the previous default profile;\n\
         kvpick = with them, the default (latency-predicting) profile. Measured at the client.\n\n",
        trace.name
    );
    text += &report::table(&runs);
    text += &format!(
        "\nresults:        {}\nTTFT plot:      {}\nkvpick metrics: {} (Prometheus text, scraped at the end \
         of each pass; live on kvpick-epp's --metrics-port)\nlogs, configs:  {}/<pass>/\n",
        results.display(),
        plot.display(),
        out.join("kvpick").join("kvpick-metrics.txt").display(),
        out.display()
    );
    println!("{text}");
    if let Some(stack) = kept {
        println!(
            "still running: gateway http://{}, kvpick metrics {}; Ctrl-C to stop",
            stack.gateway, stack.epp_metrics
        );
        cancel.cancelled().await;
        stack.stop().await;
    }
    Ok(DemoResult { runs, report: text })
}
