//! The policies as named on the command line, and the picker config each one runs.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use kvpick_scheduler::scorers::ScorerSpec;
use kvpick_scheduler::{BlockSize, EndpointPickerConfig};

use super::PoolShape;
use crate::error::SimError;

/// A policy as named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySpec {
    /// Uniformly random endpoint.
    Random,
    /// Endpoints in turn.
    RoundRobin,
    /// `Scheduler` with the queue scorer alone ([`LEAST_LOADED_YAML`]).
    LeastLoaded,
    /// `Scheduler` with routing-history prefix scoring ([`APPROX_PREFIX_YAML`]).
    ApproxPrefix,
    /// `Scheduler` with kvpick's previous default profile ([`EndpointPickerConfig::precise_prefix`]):
    /// precise prefix scoring from KV events, KV utilization, queue.
    PrecisePrefix,
    /// `Scheduler` with kvpick's default profile, `predicted-latency-scorer`
    /// ([`PREDICTED_LATENCY_YAML`]), priced with the engines' profile.
    PredictedLatency,
    /// `Scheduler` built from an `EndpointPickerConfig` YAML file, the endpoint picker's format.
    Config(PathBuf),
    /// `Scheduler` built from an `EndpointPickerConfig` YAML text (the tuner's candidates).
    Inline {
        /// The name reports use.
        name: String,
        /// The config, as the endpoint picker would read it from a file.
        yaml: Arc<str>,
    },
}

/// `least-loaded`: fewest waiting requests, random among equals.
pub const LEAST_LOADED_YAML: &str = "
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: max-score-picker
";

/// `approx-prefix`: llm-d's default ("estimated") profile, the Inference Gateway's: the
/// routing-history `prefix-cache-scorer` (64-token blocks, 256 blocks matched, 31,250 blocks
/// remembered per endpoint), KV utilization and queue, equal weights. (`configs/kvpick-approx.yaml`
/// is kvpick's default profile with the history scorer instead, to compare evidence sources alone.)
pub const APPROX_PREFIX_YAML: &str = "
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
  parameters:
    blockSize: 64
    maxPrefixBlocksToMatch: 256
    lruCapacityPerServer: 31250
- type: kv-cache-utilization-scorer
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 1
  - pluginRef: kv-cache-utilization-scorer
    weight: 1
  - pluginRef: queue-scorer
    weight: 1
  - pluginRef: max-score-picker
";
/// `predicted-latency`: each engine's predicted TTFT for the request (queued and reserved
/// prefill, its uncached tokens there, the decode batch; [`kvpick_scheduler::latency`]); the
/// simulator puts the engines' own profile into the scorer's parameters.
pub const PREDICTED_LATENCY_YAML: &str = "
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: predicted-latency-scorer
  - pluginRef: max-score-picker
";

/// Every built-in policy, in the order reports list them.
pub const BUILTIN: [&str; 6] = [
    "random",
    "round-robin",
    "least-loaded",
    "approx-prefix",
    "precise-prefix",
    "predicted-latency",
];

impl FromStr for PolicySpec {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, SimError> {
        Ok(match s {
            "random" => PolicySpec::Random,
            "round-robin" => PolicySpec::RoundRobin,
            "least-loaded" => PolicySpec::LeastLoaded,
            "approx-prefix" => PolicySpec::ApproxPrefix,
            "precise-prefix" => PolicySpec::PrecisePrefix,
            "predicted-latency" => PolicySpec::PredictedLatency,
            _ => match s.strip_prefix("config:") {
                Some(path) if !path.is_empty() => PolicySpec::Config(path.into()),
                _ => {
                    return Err(SimError::InvalidConfig(format!(
                        "unknown policy {s:?}: expected one of {} or config:FILE",
                        BUILTIN.join(", ")
                    )));
                }
            },
        })
    }
}

impl PolicySpec {
    /// The name reports use.
    pub fn name(&self) -> String {
        match self {
            PolicySpec::Random => "random".into(),
            PolicySpec::RoundRobin => "round-robin".into(),
            PolicySpec::LeastLoaded => "least-loaded".into(),
            PolicySpec::ApproxPrefix => "approx-prefix".into(),
            PolicySpec::PrecisePrefix => "precise-prefix".into(),
            PolicySpec::PredictedLatency => "predicted-latency".into(),
            PolicySpec::Config(p) => format!(
                "config:{}",
                p.file_stem()
                    .map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into())
            ),
            PolicySpec::Inline { name, .. } => name.clone(),
        }
    }

    /// The picker config this policy runs over a pool of `shape` (`None` for `random` and
    /// `round-robin`, which are not scorer pipelines).
    pub(super) fn picker_config(
        &self,
        shape: &PoolShape,
    ) -> Result<Option<EndpointPickerConfig>, SimError> {
        Ok(match self {
            PolicySpec::Random | PolicySpec::RoundRobin => None,
            PolicySpec::LeastLoaded => Some(builtin(LEAST_LOADED_YAML, shape.block_size)?),
            PolicySpec::ApproxPrefix => Some(builtin(APPROX_PREFIX_YAML, shape.block_size)?),
            PolicySpec::PrecisePrefix => {
                let mut c = EndpointPickerConfig::precise_prefix();
                c.index.block_size = shape.block_size;
                Some(c)
            }
            PolicySpec::PredictedLatency => {
                let mut c = builtin(PREDICTED_LATENCY_YAML, shape.block_size)?;
                for s in &mut c.profile.scorers {
                    if let ScorerSpec::PredictedLatency(p) = &mut s.spec {
                        p.profile = shape.profile.clone();
                    }
                }
                Some(c)
            }
            PolicySpec::Config(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| SimError::io(path, e))?;
                Some(parse_config(&text, &path.display().to_string(), shape)?)
            }
            PolicySpec::Inline { name, yaml } => Some(parse_config(yaml, name, shape)?),
        })
    }
}

/// A built-in profile's YAML (without an `index` section) over the engines' block size.
fn builtin(yaml: &str, block_size: BlockSize) -> Result<EndpointPickerConfig, SimError> {
    let mut c = EndpointPickerConfig::parse(yaml)?;
    c.index.block_size = block_size;
    Ok(c)
}

/// A picker config's text, checked against the engines' block size; `what` names it in errors.
fn parse_config(
    text: &str,
    what: &str,
    shape: &PoolShape,
) -> Result<EndpointPickerConfig, SimError> {
    let c = EndpointPickerConfig::parse(text)
        .map_err(|e| SimError::InvalidConfig(format!("{what}: {e}")))?;
    if c.index.block_size != shape.block_size {
        return Err(SimError::InvalidConfig(format!(
            "{what}: index.blockSize {} differs from the engines' block size {} (--block-size)",
            c.index.block_size, shape.block_size
        )));
    }
    Ok(c)
}
