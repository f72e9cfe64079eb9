use super::*;
use crate::config::EndpointPickerConfig;
use crate::filters::{ByLabel, FilterSpec};
use crate::scorers::ScorerSpec;

const HEAD: &str = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n";

fn ok(body: &str) -> EndpointPickerConfig {
    EndpointPickerConfig::parse(&format!("{HEAD}{body}")).unwrap()
}

/// The error message of `body`, without the reader's location suffix.
fn error(body: &str) -> String {
    match EndpointPickerConfig::parse(&format!("{HEAD}{body}")) {
        Err(Error::InvalidConfig(msg)) => match msg.rsplit_once(" (line ") {
            Some((m, at)) if at.ends_with(')') => m.to_owned(),
            _ => msg,
        },
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

/// Plugins and profiles of an llm-d-style P/D config; `handler` is the handler entry.
fn pd(handler: &str) -> String {
    format!(
        "plugins:
- type: prefix-cache-scorer
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
- type: prefix-based-pd-decider
  parameters:
    nonCachedTokens: 16
{handler}schedulingProfiles:
- name: prefill
  plugins:
  - pluginRef: prefill-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: queue-scorer
- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: queue-scorer
"
    )
}

fn names(p: &Profile) -> (Vec<&str>, Vec<(&str, f64)>) {
    (
        p.filters.iter().map(|f| f.name.as_str()).collect(),
        p.scorers
            .iter()
            .map(|s| (s.name.as_str(), s.weight))
            .collect(),
    )
}

#[test]
fn an_llm_d_pd_config_gives_a_decode_profile_and_a_prefill_side() {
    let c = ok(&pd("- type: disagg-profile-handler
  parameters:
    deciders:
      prefill: prefix-based-pd-decider
"));
    let d = c.disaggregation.as_ref().unwrap();
    assert_eq!(d.handler, "disagg-profile-handler");
    assert_eq!(d.decider.name, "prefix-based-pd-decider");
    assert_eq!(
        d.decider.spec,
        Decider::PrefixBased {
            non_cached_tokens: 16
        }
    );
    assert_eq!(c.profile.name, "decode");
    assert_eq!(d.prefill.name, "prefill");
    let scorers = vec![("prefix-cache-scorer", 2.0), ("queue-scorer", 1.0)];
    assert_eq!(names(&c.profile), (vec!["decode-filter"], scorers.clone()));
    assert_eq!(names(&d.prefill), (vec!["prefill-filter"], scorers));
    assert_eq!(
        c.profile.filters[0].spec,
        FilterSpec::ByLabel(ByLabel::decode_role())
    );
    assert_eq!(
        d.prefill.filters[0].spec,
        FilterSpec::ByLabel(ByLabel::prefill_role())
    );
}

#[test]
fn the_handler_forms_llm_d_accepts_give_the_same_config() {
    let nested = ok(&pd("- type: disagg-profile-handler
  parameters:
    profiles: {decode: decode, prefill: prefill}
    deciders: {prefill: prefix-based-pd-decider}
"));
    let forms = [
        "- type: disagg-profile-handler\n  parameters:\n    deciderPluginName: prefix-based-pd-decider\n",
        "- type: disagg-profile-handler\n  parameters:\n    prefillDeciderPluginName: prefix-based-pd-decider\n    decodeProfile: decode\n",
        "- type: pd-profile-handler\n",
        "- type: pd-profile-handler\n  parameters:\n    decodeProfile: decode\n    prefillProfile: prefill\n    deciderPluginName: prefix-based-pd-decider\n    prefixPluginType: prefix-cache-scorer\n    primaryPort: 0\n",
    ];
    for form in forms {
        let mut c = ok(&pd(form));
        let handler = c.disaggregation.as_ref().unwrap().handler.clone();
        c.disaggregation.as_mut().unwrap().handler = "disagg-profile-handler".into();
        assert_eq!(c, nested, "{form}");
        assert!(form.contains(&handler));
    }
}

#[test]
fn renamed_profiles_and_the_decode_only_handler() {
    let c = ok("plugins:
- type: decode-filter
- type: prefill-filter
- type: always-disagg-pd-decider
- type: disagg-profile-handler
  parameters:
    profiles: {decode: d, prefill: p}
    deciders: {prefill: always-disagg-pd-decider}
schedulingProfiles:
- name: p
  plugins: [{pluginRef: prefill-filter}]
- name: d
  plugins: [{pluginRef: decode-filter}]
");
    let d = c.disaggregation.unwrap();
    assert_eq!(
        (c.profile.name.as_str(), d.prefill.name.as_str()),
        ("d", "p")
    );
    assert_eq!(d.decider.spec, Decider::Always);
    // Without a decider the handler runs the decode profile alone.
    let c = ok("plugins:
- type: decode-filter
- type: disagg-profile-handler
schedulingProfiles:
- name: decode
  plugins: [{pluginRef: decode-filter}]
");
    assert_eq!(c.disaggregation, None);
    assert_eq!(c.profile.name, "decode");
}

#[test]
fn the_shipped_pd_config_parses_with_the_issue_s_scorer_sets() {
    let c = EndpointPickerConfig::parse(EndpointPickerConfig::PD_YAML).unwrap();
    let d = c.disaggregation.as_ref().unwrap();
    let specs = |p: &Profile| p.scorers.iter().map(|s| s.spec.clone()).collect::<Vec<_>>();
    assert_eq!(
        specs(&d.prefill),
        [ScorerSpec::PrecisePrefix, ScorerSpec::QueueDepth]
    );
    assert_eq!(
        specs(&c.profile),
        [ScorerSpec::KvCacheUtilization, ScorerSpec::RunningRequests]
    );
    assert_eq!(
        d.decider.spec,
        Decider::PrefixBased {
            non_cached_tokens: 2048
        }
    );
}

#[test]
fn label_filters_in_llm_d_s_words() {
    let c = ok("plugins:
- type: by-label
  name: gpu
  parameters: {label: gpu, validValues: [h100, b200]}
- type: by-label
  name: any-role
  parameters: {label: llm-d.ai/role, allowsNoLabel: true}
- type: label-selector-filter
  name: prefill-pods
  parameters:
    matchExpressions:
    - {key: role, operator: In, values: [prefill]}
    - {key: spare, operator: DoesNotExist}
");
    let filters: Vec<_> = c.profile.filters.iter().map(|f| &f.spec).collect();
    let FilterSpec::ByLabel(gpu) = filters[0] else {
        panic!("{filters:?}")
    };
    assert_eq!((gpu.values.len(), gpu.allows_no_label), (2, false));
    let FilterSpec::LabelSelector(sel) = filters[2] else {
        panic!("{filters:?}")
    };
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(sel.matches(&labels(&[("role", "prefill")])));
    assert!(!sel.matches(&labels(&[("role", "prefill"), ("spare", "x")])));
}

#[test]
fn pd_errors_name_the_field() {
    let handler = |params: &str| {
        error(&pd(&format!(
            "- type: disagg-profile-handler\n  parameters:\n{params}"
        )))
    };
    let cases: Vec<(String, &str)> = vec![
        (
            handler(
                "    deciders: {prefill: prefix-based-pd-decider}\n    decodeProfile: decode\n",
            ),
            "plugins[6].parameters: cannot mix the deprecated flat parameters",
        ),
        (
            handler("    deciders: {prefill: prefix-based-pd-decider, encode: x}\n"),
            "plugins[6].parameters.deciders.encode: encode disaggregation (E/PD) is not supported by kvpick",
        ),
        (
            handler("    deciders: {prefill: nope}\n"),
            "plugins[6].parameters.deciders.prefill: no plugin named \"nope\" (declare a prefix-based-pd-decider or an always-disagg-pd-decider)",
        ),
        (
            handler("    deciders: {prefill: queue-scorer}\n"),
            "plugins[6].parameters.deciders.prefill: \"queue-scorer\" is a scorer, not a P/D decider",
        ),
        (
            handler(
                "    profiles: {decode: other}\n    deciders: {prefill: prefix-based-pd-decider}\n",
            ),
            "schedulingProfiles[1].name: \"decode\" is neither the decode profile \"other\" nor the prefill profile \"prefill\" of \"disagg-profile-handler\"",
        ),
        (
            handler(
                "    deciders: {prefill: prefix-based-pd-decider}\n    profiles: {prefill: ''}\n",
            ),
            "plugins[6].parameters.profiles.prefill: must not be empty",
        ),
        (
            handler("    deciders: {prefill: prefix-based-pd-decider}\n    bogus: 1\n"),
            "plugins[6].parameters.bogus: unknown field `bogus`",
        ),
        (
            error(&pd(
                "- type: pd-profile-handler\n  parameters: {threshold: 100, hashBlockSize: 5}\n",
            )),
            "plugins[6].parameters.threshold: removed in llm-d: declare a prefix-based-pd-decider with nonCachedTokens (tokens) and name it in deciderPluginName",
        ),
        (
            error(&pd(
                "- type: pd-profile-handler\n  parameters: {primaryPort: 8000}\n",
            )),
            "plugins[6].parameters.primaryPort: 8000: kvpick lists each data-parallel rank as its own endpoint (InferencePool targetPorts), so only 0 is accepted",
        ),
        (
            error(&pd(
                "- type: pd-profile-handler\n  parameters: {primaryPort: 70000}\n",
            )),
            "plugins[6].parameters.primaryPort: must be at most 65535, got 70000",
        ),
        (
            error(&pd(
                "- type: pd-profile-handler\n  parameters: {prefixPluginName: missing}\n",
            )),
            "plugins[6].parameters.prefixPluginName: no plugin named \"missing\"",
        ),
        (
            error(&pd(
                "- type: pd-profile-handler\n- type: single-profile-handler\n",
            )),
            "plugins[7]: a config has one profile handler, and \"pd-profile-handler\" is already one (then \"single-profile-handler\")",
        ),
        (
            error(&pd("- type: single-profile-handler\n")),
            "schedulingProfiles: expected exactly one profile, got 2 (several run only under a disagg-profile-handler or pd-profile-handler with a prefill decider)",
        ),
        (
            error(
                "plugins:\n- type: prefix-based-pd-decider\n  parameters: {nonCachedTokens: -1}\n",
            ),
            "plugins[0].parameters.nonCachedTokens: must be at least 0, got -1",
        ),
        (
            error("plugins:\n- type: prefix-based-pd-decider\n  parameters: {threshold: 3}\n"),
            "plugins[0].parameters.threshold: unknown field `threshold`",
        ),
        (
            error("plugins:\n- type: always-disagg-pd-decider\n  parameters: {x: 1}\n"),
            "plugins[0].parameters.x: unknown field `x` (always-disagg-pd-decider takes no parameters)",
        ),
        (
            error(
                "plugins:\n- type: decode-filter\n- type: always-disagg-pd-decider\nschedulingProfiles:\n- name: a\n  plugins: [{pluginRef: always-disagg-pd-decider}]\n",
            ),
            "schedulingProfiles[0].plugins[0].pluginRef: \"always-disagg-pd-decider\" is a P/D decider, not a plugin a profile runs",
        ),
        (
            error(
                "plugins:\n- type: always-disagg-pd-decider\n- type: decode-filter\n- type: disagg-profile-handler\n  parameters: {deciders: {prefill: always-disagg-pd-decider}}\n",
            ),
            "schedulingProfiles: required with \"disagg-profile-handler\": the \"decode\" and \"prefill\" profiles",
        ),
        (
            error(
                "plugins:\n- type: always-disagg-pd-decider\n- type: decode-filter\n- type: disagg-profile-handler\n  parameters: {deciders: {prefill: always-disagg-pd-decider}}\nschedulingProfiles:\n- name: decode\n  plugins: [{pluginRef: decode-filter}]\n",
            ),
            "schedulingProfiles: no profile named \"prefill\" (the prefill profile \"always-disagg-pd-decider\" runs)",
        ),
        (
            error(
                "plugins:\n- type: always-disagg-pd-decider\n- type: decode-filter\n- type: disagg-profile-handler\n  parameters: {deciders: {prefill: always-disagg-pd-decider}}\nschedulingProfiles:\n- name: prefill\n  plugins: [{pluginRef: decode-filter}]\n",
            ),
            "schedulingProfiles: no profile named \"decode\" (the decode profile)",
        ),
        (
            error("plugins:\n- type: by-label\n  parameters: {validValues: [a]}\n"),
            "plugins[0].parameters.label: required",
        ),
        (
            error("plugins:\n- type: by-label\n  parameters: {label: role}\n"),
            "plugins[0].parameters.validValues: required (at least one value) unless allowsNoLabel is true",
        ),
        (
            error(
                "plugins:\n- type: label-selector-filter\n  parameters:\n    matchExpressions: [{key: role, operator: in, values: [a]}]\n",
            ),
            "plugins[0].parameters.matchExpressions[0]: unknown operator \"in\" (expected In, NotIn, Exists or DoesNotExist)",
        ),
        (
            error("plugins:\n- type: prefill-filter\n  parameters: {label: x}\n"),
            "plugins[0].parameters.label: unknown field `label` (prefill-filter takes no parameters)",
        ),
    ];
    for (got, want) in cases {
        assert!(got.starts_with(want), "got  {got}\nwant {want}");
    }
}
