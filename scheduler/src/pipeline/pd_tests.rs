//! P/D through the pipeline: the decode pick is the destination, the decider reads what it
//! holds, the prefill profile picks among the prefill pods, and the costs move accordingly.

use super::latency_tests::cache;
use super::tests::candidates;
use super::*;
use crate::disagg::PdOutcome;
use crate::filters::ROLE_LABEL;
use crate::pods::{Endpoint, PodSignals};
use crate::request::Prompt;
use crate::scorers::testing::endpoint;

fn scheduler(threshold: u32, latency: bool) -> Scheduler {
    let predicted = if latency {
        "- type: predicted-latency-scorer\n  parameters: {profile: h100-tp2-qwen3-32b}\n"
    } else {
        ""
    };
    let lat_ref = if latency {
        "  - pluginRef: predicted-latency-scorer\n"
    } else {
        ""
    };
    let yaml = format!(
        "apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefill-filter
- type: decode-filter
- type: precise-prefix-cache-scorer
- type: queue-scorer
- type: kv-cache-utilization-scorer
{predicted}- type: prefix-based-pd-decider
  parameters: {{nonCachedTokens: {threshold}}}
- type: pd-profile-handler
schedulingProfiles:
- name: prefill
  plugins:
  - pluginRef: prefill-filter
  - pluginRef: precise-prefix-cache-scorer
  - pluginRef: queue-scorer
{lat_ref}- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: precise-prefix-cache-scorer
  - pluginRef: kv-cache-utilization-scorer
{lat_ref}"
    );
    let config = EndpointPickerConfig::parse(&yaml).unwrap();
    let index = Arc::new(KvIndex::new(config.index.clone()));
    Scheduler::with_config(config, index).unwrap()
}

/// Endpoints 0..n with the given roles (`None`: unlabelled).
fn pods(roles: &[Option<&str>]) -> Vec<Endpoint> {
    roles
        .iter()
        .enumerate()
        .map(|(i, role)| {
            let mut e = endpoint(i as u32);
            if let Some(r) = role {
                e.labels.insert(ROLE_LABEL.into(), (*r).into());
            }
            e
        })
        .collect()
}

fn prompt(n: u32, seed: u32) -> Vec<u32> {
    (0..n).map(|t| t * 13 + seed * 1_000_003).collect()
}

#[test]
fn a_long_uncached_prompt_is_prefilled_on_a_prefill_pod_and_decoded_on_a_decode_pod() {
    let s = scheduler(512, false);
    let eps = pods(&[Some("prefill"), Some("prefill"), Some("decode"), None]);
    let sig = vec![PodSignals::idle(Timestamp::ZERO); 4];
    let c = candidates(&eps, &sig);
    let tokens = prompt(4096, 1);
    // Prefill pod 1 holds most of the prompt: the prefill profile's prefix scorer finds it.
    cache(&s, 1, &tokens, 200);
    let req = Request::new("m", Prompt::Tokens(&tokens));
    let d = s.pick(&req, &c, Timestamp::ZERO).unwrap();
    let decode = d.primary().unwrap().get();
    assert!(decode == 2 || decode == 3, "{d:?}");
    assert!(
        d.ranked.iter().all(|r| r.endpoint.get() >= 2),
        "fallbacks are decode pods"
    );
    let PdOutcome::Disaggregated(p) = &d.pd else {
        panic!("{:?}", d.pd)
    };
    assert_eq!(p.primary().unwrap().get(), 1);
    assert_eq!(p.matched_blocks, 200);
    assert_eq!((p.cost.cached_tokens, p.cost.output_tokens), (3200, 1));
    assert_eq!(
        d.cost.cached_tokens, 4096,
        "the decode pod gets the prompt's KV"
    );
    assert_eq!(s.prefill_scorer_names().len(), 2);
    // The prefill-only request is reserved on the prefill pod, the decode on the decode pod;
    // the decode's first token ends the prefill's reservation, its release the decode's.
    let id = s.reserve(&d, Timestamp::ZERO).unwrap();
    let load = |e: u32| {
        s.inflight()
            .load(EndpointId::new(e).unwrap(), Timestamp::ZERO)
    };
    assert_eq!(load(1).prefill_tokens, 896);
    assert_eq!(load(decode).prefill_requests, 1);
    assert!(load(decode).prefill_tokens <= 1);
    assert_eq!(s.inflight().len(), 2);
    s.first_token(id, Timestamp::from_millis(5));
    assert_eq!((load(1).prefill_requests, load(1).decode_requests), (0, 0));
    assert_eq!(load(decode).decode_requests, 1);
    s.release(id, Timestamp::from_millis(9));
    assert!(s.inflight().is_empty());
}

#[test]
fn short_or_cached_prompts_stay_on_their_decode_pod() {
    let s = scheduler(512, false);
    let eps = pods(&[Some("prefill"), Some("decode"), Some("decode")]);
    let sig = vec![PodSignals::idle(Timestamp::ZERO); 3];
    let c = candidates(&eps, &sig);
    let short = prompt(500, 2);
    let d = s
        .pick(
            &Request::new("m", Prompt::Tokens(&short)),
            &c,
            Timestamp::ZERO,
        )
        .unwrap();
    assert_eq!(d.pd, PdOutcome::DecodeOnly);
    s.reserve(&d, Timestamp::ZERO);
    assert_eq!(s.inflight().len(), 1, "nothing on a prefill pod");
    // 4000 of 4096 tokens cached on decode pod 2: 96 uncached, under the threshold.
    let long = prompt(4096, 3);
    cache(&s, 2, &long, 250);
    let d = s
        .pick(
            &Request::new("m", Prompt::Tokens(&long)),
            &c,
            Timestamp::ZERO,
        )
        .unwrap();
    assert_eq!(
        (d.primary().unwrap().get(), &d.pd),
        (2, &PdOutcome::DecodeOnly)
    );
    // Text prompts: about four characters a token, nothing known cached.
    let text = "x".repeat(4 * 600);
    let d = s
        .pick(&Request::new("m", Prompt::Text(&text)), &c, Timestamp::ZERO)
        .unwrap();
    assert!(matches!(d.pd, PdOutcome::Disaggregated(_)), "{:?}", d.pd);
}

#[test]
fn without_a_prefill_pod_other_than_the_decode_pick_it_is_aggregated() {
    let s = scheduler(16, false);
    let tokens = prompt(2048, 4);
    let req = Request::new("m", Prompt::Tokens(&tokens));
    let eps = pods(&[Some("decode"), None]);
    let sig = vec![PodSignals::idle(Timestamp::ZERO); 2];
    let d = s
        .pick(&req, &candidates(&eps, &sig), Timestamp::ZERO)
        .unwrap();
    assert_eq!(d.pd, PdOutcome::NoPrefillEndpoint);
    assert_eq!(d.cost.cached_tokens, 0, "the decode pod prefills itself");
    assert_eq!(d.pd.label(), "no_prefill_endpoint");
    // A `both` pod is never its own prefiller.
    let eps = pods(&[Some("both")]);
    let d = s
        .pick(&req, &candidates(&eps, &sig[..1]), Timestamp::ZERO)
        .unwrap();
    assert_eq!(d.pd, PdOutcome::NoPrefillEndpoint);
    let eps = pods(&[Some("both"), Some("both")]);
    let d = s
        .pick(&req, &candidates(&eps, &sig), Timestamp::ZERO)
        .unwrap();
    let p = d.pd.prefill().unwrap().primary().unwrap();
    assert_ne!(Some(p), d.primary());
}

#[test]
fn the_latency_model_prices_both_sides() {
    let s = scheduler(512, true);
    let eps = pods(&[
        Some("prefill"),
        Some("prefill"),
        Some("decode"),
        Some("decode"),
    ]);
    let sig = vec![PodSignals::idle(Timestamp::ZERO); 4];
    let c = candidates(&eps, &sig);
    let tokens = prompt(8192, 5);
    let d = s
        .pick(
            &Request::new("m", Prompt::Tokens(&tokens)),
            &c,
            Timestamp::ZERO,
        )
        .unwrap();
    let p = d.pd.prefill().unwrap();
    let prefill = p.predicted.unwrap();
    let whole = d.predicted.unwrap();
    // The prefill pod computes the whole prompt; the decode pod adds a step, then decodes.
    assert!(prefill.ttft_us > 800_000.0, "{prefill:?}");
    assert!(whole.ttft_us > prefill.ttft_us && whole.ttft_us < prefill.ttft_us + 50_000.0);
    assert!(whole.tpot_us > 0.0 && whole.tpot_us < 50_000.0);
    // A burst of the same long prompt spreads over the prefill pods by reserved work.
    let mut per = [0usize; 2];
    for i in 0..10u32 {
        let tokens = prompt(8192, 10 + i);
        let at = Timestamp::from_millis(u64::from(i));
        let d = s
            .pick(&Request::new("m", Prompt::Tokens(&tokens)), &c, at)
            .unwrap();
        s.reserve(&d, at);
        per[d.pd.prefill().unwrap().primary().unwrap().index()] += 1;
    }
    assert!(per.iter().all(|&n| n >= 4), "{per:?}");
}
