//! llm-d's label-value filters: `by-label`, and the role filters `prefill-filter` and
//! `decode-filter` that are `by-label` presets over the label `llm-d.ai/role`.
//!
//! A pod is kept when its label's value is one of the filter's values; a pod without the label is
//! kept only when the filter allows it. The roles follow llm-d's: `prefill-decode` (and the
//! deprecated `both`) serve either stage, `encode-prefill` prefills, `encode-prefill-decode` does
//! everything; a pod with no role label is a decode pod (an aggregated pool needs no labels) but
//! never a prefill pod.

use std::collections::BTreeMap;

/// The label naming a pod's disaggregation role.
pub const ROLE_LABEL: &str = "llm-d.ai/role";

/// [`crate::Error::NoEndpoint`] reason when `prefill-filter` leaves nothing.
pub const PREFILL_FILTER: &str = "prefill_filter";
/// [`crate::Error::NoEndpoint`] reason when `decode-filter` leaves nothing.
pub const DECODE_FILTER: &str = "decode_filter";
/// [`crate::Error::NoEndpoint`] reason when a `by-label` filter leaves nothing.
pub const BY_LABEL_FILTER: &str = "by_label_filter";

/// Role values that prefill (llm-d's prefill filter).
const PREFILL_ROLES: &[&str] = &[
    "prefill",
    "encode-prefill",
    "prefill-decode",
    "both",
    "encode-prefill-decode",
];
/// Role values that decode (llm-d's decode filter).
const DECODE_ROLES: &[&str] = &["decode", "prefill-decode", "both", "encode-prefill-decode"];

/// Keeps pods whose `label` has one of `values` (or, when `allows_no_label`, no such label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByLabel {
    /// The label inspected (`label`).
    pub label: String,
    /// Accepted values (`validValues`).
    pub values: Vec<String>,
    /// Whether a pod without the label is kept (`allowsNoLabel`).
    pub allows_no_label: bool,
    /// Which filter it is, for the reason when it empties the set.
    pub reason: &'static str,
}

impl ByLabel {
    /// `prefill-filter`: pods that can run a prefill.
    pub fn prefill_role() -> Self {
        Self::role(PREFILL_ROLES, false, PREFILL_FILTER)
    }

    /// `decode-filter`: pods that can decode, unlabelled ones included.
    pub fn decode_role() -> Self {
        Self::role(DECODE_ROLES, true, DECODE_FILTER)
    }

    fn role(values: &[&str], allows_no_label: bool, reason: &'static str) -> Self {
        Self {
            label: ROLE_LABEL.to_owned(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
            allows_no_label,
            reason,
        }
    }

    /// Whether a pod with `labels` is kept.
    pub fn keeps(&self, labels: &BTreeMap<String, String>) -> bool {
        match labels.get(&self.label) {
            Some(v) => self.values.iter().any(|a| a == v),
            None => self.allows_no_label,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(v: Option<&str>) -> BTreeMap<String, String> {
        v.map(|v| (ROLE_LABEL.to_owned(), v.to_owned()))
            .into_iter()
            .collect()
    }

    #[test]
    fn role_filters_follow_llm_d_roles() {
        let (p, d) = (ByLabel::prefill_role(), ByLabel::decode_role());
        let cases = [
            (Some("prefill"), true, false),
            (Some("decode"), false, true),
            (Some("both"), true, true),
            (Some("prefill-decode"), true, true),
            (Some("encode-prefill"), true, false),
            (Some("encode-prefill-decode"), true, true),
            (Some("encode"), false, false),
            (Some("Prefill"), false, false),
            (None, false, true),
        ];
        for (value, prefill, decode) in cases {
            assert_eq!(p.keeps(&role(value)), prefill, "prefill {value:?}");
            assert_eq!(d.keeps(&role(value)), decode, "decode {value:?}");
        }
    }
}
