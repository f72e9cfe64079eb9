//! The picker config: one YAML document in the shape of llm-d's `EndpointPickerConfig`.
//!
//! ```yaml
//! apiVersion: inference.networking.x-k8s.io/v1alpha1   # or llm-d.ai/v1alpha1, llm-d.ai/v1
//! kind: EndpointPickerConfig
//! index: {blockSize: 16, capacity: 67108864, tierWeights: {gpu: 1.0, cpu: 0.8, storage: 0.5}}
//! staleness: {maxSignalAge: 2s}
//! plugins:                        # instances: type, optional name (default: the type), parameters
//! - type: precise-prefix-cache-scorer
//! - type: label-selector-filter
//!   name: decode-only
//!   parameters: {selector: "llm-d.ai/role in (decode, prefill-decode)"}
//! - type: max-score-picker
//! schedulingProfiles:             # which instances run, in order; weights for scorers
//! - name: default
//!   plugins:
//!   - pluginRef: decode-only
//!   - pluginRef: precise-prefix-cache-scorer
//!     weight: 2
//!   - pluginRef: max-score-picker
//! ```
//!
//! `apiVersion`, `kind`, `plugins` and `schedulingProfiles` mean what they mean to llm-d; `index`,
//! `staleness`, `saturation` (`{queueDepthThreshold: 5, kvCacheUtilThreshold: 0.8}`),
//! `objectives` (InferenceObjective name → priority, e.g. `{batch: -1}`) and `flowControl`
//! (`{maxRequests: 1024, maxBytes: 268435456, queueTTL: 30s}`, read only with
//! `featureGates: [flowControl]`, as in llm-d) are kvpick's (all optional, defaults as above). The plugin types and their
//! parameters are listed in [`plugins`]. A profile lists filters (run in order), scorers (with a
//! `weight` ≥ 0, default 1) and at most one picker (default `max-score-picker`); without
//! `schedulingProfiles`, one profile named `default` uses every plugin, each scorer at weight 1.
//! The total score is the weighted mean of the scorers' scores, so weights are relative.
//!
//! `schedulingProfiles` holds one profile, or, under llm-d's P/D profile handler
//! (`disagg-profile-handler`, `pd-profile-handler`) with a prefill decider, the decode and the
//! prefill profile ([`disagg`], [`crate::disagg`]). Everything is validated when parsed: an unknown field, type, parameter or
//! reference, or a bad value, is an [`Error::InvalidConfig`] naming the field by its path.
//! Parsing is pure (`&str` in); reading the file is the caller's business.
//!
//! How: [`document`] is the YAML's shape as serde types (`deny_unknown_fields`, camelCase,
//! plugins tagged by `type` with their `parameters`, checked values in [`values`]), read by
//! `serde-saphyr` (pure Rust, panic-free, with input budgets) through `serde_path_to_error` for the
//! paths; this module then resolves references and builds the scheduler's types.

mod data_layer;
mod disagg;
mod document;
mod filter_doc;
mod latency;
mod plugin_doc;
pub mod plugins;
mod profiles;
mod sections;
mod values;

pub use self::disagg::{DisaggHandler, Disaggregation, HandlerSpec};
use self::document::{Document, Root};
pub use self::plugins::{PLUGIN_TYPES, PluginSpec, PluginType};
use crate::error::Error;
use crate::filters::{FilterSpec, Staleness};
use crate::flow::FlowConfig;
use crate::index::IndexConfig;
use crate::pickers::PickerSpec;
use crate::saturation::SaturationConfig;
use crate::scorers::ScorerSpec;

/// `apiVersion`s accepted: llm-d's and the Gateway API Inference Extension's.
pub const API_VERSIONS: &[&str] = &[
    "inference.networking.x-k8s.io/v1alpha1",
    "config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1",
    "llm-d.ai/v1alpha1",
    "llm-d.ai/v1",
];

/// A plugin instance of a profile, with the name the config gave it.
#[derive(Clone, Debug, PartialEq)]
pub struct Named<T> {
    /// Its `name` (or its `type` when unnamed).
    pub name: String,
    /// What it is.
    pub spec: T,
}

/// A scorer of a profile and its weight.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightedScorer {
    /// Its `name` (or its `type`), as reported by [`crate::Scheduler::scorer_names`].
    pub name: String,
    /// What it is.
    pub spec: ScorerSpec,
    /// Its weight, ≥ 0.
    pub weight: f64,
}

/// One scheduling profile: filters, weighted scorers, a picker.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Its `name`.
    pub name: String,
    /// Filters, in the order they run.
    pub filters: Vec<Named<FilterSpec>>,
    /// Scorers, in the order of [`crate::decision::Ranked::scores`].
    pub scorers: Vec<WeightedScorer>,
    /// The picker.
    pub picker: Named<PickerSpec>,
}

/// A validated picker config.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointPickerConfig {
    /// The KV index's settings (`index`).
    pub index: IndexConfig,
    /// When an endpoint's signals are too old (`staleness`).
    pub staleness: Staleness,
    /// The active profile (the one entry of `schedulingProfiles`; under a P/D handler, the
    /// decode profile).
    pub profile: Profile,
    /// The prefill side under a P/D profile handler with a decider ([`crate::disagg`]).
    pub disaggregation: Option<Disaggregation>,
    /// When the pool counts as saturated, and request priorities (`saturation`, `objectives`).
    pub saturation: SaturationConfig,
    /// Whether and how requests wait while the pool is saturated (`featureGates: [flowControl]`,
    /// `flowControl`).
    pub flow: FlowConfig,
}

impl Default for EndpointPickerConfig {
    /// The latency-predicting profile: `predicted-latency-scorer` (default parameters) and the
    /// max-score picker; the same config as [`EndpointPickerConfig::DEFAULT_YAML`].
    fn default() -> Self {
        let mut config = Self::precise_prefix();
        config.profile.scorers = vec![WeightedScorer {
            name: "predicted-latency-scorer".to_owned(),
            spec: ScorerSpec::PredictedLatency(Box::default()),
            weight: 1.0,
        }];
        config
    }
}

impl EndpointPickerConfig {
    /// The previous default, llm-d's precise profile: prefix 2, KV utilization 1, queue 1,
    /// max-score picker; the same config as [`EndpointPickerConfig::PRECISE_PREFIX_YAML`].
    pub fn precise_prefix() -> Self {
        let scorer = |name: &str, spec, weight| WeightedScorer {
            name: name.to_owned(),
            spec,
            weight,
        };
        Self {
            index: IndexConfig::default(),
            staleness: Staleness::default(),
            profile: Profile {
                name: "default".to_owned(),
                filters: Vec::new(),
                scorers: vec![
                    scorer(
                        "precise-prefix-cache-scorer",
                        ScorerSpec::PrecisePrefix,
                        2.0,
                    ),
                    scorer(
                        "kv-cache-utilization-scorer",
                        ScorerSpec::KvCacheUtilization,
                        1.0,
                    ),
                    scorer("queue-scorer", ScorerSpec::QueueDepth, 1.0),
                ],
                picker: default_picker(),
            },
            disaggregation: None,
            saturation: SaturationConfig::default(),
            flow: FlowConfig::default(),
        }
    }
}

fn default_picker() -> Named<PickerSpec> {
    Named {
        name: "max-score-picker".to_owned(),
        spec: PickerSpec::default(),
    }
}

impl EndpointPickerConfig {
    /// The default config as YAML, with comments: what [`EndpointPickerConfig::default`] parses from.
    pub const DEFAULT_YAML: &'static str = include_str!("default.yaml");

    /// The previous default as YAML: what [`EndpointPickerConfig::precise_prefix`] parses from.
    pub const PRECISE_PREFIX_YAML: &'static str = include_str!("precise_prefix.yaml");

    /// A prefill/decode config in llm-d's names ([`crate::disagg`]), with comments.
    pub const PD_YAML: &'static str = include_str!("pd.yaml");

    /// Parses and validates a config.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let doc = read(text)?;
        let api = doc
            .api_version
            .as_deref()
            .ok_or_else(|| invalid("apiVersion", "required"))?;
        if !API_VERSIONS.contains(&api) {
            return Err(invalid(
                "apiVersion",
                format!(
                    "unsupported {api:?} (expected one of: {})",
                    API_VERSIONS.join(", ")
                ),
            ));
        }
        let kind = doc
            .kind
            .as_deref()
            .ok_or_else(|| invalid("kind", "required"))?;
        if kind != "EndpointPickerConfig" {
            return Err(invalid(
                "kind",
                format!("expected EndpointPickerConfig, got {kind:?}"),
            ));
        }
        let index = sections::index(&doc)?;
        let mut staleness = Staleness::default();
        if let Some(d) = doc.staleness.as_ref().and_then(|s| s.max_signal_age) {
            staleness.max_signal_age = d.0;
        }
        let saturation = sections::saturation(&doc, &staleness);
        let flow = sections::flow_control(&doc)?;
        let plugins = profiles::plugin_list(&doc, &index)?;
        let (profile, disaggregation) = disagg::resolve(&doc, &plugins)?;
        Ok(Self {
            index,
            staleness,
            profile,
            disaggregation,
            saturation,
            flow,
        })
    }
}

/// An error at `path`.
pub(crate) fn invalid(path: &str, problem: impl std::fmt::Display) -> Error {
    let path = if path.is_empty() { "config" } else { path };
    Error::InvalidConfig(format!("{path}: {problem}"))
}

/// The document, or the first thing wrong with it: at its path (where serde was) and its line
/// and column (where the YAML reader was).
fn read(text: &str) -> Result<Document, Error> {
    let mut at = String::new();
    let read = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de)
            .map(|Root(doc)| doc)
            .map_err(|e| {
                at = e.path().to_string();
                e.into_inner()
            })
    });
    read.map_err(|e| {
        let line = e
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        let at = if at == "." { "" } else { &at };
        invalid(at, format!("{}{line}", bare_message(&e)))
    })
}

/// What the YAML reader says is wrong, without its own location suffix or source snippet (the
/// path and the location added above say where).
fn bare_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let text = match e.location() {
        Some(l) => text
            .strip_suffix(&format!(" at line {}, column {}", l.line(), l.column()))
            .unwrap_or(text),
        None => text,
    };
    text.to_owned()
}

#[cfg(test)]
mod tests;
