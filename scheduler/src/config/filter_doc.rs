//! The label filters' `parameters`: `label-selector-filter` (kvpick's `selector` string, and
//! Kubernetes' `matchLabels` and `matchExpressions` as llm-d writes them) and llm-d's `by-label`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::invalid;
use super::values::list;
use crate::error::Error;
use crate::filters::{BY_LABEL_FILTER, ByLabel, LabelSelector};

/// `label-selector-filter`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LabelSelectorDoc {
    selector: Option<SelectorText>,
    match_labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "expressions")]
    match_expressions: Option<Vec<ExpressionDoc>>,
}

/// One of `matchExpressions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpressionDoc {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

fn expressions<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<ExpressionDoc>>, D::Error> {
    list(d, "a list of {key, operator, values}")
}

/// A `selector` string, parsed as it is read.
#[derive(Debug)]
struct SelectorText(LabelSelector);

impl<'de> Deserialize<'de> for SelectorText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        LabelSelector::parse(&text)
            .map(SelectorText)
            .map_err(de::Error::custom)
    }
}

impl LabelSelectorDoc {
    /// The selector: all of `selector`, `matchLabels` and `matchExpressions`; at least one.
    pub(super) fn selector(&self, path: &str) -> Result<LabelSelector, Error> {
        let mut sel = self
            .selector
            .as_ref()
            .map_or_else(LabelSelector::default, |s| s.0.clone());
        for (k, v) in self.match_labels.iter().flatten() {
            sel.require_equal(k, v)
                .map_err(|e| invalid(&format!("{path}.matchLabels.{k}"), e))?;
        }
        for (i, e) in self.match_expressions.iter().flatten().enumerate() {
            sel.require_expression(&e.key, &e.operator, &e.values)
                .map_err(|err| invalid(&format!("{path}.matchExpressions[{i}]"), err))?;
        }
        if sel.is_empty() {
            return Err(invalid(
                path,
                "give a non-empty `selector`, `matchLabels` or `matchExpressions`",
            ));
        }
        Ok(sel)
    }
}

/// `by-label`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ByLabelDoc {
    label: Option<String>,
    valid_values: Option<Vec<String>>,
    allows_no_label: Option<bool>,
}

impl ByLabelDoc {
    /// The filter; as llm-d's, it needs a label and values unless pods without it are allowed.
    pub(super) fn filter(&self, path: &str) -> Result<ByLabel, Error> {
        let label = match self.label.as_deref() {
            Some(l) if !l.is_empty() => l.to_owned(),
            _ => return Err(invalid(&format!("{path}.label"), "required")),
        };
        let values = self.valid_values.clone().unwrap_or_default();
        let allows_no_label = self.allows_no_label.unwrap_or(false);
        if values.is_empty() && !allows_no_label {
            return Err(invalid(
                &format!("{path}.validValues"),
                "required (at least one value) unless allowsNoLabel is true",
            ));
        }
        Ok(ByLabel {
            label,
            values,
            allows_no_label,
            reason: BY_LABEL_FILTER,
        })
    }
}
