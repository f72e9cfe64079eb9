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
//! | `model-filter` | filter: serves the model, or the adapter (see [`ModelFilter`]) | `adapters` ({}: base model → adapter names) |
//! | `label-selector-filter` | filter: labels match | `selector` (`"k=v, k in (a,b), !k"`) and/or `matchLabels` ({k: v}) |
//! | `max-score-picker` | picker: best first, random among ties | `maxNumOfEndpoints` (all), `seed` |
//! | `weighted-random-picker` | picker: random, P ∝ score | `maxNumOfEndpoints` (all), `seed` |
//! | `random-picker` | picker: uniformly random | `maxNumOfEndpoints` (all), `seed` |
//! | `single-profile-handler` | accepted for llm-d configs; not referenced by profiles | none |
//!
//! Type names follow llm-d's where llm-d has the plugin, and so do parameter names where llm-d
//! has them (`blockSize`, `maxPrefixBlocksToMatch`, `lruCapacityPerServer`, `matchLabels`,
//! `maxNumOfEndpoints`); `model-filter` and the other parameters are kvpick's. llm-d parameters
//! kvpick has no use for (e.g. the precise scorer's `indexerConfig`, `kvEventsConfig`) are
//! refused as unknown rather than silently ignored.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use serde_yaml::Value;

use super::fields::{Fields, invalid, kind};
use crate::error::Error;
use crate::filters::{FilterSpec, LabelSelector, ModelFilter};
use crate::index::IndexConfig;
use crate::pickers::{PickerKind, PickerSpec};
use crate::scorers::{ApproxPrefixParams, LoraAffinityParams, ScorerSpec, SessionAffinityParams};

/// A configured plugin instance, by role.
#[derive(Clone, Debug, PartialEq)]
pub enum PluginSpec {
    /// Scores candidates.
    Scorer(ScorerSpec),
    /// Removes candidates.
    Filter(FilterSpec),
    /// Orders candidates.
    Picker(PickerSpec),
    /// `single-profile-handler`: accepted for llm-d compatibility; kvpick runs one profile.
    ProfileHandler,
}

impl PluginSpec {
    /// What the plugin is, for messages.
    pub fn role(&self) -> &'static str {
        match self {
            PluginSpec::Scorer(_) => "a scorer",
            PluginSpec::Filter(_) => "a filter",
            PluginSpec::Picker(_) => "a picker",
            PluginSpec::ProfileHandler => "a profile handler",
        }
    }
}

/// Every plugin type a config may use.
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
];

/// Largest per-endpoint history, sessions: far above any sane setting, and keeps slab handles
/// (`u32`) from running out.
const MAX_LRU_CAPACITY: u64 = 1 << 24;

/// Parses the plugin of type `ty` with `parameters`, found at `at` (`plugins[i]`).
pub(crate) fn parse(
    ty: &str,
    parameters: Option<&Value>,
    at: &str,
    index: &IndexConfig,
) -> Result<PluginSpec, Error> {
    let path = format!("{at}.parameters");
    let fields = |known: &[&str]| Fields::new(parameters, &path, known, ty);
    let spec = match ty {
        "precise-prefix-cache-scorer" => {
            fields(&[])?;
            PluginSpec::Scorer(ScorerSpec::PrecisePrefix)
        }
        "prefix-cache-scorer" => PluginSpec::Scorer(ScorerSpec::ApproxPrefix(approx(
            &fields(&[
                "blockSize",
                "maxPrefixBlocksToMatch",
                "lruCapacityPerServer",
                "textChunkChars",
            ])?,
            index,
        )?)),
        "queue-scorer" => {
            fields(&[])?;
            PluginSpec::Scorer(ScorerSpec::QueueDepth)
        }
        "running-requests-size-scorer" => {
            fields(&[])?;
            PluginSpec::Scorer(ScorerSpec::RunningRequests)
        }
        "kv-cache-utilization-scorer" => {
            fields(&[])?;
            PluginSpec::Scorer(ScorerSpec::KvCacheUtilization)
        }
        "lora-affinity-scorer" => {
            let f = fields(&["freeSlotScore", "waitingScore"])?;
            let d = LoraAffinityParams::default();
            PluginSpec::Scorer(ScorerSpec::LoraAffinity(LoraAffinityParams {
                free_slot_score: f.fraction("freeSlotScore")?.unwrap_or(d.free_slot_score),
                waiting_score: f.fraction("waitingScore")?.unwrap_or(d.waiting_score),
            }))
        }
        "session-affinity-scorer" => {
            let f = fields(&["capacity"])?;
            let d = SessionAffinityParams::default();
            PluginSpec::Scorer(ScorerSpec::SessionAffinity(SessionAffinityParams {
                capacity: bounded(&f, "capacity")?.unwrap_or(d.capacity),
            }))
        }
        "predicted-latency-scorer" => PluginSpec::Scorer(ScorerSpec::PredictedLatency(Box::new(
            super::latency::params(parameters, &path)?,
        ))),
        "model-filter" => {
            PluginSpec::Filter(FilterSpec::Model(model_filter(&fields(&["adapters"])?)?))
        }
        "label-selector-filter" => {
            let f = fields(&["selector", "matchLabels"])?;
            PluginSpec::Filter(FilterSpec::LabelSelector(selector(&f, &path)?))
        }
        "max-score-picker" | "weighted-random-picker" | "random-picker" => {
            let f = fields(&["maxNumOfEndpoints", "seed"])?;
            let kind = match ty {
                "max-score-picker" => PickerKind::MaxScore,
                "weighted-random-picker" => PickerKind::WeightedRandom,
                _ => PickerKind::Random,
            };
            PluginSpec::Picker(PickerSpec {
                kind,
                max_endpoints: f
                    .int("maxNumOfEndpoints", 1)?
                    .and_then(|n| NonZeroUsize::new(usize::try_from(n).unwrap_or(usize::MAX))),
                seed: f.int("seed", 0)?.unwrap_or(PickerSpec::DEFAULT_SEED),
            })
        }
        "single-profile-handler" => {
            fields(&[])?;
            PluginSpec::ProfileHandler
        }
        other => {
            return Err(invalid(
                &format!("{at}.type"),
                format!(
                    "unknown plugin type {other:?} (known: {})",
                    PLUGIN_TYPES.join(", ")
                ),
            ));
        }
    };
    Ok(spec)
}

/// An integer in [1, MAX_LRU_CAPACITY].
fn bounded(f: &Fields<'_>, key: &str) -> Result<Option<usize>, Error> {
    match f.int(key, 1)? {
        Some(n) if n > MAX_LRU_CAPACITY => Err(invalid(
            &f.path(key),
            format!("must be at most {MAX_LRU_CAPACITY}, got {n}"),
        )),
        n => Ok(n.map(|n| n as usize)),
    }
}

fn approx(f: &Fields<'_>, index: &IndexConfig) -> Result<ApproxPrefixParams, Error> {
    let d = ApproxPrefixParams::default();
    let index_block = u64::from(index.block_size.get());
    let block_tokens = match f.int("blockSize", 1)? {
        Some(n) if n % index_block != 0 || n > u64::from(u32::MAX) => {
            return Err(invalid(
                &f.path("blockSize"),
                format!("must be a multiple of index.blockSize ({index_block}), got {n}"),
            ));
        }
        n => n.map(|n| n as u32),
    };
    Ok(ApproxPrefixParams {
        block_tokens,
        text_chunk_chars: bounded(f, "textChunkChars")?
            .and_then(NonZeroUsize::new)
            .unwrap_or(d.text_chunk_chars),
        max_blocks: bounded(f, "maxPrefixBlocksToMatch")?.unwrap_or(d.max_blocks),
        capacity_per_endpoint: bounded(f, "lruCapacityPerServer")?
            .unwrap_or(d.capacity_per_endpoint),
    })
}

fn model_filter(f: &Fields<'_>) -> Result<ModelFilter, Error> {
    let mut adapters = BTreeMap::new();
    let Some(value) = f.value("adapters") else {
        return Ok(ModelFilter { adapters });
    };
    let path = f.path("adapters");
    let Value::Mapping(map) = value else {
        return Err(invalid(
            &path,
            format!(
                "expected a mapping of base model to adapter names, got {}",
                kind(value)
            ),
        ));
    };
    for (base, list) in map {
        let Some(base) = base.as_str() else {
            return Err(invalid(&path, "base model names must be strings"));
        };
        let at = format!("{path}.{base}");
        let Value::Sequence(list) = list else {
            return Err(invalid(
                &at,
                format!("expected a list of adapter names, got {}", kind(list)),
            ));
        };
        let names = list
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                other => Err(invalid(
                    &format!("{at}[{i}]"),
                    format!("expected an adapter name, got {}", kind(other)),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        adapters.insert(base.to_owned(), names);
    }
    Ok(ModelFilter { adapters })
}

fn selector(f: &Fields<'_>, path: &str) -> Result<LabelSelector, Error> {
    let mut sel = match f.str("selector")? {
        Some(text) => LabelSelector::parse(text).map_err(|e| invalid(&f.path("selector"), e))?,
        None => LabelSelector::default(),
    };
    if let Some(value) = f.value("matchLabels") {
        let at = f.path("matchLabels");
        let Value::Mapping(map) = value else {
            return Err(invalid(
                &at,
                format!("expected a mapping of label to value, got {}", kind(value)),
            ));
        };
        for (k, v) in map {
            let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                return Err(invalid(&at, "labels and values must be strings"));
            };
            sel.require_equal(k, v)
                .map_err(|e| invalid(&format!("{at}.{k}"), e))?;
        }
    }
    if sel.is_empty() {
        return Err(invalid(
            path,
            "give a non-empty `selector` or `matchLabels`",
        ));
    }
    Ok(sel)
}
