//! One entry of `plugins` as the YAML writes it: `type`, optional `name`, and `parameters` read
//! as the type says ([`ParametersOf`]); then built into a [`PluginSpec`] with its values checked.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use super::data_layer::{ExtractorDoc, MetricsSourceDoc};
use super::disagg::HandlerSpec;
use super::disagg::doc::{DisaggHandlerDoc, HeaderHandlerDoc, PdHandlerDoc, PrefixDeciderDoc};
use super::filter_doc::{ByLabelDoc, LabelSelectorDoc};
use super::invalid;
use super::latency::PredictedLatencyDoc;
use super::values::{AtLeast, Fraction, Int, list, mapping};
use crate::disagg::Decider;
use crate::error::Error;
use crate::filters::{ByLabel, FilterSpec, ModelFilter};
use crate::index::IndexConfig;
use crate::pickers::{PickerKind, PickerSpec};
use crate::scorers::{ApproxPrefixParams, LoraAffinityParams, ScorerSpec, SessionAffinityParams};

use super::plugins::{PluginSpec, PluginType};

/// Largest per-endpoint history, sessions: far above any sane setting, and keeps slab handles
/// (`u32`) from running out.
const MAX_LRU_CAPACITY: u64 = 1 << 24;

/// A count of remembered things, in `[1, MAX_LRU_CAPACITY]`.
type Capacity = Int<1, MAX_LRU_CAPACITY>;

/// Parameters of a plugin that takes none: any field is refused, naming the plugin type.
struct NoParameters(PluginType);

impl<'de> DeserializeSeed<'de> for NoParameters {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoParameters {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no parameters ({} takes none)", self.0.name())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match map.next_key_seed(self)? {
            Some(()) | None => Ok(()),
        }
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<(), E> {
        Err(E::custom(format!(
            "unknown field `{key}` ({} takes no parameters)",
            self.0.name()
        )))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// `prefix-cache-scorer`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApproxPrefixDoc {
    block_size: Option<AtLeast<1>>,
    max_prefix_blocks_to_match: Option<Capacity>,
    lru_capacity_per_server: Option<Capacity>,
    text_chunk_chars: Option<Capacity>,
}

/// `lora-affinity-scorer`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LoraAffinityDoc {
    free_slot_score: Option<Fraction>,
    waiting_score: Option<Fraction>,
}

/// `session-affinity-scorer`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionAffinityDoc {
    capacity: Option<Capacity>,
}

/// `model-filter`: base model → adapter names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFilterDoc {
    adapters: Option<BTreeMap<String, AdapterNames>>,
}

/// One base model's adapters.
#[derive(Debug)]
struct AdapterNames(Vec<AdapterName>);

impl<'de> Deserialize<'de> for AdapterNames {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(AdapterNames(
            list(d, "a list of adapter names")?.unwrap_or_default(),
        ))
    }
}

/// A non-empty adapter name.
#[derive(Debug)]
struct AdapterName(String);

impl<'de> Deserialize<'de> for AdapterName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(de::Error::custom("an adapter name must not be empty"));
        }
        Ok(AdapterName(s))
    }
}

/// The pickers'.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PickerDoc {
    max_num_of_endpoints: Option<AtLeast<1>>,
    seed: Option<AtLeast<0>>,
}

/// A plugin's `parameters`, read as its type says.
#[derive(Debug)]
enum Parameters {
    None,
    ApproxPrefix(ApproxPrefixDoc),
    LoraAffinity(LoraAffinityDoc),
    SessionAffinity(SessionAffinityDoc),
    PredictedLatency(PredictedLatencyDoc),
    Model(ModelFilterDoc),
    LabelSelector(LabelSelectorDoc),
    ByLabel(ByLabelDoc),
    Picker(PickerDoc),
    DisaggHandler(DisaggHandlerDoc),
    PdHandler(PdHandlerDoc),
    PrefixDecider(PrefixDeciderDoc),
    MetricsSource(MetricsSourceDoc),
    Extractor(ExtractorDoc),
}

/// Reads `parameters` for a plugin of the given type (`null` reads as absent).
struct ParametersOf(PluginType);

impl<'de> DeserializeSeed<'de> for ParametersOf {
    type Value = Parameters;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parameters, D::Error> {
        fn read<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
            d: D,
        ) -> Result<T, D::Error> {
            Ok(mapping(d, "a mapping of parameters")?.unwrap_or_default())
        }
        use PluginType as T;
        Ok(match self.0 {
            T::PrefixCacheScorer => Parameters::ApproxPrefix(read(d)?),
            T::LoraAffinityScorer => Parameters::LoraAffinity(read(d)?),
            T::SessionAffinityScorer => Parameters::SessionAffinity(read(d)?),
            T::PredictedLatencyScorer => Parameters::PredictedLatency(read(d)?),
            T::ModelFilter => Parameters::Model(read(d)?),
            T::LabelSelectorFilter => Parameters::LabelSelector(read(d)?),
            T::ByLabel => Parameters::ByLabel(read(d)?),
            T::DisaggProfileHandler => Parameters::DisaggHandler(read(d)?),
            T::PdProfileHandler => Parameters::PdHandler(read(d)?),
            T::PrefixBasedPdDecider => Parameters::PrefixDecider(read(d)?),
            T::DisaggHeadersHandler | T::PrefillHeaderHandler => {
                read::<D, HeaderHandlerDoc>(d)?;
                Parameters::None
            }
            T::MaxScorePicker | T::WeightedRandomPicker | T::RandomPicker => {
                Parameters::Picker(read(d)?)
            }
            T::MetricsDataSource => Parameters::MetricsSource(read(d)?),
            T::CoreMetricsExtractor => Parameters::Extractor(read(d)?),
            T::PrecisePrefixCacheScorer
            | T::QueueScorer
            | T::RunningRequestsSizeScorer
            | T::KvCacheUtilizationScorer
            | T::SingleProfileHandler
            | T::AlwaysDisaggPdDecider
            | T::PrefillFilter
            | T::DecodeFilter => {
                NoParameters(self.0).deserialize(d)?;
                Parameters::None
            }
        })
    }
}

/// One entry of `plugins`: `type`, optional `name`, `parameters` as the type says. `type` is
/// optional here only so that its absence gets kvpick's message.
#[derive(Debug)]
pub(super) struct PluginDoc {
    pub kind: Option<PluginType>,
    pub name: Option<String>,
    parameters: Parameters,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum PluginField {
    Type,
    Name,
    Parameters,
}

impl<'de> Deserialize<'de> for PluginDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PluginDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a plugin: a mapping with `type` and optional `name` and `parameters`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PluginDoc, A::Error> {
                let (mut kind, mut name, mut parameters) = (None, None, None);
                // `parameters` written before `type`: kept as a value until the type is known.
                let mut early: Option<serde_json::Value> = None;
                while let Some(field) = map.next_key::<PluginField>()? {
                    match field {
                        PluginField::Type => kind = Some(map.next_value::<PluginType>()?),
                        PluginField::Name => name = map.next_value::<Option<String>>()?,
                        PluginField::Parameters => match kind {
                            Some(k) => parameters = Some(map.next_value_seed(ParametersOf(k))?),
                            None => early = Some(map.next_value()?),
                        },
                    }
                }
                if let (Some(k), Some(value)) = (kind, early) {
                    let mut track = serde_path_to_error::Track::new();
                    let read = ParametersOf(k)
                        .deserialize(serde_path_to_error::Deserializer::new(value, &mut track));
                    parameters = Some(read.map_err(|e| {
                        let at = track.path().to_string();
                        let at = if at == "." {
                            String::new()
                        } else {
                            format!(".{at}")
                        };
                        de::Error::custom(format!("parameters{at}: {e}"))
                    })?);
                }
                // No `parameters`: read as `null`, so each type's defaults apply.
                let parameters = match (parameters, kind) {
                    (Some(p), _) => p,
                    (None, Some(k)) => ParametersOf(k)
                        .deserialize(de::value::UnitDeserializer::<A::Error>::new())?,
                    (None, None) => Parameters::None,
                };
                Ok(PluginDoc {
                    kind,
                    name,
                    parameters,
                })
            }
        }
        d.deserialize_map(V)
    }
}

impl PluginDoc {
    /// The plugin this entry configures; `at` is its path (`plugins[i]`).
    pub(super) fn spec(&self, at: &str, index: &IndexConfig) -> Result<PluginSpec, Error> {
        let kind = self
            .kind
            .ok_or_else(|| invalid(&format!("{at}.type"), "required"))?;
        let path = format!("{at}.parameters");
        use PluginType as T;
        Ok(match (kind, &self.parameters) {
            (T::PrecisePrefixCacheScorer, _) => PluginSpec::Scorer(ScorerSpec::PrecisePrefix),
            (T::QueueScorer, _) => PluginSpec::Scorer(ScorerSpec::QueueDepth),
            (T::RunningRequestsSizeScorer, _) => PluginSpec::Scorer(ScorerSpec::RunningRequests),
            (T::KvCacheUtilizationScorer, _) => PluginSpec::Scorer(ScorerSpec::KvCacheUtilization),
            (T::SingleProfileHandler, _) => PluginSpec::ProfileHandler(HandlerSpec::Single),
            (T::DisaggProfileHandler, Parameters::DisaggHandler(p)) => {
                PluginSpec::ProfileHandler(p.spec(&path)?)
            }
            (T::PdProfileHandler, Parameters::PdHandler(p)) => {
                PluginSpec::ProfileHandler(p.spec(&path)?)
            }
            (T::PrefixBasedPdDecider, Parameters::PrefixDecider(p)) => {
                PluginSpec::Decider(p.decider())
            }
            (T::ByLabel, Parameters::ByLabel(p)) => {
                PluginSpec::Filter(FilterSpec::ByLabel(p.filter(&path)?))
            }
            (T::AlwaysDisaggPdDecider, _) => PluginSpec::Decider(Decider::Always),
            (T::DisaggHeadersHandler | T::PrefillHeaderHandler, _) => PluginSpec::HeaderHandler,
            (T::PrefillFilter, _) => {
                PluginSpec::Filter(FilterSpec::ByLabel(ByLabel::prefill_role()))
            }
            (T::DecodeFilter, _) => PluginSpec::Filter(FilterSpec::ByLabel(ByLabel::decode_role())),
            (T::MetricsDataSource | T::CoreMetricsExtractor, p) => {
                match p {
                    Parameters::MetricsSource(doc) => doc.check(&path)?,
                    Parameters::Extractor(doc) => doc.check(&path)?,
                    _ => {}
                }
                PluginSpec::DataLayer
            }
            (T::PrefixCacheScorer, Parameters::ApproxPrefix(p)) => {
                PluginSpec::Scorer(ScorerSpec::ApproxPrefix(approx(p, &path, index)?))
            }
            (T::LoraAffinityScorer, p) => {
                let d = LoraAffinityParams::default();
                let (free, waiting) = match p {
                    Parameters::LoraAffinity(p) => (p.free_slot_score, p.waiting_score),
                    _ => (None, None),
                };
                PluginSpec::Scorer(ScorerSpec::LoraAffinity(LoraAffinityParams {
                    free_slot_score: free.map_or(d.free_slot_score, |f| f.0),
                    waiting_score: waiting.map_or(d.waiting_score, |f| f.0),
                }))
            }
            (T::SessionAffinityScorer, p) => {
                let d = SessionAffinityParams::default();
                let capacity = match p {
                    Parameters::SessionAffinity(p) => p.capacity,
                    _ => None,
                };
                PluginSpec::Scorer(ScorerSpec::SessionAffinity(SessionAffinityParams {
                    capacity: capacity.map_or(d.capacity, |c| c.0 as usize),
                }))
            }
            (T::PredictedLatencyScorer, p) => {
                let params = match p {
                    Parameters::PredictedLatency(p) => p.params(),
                    _ => PredictedLatencyDoc::default().params(),
                };
                PluginSpec::Scorer(ScorerSpec::PredictedLatency(Box::new(params)))
            }
            (T::ModelFilter, p) => {
                let adapters = match p {
                    Parameters::Model(ModelFilterDoc { adapters: Some(a) }) => a
                        .iter()
                        .map(|(base, names)| {
                            (base.clone(), names.0.iter().map(|n| n.0.clone()).collect())
                        })
                        .collect(),
                    _ => BTreeMap::new(),
                };
                PluginSpec::Filter(FilterSpec::Model(ModelFilter { adapters }))
            }
            (T::LabelSelectorFilter, Parameters::LabelSelector(p)) => {
                PluginSpec::Filter(FilterSpec::LabelSelector(p.selector(&path)?))
            }
            (T::MaxScorePicker | T::WeightedRandomPicker | T::RandomPicker, p) => {
                let empty = PickerDoc::default();
                let p = match p {
                    Parameters::Picker(p) => p,
                    _ => &empty,
                };
                PluginSpec::Picker(PickerSpec {
                    kind: match kind {
                        T::MaxScorePicker => PickerKind::MaxScore,
                        T::WeightedRandomPicker => PickerKind::WeightedRandom,
                        _ => PickerKind::Random,
                    },
                    max_endpoints: p.max_num_of_endpoints.and_then(|n| {
                        NonZeroUsize::new(usize::try_from(n.0).unwrap_or(usize::MAX))
                    }),
                    seed: p.seed.map_or(PickerSpec::DEFAULT_SEED, |s| s.0),
                })
            }
            (
                T::PrefixCacheScorer
                | T::LabelSelectorFilter
                | T::DisaggProfileHandler
                | T::PdProfileHandler
                | T::PrefixBasedPdDecider
                | T::ByLabel,
                _,
            ) => {
                // Unreachable: `ParametersOf` reads each type's own parameters.
                return Err(invalid(&path, "parameters of another plugin type"));
            }
        })
    }
}

fn approx(
    p: &ApproxPrefixDoc,
    path: &str,
    index: &IndexConfig,
) -> Result<ApproxPrefixParams, Error> {
    let d = ApproxPrefixParams::default();
    let index_block = u64::from(index.block_size.get());
    let block_tokens = match p.block_size {
        Some(Int(n)) if n % index_block != 0 || n > u64::from(u32::MAX) => {
            return Err(invalid(
                &format!("{path}.blockSize"),
                format!("must be a multiple of index.blockSize ({index_block}), got {n}"),
            ));
        }
        n => n.map(|n| n.0 as u32),
    };
    Ok(ApproxPrefixParams {
        block_tokens,
        text_chunk_chars: p
            .text_chunk_chars
            .and_then(|n| NonZeroUsize::new(n.0 as usize))
            .unwrap_or(d.text_chunk_chars),
        max_blocks: p
            .max_prefix_blocks_to_match
            .map_or(d.max_blocks, |n| n.0 as usize),
        capacity_per_endpoint: p
            .lru_capacity_per_server
            .map_or(d.capacity_per_endpoint, |n| n.0 as usize),
    })
}
