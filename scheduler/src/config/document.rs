//! The picker config's YAML shape as serde types: every section and field, camelCase, unknown
//! fields refused. What the types cannot say (references between sections, a block size that must
//! divide another) is checked when the document becomes a [`super::EndpointPickerConfig`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::plugin_doc::PluginDoc;
use super::values::{
    AtLeast, ConfigDuration, Fraction, NonNegative, Priority, mapping, section, sequence,
};

/// The whole document. `apiVersion` and `kind` are optional here only so that their absence gets
/// kvpick's message rather than serde's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Document {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "section")]
    pub index: Option<IndexDoc>,
    #[serde(default, deserialize_with = "section")]
    pub staleness: Option<StalenessDoc>,
    #[serde(default, deserialize_with = "section")]
    pub saturation: Option<SaturationDoc>,
    #[serde(default, deserialize_with = "section")]
    pub objectives: Option<BTreeMap<String, Priority>>,
    #[serde(default, deserialize_with = "sequence")]
    pub feature_gates: Option<Vec<FeatureGate>>,
    #[serde(default, deserialize_with = "section")]
    pub flow_control: Option<FlowControlDoc>,
    #[serde(default, deserialize_with = "sequence")]
    pub plugins: Option<Vec<PluginDoc>>,
    #[serde(default, deserialize_with = "sequence")]
    pub scheduling_profiles: Option<Vec<ProfileDoc>>,
}

/// The document's root: a mapping, said plainly when it is something else.
#[derive(Debug)]
pub(super) struct Root(pub Document);

impl<'de> Deserialize<'de> for Root {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        mapping(d, "a mapping (an EndpointPickerConfig)")?
            .map(Root)
            .ok_or_else(|| de::Error::custom("empty: expected a mapping (an EndpointPickerConfig)"))
    }
}

/// `index`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct IndexDoc {
    pub block_size: Option<AtLeast<1>>,
    pub capacity: Option<AtLeast<1>>,
    #[serde(default, deserialize_with = "section")]
    pub tier_weights: Option<TierWeightsDoc>,
}

/// `index.tierWeights`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TierWeightsDoc {
    pub gpu: Option<Fraction>,
    pub cpu: Option<Fraction>,
    pub storage: Option<Fraction>,
}

/// `staleness`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct StalenessDoc {
    pub max_signal_age: Option<ConfigDuration>,
}

/// `saturation`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct SaturationDoc {
    pub queue_depth_threshold: Option<AtLeast<0>>,
    pub kv_cache_util_threshold: Option<Fraction>,
}

/// A feature gate kvpick knows (llm-d's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum FeatureGate {
    /// Requests wait in kvpick while the pool is saturated.
    FlowControl,
}

/// `flowControl`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct FlowControlDoc {
    pub max_requests: Option<AtLeast<1>>,
    pub max_bytes: Option<AtLeast<1>>,
    #[serde(rename = "queueTTL")]
    pub queue_ttl: Option<ConfigDuration>,
}

/// One entry of `schedulingProfiles`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ProfileDoc {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "sequence")]
    pub plugins: Option<Vec<PluginRefDoc>>,
}

/// One entry of a profile's `plugins`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PluginRefDoc {
    pub plugin_ref: Option<String>,
    pub weight: Option<NonNegative>,
}
