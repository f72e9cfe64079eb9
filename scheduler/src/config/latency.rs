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

use serde_yaml::Value;

use super::fields::{Fields, invalid, kind};
use crate::error::Error;
use crate::profile::{EngineProfile, PROFILES};
use crate::request::Slo;
use crate::scorers::PredictedLatencyParams;

/// Parses the scorer's `parameters` at `path`.
pub(crate) fn params(
    parameters: Option<&Value>,
    path: &str,
) -> Result<PredictedLatencyParams, Error> {
    let f = Fields::new(
        parameters,
        path,
        &[
            "profile",
            "expectedOutputTokens",
            "defaultSlo",
            "objectiveSlos",
            "reservationTTL",
        ],
        "predicted-latency-scorer",
    )?;
    let mut p = PredictedLatencyParams::default();
    match f.value("profile") {
        None => {}
        Some(Value::String(name)) => {
            p.profile = EngineProfile::named(name).ok_or_else(|| {
                invalid(
                    &f.path("profile"),
                    format!(
                        "unknown profile {name:?} (built in: {})",
                        PROFILES.join(", ")
                    ),
                )
            })?;
        }
        Some(v @ Value::Mapping(_)) => {
            let profile: EngineProfile =
                serde_yaml::from_value(v.clone()).map_err(|e| invalid(&f.path("profile"), e))?;
            profile
                .validate()
                .map_err(|e| invalid(&f.path("profile"), e))?;
            p.profile = profile;
        }
        Some(other) => {
            return Err(invalid(
                &f.path("profile"),
                format!("expected a profile name or mapping, got {}", kind(other)),
            ));
        }
    }
    if let Some(n) = f.int("expectedOutputTokens", 1)? {
        p.expected_output_tokens =
            u32::try_from(n).map_err(|_| invalid(&f.path("expectedOutputTokens"), "too large"))?;
    }
    p.default_slo = slo(f.value("defaultSlo"), &f.path("defaultSlo"))?;
    if let Some(v) = f.value("objectiveSlos") {
        let at = f.path("objectiveSlos");
        let Value::Mapping(map) = v else {
            return Err(invalid(
                &at,
                format!(
                    "expected a mapping of objective name to SLO, got {}",
                    kind(v)
                ),
            ));
        };
        for (name, value) in map {
            let Some(name) = name.as_str() else {
                return Err(invalid(&at, "objective names must be strings"));
            };
            p.objective_slos
                .insert(name.to_owned(), slo(Some(value), &format!("{at}.{name}"))?);
        }
    }
    if let Some(d) = f.duration("reservationTTL")? {
        p.reservation_ttl = d;
    }
    Ok(p)
}

fn slo(value: Option<&Value>, path: &str) -> Result<Slo, Error> {
    let f = Fields::new(value, path, &["ttftMs", "tpotMs"], "an SLO")?;
    let ms = |key: &str| -> Result<_, Error> {
        Ok(f.int(key, 1)?.map(std::time::Duration::from_millis))
    };
    Ok(Slo {
        ttft: ms("ttftMs")?,
        tpot: ms("tpotMs")?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::PickerConfig;
    use crate::scorers::ScorerSpec;

    fn parse(parameters: &str) -> Result<PickerConfig, String> {
        PickerConfig::parse(&format!(
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
    fn bad_parameters_name_the_field() {
        for (params, expected) in [
            (
                "{profile: nope}",
                "plugins[0].parameters.profile: unknown profile \"nope\"",
            ),
            (
                "{profile: 3}",
                "plugins[0].parameters.profile: expected a profile name or mapping",
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
                "plugins[0].parameters.objectiveSlos: expected a mapping",
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
