//! Every body mode a real Envoy can be configured with (`processing_mode.request_body_mode` and
//! `response_body_mode`: NONE, STREAMED, BUFFERED, BUFFERED_PARTIAL, FULL_DUPLEX_STREAMED) is
//! answered, never stalled: plain bodies, bodies followed by HTTP/2 trailers, headers-only
//! requests, and a BUFFERED_PARTIAL body cut at the gateway's buffer limit. Where kvpick sees the
//! body before Envoy routes (BUFFERED*, FULL_DUPLEX_STREAMED) the request lands on the pod holding
//! its prefix; where it cannot (NONE, STREAMED) it is routed on load alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::envoy::{self, Envoy};
use common::vllm::Pod;
use common::{Picker, prompt};
use http_body_util::Full;
use kvpick_epp::Settings;

/// Bound on any one answer: a stalled stream would wait for Envoy's 60 s message timeout.
const PROMPT: Duration = Duration::from_secs(15);

const MODES: [&str; 5] = [
    "NONE",
    "STREAMED",
    "BUFFERED",
    "BUFFERED_PARTIAL",
    "FULL_DUPLEX_STREAMED",
];

struct Setup {
    pods: Vec<Pod>,
    picker: Picker,
    tokens: Vec<u32>,
}

impl Setup {
    async fn start() -> Self {
        let pods = vec![Pod::start().await, Pod::start().await];
        let addrs: Vec<String> = pods.iter().map(|p| p.addr.to_string()).collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let picker = Picker::start(Settings::loopback(), &refs).await;
        // Pod 1 holds the prompt's whole prefix; pod 0 nothing.
        let tokens = prompt(256, 7);
        picker.store(&addrs[1], &tokens);
        Self {
            pods,
            picker,
            tokens,
        }
    }

    async fn envoy(&self, request: &str, response: &str, buffer_limit: Option<u32>) -> Envoy {
        let (request, response) = (request.to_owned(), response.to_owned());
        Envoy::start_edited(&[self.picker.grpc], move |t| {
            let mut t = envoy::body_modes(t, &request, &response);
            if let Some(limit) = buffer_limit {
                let at = "  - name: inference_gateway\n";
                assert!(t.contains(at), "the template's listener changed");
                t = t.replace(
                    at,
                    &format!("{at}    per_connection_buffer_limit_bytes: {limit}\n"),
                );
            }
            t
        })
        .await
    }

    fn body(&self, pad: usize) -> Vec<u8> {
        serde_json::json!({"model": "m", "prompt": self.tokens, "max_tokens": 1, "pad": "x".repeat(pad)})
            .to_string()
            .into_bytes()
    }

    /// Which pod served the answer, checking the pod got the whole body.
    fn served_by(&self, answer: &[u8], sent: usize, what: &str) -> usize {
        let json: serde_json::Value = serde_json::from_slice(answer)
            .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(answer)));
        assert_eq!(json["body_bytes"], sent, "{what}: the pod got another body");
        let by = json["served_by"].as_str().unwrap();
        self.pods
            .iter()
            .position(|p| p.addr.to_string() == by)
            .unwrap()
    }
}

async fn get(envoy: &Envoy) -> u16 {
    let req = hyper::Request::get(format!("http://{}/v1/models", envoy.listen))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(PROMPT, envoy::client().request(req))
        .await
        .unwrap_or_else(|_| panic!("stalled: {}", envoy.log_text()))
        .unwrap();
    resp.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_mode_is_answered_and_sees_the_body_where_envoy_lets_it() {
    let s = Setup::start().await;
    // Each request mode with each response mode once (shifted pairs), FULL_DUPLEX both ways too.
    let pairs = MODES
        .iter()
        .enumerate()
        .map(|(i, &req)| (req, MODES[(i + 1) % MODES.len()]))
        .chain([("FULL_DUPLEX_STREAMED", "FULL_DUPLEX_STREAMED")]);
    for (req_mode, resp_mode) in pairs {
        let what = format!("request {req_mode}, response {resp_mode}");
        let envoy = s.envoy(req_mode, resp_mode, None).await;
        let sees_body = !matches!(req_mode, "NONE" | "STREAMED");
        // A plain body, small and large (several full-duplex chunks).
        for pad in [0, 200_000] {
            let body = s.body(pad);
            let (status, _, answer) = envoy::post(&envoy, "/v1/completions", &body, &[]).await;
            assert_eq!(
                status,
                200,
                "{what}: {}\n{}",
                String::from_utf8_lossy(&answer),
                envoy.log_text()
            );
            let pod = s.served_by(&answer, body.len(), &what);
            if sees_body {
                assert_eq!(pod, 1, "{what}: not routed on the body's prefix");
            }
        }
        // The same body followed by trailers.
        let body = s.body(100);
        let (status, answer) = envoy::post_with_trailers(&envoy, body.clone(), PROMPT).await;
        assert_eq!(
            status,
            200,
            "{what}, trailers: {}\n{}",
            String::from_utf8_lossy(&answer),
            envoy.log_text()
        );
        let pod = s.served_by(&answer, body.len(), &what);
        if sees_body {
            assert_eq!(pod, 1, "{what}, trailers: not routed on the body's prefix");
        }
        // No body at all.
        assert_eq!(get(&envoy).await, 200, "{what}, headers only");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_partial_body_cut_at_the_buffer_limit_is_routed_on_its_headers() {
    let s = Setup::start().await;
    let envoy = s
        .envoy("BUFFERED_PARTIAL", "BUFFERED_PARTIAL", Some(16 << 10))
        .await;
    // Larger than the gateway buffers: kvpick gets a cut, unparseable body and must still answer.
    let body = s.body(100_000);
    let (status, _, answer) = envoy::post(&envoy, "/v1/completions", &body, &[]).await;
    assert_eq!(
        status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&answer),
        envoy.log_text()
    );
    s.served_by(&answer, body.len(), "cut body");
    // A body that fits is still routed on its prefix.
    let body = s.body(0);
    let (status, _, answer) = envoy::post(&envoy, "/v1/completions", &body, &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(s.served_by(&answer, body.len(), "whole body"), 1);
}
