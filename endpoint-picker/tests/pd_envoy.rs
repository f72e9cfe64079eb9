//! Prefill/decode disaggregation end to end, nothing stubbed: a P/D fleet (one simulated vLLM
//! pod labelled `llm-d.ai/role: prefill`, two `decode` pods whose routing sidecar honours
//! `x-prefiller-host-port` like llm-d's), the real `kvpick-epp` binary with llm-d's P/D config,
//! and a real Envoy in front.
//!
//! A long prompt through Envoy is prefilled on the prefill pod and decoded on a decode pod: the
//! prefill pod's own counters show it computed the prompt and generated one token, the decode
//! pod's show the prompt arrived by KV transfer (`vllm:prompt_tokens_by_source_total{source=
//! "external_kv_transfer"}`) and that it generated the answer. A short prompt stays on one decode
//! pod (aggregated), and a client naming a prefill pod itself is overruled.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed unwrap is a failed test

mod common;

use common::envoy::{self, Envoy};
use common::epp::Epp;
use kvpick_fleet::Profile;
use kvpick_fleet::servers::tokenizer::Tokenizer;
use kvpick_fleet::{Fleet, FleetConfig};
use serde_json::{Value, json};

const MODEL: &str = "chatml-sim";

/// Decode when at least 64 prompt tokens are not cached on the decode pick.
fn config(block_size: u32) -> String {
    format!(
        "apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
index: {{blockSize: {block_size}}}
plugins:
- type: prefill-filter
- type: decode-filter
- type: precise-prefix-cache-scorer
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: running-requests-size-scorer
- type: prefix-based-pd-decider
  parameters: {{nonCachedTokens: 64}}
- type: pd-profile-handler
schedulingProfiles:
- name: prefill
  plugins:
  - pluginRef: prefill-filter
  - pluginRef: precise-prefix-cache-scorer
  - pluginRef: queue-scorer
- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: kv-cache-utilization-scorer
  - pluginRef: running-requests-size-scorer
"
    )
}

/// A long text: many full KV blocks.
fn passage(seed: usize) -> String {
    let words = [
        "amber", "basalt", "cedar", "delta", "ember", "fjord", "granite",
    ];
    (0..200)
        .map(|i| words[(i * 3 + seed) % words.len()].to_string() + &(i * 11 + seed).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One pod's counters, read from its own `/metrics` page.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counters {
    local_compute: f64,
    external_kv_transfer: f64,
    generation: f64,
}

async fn counters(addr: std::net::SocketAddr) -> Counters {
    let page = envoy::get_text(&format!("http://{addr}/metrics")).await;
    let value = |name: &str, source: Option<&str>| -> f64 {
        page.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter(|l| source.is_none_or(|s| l.contains(&format!("source=\"{s}\""))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Counters {
        local_compute: value("vllm:prompt_tokens_by_source_total", Some("local_compute")),
        external_kv_transfer: value(
            "vllm:prompt_tokens_by_source_total",
            Some("external_kv_transfer"),
        ),
        generation: value("vllm:generation_tokens_total", None),
    }
}

async fn all(fleet: &Fleet) -> Vec<Counters> {
    let mut out = Vec::new();
    for s in fleet.servers() {
        out.push(counters(s.address).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prompt_is_prefilled_on_the_prefill_pod_and_decoded_on_a_decode_pod() {
    let mut cfg = FleetConfig::new(Profile::named("tiny").unwrap(), MODEL);
    cfg.pods = 3;
    cfg.prefill_pods = 1;
    cfg.speed = 4.0;
    cfg.tokenizer = Tokenizer::load(&common::fixtures::chatml()).unwrap();
    let block_size = cfg.profile.block_size;
    let fleet = Fleet::start(cfg).await.unwrap();
    let roles: Vec<_> = fleet.servers().iter().map(|s| s.role).collect();
    assert_eq!(roles, [Some("prefill"), Some("decode"), Some("decode")]);
    let dir = tempfile::tempdir().unwrap();
    let endpoints = dir.path().join("endpoints.yaml");
    fleet.write_endpoints_file(&endpoints, true).unwrap();
    let picker = dir.path().join("picker.yaml");
    std::fs::write(&picker, config(block_size)).unwrap();
    let mut epp = Epp::start_with_env(
        &endpoints,
        dir.path(),
        &common::fixtures::chatml(),
        &[("KVPICK_CONFIG", picker.as_os_str())],
    );
    let pods: Vec<_> = fleet.servers().iter().map(|s| s.address).collect();
    epp.wait_live(&pods).await;
    let gateway = Envoy::start(epp.grpc).await;
    let prefill_pod = fleet.servers()[0].address.to_string();

    // A long prompt: prefilled remotely, decoded on a decode pod. The client's own prefill
    // header (naming a decode pod) is removed before kvpick names the real one.
    let before = all(&fleet).await;
    let body = json!({"model": MODEL, "prompt": passage(1), "max_tokens": 5});
    let decoy = fleet.servers()[2].address.to_string();
    let (status, _, answer) = envoy::post(
        &gateway,
        "/v1/completions",
        body.to_string().as_bytes(),
        &[("x-prefiller-host-port", decoy.as_str())],
    )
    .await;
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(status, 200, "{answer}");
    let prompt = answer["usage"]["prompt_tokens"].as_f64().unwrap();
    assert!(prompt > 256.0, "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    let after = all(&fleet).await;
    let delta = |i: usize| Counters {
        local_compute: after[i].local_compute - before[i].local_compute,
        external_kv_transfer: after[i].external_kv_transfer - before[i].external_kv_transfer,
        generation: after[i].generation - before[i].generation,
    };
    // The prefill pod computed the prompt and generated the prefill-only request's one token.
    assert_eq!(
        delta(0),
        Counters {
            local_compute: prompt,
            external_kv_transfer: 0.0,
            generation: 1.0
        },
        "prefill pod {prefill_pod}; kvpick-epp's log:\n{}",
        epp.log_text()
    );
    // One decode pod received all but the last prompt token by transfer and generated the answer;
    // the other saw nothing.
    let decoded: Vec<usize> = (1..3).filter(|&i| delta(i).generation > 0.0).collect();
    assert_eq!(decoded.len(), 1, "{:?}", (delta(1), delta(2)));
    let d = delta(decoded[0]);
    assert_eq!(
        d,
        Counters {
            local_compute: 1.0,
            external_kv_transfer: prompt - 1.0,
            generation: 5.0
        }
    );
    assert_eq!(fleet.servers()[decoded[0]].stats().remote_prefills, 1);
    epp.wait_for(
        "kvpick_pd_decisions_total{decision=\"prefill_decode\"}",
        1.0,
    )
    .await;

    // A short prompt stays on a decode pod: it computes it, the prefill pod is untouched.
    let before = all(&fleet).await;
    let short = json!({"model": MODEL, "prompt": "one two three", "max_tokens": 2});
    let (status, _, answer) = envoy::post(
        &gateway,
        "/v1/completions",
        short.to_string().as_bytes(),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let after = all(&fleet).await;
    assert_eq!(after[0], before[0], "the prefill pod did nothing");
    let moved: Vec<usize> = (1..3).filter(|&i| after[i] != before[i]).collect();
    assert_eq!(moved.len(), 1);
    assert_eq!(
        after[moved[0]].external_kv_transfer,
        before[moved[0]].external_kv_transfer
    );
    epp.wait_for("kvpick_pd_decisions_total{decision=\"decode_only\"}", 1.0)
        .await;
    drop(gateway);
    drop(epp);
    fleet.shutdown().await;
}
