//! The vLLM metrics kvpick reads, from Prometheus text exposition, by a line scanner.
//!
//! Only the families needed are looked at; every other line is rejected on its first bytes. No
//! allocation per sample: names, labels and values are slices of the page, and the only owned
//! strings made are the LoRA adapter names of the one `vllm:lora_requests_info` sample kept.
//!
//! A vLLM process serving several models labels samples with `model_name`. The queue and the KV
//! cache belong to the process, not to a model, so counts are summed over models and utilisation
//! takes the largest value.

use kvpick_scheduler::pods::LoraState;
use kvpick_scheduler::profile::fit::{COUNTERS, Counter};
use kvpick_scheduler::profile::online::CounterSample;
use kvpick_scheduler::{BlockSize, PodSignals, Timestamp};

/// What one scrape of a vLLM `/metrics` page said.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VllmMetrics {
    /// `vllm:num_requests_waiting`, summed over models.
    pub waiting: f64,
    /// `vllm:num_requests_running`, summed over models.
    pub running: f64,
    /// `vllm:kv_cache_usage_perc` (or older `vllm:gpu_cache_usage_perc`), max over models.
    pub kv_usage: Option<f64>,
    /// `block_size` label of `vllm:cache_config_info`.
    pub block_size: Option<u32>,
    /// `num_gpu_blocks` label of `vllm:cache_config_info`.
    pub num_gpu_blocks: Option<u64>,
    /// The latest `vllm:lora_requests_info` sample.
    pub lora: Option<LoraState>,
    /// Whether any queue gauge was present (otherwise the page is not a vLLM server's).
    pub seen_queue: bool,
    /// The counters online calibration reads (steps, tokens, latency histograms' sums and
    /// counts), summed over models.
    pub counters: CounterSample,
}

impl VllmMetrics {
    /// The signals these metrics give, as of `at`.
    pub fn into_signals(self, at: Timestamp) -> PodSignals {
        PodSignals {
            waiting: gauge(self.waiting),
            running: gauge(self.running),
            kv_usage: self
                .kv_usage
                .filter(|v| v.is_finite())
                .unwrap_or(0.0)
                .clamp(0.0, 1.0),
            lora: self.lora.unwrap_or_default(),
            block_size: self.block_size.and_then(BlockSize::new),
            num_gpu_blocks: self.num_gpu_blocks,
            scraped_at: at,
        }
    }
}

fn gauge(v: f64) -> u32 {
    if v > 0.0 {
        v.min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

#[derive(Clone, Copy)]
enum Family {
    Waiting,
    Running,
    KvUsage,
    GpuUsageLegacy,
    CacheConfig,
    Lora,
    Counter(Counter),
}

/// The series read, by name.
const FAMILIES: [(&str, Family); 6] = [
    ("vllm:num_requests_waiting", Family::Waiting),
    ("vllm:num_requests_running", Family::Running),
    ("vllm:kv_cache_usage_perc", Family::KvUsage),
    ("vllm:gpu_cache_usage_perc", Family::GpuUsageLegacy),
    ("vllm:cache_config_info", Family::CacheConfig),
    ("vllm:lora_requests_info", Family::Lora),
];

/// The names of the series kvpick reads from a pod's page (the fleet must expose those vLLM does:
/// `endpoint-picker/tests/real_vllm/conformance.rs`).
pub fn scraped_names() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().map(|(n, _)| *n)
}

fn family(name: &str) -> Option<Family> {
    if let Some((_, f)) = FAMILIES.iter().find(|(n, _)| *n == name) {
        return Some(*f);
    }
    // Buckets are the bulk of a page: rejected before the counters' names are compared.
    if name.ends_with("_bucket") {
        return None;
    }
    COUNTERS
        .into_iter()
        .find(|c| c.names().contains(&name))
        .map(Family::Counter)
}

/// Scans a metrics page. Malformed lines of the families read are skipped, never fatal.
pub fn parse(page: &str) -> VllmMetrics {
    let mut m = VllmMetrics::default();
    let mut legacy_usage: Option<f64> = None;
    let mut lora: Option<(f64, &str)> = None;
    for line in page.lines() {
        let line = line.trim_start();
        if !line.starts_with("vllm:") {
            continue;
        }
        let end = line
            .find(|c: char| c == '{' || c.is_ascii_whitespace())
            .unwrap_or(line.len());
        let Some(fam) = family(&line[..end]) else {
            continue;
        };
        let rest = &line[end..];
        let (labels, rest) = match rest.strip_prefix('{') {
            Some(r) => match label_set_end(r) {
                Some(close) => (&r[..close], &r[close + 1..]),
                None => continue,
            },
            None => ("", rest),
        };
        let Some(value) = rest
            .split_ascii_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        match fam {
            Family::Waiting => {
                m.waiting += value;
                m.seen_queue = true;
            }
            Family::Running => {
                m.running += value;
                m.seen_queue = true;
            }
            Family::KvUsage => m.kv_usage = Some(m.kv_usage.map_or(value, |u| u.max(value))),
            Family::GpuUsageLegacy => {
                legacy_usage = Some(legacy_usage.map_or(value, |u| u.max(value)))
            }
            Family::CacheConfig => {
                if m.block_size.is_none() {
                    m.block_size = label(labels, "block_size").and_then(|v| v.parse().ok());
                    m.num_gpu_blocks = label(labels, "num_gpu_blocks").and_then(|v| v.parse().ok());
                }
            }
            Family::Counter(c) => {
                let slot = &mut m.counters[c as usize];
                *slot = Some(slot.unwrap_or(0.0) + value);
            }
            Family::Lora => {
                if lora.is_none_or(|(best, _)| value > best) {
                    lora = Some((value, labels));
                }
            }
        }
    }
    if m.kv_usage.is_none() {
        m.kv_usage = legacy_usage;
    }
    m.lora = lora.map(|(_, labels)| LoraState {
        max_loras: label(labels, "max_lora")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        running: adapters(label(labels, "running_lora_adapters")),
        waiting: adapters(label(labels, "waiting_lora_adapters")),
    });
    m
}

fn adapters(list: Option<&str>) -> Vec<String> {
    list.into_iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Offset of the `}` closing a label set that starts right after `{`, honouring quoted values.
fn label_set_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let (mut i, mut quoted) = (0, false);
    while i < b.len() {
        match (b[i], quoted) {
            (b'\\', true) => i += 1,
            (b'"', _) => quoted = !quoted,
            (b'}', false) => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The raw (still escaped) value of label `name` in a label set's inside.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = labels;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let b = after.as_bytes();
        let mut i = 0;
        while i < b.len() && b[i] != b'"' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        let value = after.get(..i)?;
        if key == name {
            return Some(value);
        }
        rest = after.get(i + 1..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="a"} 3.0
vllm:num_requests_waiting{engine="0",model_name="b"} 2.0
vllm:num_requests_running{engine="0",model_name="a"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.25
vllm:kv_cache_usage_perc{engine="0",model_name="b"} 0.5
vllm:gpu_cache_usage_perc{model_name="a"} 0.9
vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="31000",prefix="a,}\"b"} 1.0
vllm:lora_requests_info{max_lora="4",running_lora_adapters="x,y",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters="z",waiting_lora_adapters="w"} 1.8e9
vllm:num_requests_waiting_bucket{le="1"} 99
vllm:e2e_request_latency_seconds_count 12
"#;

    #[test]
    fn reads_the_families_and_sums_models() {
        let m = parse(PAGE);
        assert_eq!((m.waiting, m.running), (5.0, 7.0));
        assert_eq!(m.kv_usage, Some(0.5), "max over models, new name wins");
        assert_eq!((m.block_size, m.num_gpu_blocks), (Some(16), Some(31000)));
        let lora = m.lora.clone().unwrap();
        assert_eq!(lora.max_loras, 4);
        assert_eq!(
            (lora.running, lora.waiting),
            (vec!["z".to_owned()], vec!["w".to_owned()])
        );
        let s = m.into_signals(Timestamp::from_millis(5));
        assert_eq!((s.waiting, s.running), (5, 7));
        assert_eq!(s.block_size, BlockSize::new(16));
    }

    #[test]
    fn reads_the_calibration_counters_summed_over_models() {
        let m = parse(
            "vllm:iteration_tokens_total_count{model_name=\"a\"} 10\n\
             vllm:iteration_tokens_total_count{model_name=\"b\"} 5\n\
             vllm:iteration_tokens_total_sum{model_name=\"a\"} 700\n\
             vllm:iteration_tokens_total_bucket{le=\"1\"} 3\n\
             vllm:time_per_output_token_seconds_sum 0.5\n\
             vllm:time_to_first_token_seconds_count 4\n",
        );
        assert_eq!(m.counters[Counter::Steps as usize], Some(15.0));
        assert_eq!(m.counters[Counter::StepTokens as usize], Some(700.0));
        assert_eq!(
            m.counters[Counter::ItlSum as usize],
            Some(0.5),
            "older name"
        );
        assert_eq!(m.counters[Counter::TtftCount as usize], Some(4.0));
        assert_eq!(m.counters[Counter::PrefillSum as usize], None);
        assert!(parse(PAGE).counters[Counter::Steps as usize].is_none());
    }

    #[test]
    fn legacy_usage_name_and_odd_values() {
        let m = parse(
            "vllm:gpu_cache_usage_perc 0.75\nvllm:num_requests_waiting NaN\nvllm:num_requests_running +Inf 1700000000\n",
        );
        assert_eq!(m.kv_usage, Some(0.75));
        let s = m.into_signals(Timestamp::ZERO);
        assert_eq!((s.waiting, s.running), (0, u32::MAX));
    }

    #[test]
    fn garbage_is_skipped_not_fatal() {
        let m = parse(
            "vllm:num_requests_waiting{unterminated=\"x 3\nvllm:num_requests_waiting abc\n\u{0}\nvllm:num_requests_running 2\n",
        );
        assert_eq!((m.waiting, m.running, m.seen_queue), (0.0, 2.0, true));
        assert!(!parse("not a metrics page").seen_queue);
    }

    #[test]
    fn label_lookup_handles_escapes() {
        let set = r#"a="1",b="x\"y,z",c="3""#;
        assert_eq!(label(set, "a"), Some("1"));
        assert_eq!(label(set, "b"), Some(r#"x\"y,z"#));
        assert_eq!(label(set, "c"), Some("3"));
        assert_eq!(label(set, "d"), None);
        assert_eq!(label(r#"a="unterminated"#, "b"), None);
    }
}
