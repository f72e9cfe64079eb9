use std::time::Duration;

use super::*;
use crate::filters::LabelSelector;
use crate::pickers::PickerKind;
use crate::scorers::ApproxPrefixParams;

const HEAD: &str =
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n";

/// The message of the error `text` fails with, without the location the YAML reader adds.
fn message(text: &str) -> String {
    match EndpointPickerConfig::parse(text) {
        Err(Error::InvalidConfig(msg)) => match msg.rsplit_once(" (line ") {
            Some((m, at)) if at.ends_with(')') && at.contains(", column ") => m.to_owned(),
            _ => msg,
        },
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

/// The message of the error `body` (after the standard head) fails with.
fn error(body: &str) -> String {
    message(&format!("{HEAD}{body}"))
}

fn ok(body: &str) -> EndpointPickerConfig {
    EndpointPickerConfig::parse(&format!("{HEAD}{body}")).unwrap()
}

/// The profile's scorers as (name, weight), in order.
fn weights(c: &EndpointPickerConfig) -> Vec<(&str, f64)> {
    c.profile
        .scorers
        .iter()
        .map(|s| (s.name.as_str(), s.weight))
        .collect()
}

const THREE: &str = "plugins:\n- type: queue-scorer\n- type: kv-cache-utilization-scorer\n- type: max-score-picker\n";

#[test]
fn the_default_yaml_is_the_default_config() {
    assert_eq!(
        EndpointPickerConfig::parse(EndpointPickerConfig::DEFAULT_YAML),
        Ok(EndpointPickerConfig::default())
    );
    let d = EndpointPickerConfig::default();
    assert_eq!(weights(&d), [("predicted-latency-scorer", 1.0)]);
    assert_eq!(d.profile.picker.spec.kind, PickerKind::MaxScore);
    assert_eq!(
        EndpointPickerConfig::parse(EndpointPickerConfig::PRECISE_PREFIX_YAML),
        Ok(EndpointPickerConfig::precise_prefix())
    );
    let p = EndpointPickerConfig::precise_prefix();
    assert_eq!(
        weights(&p),
        [
            ("precise-prefix-cache-scorer", 2.0),
            ("kv-cache-utilization-scorer", 1.0),
            ("queue-scorer", 1.0)
        ]
    );
    // Everything but the scorers is the same.
    assert_eq!(
        (d.index, d.staleness, d.saturation),
        (p.index, p.staleness, p.saturation)
    );
}

#[test]
fn an_llm_d_precise_config_parses_with_kvpick_defaults_for_the_rest() {
    let c = EndpointPickerConfig::parse(
        "apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: single-profile-handler
- type: precise-prefix-cache-scorer
- type: kv-cache-utilization-scorer
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: precise-prefix-cache-scorer
    weight: 3.0
  - pluginRef: kv-cache-utilization-scorer
    weight: 2.0
  - pluginRef: queue-scorer
    weight: 2.0
  - pluginRef: max-score-picker
",
    )
    .unwrap();
    assert_eq!(c.index, IndexConfig::default());
    assert_eq!(c.profile.scorers[0].weight, 3.0);
}

#[test]
fn every_plugin_type_and_parameter_parses() {
    let c = ok("index: {blockSize: 32, capacity: 1000, tierWeights: {cpu: 0.5}}
staleness: {maxSignalAge: 250ms}
plugins:
- type: prefix-cache-scorer
  parameters: {blockSize: 64, maxPrefixBlocksToMatch: 10, lruCapacityPerServer: 99, textChunkChars: 7}
- type: running-requests-size-scorer
- type: lora-affinity-scorer
  parameters: {freeSlotScore: 0.5, waitingScore: 0.25}
- type: session-affinity-scorer
  parameters: {capacity: 5}
- type: model-filter
  parameters: {adapters: {base: [a, b]}}
- type: label-selector-filter
  name: decode
  parameters: {selector: 'role in (decode)', matchLabels: {zone: a}}
- type: weighted-random-picker
  parameters: {maxNumOfEndpoints: 3, seed: 7}
");
    assert_eq!(c.index.block_size.get(), 32);
    assert_eq!(c.index.capacity, 1000);
    assert_eq!(c.index.tier_weights, [1.0, 0.5, 0.5]);
    assert_eq!(c.staleness.max_signal_age, Duration::from_millis(250));
    let p = &c.profile;
    assert_eq!(p.name, "default");
    assert_eq!(
        p.scorers[0].spec,
        ScorerSpec::ApproxPrefix(ApproxPrefixParams {
            block_tokens: Some(64),
            text_chunk_chars: std::num::NonZeroUsize::new(7).unwrap(),
            max_blocks: 10,
            capacity_per_endpoint: 99,
        })
    );
    assert!(p.scorers.iter().all(|s| s.weight == 1.0));
    assert_eq!(p.scorers.len(), 4);
    let mut sel = LabelSelector::parse("role in (decode)").unwrap();
    sel.require_equal("zone", "a").unwrap();
    assert_eq!(p.filters[1].spec, FilterSpec::LabelSelector(sel));
    assert_eq!(p.filters[1].name, "decode");
    assert_eq!(p.picker.spec.kind, PickerKind::WeightedRandom);
    assert_eq!(p.picker.spec.seed, 7);
    assert_eq!(p.picker.spec.max_endpoints.map(|n| n.get()), Some(3));
}

#[test]
fn a_profile_orders_its_plugins_and_defaults_the_picker() {
    let c = ok(&format!(
        "{THREE}schedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: kv-cache-utilization-scorer\n    weight: 0\n  - pluginRef: queue-scorer\n"
    ));
    assert_eq!(
        weights(&c),
        [("kv-cache-utilization-scorer", 0.0), ("queue-scorer", 1.0)]
    );
    assert_eq!(c.profile.picker.name, "max-score-picker");
}

#[test]
fn validation_errors_name_the_field() {
    let refs = |r: &str| format!("{THREE}schedulingProfiles:\n- name: p\n  plugins:\n{r}");
    let cases: Vec<(String, &str)> = vec![
        (
            refs(
                "  - pluginRef: queue-scorer\n  - pluginRef: max-score-picker\n  - pluginRef: foo\n",
            ),
            "schedulingProfiles[0].plugins[2].pluginRef: no plugin named \"foo\"",
        ),
        (
            refs("  - pluginRef: queue-scorer\n    weight: -1\n"),
            "schedulingProfiles[0].plugins[0].weight: must be a finite number ≥ 0, got -1",
        ),
        (
            refs("  - pluginRef: queue-scorer\n    weight: .nan\n"),
            "schedulingProfiles[0].plugins[0].weight: non-finite float `.nan` rejected by the configured policy",
        ),
        (
            refs("  - pluginRef: queue-scorer\n    weight: high\n"),
            "schedulingProfiles[0].plugins[0].weight: invalid type: string \"high\", expected a number",
        ),
        (
            refs("  - pluginRef: max-score-picker\n    weight: 1\n"),
            "schedulingProfiles[0].plugins[0].weight: only scorers take a weight, and \"max-score-picker\" is a picker",
        ),
        (
            refs("  - pluginRef: queue-scorer\n  - pluginRef: queue-scorer\n"),
            "schedulingProfiles[0].plugins[1].pluginRef: \"queue-scorer\" is already in this profile",
        ),
        (
            refs("  - pluginRef: queue-scorer\n    wieght: 1\n"),
            "schedulingProfiles[0].plugins[0].wieght: unknown field `wieght`, expected one of pluginRef, weight",
        ),
        (
            refs("  - weight: 1\n"),
            "schedulingProfiles[0].plugins[0].pluginRef: required",
        ),
        (
            format!(
                "{THREE}- type: random-picker\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: max-score-picker\n  - pluginRef: random-picker\n"
            ),
            "schedulingProfiles[0].plugins[1].pluginRef: a profile has one picker, and \"max-score-picker\" is already one",
        ),
        (
            format!("{THREE}- type: random-picker\n"),
            "schedulingProfiles: required when plugins holds more than one picker (2): say which runs",
        ),
        (
            format!(
                "{THREE}- type: single-profile-handler\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: single-profile-handler\n"
            ),
            "schedulingProfiles[0].plugins[0].pluginRef: \"single-profile-handler\" is a profile handler, not a plugin a profile runs",
        ),
        (
            format!(
                "{THREE}schedulingProfiles:\n- name: a\n  plugins: []\n- name: b\n  plugins: []\n"
            ),
            "schedulingProfiles: expected exactly one profile, got 2 (several run only under a disagg-profile-handler or pd-profile-handler with a prefill decider)",
        ),
        (
            format!("{THREE}schedulingProfiles:\n- plugins: []\n"),
            "schedulingProfiles[0].name: required",
        ),
        (
            "plugins:\n- type: queue-scorer\n- type: foo-scorer\n".into(),
            "plugins[1].type: unknown variant `foo-scorer`, expected one of precise-prefix-cache-scorer, prefix-cache-scorer, queue-scorer, running-requests-size-scorer, kv-cache-utilization-scorer, lora-affinity-scorer, session-affinity-scorer, predicted-latency-scorer, model-filter, label-selector-filter, max-score-picker, weighted-random-picker, random-picker, single-profile-handler, disagg-profile-handler, pd-profile-handler, prefix-based-pd-decider, always-disagg-pd-decider, prefill-filter, decode-filter, by-label, disagg-headers-handler, prefill-header-handler, metrics-data-source, core-metrics-extractor",
        ),
        ("plugins:\n- name: x\n".into(), "plugins[0].type: required"),
        (
            "plugins:\n- type: queue-scorer\n- type: queue-scorer\n".into(),
            "plugins[1].name: duplicate plugin name \"queue-scorer\" (give each instance its own `name`)",
        ),
        (
            "plugins:\n- type: queue-scorer\n  parameters: {threshold: 3}\n".into(),
            "plugins[0].parameters.threshold: unknown field `threshold` (queue-scorer takes no parameters)",
        ),
        (
            "plugins:\n- type: precise-prefix-cache-scorer\n  parameters:\n    indexerConfig: {}\n"
                .into(),
            "plugins[0].parameters.indexerConfig: unknown field `indexerConfig` (precise-prefix-cache-scorer takes no parameters)",
        ),
        (
            "plugins:\n- type: prefix-cache-scorer\n  parameters: {blockSize: 24}\n".into(),
            "plugins[0].parameters.blockSize: must be a multiple of index.blockSize (16), got 24",
        ),
        (
            "plugins:\n- type: prefix-cache-scorer\n  parameters: {lruCapacityPerServer: 0}\n"
                .into(),
            "plugins[0].parameters.lruCapacityPerServer: must be at least 1, got 0",
        ),
        (
            "plugins:\n- type: prefix-cache-scorer\n  parameters: {hashBlockSize: 5}\n".into(),
            "plugins[0].parameters.hashBlockSize: unknown field `hashBlockSize`, expected one of blockSize, maxPrefixBlocksToMatch, lruCapacityPerServer, textChunkChars",
        ),
        (
            "plugins:\n- type: session-affinity-scorer\n  parameters: {capacity: 100000000}\n"
                .into(),
            "plugins[0].parameters.capacity: must be at most 16777216, got 100000000",
        ),
        (
            "plugins:\n- type: lora-affinity-scorer\n  parameters: {freeSlotScore: 1.5}\n".into(),
            "plugins[0].parameters.freeSlotScore: must be between 0 and 1, got 1.5",
        ),
        (
            "plugins:\n- type: label-selector-filter\n  parameters: {selector: 'role in (a'}\n"
                .into(),
            "plugins[0].parameters.selector: unbalanced parentheses in \"role in (a\"",
        ),
        (
            "plugins:\n- type: label-selector-filter\n".into(),
            "plugins[0].parameters: give a non-empty `selector`, `matchLabels` or `matchExpressions`",
        ),
        (
            "plugins:\n- type: model-filter\n  parameters: {adapters: {base: a}}\n".into(),
            "plugins[0].parameters.adapters.base: invalid type: string \"a\", expected a list of adapter names",
        ),
        (
            "plugins:\n- type: max-score-picker\n  parameters: {maxNumOfEndpoints: 0}\n".into(),
            "plugins[0].parameters.maxNumOfEndpoints: must be at least 1, got 0",
        ),
        (
            "plugins:\n- type: max-score-picker\n  parameters: [1]\n".into(),
            "plugins[0].parameters: invalid type: sequence, expected a mapping of parameters",
        ),
        (
            "plugins: []\n".into(),
            "plugins: required: at least one plugin",
        ),
        (
            format!("{THREE}index: {{blockSize: 0}}\n"),
            "index.blockSize: must be at least 1, got 0",
        ),
        (
            format!("{THREE}index: {{tierWeights: {{gpu: 2}}}}\n"),
            "index.tierWeights.gpu: must be between 0 and 1, got 2",
        ),
        (
            format!("{THREE}index: {{tierWeights: {{hbm: 1}}}}\n"),
            "index.tierWeights.hbm: unknown field `hbm`, expected one of gpu, cpu, storage",
        ),
        (
            format!("{THREE}staleness: {{maxSignalAge: 2}}\n"),
            "staleness.maxSignalAge: invalid type: integer `2`, expected a duration with its unit, such as 500ms, 2s or 1m30s",
        ),
        (
            format!("{THREE}staleness: {{maxSignalAge: soon}}\n"),
            "staleness.maxSignalAge: \"soon\" is not a duration with its unit, such as 500ms, 2s or 1m30s: expected number at 0",
        ),
        (
            format!("{THREE}featureGate: [flowControl]\n"),
            "featureGate: unknown field `featureGate`, expected one of apiVersion, kind, index, staleness, saturation, objectives, featureGates, flowControl, plugins, schedulingProfiles",
        ),
        (
            format!("{THREE}featureGates: [flowControl, prefillDecode]\n"),
            "featureGates[1]: unknown variant `prefillDecode`, expected one of flowControl",
        ),
        (
            format!("{THREE}flowControl: {{maxRequests: 10}}\n"),
            "flowControl: set, but the flowControl feature gate is off (add `featureGates: [flowControl]`)",
        ),
        (
            format!("{THREE}featureGates: [flowControl]\nflowControl: {{queueTTL: 0s}}\n"),
            "flowControl.queueTTL: must be greater than zero",
        ),
        (
            format!("{THREE}featureGates: [flowControl]\nflowControl: {{maxRequests: 0}}\n"),
            "flowControl.maxRequests: must be at least 1, got 0",
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(body, want)| {
            let got = error(body);
            (got != *want).then(|| format!("for:\n{body}\n  got:  {got:?}\n  want: {want:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn the_head_is_checked() {
    let err = message;
    assert_eq!(
        err(&format!("kind: EndpointPickerConfig\n{THREE}")),
        "apiVersion: required"
    );
    assert_eq!(
        err(&format!(
            "apiVersion: v1\nkind: EndpointPickerConfig\n{THREE}"
        )),
        format!(
            "apiVersion: unsupported \"v1\" (expected one of: {})",
            API_VERSIONS.join(", ")
        )
    );
    assert_eq!(
        err(&format!(
            "apiVersion: llm-d.ai/v1\nkind: ConfigMap\n{THREE}"
        )),
        "kind: expected EndpointPickerConfig, got \"ConfigMap\""
    );
    assert_eq!(
        err("- a\n- b\n"),
        "config: invalid type: sequence, expected a mapping (an EndpointPickerConfig)"
    );
    assert_eq!(err("["), "config: unclosed bracket '['");
    // Every message ends with where the reader was.
    let Err(Error::InvalidConfig(e)) = EndpointPickerConfig::parse(&format!(
        "{HEAD}plugins:\n- type: queue-scorer\n  name: 'x\n"
    )) else {
        panic!("an unclosed quote parsed");
    };
    assert!(
        e.starts_with("plugins[0]: unclosed quote (line 5, column "),
        "{e}"
    );
}

proptest::proptest! {
    /// Corrupting the default config anywhere yields a config or an error, never a panic.
    #[test]
    fn corrupted_configs_never_panic(at in 0usize..1500, cut in 0usize..8, with in "[-a-zA-Z0-9 :.\\[\\]{}\n]{0,10}") {
        let text = EndpointPickerConfig::DEFAULT_YAML;
        let at = (at % text.len()).min(text.len());
        let end = (at + cut).min(text.len());
        if text.is_char_boundary(at) && text.is_char_boundary(end) {
            let corrupted = format!("{}{}{}", &text[..at], with, &text[end..]);
            let _ = EndpointPickerConfig::parse(&corrupted);
        }
    }
}

#[test]
fn saturation_and_objectives() {
    let c = ok(&format!(
        "{THREE}staleness: {{maxSignalAge: 500ms}}\nsaturation: {{queueDepthThreshold: 2, kvCacheUtilThreshold: 0.5}}\nobjectives: {{batch: -1, chat: 7}}\n"
    ));
    assert_eq!(c.saturation.queue_depth, 2);
    assert_eq!(c.saturation.kv_usage, 0.5);
    assert_eq!(c.saturation.max_signal_age, Duration::from_millis(500));
    assert_eq!(c.saturation.priority(Some("batch"), None), -1);
    assert_eq!(c.saturation.priority(Some("chat"), None), 7);
    assert_eq!(ok(THREE).saturation, crate::SaturationConfig::default());
    assert_eq!(
        error(&format!("{THREE}saturation: {{kvCacheUtilThreshold: 2}}\n")),
        "saturation.kvCacheUtilThreshold: must be between 0 and 1, got 2"
    );
    assert_eq!(
        error(&format!("{THREE}objectives: {{batch: low}}\n")),
        "objectives.batch: invalid type: string \"low\", expected an integer priority"
    );
}

#[test]
fn flow_control_is_off_by_default_and_on_with_its_feature_gate() {
    assert_eq!(ok(THREE).flow, crate::FlowConfig::default());
    assert!(!ok(THREE).flow.enabled);
    let on = ok(&format!("{THREE}featureGates: [flowControl]\n")).flow;
    assert!(on.enabled);
    assert_eq!(on.max_requests, crate::FlowConfig::default().max_requests);
    let c = ok(&format!(
        "{THREE}featureGates: [flowControl]\nflowControl: {{maxRequests: 64, maxBytes: 1048576, queueTTL: 1500ms}}\n"
    ))
    .flow;
    assert_eq!(
        c,
        crate::FlowConfig {
            enabled: true,
            max_requests: 64,
            max_bytes: 1 << 20,
            ttl: Duration::from_millis(1500),
        }
    );
}

#[test]
fn parameters_may_come_before_the_type() {
    let c = ok("plugins:\n- parameters: {freeSlotScore: 0.5}\n  type: lora-affinity-scorer\n");
    assert_eq!(
        c.profile.scorers[0].spec,
        ScorerSpec::LoraAffinity(crate::scorers::LoraAffinityParams {
            free_slot_score: 0.5,
            ..Default::default()
        })
    );
    assert_eq!(
        error("plugins:\n- parameters: {freeSlotScore: 1.5}\n  type: lora-affinity-scorer\n"),
        "plugins[0]: parameters.freeSlotScore: must be between 0 and 1, got 1.5"
    );
}
