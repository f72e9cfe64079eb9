//! The vLLM counters the step-time fit reads, and one engine's window of their increases.
//!
//! Each is a counter or a histogram's `_sum`/`_count` on the pod's `/metrics`; calibration
//! (`kvpick-sim calibrate`, from Prometheus range queries) and online calibration (kvpick-epp,
//! from its own scrapes) both cut them into per-engine windows of increases.

/// The counters calibration reads, with vLLM's names (newest first where vLLM renamed one).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    /// Engine steps (`vllm:iteration_tokens_total` histogram count).
    Steps,
    /// Tokens computed by those steps, prompt and generated (its sum).
    StepTokens,
    /// Tokens generated (`vllm:generation_tokens_total`), first tokens included.
    Generated,
    /// Inter-token gaps observed: one per decoding sequence per step.
    ItlCount,
    /// Their sum, s.
    ItlSum,
    /// First tokens (`vllm:time_to_first_token_seconds` count): one per request served.
    TtftCount,
    /// Their sum, s.
    TtftSum,
    /// Finished requests' prompt lengths: count.
    PromptLenCount,
    /// ... and sum, tokens.
    PromptLenSum,
    /// Finished requests' output lengths: count.
    OutputLenCount,
    /// ... and sum, tokens.
    OutputLenSum,
    /// Prompt tokens looked up in the prefix cache.
    PrefixQueries,
    /// Of those, found cached.
    PrefixHits,
    /// Queue time (`vllm:request_queue_time_seconds`): count.
    QueueCount,
    /// ... and sum, s.
    QueueSum,
    /// Prefill time, first scheduled to first token (`vllm:request_prefill_time_seconds`): count.
    PrefillCount,
    /// ... and sum, s.
    PrefillSum,
}

/// Every counter, in index order.
pub const COUNTERS: [Counter; 17] = [
    Counter::Steps,
    Counter::StepTokens,
    Counter::Generated,
    Counter::ItlCount,
    Counter::ItlSum,
    Counter::TtftCount,
    Counter::TtftSum,
    Counter::PromptLenCount,
    Counter::PromptLenSum,
    Counter::OutputLenCount,
    Counter::OutputLenSum,
    Counter::PrefixQueries,
    Counter::PrefixHits,
    Counter::QueueCount,
    Counter::QueueSum,
    Counter::PrefillCount,
    Counter::PrefillSum,
];

impl Counter {
    /// Metric names to try, in order (vLLM renamed `time_per_output_token` to
    /// `inter_token_latency`, and `gpu_prefix_cache_*` to `prefix_cache_*`).
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Counter::Steps => &["vllm:iteration_tokens_total_count"],
            Counter::StepTokens => &["vllm:iteration_tokens_total_sum"],
            Counter::Generated => &["vllm:generation_tokens_total"],
            Counter::ItlCount => &[
                "vllm:inter_token_latency_seconds_count",
                "vllm:time_per_output_token_seconds_count",
            ],
            Counter::ItlSum => &[
                "vllm:inter_token_latency_seconds_sum",
                "vllm:time_per_output_token_seconds_sum",
            ],
            Counter::TtftCount => &["vllm:time_to_first_token_seconds_count"],
            Counter::TtftSum => &["vllm:time_to_first_token_seconds_sum"],
            Counter::PromptLenCount => &["vllm:request_prompt_tokens_count"],
            Counter::PromptLenSum => &["vllm:request_prompt_tokens_sum"],
            Counter::OutputLenCount => &["vllm:request_generation_tokens_count"],
            Counter::OutputLenSum => &["vllm:request_generation_tokens_sum"],
            Counter::PrefixQueries => &[
                "vllm:prefix_cache_queries_total",
                "vllm:gpu_prefix_cache_queries_total",
            ],
            Counter::PrefixHits => &[
                "vllm:prefix_cache_hits_total",
                "vllm:gpu_prefix_cache_hits_total",
            ],
            Counter::QueueCount => &["vllm:request_queue_time_seconds_count"],
            Counter::QueueSum => &["vllm:request_queue_time_seconds_sum"],
            Counter::PrefillCount => &["vllm:request_prefill_time_seconds_count"],
            Counter::PrefillSum => &["vllm:request_prefill_time_seconds_sum"],
        }
    }

    /// Whether calibration cannot work without it (the step-time fit and the arrival rate).
    pub fn required(self) -> bool {
        matches!(
            self,
            Counter::Steps
                | Counter::StepTokens
                | Counter::Generated
                | Counter::ItlCount
                | Counter::ItlSum
                | Counter::TtftCount
        )
    }
}

/// What one engine did in one window: the increase of every counter.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// The engine (its labels, `k=v` joined by commas).
    pub engine: String,
    /// Window end, unix seconds.
    pub end: f64,
    /// Window length, s.
    pub secs: f64,
    /// Increases, indexed by `Counter as usize`.
    pub delta: [f64; COUNTERS.len()],
}

impl Window {
    /// The increase of `c`.
    pub fn get(&self, c: Counter) -> f64 {
        self.delta[c as usize]
    }
}

/// Increase from `a` to `b` of a counter that may have been reset in between.
pub fn increase(a: f64, b: f64) -> f64 {
    if b >= a { b - a } else { b }
}
