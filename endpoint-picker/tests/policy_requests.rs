//! The pool's InferenceModelRewrites and InferenceObjectives, watched through `kube` from the
//! scripted API server, applied to requests over ext_proc (real gRPC) and through a real Envoy:
//! a rewrite renames the body's model before the pick (routed on the new model), with the body's
//! other bytes and a matching `content-length`, split by weight; bodies no rule meets, bodies in
//! modes kvpick cannot rewrite, and rules since deleted pass as sent. An objective's latency
//! objectives reach the predicted-latency scorer when the request sends none.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

#[path = "kubernetes/apiserver.rs"]
mod apiserver;
mod common;

use std::time::Duration;

use apiserver::{ApiServer, OBJECTIVES, REWRITES};
use common::envoy::{self, Envoy};
use common::vllm::Pod;
use common::*;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use kvpick_epp::Settings;
use kvpick_epp::cluster_policy::PolicySet;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PODS: [&str; 2] = ["127.0.0.1:40031", "127.0.0.1:40032"];
const DESTINATION: &str = "x-gateway-destination-endpoint";

/// The API server and a policy watch feeding a picker.
struct Policies {
    api: ApiServer,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Policies {
    async fn start(p: &Picker) -> Self {
        let api = ApiServer::start().await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(api.policy_watch(p.shared.policy.clone()).run(stop.clone()));
        Self { api, stop, task }
    }

    async fn until(p: &Picker, what: &str, cond: impl Fn(&PolicySet) -> bool) {
        let ok = tokio::time::timeout(Duration::from_secs(20), async {
            while !cond(&p.shared.policy.get()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(ok.is_ok(), "timed out waiting for {what}");
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn rewrite(name: &str, from: &str, targets: Value) -> Value {
    json!({
        "apiVersion": "llm-d.ai/v1alpha2", "kind": "InferenceModelRewrite",
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"poolRef": {"name": "pool"}, "rules": [
            {"matches": [{"model": {"type": "Exact", "value": from}}], "targets": targets},
        ]},
    })
}

/// A body naming `model`, spaced and escaped as a client might send it: only the model may change.
fn body(model: &str, tokens: &[u32]) -> Vec<u8> {
    let model = serde_json::to_string(model).unwrap();
    let tokens = serde_json::to_string(tokens).unwrap();
    format!(
        "{{ \"model\" :  {model} , \"prompt\": {tokens},\n \"max_tokens\": 1, \"note\": \"\\u00e9 1e400\" }}"
    )
    .into_bytes()
}

/// One full-duplex exchange: the destination, the `content-length` set, and the body re-sent.
async fn duplex_exchange(p: &Picker, body: &[u8]) -> (String, usize, Vec<u8>) {
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    s.send(request_body(body, true)).await;
    let decision = s.recv().await;
    let m = mutation(&decision);
    let to = set_header(m, DESTINATION).unwrap().to_owned();
    let length = set_header(m, "content-length").unwrap().parse().unwrap();
    let mut sent = Vec::new();
    loop {
        let (chunk, end) = streamed(&s.recv().await);
        sent.extend(chunk);
        if end {
            return (to, length, sent);
        }
    }
}

/// One exchange in a buffered `mode`: the answer to the body.
async fn buffered_exchange(
    p: &Picker,
    mode: BodySendMode,
    body: &[u8],
    end_of_stream: bool,
) -> pb::ProcessingResponse {
    let mut s = p.stream().await;
    s.send(request_headers(
        Some(common::mode(mode, mode)),
        "POST",
        &[],
        false,
        None,
    ))
    .await;
    s.recv().await; // BUFFERED: the empty headers answer.
    s.send(request_body(body, end_of_stream)).await;
    s.recv().await
}

/// A buffered answer's body mutation, if any.
fn new_body(r: &pb::ProcessingResponse) -> Option<Vec<u8>> {
    let Some(pb::processing_response::Response::RequestBody(b)) = &r.response else {
        panic!("not a body answer: {r:?}");
    };
    match b
        .response
        .as_ref()?
        .body_mutation
        .as_ref()?
        .mutation
        .as_ref()?
    {
        pb::body_mutation::Mutation::Body(b) => Some(b.clone()),
        other => panic!("{other:?}"),
    }
}

fn model_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["model"].as_str().unwrap().to_owned()
}

fn skipped(reason: &str) -> f64 {
    metric_sum("kvpick_model_rewrites_skipped_total", &[("reason", reason)])
}

// One test: the counters are process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_rename_the_model_before_the_pick_in_every_body_mode_that_allows_it() {
    kvpick_epp::telemetry::install();
    let p = Picker::start(Settings::loopback(), &PODS).await;
    // Pod 1 holds the prompt's prefix under model `m` but is busier: only a request routed as
    // `m` lands there.
    let tokens = prompt(256, 5);
    p.store(PODS[1], &tokens);
    scraped(&p, PODS[0], 0, 0.0);
    scraped(&p, PODS[1], 1, 0.2);
    let pol = Policies::start(&p).await;
    pol.api.apply(
        REWRITES,
        rewrite("alias", "alias", json!([{"modelRewrite": "m"}])),
    );
    pol.api.apply(
        REWRITES,
        rewrite(
            "canary",
            "split",
            json!([{"modelRewrite": "s-v1", "weight": 3}, {"modelRewrite": "s-v2", "weight": 1}]),
        ),
    );
    Policies::until(&p, "both rewrites", |s| {
        s.rewrites.rule("alias").is_some() && s.rewrites.rule("split").is_some()
    })
    .await;

    // Full duplex: the re-sent body names the target, every other byte as sent, and its
    // content-length is the new length; the pick saw `m` (pod 1 holds its prefix).
    let (to, length, sent) = duplex_exchange(&p, &body("alias", &tokens)).await;
    assert_eq!(
        sent,
        body("m", &tokens),
        "{}",
        String::from_utf8_lossy(&sent)
    );
    assert_eq!(length, sent.len());
    assert_eq!(to, PODS[1], "not routed on the rewritten model");
    // No rule for this model: unchanged, and routed on it (no prefix under `other`).
    let original = body("other", &tokens);
    let (to, length, sent) = duplex_exchange(&p, &original).await;
    assert_eq!((length, &sent), (original.len(), &original));
    assert_eq!(to, PODS[0]);

    // Two top-level models: not rewritten, and refused by the request parser.
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    let twice = br#"{"model":"alias","prompt":"x","model":"alias"}"#;
    s.send(request_body(twice, true)).await;
    assert_eq!(immediate(&s.recv().await).0, 400);

    // BUFFERED: a body mutation on the body answer, with the destination and content-length.
    let r = buffered_exchange(&p, BodySendMode::Buffered, &body("alias", &tokens), true).await;
    let sent = new_body(&r).expect("no body mutation");
    assert_eq!(sent, body("m", &tokens));
    let m = mutation(&r);
    assert_eq!(
        set_header(m, "content-length"),
        Some(&*sent.len().to_string())
    );
    assert_eq!(set_header(m, DESTINATION), Some(PODS[1]));
    let r = buffered_exchange(&p, BodySendMode::Buffered, &original, true).await;
    assert_eq!(new_body(&r), None, "a body no rule meets is not mutated");
    // BUFFERED_PARTIAL: a whole body is rewritten (Envoy dropped its content-length); one that
    // may be cut at the gateway's buffer limit is not.
    let aliased = body("alias", &tokens);
    let partial = BodySendMode::BufferedPartial;
    let r = buffered_exchange(&p, partial, &aliased, true).await;
    assert_eq!(new_body(&r), Some(body("m", &tokens)));
    assert_eq!(set_header(mutation(&r), "content-length"), None);
    let before = skipped("partial_body");
    let r = buffered_exchange(&p, partial, &aliased, false).await;
    assert_eq!(new_body(&r), None);
    assert_eq!(skipped("partial_body"), before + 1.0);

    // STREAMED: Envoy routes before kvpick sees the body; it passes as sent, counted.
    let before = skipped("body_mode");
    let mut s = p.stream().await;
    let streamed_mode = common::mode(BodySendMode::Streamed, BodySendMode::Streamed);
    s.send(request_headers(
        Some(streamed_mode),
        "POST",
        &[],
        false,
        None,
    ))
    .await;
    assert!(set_header(mutation(&s.recv().await), DESTINATION).is_some());
    s.send(request_body(&body("alias", &tokens), true)).await;
    assert_eq!(new_body(&s.recv().await), None);
    assert_eq!(skipped("body_mode"), before + 1.0);

    // The weighted split: 3:1 over many requests (within a margin).
    let n = 200;
    let mut v1 = 0;
    for _ in 0..n {
        let (_, length, sent) = duplex_exchange(&p, &body("split", &tokens)).await;
        assert_eq!(length, sent.len());
        match model_of(&sent).as_str() {
            "s-v1" => v1 += 1,
            "s-v2" => {}
            other => panic!("not a target: {other}"),
        }
    }
    assert!(
        (130..=170).contains(&v1),
        "{v1} of {n} to s-v1 (weight 3 of 4)"
    );

    // The rule deleted: requests pass as sent again.
    pol.api.delete(REWRITES, "alias");
    Policies::until(&p, "the deletion", |s| s.rewrites.rule("alias").is_none()).await;
    let original = body("alias", &tokens);
    let (_, length, sent) = duplex_exchange(&p, &original).await;
    assert_eq!((length, &sent), (original.len(), &original));
    pol.stop().await;
    p.stop().await;
}

/// The rewritten body is charged to the request bytes before it is made, while the client's is
/// still held: with room for one copy of a body but not two, a body no rule meets is routed and
/// one a rule rewrites is refused (503 `memory_budget`).
#[tokio::test]
async fn a_rewrite_is_charged_to_the_memory_budget() {
    let p = Picker::start(Settings::loopback(), &PODS).await;
    let pol = Policies::start(&p).await;
    pol.api.apply(
        REWRITES,
        rewrite("alias", "alias", json!([{"modelRewrite": "m"}])),
    );
    Policies::until(&p, "the rewrite", |s| !s.rewrites.is_empty()).await;
    let tokens = prompt(2048, 3);
    let (aliased, other) = (body("alias", &tokens), body("other", &tokens));
    assert!(aliased.len() < 64 << 10, "a large body has another ceiling");
    let part = &p.shared.budget.requests;
    let room = aliased.len() * 3 / 2;
    let _held = part.try_charge(part.limit() - part.used() - room).unwrap();
    let answer = |body: Vec<u8>| {
        let p = &p;
        async move {
            let mut s = p.stream().await;
            s.send(request_headers(duplex(), "POST", &[], false, None))
                .await;
            s.send(request_body(&body, true)).await;
            s.recv().await
        }
    };
    // A stream's charge goes with it once its answer is read and it is dropped.
    let settled = || async {
        tokio::time::timeout(Duration::from_secs(10), async {
            while part.used() != part.limit() - room {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("a body's charge outlived its stream");
    };
    let routed = answer(other).await;
    assert!(lb_destination(&routed).is_some(), "{routed:?}");
    settled().await;
    let refused = answer(aliased).await;
    assert_eq!(immediate(&refused).0, 503);
    assert_eq!(drop_reason(&refused).as_deref(), Some("memory_budget"));
    settled().await;
    pol.stop().await;
    p.stop().await;
}

/// A real Envoy in each mode kvpick rewrites in, in front of stand-in vLLM pods that echo the
/// model they were sent and the body's length: Envoy accepts the mutation (a wrong
/// `content-length` would be refused in BUFFERED mode) and the pod gets the renamed model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy_the_pod_receives_the_rewritten_model() {
    let pods = [Pod::start().await, Pod::start().await];
    let addrs: Vec<String> = pods.iter().map(|p| p.addr.to_string()).collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let p = Picker::start(Settings::loopback(), &refs).await;
    let pol = Policies::start(&p).await;
    pol.api.apply(
        REWRITES,
        rewrite(
            "alias",
            "alias",
            json!([{"modelRewrite": "Qwen/Qwen3-32B"}]),
        ),
    );
    Policies::until(&p, "the rewrite", |s| !s.rewrites.is_empty()).await;
    let tokens = prompt(64, 9);
    let expected = body("Qwen/Qwen3-32B", &tokens);
    for mode in ["FULL_DUPLEX_STREAMED", "BUFFERED", "BUFFERED_PARTIAL"] {
        let envoy = Envoy::start_with_modes(&[p.grpc], mode, mode).await;
        let (status, _, answer) =
            envoy::post(&envoy, "/v1/completions", &body("alias", &tokens), &[]).await;
        assert_eq!(
            status,
            200,
            "{mode}: {}\n{}",
            String::from_utf8_lossy(&answer),
            envoy.log_text()
        );
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["model"], "Qwen/Qwen3-32B", "{mode}: {answer}");
        assert_eq!(answer["body_bytes"], expected.len(), "{mode}: {answer}");
        // Followed by HTTP/2 trailers: rewritten too, except where kvpick cannot tell a whole
        // BUFFERED_PARTIAL body from one cut at the buffer limit.
        let (status, answer) =
            envoy::post_with_trailers(&envoy, body("alias", &tokens), Duration::from_secs(30))
                .await;
        assert_eq!(status, 200, "{mode}, trailers: {}", envoy.log_text());
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        let (model, sent) = if mode == "BUFFERED_PARTIAL" {
            ("alias", body("alias", &tokens).len())
        } else {
            ("Qwen/Qwen3-32B", expected.len())
        };
        assert_eq!(
            (&answer["model"], &answer["body_bytes"]),
            (&json!(model), &json!(sent)),
            "{mode}, trailers"
        );
        // No rule: the body as sent.
        let other = body("other", &tokens);
        let (status, _, answer) = envoy::post(&envoy, "/v1/completions", &other, &[]).await;
        assert_eq!(status, 200, "{mode}");
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(
            (&answer["model"], &answer["body_bytes"]),
            (&json!("other"), &json!(other.len())),
            "{mode}"
        );
    }
    pol.stop().await;
    p.stop().await;
}

const PREDICTED: &str = "apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-scorer
  parameters: {profile: h100-tp2-qwen3-32b, expectedOutputTokens: 64}
";

fn objective(name: &str, ttft_ms: &str) -> Value {
    json!({
        "apiVersion": "llm-d.ai/v1alpha2", "kind": "InferenceObjective",
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {"kvpick.io/slo-ttft-ms": ttft_ms}},
        "spec": {"priority": -1, "poolRef": {"name": "pool"}},
    })
}

/// A 4,096-token prompt takes ~0.45 s to prefill on an idle H100 pair: an objective's 50 ms is
/// impossible (a sheddable request is refused with the miss), 5 s is easy.
#[tokio::test]
async fn an_objectives_latency_objective_reaches_the_scorer_when_the_request_sends_none() {
    let settings = Settings {
        scheduler: Some(kvpick_scheduler::EndpointPickerConfig::parse(PREDICTED).unwrap()),
        ..Settings::loopback()
    };
    let p = Picker::start(settings, &PODS).await;
    for pod in PODS {
        scraped(&p, pod, 0, 0.0);
    }
    let pol = Policies::start(&p).await;
    pol.api.apply(OBJECTIVES, objective("tight", "50"));
    pol.api.apply(OBJECTIVES, objective("loose", "5000"));
    Policies::until(&p, "both objectives", |s| s.objectives.len() == 2).await;
    let ask = |headers: Vec<(&'static str, &'static str)>| {
        let p = &p;
        async move {
            let mut s = p.stream().await;
            s.send(request_headers(duplex(), "POST", &headers, false, None))
                .await;
            s.send(request_body(&token_body(&prompt(4096, 7)), true))
                .await;
            s.recv().await
        }
    };
    for header in [
        "x-gateway-inference-objective",
        "x-llm-d-inference-objective",
    ] {
        let shed = ask(vec![(header, "tight")]).await;
        assert_eq!(immediate(&shed).0, 429, "{header}");
        assert_eq!(drop_reason(&shed).as_deref(), Some("slo-ttft-unattainable"));
        let routed = ask(vec![(header, "loose")]).await;
        assert!(lb_destination(&routed).is_some(), "{header}: {routed:?}");
    }
    // The request's own objective wins over the objective's.
    let routed = ask(vec![
        ("x-gateway-inference-objective", "tight"),
        ("x-slo-ttft-ms", "5000"),
    ])
    .await;
    assert!(lb_destination(&routed).is_some(), "{routed:?}");
    pol.stop().await;
    p.stop().await;
}
