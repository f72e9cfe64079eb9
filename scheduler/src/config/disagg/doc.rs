//! The P/D plugins' `parameters` as llm-d writes them, and what they configure.
//!
//! - `disagg-profile-handler`: `profiles: {decode, prefill, encode}` and
//!   `deciders: {prefill, encode}`, or llm-d's deprecated flat names (`decodeProfile`,
//!   `prefillProfile`, `encodeProfile`, `prefillDeciderPluginName`, `encodeDeciderPluginName`,
//!   `deciderPluginName`), never both. Without `deciders.prefill` it runs the decode profile only.
//! - `pd-profile-handler` (llm-d's older name): `decodeProfile`, `prefillProfile`,
//!   `deciderPluginName` (default `prefix-based-pd-decider`, which must then be declared),
//!   `prefixPluginType`, `prefixPluginName`, `primaryPort` (0 only: kvpick lists each
//!   data-parallel rank as its own endpoint). Its older `threshold`/`hashBlockSize` are refused
//!   with the replacement named.
//! - `prefix-based-pd-decider`: `nonCachedTokens` (0, which never disaggregates).
//! - `disagg-headers-handler`, `prefill-header-handler`: `prefillProfile`, `encodeProfile`;
//!   llm-d's deprecated header writers. kvpick writes `x-prefiller-host-port` itself, so these are
//!   accepted and do nothing.
//!
//! Encode disaggregation (`deciders.encode`) is not supported and is refused.

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{DisaggHandler, HandlerSpec};
use crate::config::invalid;
use crate::config::values::{Int, section};
use crate::disagg::Decider;
use crate::error::Error;

/// `disagg-profile-handler`'s `profiles`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct ProfilesDoc {
    decode: Option<String>,
    prefill: Option<String>,
    encode: Option<String>,
}

/// `disagg-profile-handler`'s `deciders`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct DecidersDoc {
    prefill: Option<String>,
    encode: Option<String>,
}

/// `disagg-profile-handler`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(in crate::config) struct DisaggHandlerDoc {
    #[serde(default, deserialize_with = "section")]
    profiles: Option<ProfilesDoc>,
    #[serde(default, deserialize_with = "section")]
    deciders: Option<DecidersDoc>,
    decode_profile: Option<String>,
    prefill_profile: Option<String>,
    encode_profile: Option<String>,
    prefill_decider_plugin_name: Option<String>,
    encode_decider_plugin_name: Option<String>,
    decider_plugin_name: Option<String>,
}

/// `pd-profile-handler`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(in crate::config) struct PdHandlerDoc {
    decode_profile: Option<String>,
    prefill_profile: Option<String>,
    decider_plugin_name: Option<String>,
    prefix_plugin_type: Option<String>,
    prefix_plugin_name: Option<String>,
    primary_port: Option<Int<0, 65535>>,
    threshold: Option<IgnoredAny>,
    hash_block_size: Option<IgnoredAny>,
}

/// `prefix-based-pd-decider`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(in crate::config) struct PrefixDeciderDoc {
    non_cached_tokens: Option<Int<0, { u32::MAX as u64 }>>,
}

/// `disagg-headers-handler`, `prefill-header-handler`: read to be checked, then unused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(in crate::config) struct HeaderHandlerDoc {
    #[serde(rename = "prefillProfile")]
    _prefill_profile: Option<IgnoredString>,
    #[serde(rename = "encodeProfile")]
    _encode_profile: Option<IgnoredString>,
}

/// A string whose value is not used.
#[derive(Debug)]
struct IgnoredString;

impl<'de> Deserialize<'de> for IgnoredString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|_| IgnoredString)
    }
}

/// llm-d's default profile names.
const DECODE: &str = "decode";
const PREFILL: &str = "prefill";
/// `pd-profile-handler`'s default decider.
const PREFIX_DECIDER: &str = "prefix-based-pd-decider";

fn non_empty(value: &Option<String>, path: &str) -> Result<Option<String>, Error> {
    match value {
        Some(v) if v.is_empty() => Err(invalid(path, "must not be empty")),
        v => Ok(v.clone()),
    }
}

impl DisaggHandlerDoc {
    pub(in crate::config) fn spec(&self, path: &str) -> Result<HandlerSpec, Error> {
        let nested = self.profiles.is_some() || self.deciders.is_some();
        let flat = [
            &self.decode_profile,
            &self.prefill_profile,
            &self.encode_profile,
            &self.prefill_decider_plugin_name,
            &self.encode_decider_plugin_name,
            &self.decider_plugin_name,
        ]
        .iter()
        .any(|f| f.is_some());
        if nested && flat {
            return Err(invalid(
                path,
                "cannot mix the deprecated flat parameters (decodeProfile, prefillProfile, \
                 encodeProfile, deciderPluginName, prefillDeciderPluginName, \
                 encodeDeciderPluginName) with profiles/deciders: use one format",
            ));
        }
        let empty_p = ProfilesDoc::default();
        let empty_d = DecidersDoc::default();
        let (p, d) = (
            self.profiles.as_ref().unwrap_or(&empty_p),
            self.deciders.as_ref().unwrap_or(&empty_d),
        );
        let (decode, prefill, encode, decider, encode_decider) = if nested {
            (
                non_empty(&p.decode, &format!("{path}.profiles.decode"))?,
                non_empty(&p.prefill, &format!("{path}.profiles.prefill"))?,
                non_empty(&p.encode, &format!("{path}.profiles.encode"))?,
                non_empty(&d.prefill, &format!("{path}.deciders.prefill"))?,
                d.encode.clone(),
            )
        } else {
            let prefill_decider = non_empty(
                &self.prefill_decider_plugin_name,
                &format!("{path}.prefillDeciderPluginName"),
            )?;
            let legacy = non_empty(
                &self.decider_plugin_name,
                &format!("{path}.deciderPluginName"),
            )?;
            (
                non_empty(&self.decode_profile, &format!("{path}.decodeProfile"))?,
                non_empty(&self.prefill_profile, &format!("{path}.prefillProfile"))?,
                non_empty(&self.encode_profile, &format!("{path}.encodeProfile"))?,
                prefill_decider.or(legacy),
                self.encode_decider_plugin_name.clone(),
            )
        };
        if encode_decider.is_some() || encode.is_some() {
            let at = if nested {
                "deciders.encode"
            } else {
                "encodeDeciderPluginName"
            };
            return Err(invalid(
                &format!("{path}.{at}"),
                "encode disaggregation (E/PD) is not supported by kvpick",
            ));
        }
        Ok(HandlerSpec::Disagg(DisaggHandler {
            decode_profile: decode.unwrap_or_else(|| DECODE.to_owned()),
            prefill_profile: prefill.unwrap_or_else(|| PREFILL.to_owned()),
            decider,
            prefix_plugin: None,
        }))
    }
}

impl PdHandlerDoc {
    pub(in crate::config) fn spec(&self, path: &str) -> Result<HandlerSpec, Error> {
        if self.threshold.is_some() || self.hash_block_size.is_some() {
            let at = if self.threshold.is_some() {
                "threshold"
            } else {
                "hashBlockSize"
            };
            return Err(invalid(
                &format!("{path}.{at}"),
                "removed in llm-d: declare a prefix-based-pd-decider with nonCachedTokens \
                 (tokens) and name it in deciderPluginName",
            ));
        }
        if let Some(Int(port)) = self.primary_port.filter(|p| p.0 != 0) {
            return Err(invalid(
                &format!("{path}.primaryPort"),
                format!(
                    "{port}: kvpick lists each data-parallel rank as its own endpoint \
                     (InferencePool targetPorts), so only 0 is accepted"
                ),
            ));
        }
        let decider = non_empty(
            &self.decider_plugin_name,
            &format!("{path}.deciderPluginName"),
        )?;
        // The prefix plugin whose matches the decider reads; its type names it when unnamed.
        let prefix = match non_empty(
            &self.prefix_plugin_name,
            &format!("{path}.prefixPluginName"),
        )? {
            Some(name) => Some(name),
            None => non_empty(
                &self.prefix_plugin_type,
                &format!("{path}.prefixPluginType"),
            )?,
        };
        Ok(HandlerSpec::Disagg(DisaggHandler {
            decode_profile: non_empty(&self.decode_profile, &format!("{path}.decodeProfile"))?
                .unwrap_or_else(|| DECODE.to_owned()),
            prefill_profile: non_empty(&self.prefill_profile, &format!("{path}.prefillProfile"))?
                .unwrap_or_else(|| PREFILL.to_owned()),
            decider: Some(decider.unwrap_or_else(|| PREFIX_DECIDER.to_owned())),
            prefix_plugin: prefix,
        }))
    }
}

impl PrefixDeciderDoc {
    pub(in crate::config) fn decider(&self) -> Decider {
        Decider::PrefixBased {
            non_cached_tokens: self.non_cached_tokens.map_or(0, |n| n.0 as u32),
        }
    }
}
