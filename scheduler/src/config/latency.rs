//! `predicted-latency-scorer`'s parameters:
//!
//! ```yaml
//! - type: predicted-latency-scorer
//!   parameters:
//!     profile: h100-tp2-qwen3-32b     # a built-in engine profile, or its fields inline
//!     expectedOutputTokens: 256       # output of a request without max_tokens
//!     defaultSlo: {ttftMs: 2000, tpotMs: 50}       # when a request's headers set none
//!     objectiveSlos: {chat: {ttftMs: 500}}         # by InferenceObjective name
//!     reservationTTL: 10m             # drop a reservation never released after this long
//! ```
//!
//! The inline profile has the fields of `kvpick-sim calibrate`'s `profile.yaml`, so a calibrated
//! profile is pasted as is.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::values::{AtLeast, ConfigDuration, Int, section};
use crate::profile::{EngineProfile, PROFILES};
use crate::request::Slo;
use crate::scorers::PredictedLatencyParams;

/// The scorer's `parameters`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PredictedLatencyDoc {
    profile: Option<ProfileChoice>,
    expected_output_tokens: Option<Int<1, { u32::MAX as u64 }>>,
    #[serde(default, deserialize_with = "section")]
    default_slo: Option<SloDoc>,
    #[serde(default, deserialize_with = "section")]
    objective_slos: Option<BTreeMap<String, SloDoc>>,
    #[serde(rename = "reservationTTL")]
    reservation_ttl: Option<ConfigDuration>,
}

/// An SLO: `{ttftMs, tpotMs}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SloDoc {
    ttft_ms: Option<AtLeast<1>>,
    tpot_ms: Option<AtLeast<1>>,
}

impl SloDoc {
    fn slo(&self) -> Slo {
        Slo {
            ttft: self.ttft_ms.map(|n| Duration::from_millis(n.0)),
            tpot: self.tpot_ms.map(|n| Duration::from_millis(n.0)),
        }
    }
}

/// `profile`: a built-in profile's name, or a profile's fields inline (validated as read).
#[derive(Debug)]
struct ProfileChoice(EngineProfile);

impl<'de> Deserialize<'de> for ProfileChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ProfileChoice;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a profile name or mapping")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<ProfileChoice, E> {
                EngineProfile::named(name)
                    .map(ProfileChoice)
                    .ok_or_else(|| {
                        E::custom(format!(
                            "unknown profile {name:?} (built in: {})",
                            PROFILES.join(", ")
                        ))
                    })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ProfileChoice, A::Error> {
                let p = EngineProfile::deserialize(de::value::MapAccessDeserializer::new(map))?;
                p.validate().map_err(de::Error::custom)?;
                Ok(ProfileChoice(p))
            }
        }
        d.deserialize_any(V)
    }
}

impl super::EndpointPickerConfig {
    /// Prices every `predicted-latency-scorer` of the profile with `profile` (a calibrated
    /// `profile.yaml`, e.g. kvpick-epp's `--engine-profile`). Fails when the profile has no such
    /// scorer: the engine profile would silently do nothing.
    pub fn set_engine_profile(&mut self, profile: &EngineProfile) -> Result<(), crate::Error> {
        profile.validate()?;
        let mut found = false;
        for s in &mut self.profile.scorers {
            if let crate::scorers::ScorerSpec::PredictedLatency(p) = &mut s.spec {
                p.profile = profile.clone();
                found = true;
            }
        }
        if found {
            Ok(())
        } else {
            Err(crate::Error::InvalidConfig(format!(
                "engine profile {:?}: the picker config's profile {:?} has no \
                 predicted-latency-scorer to use it",
                profile.name, self.profile.name
            )))
        }
    }
}

impl PredictedLatencyDoc {
    /// The scorer's parameters, defaults for what is absent.
    pub(super) fn params(&self) -> PredictedLatencyParams {
        let mut p = PredictedLatencyParams::default();
        if let Some(profile) = &self.profile {
            p.profile = profile.0.clone();
        }
        if let Some(n) = self.expected_output_tokens {
            p.expected_output_tokens = n.0 as u32;
        }
        if let Some(slo) = &self.default_slo {
            p.default_slo = slo.slo();
        }
        for (name, slo) in self.objective_slos.iter().flatten() {
            p.objective_slos.insert(name.clone(), slo.slo());
        }
        if let Some(d) = self.reservation_ttl {
            p.reservation_ttl = d.0;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::EndpointPickerConfig;
    use crate::scorers::ScorerSpec;

    fn parse(parameters: &str) -> Result<EndpointPickerConfig, String> {
        EndpointPickerConfig::parse(&format!(
            "apiVersion: llm-d.ai/v1\nkind: EndpointPickerConfig\nplugins:\n- type: predicted-latency-scorer\n  parameters: {parameters}\n"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn parameters_parse_with_defaults() {
        let c = parse(
            "{profile: tiny, expectedOutputTokens: 64, defaultSlo: {ttftMs: 2000, tpotMs: 50}, \
             objectiveSlos: {batch: {ttftMs: 60000}}, reservationTTL: 90s}",
        )
        .unwrap();
        let ScorerSpec::PredictedLatency(p) = &c.profile.scorers[0].spec else {
            panic!("{c:?}");
        };
        assert_eq!(p.profile.name, "tiny");
        assert_eq!(p.expected_output_tokens, 64);
        assert_eq!(p.default_slo.ttft, Some(Duration::from_secs(2)));
        assert_eq!(p.default_slo.tpot, Some(Duration::from_millis(50)));
        assert_eq!(
            p.objective_slos["batch"].ttft,
            Some(Duration::from_secs(60))
        );
        assert_eq!(p.reservation_ttl, Duration::from_secs(90));
        let slo = p.slo_for(Default::default(), Some("batch"));
        assert_eq!(
            (slo.ttft, slo.tpot),
            (
                Some(Duration::from_secs(60)),
                Some(Duration::from_millis(50))
            )
        );
        let d = parse("{}").unwrap();
        let ScorerSpec::PredictedLatency(p) = &d.profile.scorers[0].spec else {
            panic!("{d:?}");
        };
        assert_eq!(p.profile.name, "h100-tp2-qwen3-32b");
    }

    #[test]
    fn an_inline_profile_is_a_calibrated_profile_yaml() {
        let c = parse(
            "{profile: {name: fitted, kv_blocks: 1000, block_size: 16, max_num_batched_tokens: 2048, \
             max_num_seqs: 64, max_model_len: 8192, step_time: {overhead_us: 4000, \
             per_prefill_token_us: 30, per_decode_seq_us: 800, per_context_token_us: 0, \
             per_attention_pair_us: 0}}}",
        )
        .unwrap();
        let ScorerSpec::PredictedLatency(p) = &c.profile.scorers[0].spec else {
            panic!("{c:?}");
        };
        assert_eq!(p.profile.step_time.per_prefill_token_us, 30.0);
    }

    #[test]
    fn an_engine_profile_replaces_the_scorers_and_needs_one() {
        let mut c = parse("{profile: tiny}").unwrap();
        let mut fitted = crate::profile::EngineProfile::named("tiny").unwrap();
        fitted.name = "calibrated".into();
        fitted.step_time.per_prefill_token_us = 31.5;
        c.set_engine_profile(&fitted).unwrap();
        let ScorerSpec::PredictedLatency(p) = &c.profile.scorers[0].spec else {
            panic!("{c:?}");
        };
        assert_eq!(p.profile, fitted);
        let mut old = EndpointPickerConfig::precise_prefix();
        let e = old.set_engine_profile(&fitted).unwrap_err().to_string();
        assert!(e.contains("no predicted-latency-scorer"), "{e}");
        fitted.kv_blocks = 0;
        assert!(c.set_engine_profile(&fitted).is_err());
    }

    #[test]
    fn bad_parameters_name_the_field() {
        for (params, expected) in [
            (
                "{profile: nope}",
                "plugins[0].parameters.profile: unknown profile \"nope\"",
            ),
            (
                "{profile: 3}",
                "plugins[0].parameters.profile: invalid type: integer `3`, expected a profile name or mapping",
            ),
            (
                "{profile: {name: x}}",
                "plugins[0].parameters.profile: missing field",
            ),
            (
                "{defaultSlo: {ttft: 3}}",
                "plugins[0].parameters.defaultSlo.ttft: unknown field",
            ),
            (
                "{objectiveSlos: [a]}",
                "plugins[0].parameters.objectiveSlos: invalid type: sequence, expected a mapping",
            ),
            (
                "{objectiveSlos: {a: {ttftMs: 0}}}",
                "plugins[0].parameters.objectiveSlos.a.ttftMs",
            ),
            (
                "{expectedOutputTokens: 0}",
                "plugins[0].parameters.expectedOutputTokens",
            ),
            (
                "{reservationTTL: soon}",
                "plugins[0].parameters.reservationTTL",
            ),
            ("{weight: 1}", "plugins[0].parameters.weight: unknown field"),
        ] {
            let e = parse(params).unwrap_err();
            assert!(e.contains(expected), "{params}: {e}");
        }
    }
}
