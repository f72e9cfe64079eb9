//! `InferenceObjective` and `InferenceModelRewrite` as kvpick reads them: llm-d's
//! `llm-d.ai/v1alpha2` and the Inference Extension's older `inference.networking.x-k8s.io/v1alpha2`
//! (same fields). Unknown fields are ignored, so status and newer fields do not break reading;
//! every length and count is bounded when the objects are compiled ([`super::compile`]).

use serde::Deserialize;

use crate::config::chart::POOL_GROUP;

/// The API groups both kinds are served in, newest first.
pub const GROUPS: [&str; 2] = ["llm-d.ai", "inference.networking.x-k8s.io"];
/// Their version in both groups.
pub const VERSION: &str = "v1alpha2";

/// The two kinds, as `(kind, plural)`.
pub const OBJECTIVE: (&str, &str) = ("InferenceObjective", "inferenceobjectives");
/// See [`OBJECTIVE`].
pub const REWRITE: (&str, &str) = ("InferenceModelRewrite", "inferencemodelrewrites");

/// Pod-style annotations on an InferenceObjective that give its requests latency objectives when
/// they carry none themselves (the CRD has no such field; kvpick's own, like its pod annotations).
pub const SLO_TTFT_ANNOTATION: &str = "kvpick.io/slo-ttft-ms";
/// See [`SLO_TTFT_ANNOTATION`].
pub const SLO_TPOT_ANNOTATION: &str = "kvpick.io/slo-tpot-ms";

/// `spec.poolRef`: the InferencePool an object applies to (same namespace).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolRef {
    /// Defaults to `inference.networking.k8s.io`.
    #[serde(default)]
    pub group: Option<String>,
    /// Defaults to `InferencePool`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The pool's name.
    #[serde(default)]
    pub name: String,
}

impl PoolRef {
    /// Whether this names the InferencePool `pool` (v1, `inference.networking.k8s.io`).
    pub fn names(&self, pool: &str) -> bool {
        let group = self.group.as_deref().filter(|g| !g.is_empty());
        let kind = self.kind.as_deref().filter(|k| !k.is_empty());
        self.name == pool
            && group.is_none_or(|g| g == POOL_GROUP)
            && kind.is_none_or(|k| k == "InferencePool")
    }
}

/// `InferenceObjective.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectiveSpec {
    /// The pool it applies to.
    #[serde(default)]
    pub pool_ref: PoolRef,
    /// Higher is more important; negative is sheddable; unset is 0.
    #[serde(default)]
    pub priority: Option<i32>,
}

/// `InferenceModelRewrite.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RewriteSpec {
    /// The pool it applies to.
    #[serde(default)]
    pub pool_ref: PoolRef,
    /// Ordered rules; the first that matches a request is used.
    #[serde(default)]
    pub rules: Vec<RewriteRule>,
}

/// One rule: requests whose model matches any of `matches` (all requests when empty) are sent
/// to one of `targets`, by weight.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RewriteRule {
    /// Match criteria, ORed.
    #[serde(default)]
    pub matches: Vec<Match>,
    /// Weighted target models.
    #[serde(default)]
    pub targets: Vec<Target>,
}

/// A match on the body's `model`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Match {
    /// `Exact` (the only type) and the value.
    #[serde(default)]
    pub model: Option<ModelMatch>,
}

/// `matches[].model`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ModelMatch {
    /// `Exact` (the default and only supported value).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The model name.
    #[serde(default)]
    pub value: String,
}

/// `targets[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Relative weight in [1, 1,000,000]; all set or none (none: equal shares).
    #[serde(default)]
    pub weight: Option<i64>,
    /// The model name to send.
    #[serde(default)]
    pub model_rewrite: String,
}
