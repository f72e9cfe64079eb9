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
//! Profiles are a list so that prefill/decode profiles can come later; today exactly one is
//! accepted. Everything is validated when parsed: an unknown field, type, parameter or
//! reference, or a bad value, is an [`Error::InvalidConfig`] naming the field by its path.
//! Parsing is pure (`&str` in); reading the file is the caller's business.

mod admission;
mod fields;
mod latency;
pub mod plugins;

use std::collections::HashSet;

use serde_yaml::Value;

use self::fields::{Fields, invalid};
pub use self::plugins::{PLUGIN_TYPES, PluginSpec};
use crate::error::Error;
use crate::events::Medium;
use crate::filters::{FilterSpec, Staleness};
use crate::flow::FlowConfig;
use crate::index::IndexConfig;
use crate::keys::BlockSize;
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
pub struct PickerConfig {
    /// The KV index's settings (`index`).
    pub index: IndexConfig,
    /// When an endpoint's signals are too old (`staleness`).
    pub staleness: Staleness,
    /// The active profile (the one entry of `schedulingProfiles`).
    pub profile: Profile,
    /// When the pool counts as saturated, and request priorities (`saturation`, `objectives`).
    pub saturation: SaturationConfig,
    /// Whether and how requests wait while the pool is saturated (`featureGates: [flowControl]`,
    /// `flowControl`).
    pub flow: FlowConfig,
}

impl Default for PickerConfig {
    /// llm-d's precise profile: prefix 2, KV utilization 1, queue 1, max-score picker; the same
    /// config as [`PickerConfig::DEFAULT_YAML`].
    fn default() -> Self {
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

impl PickerConfig {
    /// The default config as YAML, with comments: what [`PickerConfig::default`] parses from.
    pub const DEFAULT_YAML: &'static str = include_str!("default.yaml");

    /// Parses and validates a config.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let root: Value = serde_yaml::from_str(text)
            .map_err(|e| Error::InvalidConfig(format!("not valid YAML: {e}")))?;
        let top = Fields::new(
            Some(&root),
            "",
            &[
                "apiVersion",
                "kind",
                "index",
                "staleness",
                "saturation",
                "objectives",
                "featureGates",
                "flowControl",
                "plugins",
                "schedulingProfiles",
            ],
            "the config",
        )?;
        let api = top.required_str("apiVersion")?;
        if !API_VERSIONS.contains(&api) {
            return Err(invalid(
                "apiVersion",
                format!(
                    "unsupported {api:?} (expected one of: {})",
                    API_VERSIONS.join(", ")
                ),
            ));
        }
        let kind = top.required_str("kind")?;
        if kind != "EndpointPickerConfig" {
            return Err(invalid(
                "kind",
                format!("expected EndpointPickerConfig, got {kind:?}"),
            ));
        }
        let index = index(&top)?;
        let staleness = staleness(&top)?;
        let saturation = admission::saturation(&top, &staleness)?;
        let flow = admission::flow_control(&top)?;
        let plugins = plugin_list(&top, &index)?;
        let profile = match top.list("schedulingProfiles")? {
            None => implicit_profile(&plugins)?,
            Some([one]) => profile(one, "schedulingProfiles[0]", &plugins)?,
            Some(many) => {
                return Err(invalid(
                    "schedulingProfiles",
                    format!(
                        "expected exactly one profile, got {} (kvpick runs a single profile for now)",
                        many.len()
                    ),
                ));
            }
        };
        Ok(Self {
            index,
            staleness,
            profile,
            saturation,
            flow,
        })
    }
}

fn index(top: &Fields<'_>) -> Result<IndexConfig, Error> {
    let mut config = IndexConfig::default();
    let f = Fields::new(
        top.value("index"),
        "index",
        &["blockSize", "capacity", "tierWeights"],
        "index",
    )?;
    if let Some(n) = f.int("blockSize", 1)? {
        config.block_size = u32::try_from(n)
            .ok()
            .and_then(BlockSize::new)
            .ok_or_else(|| invalid(&f.path("blockSize"), format!("too large: {n}")))?;
    }
    if let Some(n) = f.int("capacity", 1)? {
        config.capacity = usize::try_from(n).unwrap_or(usize::MAX);
    }
    let tiers = Fields::new(
        f.value("tierWeights"),
        &f.path("tierWeights"),
        &["gpu", "cpu", "storage"],
        "tierWeights",
    )?;
    for medium in Medium::ALL {
        if let Some(w) = tiers.fraction(&medium.as_str().to_ascii_lowercase())? {
            config.tier_weights[medium.tier()] = w as f32;
        }
    }
    Ok(config)
}

fn staleness(top: &Fields<'_>) -> Result<Staleness, Error> {
    let f = Fields::new(
        top.value("staleness"),
        "staleness",
        &["maxSignalAge"],
        "staleness",
    )?;
    let mut s = Staleness::default();
    if let Some(d) = f.duration("maxSignalAge")? {
        s.max_signal_age = d;
    }
    Ok(s)
}

fn plugin_list(top: &Fields<'_>, index: &IndexConfig) -> Result<Vec<(String, PluginSpec)>, Error> {
    let items = top
        .list("plugins")?
        .filter(|l| !l.is_empty())
        .ok_or_else(|| invalid("plugins", "required: at least one plugin"))?;
    let mut out: Vec<(String, PluginSpec)> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("plugins[{i}]");
        let f = Fields::new(Some(item), &at, &["type", "name", "parameters"], "a plugin")?;
        let ty = f.required_str("type")?;
        let name = f.str("name")?.unwrap_or(ty);
        if name.is_empty() {
            return Err(invalid(&f.path("name"), "must not be empty"));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(invalid(
                &f.path("name"),
                format!("duplicate plugin name {name:?} (give each instance its own `name`)"),
            ));
        }
        let spec = plugins::parse(ty, f.value("parameters"), &at, index)?;
        out.push((name.to_owned(), spec));
    }
    Ok(out)
}

/// Builds a profile from `(path, plugin name, weight)` references.
fn resolve<'p>(
    name: String,
    refs: impl Iterator<Item = Result<(String, &'p str, Option<f64>), Error>>,
    plugins: &[(String, PluginSpec)],
) -> Result<Profile, Error> {
    let mut profile = Profile {
        name,
        filters: Vec::new(),
        scorers: Vec::new(),
        picker: default_picker(),
    };
    let (mut seen, mut picker_at) = (HashSet::new(), None::<String>);
    for r in refs {
        let (path, plugin, weight) = r?;
        let Some((_, spec)) = plugins.iter().find(|(n, _)| n == plugin) else {
            return Err(invalid(
                &format!("{path}.pluginRef"),
                format!("no plugin named {plugin:?}"),
            ));
        };
        if !seen.insert(plugin) {
            return Err(invalid(
                &format!("{path}.pluginRef"),
                format!("{plugin:?} is already in this profile"),
            ));
        }
        if weight.is_some() && !matches!(spec, PluginSpec::Scorer(_)) {
            return Err(invalid(
                &format!("{path}.weight"),
                format!(
                    "only scorers take a weight, and {plugin:?} is {}",
                    spec.role()
                ),
            ));
        }
        match spec {
            PluginSpec::Scorer(s) => profile.scorers.push(WeightedScorer {
                name: plugin.to_owned(),
                spec: s.clone(),
                weight: weight.unwrap_or(1.0),
            }),
            PluginSpec::Filter(f) => profile.filters.push(Named {
                name: plugin.to_owned(),
                spec: f.clone(),
            }),
            PluginSpec::Picker(p) => {
                if let Some(first) = &picker_at {
                    return Err(invalid(
                        &format!("{path}.pluginRef"),
                        format!("a profile has one picker, and {first} is already one"),
                    ));
                }
                picker_at = Some(format!("{plugin:?}"));
                profile.picker = Named {
                    name: plugin.to_owned(),
                    spec: p.clone(),
                };
            }
            PluginSpec::ProfileHandler => {
                return Err(invalid(
                    &format!("{path}.pluginRef"),
                    format!("{plugin:?} is a profile handler, not a plugin a profile runs"),
                ));
            }
        }
    }
    Ok(profile)
}

fn profile(value: &Value, at: &str, plugins: &[(String, PluginSpec)]) -> Result<Profile, Error> {
    let f = Fields::new(Some(value), at, &["name", "plugins"], "a profile")?;
    let name = f.required_str("name")?.to_owned();
    let items = f
        .list("plugins")?
        .ok_or_else(|| invalid(&f.path("plugins"), "required"))?;
    let refs = items.iter().enumerate().map(|(j, item)| {
        let path = format!("{at}.plugins[{j}]");
        let r = Fields::new(
            Some(item),
            &path,
            &["pluginRef", "weight"],
            "a plugin reference",
        )?;
        Ok((
            path.clone(),
            r.required_str("pluginRef")?,
            r.non_negative("weight")?,
        ))
    });
    resolve(name, refs, plugins)
}

/// Without `schedulingProfiles`: every plugin (but profile handlers), scorers at weight 1.
fn implicit_profile(plugins: &[(String, PluginSpec)]) -> Result<Profile, Error> {
    let pickers = plugins
        .iter()
        .filter(|(_, spec)| matches!(spec, PluginSpec::Picker(_)))
        .count();
    if pickers > 1 {
        return Err(invalid(
            "schedulingProfiles",
            format!("required when plugins holds more than one picker ({pickers}): say which runs"),
        ));
    }
    let refs = plugins
        .iter()
        .filter(|(_, spec)| !matches!(spec, PluginSpec::ProfileHandler))
        .map(|(name, _)| Ok(("schedulingProfiles".to_owned(), name.as_str(), None)));
    resolve("default".to_owned(), refs, plugins)
}

#[cfg(test)]
mod tests;
