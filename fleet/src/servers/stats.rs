//! What one simulated vLLM engine counts, and its `/metrics` page in vLLM's names and layout.
//!
//! Names, types, label names and histogram buckets follow vLLM V1's `PrometheusStatLogger`
//! (`vllm/v1/metrics/loggers.py`): every engine family carries `model_name` and `engine` labels in
//! that order; counters are exposed with `_total`; `vllm:cache_config_info` is an info gauge fixed
//! at 1 whose labels are the cache config (`block_size`, `num_gpu_blocks`, ...);
//! `vllm:lora_requests_info` carries `max_lora`, `waiting_lora_adapters`, `running_lora_adapters`
//! and the time of its last update as value. Values print as Python's `prometheus_client` prints
//! them (`3.0`, `0.25`).

use std::collections::BTreeMap;
use std::fmt::Write;

pub use super::histogram::Histogram;

/// TTFT buckets (s), as vLLM.
const TTFT: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// Inter-token latency buckets (s), as vLLM's `time_per_output_token` / `inter_token_latency`.
const ITL: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// Request latency buckets (s): e2e, queue, prefill.
const REQUEST: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// Tokens per engine step, as vLLM's `iteration_tokens_total`.
const ITERATION: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

/// Everything one engine's `/metrics` shows. The driver updates it after every step.
#[derive(Clone, Debug)]
pub struct EngineStats {
    /// Requests waiting to be scheduled.
    pub waiting: u32,
    /// Requests in the running batch.
    pub running: u32,
    /// Share of KV blocks in use.
    pub kv_usage: f64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Of those, tokens found cached.
    pub prefix_hits: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Prompt tokens of requests whose prefill completed.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generation_tokens: u64,
    /// Requests finished because they reached `max_tokens`.
    pub finished_length: u64,
    /// Requests aborted (restart, shutdown).
    pub aborted: u64,
    /// KV-event batches dropped because the publisher queue was full.
    pub kv_batches_dropped: u64,
    /// Running and waiting requests per LoRA adapter.
    pub lora_running: BTreeMap<String, u32>,
    /// See `lora_running`.
    pub lora_waiting: BTreeMap<String, u32>,
    /// Unix time of the last LoRA gauge update.
    pub lora_updated: f64,
    /// Time to first token (s).
    pub ttft: Histogram,
    /// Gaps between tokens (s).
    pub itl: Histogram,
    /// Arrival to last token (s).
    pub e2e: Histogram,
    /// Arrival to first scheduled (s).
    pub queue: Histogram,
    /// First scheduled to first token (s).
    pub prefill: Histogram,
    /// Prompt length of finished requests.
    pub request_prompt_tokens: Histogram,
    /// Output length of finished requests.
    pub request_generation_tokens: Histogram,
    /// Tokens computed per step.
    pub iteration_tokens: Histogram,
    /// Prompt tokens by where their KV came from (`vllm:prompt_tokens_by_source`).
    pub prompt_tokens_by_source: TokensBySource,
    /// P/D: requests this pod decoded after a remote prefill (the sidecar's count; not a vLLM
    /// series).
    pub remote_prefills: u64,
}

/// Prompt tokens by source, as vLLM counts them at admission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokensBySource {
    /// Computed by this engine.
    pub local_compute: u64,
    /// Found in its prefix cache.
    pub local_cache_hit: u64,
    /// Pulled from another engine (P/D: the prefill pod's KV).
    pub external_kv_transfer: u64,
}

impl EngineStats {
    /// Fresh counters for an engine accepting up to `max_model_len` tokens.
    pub fn new(max_model_len: u32) -> Self {
        Self {
            waiting: 0,
            running: 0,
            kv_usage: 0.0,
            prefix_queries: 0,
            prefix_hits: 0,
            preemptions: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            finished_length: 0,
            aborted: 0,
            kv_batches_dropped: 0,
            lora_running: BTreeMap::new(),
            lora_waiting: BTreeMap::new(),
            lora_updated: 0.0,
            ttft: Histogram::new(TTFT),
            itl: Histogram::new(ITL),
            e2e: Histogram::new(REQUEST),
            queue: Histogram::new(REQUEST),
            prefill: Histogram::new(REQUEST),
            request_prompt_tokens: Histogram::one_two_five(max_model_len),
            request_generation_tokens: Histogram::one_two_five(max_model_len),
            iteration_tokens: Histogram::new(ITERATION),
            prompt_tokens_by_source: TokensBySource::default(),
            remote_prefills: 0,
        }
    }
}

/// What the page says about the engine beyond its counters.
#[derive(Clone, Debug)]
pub struct PageInfo<'a> {
    /// Served model name (`model_name` label).
    pub model: &'a str,
    /// Data-parallel rank (`engine` label).
    pub engine: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// KV blocks.
    pub num_gpu_blocks: u32,
    /// `--max-loras`.
    pub max_loras: u32,
}

/// A float as Python's `prometheus_client` writes it.
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        // Rust writes `3.4e-5` where Python writes `3.4e-05`.
        let s = format!("{v:?}");
        match s.split_once('e') {
            Some((m, e)) => {
                let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
                format!("{m}e{sign}{digits:0>2}")
            }
            None => s,
        }
    }
}

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

struct Page<'a> {
    out: String,
    labels: String,
    info: &'a PageInfo<'a>,
}

impl Page<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, extra: &str, v: f64) {
        let _ = writeln!(self.out, "{name}{{{}{extra}}} {}", self.labels, num(v));
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.head(name, "gauge", help);
        self.sample(name, "", v);
    }

    /// A counter, named `<name>_total` on the TYPE line too, as `prometheus_client` writes
    /// the text format.
    fn counter(&mut self, name: &str, help: &str, v: u64) {
        let total = format!("{name}_total");
        self.head(&total, "counter", help);
        self.sample(&total, "", v as f64);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.head(name, "histogram", help);
        let mut cumulative = 0;
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            cumulative += c;
            let le = format!(",le=\"{}\"", num(*b));
            self.sample(&format!("{name}_bucket"), &le, cumulative as f64);
        }
        self.sample(&format!("{name}_bucket"), ",le=\"+Inf\"", h.count as f64);
        self.sample(&format!("{name}_count"), "", h.count as f64);
        self.sample(&format!("{name}_sum"), "", h.sum);
    }
}

/// Renders the Prometheus text page (format 0.0.4) of one engine.
pub fn render(s: &EngineStats, info: &PageInfo<'_>) -> String {
    let mut p = Page {
        out: String::with_capacity(16 << 10),
        labels: format!(
            "model_name=\"{}\",engine=\"{}\"",
            label(info.model),
            info.engine
        ),
        info,
    };
    p.gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        s.running as f64,
    );
    p.gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        s.waiting as f64,
    );
    p.gauge(
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        s.kv_usage,
    );
    p.counter(
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        s.prefix_queries,
    );
    p.counter(
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        s.prefix_hits,
    );
    p.head(
        "vllm:prompt_tokens_by_source_total",
        "counter",
        "Number of prompt tokens by source.",
    );
    let by = &s.prompt_tokens_by_source;
    for (source, n) in [
        ("local_compute", by.local_compute),
        ("local_cache_hit", by.local_cache_hit),
        ("external_kv_transfer", by.external_kv_transfer),
    ] {
        let extra = format!(",source=\"{source}\"");
        p.sample("vllm:prompt_tokens_by_source_total", &extra, n as f64);
    }
    p.counter(
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        s.preemptions,
    );
    p.counter(
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        s.prompt_tokens,
    );
    p.counter(
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        s.generation_tokens,
    );
    p.head(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
    );
    for (reason, n) in [
        ("stop", 0),
        ("length", s.finished_length),
        ("abort", s.aborted),
    ] {
        let extra = format!(",finished_reason=\"{reason}\"");
        p.sample("vllm:request_success_total", &extra, n as f64);
    }
    p.histogram(
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        &s.request_prompt_tokens,
    );
    p.histogram(
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        &s.request_generation_tokens,
    );
    p.histogram(
        "vllm:iteration_tokens_total",
        "Histogram of number of tokens per engine_step.",
        &s.iteration_tokens,
    );
    p.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &s.ttft,
    );
    p.histogram(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        &s.itl,
    );
    p.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        &s.e2e,
    );
    p.histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        &s.queue,
    );
    p.histogram(
        "vllm:request_prefill_time_seconds",
        "Histogram of time spent in PREFILL phase for request.",
        &s.prefill,
    );
    let i = p.info;
    p.head(
        "vllm:cache_config_info",
        "gauge",
        "Information of the LLMEngine CacheConfig",
    );
    let _ = writeln!(
        p.out,
        "vllm:cache_config_info{{block_size=\"{}\",cache_dtype=\"auto\",enable_prefix_caching=\"True\",\
         gpu_memory_utilization=\"0.9\",num_cpu_blocks=\"None\",num_gpu_blocks=\"{}\",\
         prefix_caching_hash_algo=\"sha256\",engine=\"{}\"}} 1.0",
        i.block_size, i.num_gpu_blocks, i.engine
    );
    if i.max_loras > 0 {
        p.head(
            "vllm:lora_requests_info",
            "gauge",
            "Running stats on lora requests.",
        );
        let names =
            |m: &BTreeMap<String, u32>| label(&m.keys().cloned().collect::<Vec<_>>().join(","));
        let _ = writeln!(
            p.out,
            "vllm:lora_requests_info{{max_lora=\"{}\",waiting_lora_adapters=\"{}\",running_lora_adapters=\"{}\"}} {}",
            i.max_loras,
            names(&s.lora_waiting),
            names(&s.lora_running),
            num(s.lora_updated)
        );
    }
    p.head(
        "kvpick_sim:kv_event_batches_dropped_total",
        "counter",
        "KV-event batches dropped because the publisher queue was full (simulator only).",
    );
    p.sample(
        "kvpick_sim:kv_event_batches_dropped_total",
        "",
        s.kv_batches_dropped as f64,
    );
    p.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_page_shape() {
        let mut s = EngineStats::new(4096);
        s.running = 3;
        s.ttft.observe(0.03);
        s.ttft.observe(100.0);
        s.lora_running.insert("a".into(), 1);
        let info = PageInfo {
            model: "m\"x",
            engine: 1,
            block_size: 16,
            num_gpu_blocks: 500,
            max_loras: 2,
        };
        let page = render(&s, &info);
        assert!(
            page.contains("vllm:num_requests_running{model_name=\"m\\\"x\",engine=\"1\"} 3.0\n")
        );
        assert!(page.contains(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"m\\\"x\",engine=\"1\",le=\"0.04\"} 1.0\n"
        ));
        assert!(page.contains("le=\"+Inf\"} 2.0\n"));
        assert!(page.contains("num_gpu_blocks=\"500\""));
        assert!(page.contains("running_lora_adapters=\"a\""));
        assert!(page.contains("vllm:prefix_cache_hits_total{"));
        assert_eq!(
            (num(3.4e-5), num(1e21), num(2.0)),
            ("3.4e-05".into(), "1e+21".into(), "2.0".into())
        );
    }
}
