//! The plugin types a config may name, and their parameters.
//!
//! | `type` | Role | `parameters` (default) |
//! |---|---|---|
//! | `precise-prefix-cache-scorer` | scorer: tier-weighted share of the prompt the KV index says the endpoint holds | none (the index is configured under top-level `index`) |
//! | `prefix-cache-scorer` | scorer: share of the prompt routed to the endpoint before (approximate) | `blockSize` (tokens, a multiple of `index.blockSize`; smallest such ≥ 64), `maxPrefixBlocksToMatch` (256), `lruCapacityPerServer` (31250), `textChunkChars` (256) |
//! | `queue-scorer` | scorer: shortest waiting queue 1, min-max across candidates | none |
//! | `running-requests-size-scorer` | scorer: fewest running requests 1, min-max | none |
//! | `kv-cache-utilization-scorer` | scorer: 1 − KV-cache usage | none |
//! | `lora-affinity-scorer` | scorer: adapter running 1, free slot, waiting for a slot, else 0 | `freeSlotScore` (0.8), `waitingScore` (0.6) |
//! | `session-affinity-scorer` | scorer: the session's last endpoint 1 | `capacity` (65536 sessions) |
//! | `predicted-latency-scorer` | scorer: predicted TTFT/TPOT from in-flight load and an engine profile; SLO headroom | see [`super::latency`] |
//! | `model-filter` | filter: serves the model, or the adapter (see [`crate::filters::ModelFilter`]) | `adapters` ({}: base model → adapter names) |
//! | `label-selector-filter` | filter: labels match | `selector` (`"k=v, k in (a,b), !k"`) and/or `matchLabels` ({k: v}) |
//! | `max-score-picker` | picker: best first, random among ties | `maxNumOfEndpoints` (all), `seed` |
//! | `weighted-random-picker` | picker: random, P ∝ score | `maxNumOfEndpoints` (all), `seed` |
//! | `random-picker` | picker: uniformly random | `maxNumOfEndpoints` (all), `seed` |
//! | `single-profile-handler` | accepted for llm-d configs; not referenced by profiles | none |
//! | `disagg-profile-handler` | P/D: runs the decode profile, then the prefill profile when the decider says so ([`super::disagg`]) | `profiles: {decode, prefill}` (`decode`, `prefill`), `deciders: {prefill}` (none: decode only); llm-d's flat names too |
//! | `pd-profile-handler` | the same, llm-d's older name | `decodeProfile`, `prefillProfile`, `deciderPluginName` (`prefix-based-pd-decider`), `prefixPluginType`, `prefixPluginName`, `primaryPort` (0) |
//! | `prefix-based-pd-decider` | decider: disaggregate when ≥ `nonCachedTokens` prompt tokens are not cached on the decode pick | `nonCachedTokens` (0: never) |
//! | `always-disagg-pd-decider` | decider: always disaggregate | none |
//! | `prefill-filter` | filter: `llm-d.ai/role` is `prefill`, `encode-prefill`, `prefill-decode`, `both` or `encode-prefill-decode` | none |
//! | `decode-filter` | filter: `llm-d.ai/role` is `decode`, `prefill-decode`, `both`, `encode-prefill-decode`, or absent | none |
//! | `by-label` | filter: a label has one of the values | `label`, `validValues`, `allowsNoLabel` (false) |
//! | `disagg-headers-handler`, `prefill-header-handler` | llm-d's deprecated header writers; kvpick writes `x-prefiller-host-port` itself | `prefillProfile`, `encodeProfile` (unused) |
//! | `metrics-data-source` | accepted for llm-d configs: kvpick scrapes `http://pod/metrics` itself | `scheme` (http only), `path` (/metrics only), `insecureSkipVerify` |
//! | `core-metrics-extractor` | accepted for llm-d configs: kvpick reads vLLM's series | `defaultEngine` (vllm only) |
//!
//! Type names follow llm-d's where llm-d has the plugin, and so do parameter names where llm-d
//! has them (`blockSize`, `maxPrefixBlocksToMatch`, `lruCapacityPerServer`, `matchLabels`,
//! `maxNumOfEndpoints`); `model-filter` and the other parameters are kvpick's. llm-d parameters
//! kvpick has no use for (e.g. the precise scorer's `indexerConfig`, `kvEventsConfig`) are
//! refused as unknown rather than silently ignored. Reading an entry: [`super::plugin_doc`].

use serde::Deserialize;

use super::disagg::HandlerSpec;
use crate::disagg::Decider;
use crate::filters::FilterSpec;
use crate::pickers::PickerSpec;
use crate::scorers::ScorerSpec;

/// A configured plugin instance, by role.
#[derive(Clone, Debug, PartialEq)]
pub enum PluginSpec {
    /// Scores candidates.
    Scorer(ScorerSpec),
    /// Removes candidates.
    Filter(FilterSpec),
    /// Orders candidates.
    Picker(PickerSpec),
    /// Chooses which profiles run: one, or the P/D pair.
    ProfileHandler(HandlerSpec),
    /// Decides whether a request is prefilled remotely.
    Decider(Decider),
    /// llm-d's deprecated header writers: accepted, no effect.
    HeaderHandler,
    /// `metrics-data-source`, `core-metrics-extractor`: llm-d's data layer, accepted when it
    /// asks for what kvpick does anyway ([`super::data_layer`]); not referenced by profiles.
    DataLayer,
}

impl PluginSpec {
    /// What the plugin is, for messages.
    pub fn role(&self) -> &'static str {
        match self {
            PluginSpec::Scorer(_) => "a scorer",
            PluginSpec::Filter(_) => "a filter",
            PluginSpec::Picker(_) => "a picker",
            PluginSpec::ProfileHandler(_) => "a profile handler",
            PluginSpec::Decider(_) => "a P/D decider",
            PluginSpec::HeaderHandler => "a header handler",
            PluginSpec::DataLayer => "a data source",
        }
    }

    /// Whether a profile may run it (scorers, filters, pickers).
    pub fn runs_in_profiles(&self) -> bool {
        matches!(
            self,
            PluginSpec::Scorer(_) | PluginSpec::Filter(_) | PluginSpec::Picker(_)
        )
    }
}

/// A plugin `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginType {
    PrecisePrefixCacheScorer,
    PrefixCacheScorer,
    QueueScorer,
    RunningRequestsSizeScorer,
    KvCacheUtilizationScorer,
    LoraAffinityScorer,
    SessionAffinityScorer,
    PredictedLatencyScorer,
    ModelFilter,
    LabelSelectorFilter,
    MaxScorePicker,
    WeightedRandomPicker,
    RandomPicker,
    SingleProfileHandler,
    DisaggProfileHandler,
    PdProfileHandler,
    PrefixBasedPdDecider,
    AlwaysDisaggPdDecider,
    PrefillFilter,
    DecodeFilter,
    ByLabel,
    DisaggHeadersHandler,
    PrefillHeaderHandler,
    MetricsDataSource,
    CoreMetricsExtractor,
}

/// Every plugin type a config may use, as written.
pub const PLUGIN_TYPES: &[&str] = &[
    "precise-prefix-cache-scorer",
    "prefix-cache-scorer",
    "queue-scorer",
    "running-requests-size-scorer",
    "kv-cache-utilization-scorer",
    "lora-affinity-scorer",
    "session-affinity-scorer",
    "predicted-latency-scorer",
    "model-filter",
    "label-selector-filter",
    "max-score-picker",
    "weighted-random-picker",
    "random-picker",
    "single-profile-handler",
    "disagg-profile-handler",
    "pd-profile-handler",
    "prefix-based-pd-decider",
    "always-disagg-pd-decider",
    "prefill-filter",
    "decode-filter",
    "by-label",
    "disagg-headers-handler",
    "prefill-header-handler",
    "metrics-data-source",
    "core-metrics-extractor",
];

impl PluginType {
    /// The type as a config writes it.
    pub fn name(self) -> &'static str {
        PLUGIN_TYPES[self as usize]
    }
}

#[cfg(test)]
mod tests {
    use serde::de::IntoDeserializer;
    use serde::de::value::{Error as ValueError, StrDeserializer};

    use super::*;

    fn plugin_type(name: &str) -> Result<PluginType, ValueError> {
        let d: StrDeserializer<'_, ValueError> = name.into_deserializer();
        PluginType::deserialize(d)
    }

    #[test]
    fn plugin_types_are_the_enum_variants() {
        let mut seen = Vec::new();
        for (i, name) in PLUGIN_TYPES.iter().enumerate() {
            let t = plugin_type(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(t as usize, i, "{name}: PLUGIN_TYPES in the enum's order");
            assert_eq!(t.name(), *name);
            assert!(!seen.contains(&t), "{name} twice");
            seen.push(t);
        }
        assert!(plugin_type("foo-scorer").is_err());
    }
}
