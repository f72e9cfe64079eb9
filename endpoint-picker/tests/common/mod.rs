//! Shared helpers for the gRPC-level tests: an in-process kvpick-epp on loopback and an ext_proc
//! client that speaks to it the way Envoy does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod decision;
pub mod envoy;
pub mod epp;
pub mod fixtures;
pub mod valkey;
pub mod vllm;
pub mod vllm_cpu;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use kvpick_epp::discovery::{Discovered, EndpointSpec};
pub use kvpick_epp::envoy_headers::header_map;
use kvpick_epp::{Server, Settings};
use kvpick_scheduler::EventsState;
use kvpick_scheduler::events::{BlockStored, EventBatch, KvEvent};
use kvpick_scheduler::{EndpointId, KvIndex};
use pb::external_processor_client::ExternalProcessorClient;
use pb::processing_request::Request as In;
use pb::processing_response::Response as Out;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// A loopback port free a moment ago, for a child process to bind.
pub fn free_port() -> u16 {
    kvpick_fleet::demo::procs::free_port().unwrap()
}

/// A kubeconfig in `dir` pointing at the scripted API server at `api` (namespace `ns`), for a
/// `kvpick-epp` child's `KUBECONFIG`.
pub fn kubeconfig(dir: &std::path::Path, api: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
             http://{api}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n    \
             namespace: ns\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
    path
}

/// A running in-process picker.
pub struct Picker {
    pub grpc: SocketAddr,
    pub shared: Arc<kvpick_epp::Shared>,
    pub pool: Arc<kvpick_epp::pool::Pool>,
    /// The shared in-flight state's status, when the settings turn it on.
    pub shared_inflight: Option<Arc<kvpick_epp::shared_inflight::Status>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), kvpick_epp::Error>>>,
}

impl Picker {
    pub async fn start(settings: Settings, endpoints: &[&str]) -> Self {
        let unlabelled: Vec<(&str, Option<&str>)> = endpoints.iter().map(|a| (*a, None)).collect();
        Self::start_with_roles(settings, &unlabelled).await
    }

    /// [`Picker::start`] with each endpoint's `llm-d.ai/role` label (`None`: unlabelled).
    pub async fn start_with_roles(settings: Settings, endpoints: &[(&str, Option<&str>)]) -> Self {
        let server = Server::bind(settings).await.unwrap();
        let specs = endpoints
            .iter()
            .map(|(a, role)| EndpointSpec {
                labels: role
                    .map(|r| ("llm-d.ai/role".to_owned(), r.to_owned()))
                    .into_iter()
                    .collect(),
                // Nothing listens on port 1: scrapes fail fast and signals stay unknown.
                metrics: "http://127.0.0.1:1/metrics".into(),
                ..EndpointSpec::serving(a.parse().unwrap(), "m")
            })
            .collect();
        server
            .pool()
            .reconcile(&Discovered {
                block_size: None,
                endpoints: specs,
            })
            .unwrap();
        let grpc = server.grpc_addr().unwrap();
        let shared = server.shared().clone();
        let pool = server.pool().clone();
        let shared_inflight = server.shared_inflight();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Self {
            grpc,
            shared,
            pool,
            shared_inflight,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn index(&self) -> &Arc<KvIndex> {
        self.shared.router.scheduler().index()
    }

    pub fn live(&self, address: &str) -> Arc<kvpick_epp::pool::Live> {
        self.pool
            .view()
            .by_address(&address.parse().unwrap())
            .unwrap()
            .live
            .clone()
    }

    pub fn id(&self, address: &str) -> EndpointId {
        self.pool
            .view()
            .by_address(&address.parse().unwrap())
            .unwrap()
            .endpoint
            .id
    }

    /// Stands in for KV events until ingestion lands: tells the index `address` holds `tokens`.
    pub fn store(&self, address: &str, tokens: &[u32]) {
        let bs = self.index().block_size().get();
        let blocks = tokens.len() / bs as usize;
        let batch = EventBatch {
            ts: 0.0,
            events: vec![KvEvent::BlockStored(BlockStored {
                block_hashes: (0..blocks as u64)
                    .map(|i| kvpick_scheduler::events::EngineHash(i + 1))
                    .collect(),
                parent_block_hash: None,
                token_ids: tokens[..blocks * bs as usize].to_vec(),
                block_size: bs,
                ..Default::default()
            })],
            data_parallel_rank: None,
        };
        let report = self.index().apply(self.id(address), "m", &batch);
        assert_eq!(report.stored, blocks as u64);
        // ...and, like the subscriber, vouches that the endpoint's events are flowing.
        self.live(address).set_events(EventsState::Live);
    }

    pub async fn client(&self) -> ExternalProcessorClient<tonic::transport::Channel> {
        ExternalProcessorClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
    }

    pub async fn stream(&self) -> Stream {
        Stream::open(self.client().await).await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Picker {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// One ext_proc stream, driven like Envoy drives it.
pub struct Stream {
    tx: mpsc::Sender<pb::ProcessingRequest>,
    rx: tonic::Streaming<pb::ProcessingResponse>,
}

impl Stream {
    pub async fn open(mut client: ExternalProcessorClient<tonic::transport::Channel>) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let responses = client
            .process(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx: responses }
    }

    pub async fn send(&self, msg: pb::ProcessingRequest) {
        self.tx.send(msg).await.unwrap();
    }

    pub async fn recv(&mut self) -> pb::ProcessingResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("no answer within 5 s")
            .unwrap()
            .expect("stream closed")
    }

    /// The next answer if one arrives within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<pb::ProcessingResponse> {
        let m = tokio::time::timeout(wait, self.rx.message()).await.ok()?;
        Some(m.unwrap().expect("stream closed"))
    }

    /// Asserts nothing arrives within `ms` milliseconds.
    pub async fn silent(&mut self, ms: u64) {
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(ms), self.rx.message()).await {
            panic!("unexpected answer: {m:?}");
        }
    }
}

pub fn mode(request: BodySendMode, response: BodySendMode) -> pb::ProtocolConfiguration {
    pb::ProtocolConfiguration {
        request_body_mode: request as i32,
        response_body_mode: response as i32,
        ..Default::default()
    }
}

pub fn duplex() -> Option<pb::ProtocolConfiguration> {
    Some(mode(
        BodySendMode::FullDuplexStreamed,
        BodySendMode::FullDuplexStreamed,
    ))
}

pub fn buffered() -> Option<pb::ProtocolConfiguration> {
    Some(mode(BodySendMode::Buffered, BodySendMode::Buffered))
}

pub fn request_headers(
    protocol: Option<pb::ProtocolConfiguration>,
    method: &str,
    extra: &[(&str, &str)],
    end_of_stream: bool,
    metadata: Option<Metadata>,
) -> pb::ProcessingRequest {
    let mut pairs = vec![
        (":method", method),
        (":path", "/v1/completions"),
        (":authority", "gw"),
        ("content-type", "application/json"),
    ];
    pairs.extend_from_slice(extra);
    pb::ProcessingRequest {
        protocol_config: protocol,
        metadata_context: metadata,
        request: Some(In::RequestHeaders(pb::HttpHeaders {
            headers: Some(header_map(&pairs)),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn request_body(body: &[u8], end_of_stream: bool) -> pb::ProcessingRequest {
    pb::ProcessingRequest {
        request: Some(In::RequestBody(pb::HttpBody {
            body: body.to_vec(),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn response_headers(
    pairs: &[(&str, &str)],
    metadata: Option<Metadata>,
) -> pb::ProcessingRequest {
    pb::ProcessingRequest {
        metadata_context: metadata,
        request: Some(In::ResponseHeaders(pb::HttpHeaders {
            headers: Some(header_map(pairs)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn response_body(body: &[u8], end_of_stream: bool) -> pb::ProcessingRequest {
    pb::ProcessingRequest {
        request: Some(In::ResponseBody(pb::HttpBody {
            body: body.to_vec(),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn subset_hint(addresses: &[&str]) -> Metadata {
    let list = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: addresses
                .iter()
                .map(|a| Value {
                    kind: Some(Kind::StringValue((*a).into())),
                })
                .collect(),
        })),
    };
    let hint = Struct {
        fields: HashMap::from([("x-gateway-destination-endpoint-subset".to_owned(), list)]),
    };
    Metadata {
        filter_metadata: HashMap::from([("envoy.lb.subset_hint".to_owned(), hint)]),
        ..Default::default()
    }
}

/// The header mutation of a request-headers or request-body answer.
pub fn mutation(r: &pb::ProcessingResponse) -> &pb::HeaderMutation {
    let common = match r.response.as_ref() {
        Some(Out::RequestHeaders(h)) => h.response.as_ref(),
        Some(Out::RequestBody(b)) => b.response.as_ref(),
        other => panic!("not a request headers/body answer: {other:?}"),
    };
    common
        .and_then(|c| c.header_mutation.as_ref())
        .expect("no header mutation")
}

pub fn set_header<'a>(m: &'a pb::HeaderMutation, name: &str) -> Option<&'a str> {
    m.set_headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| std::str::from_utf8(&h.raw_value).unwrap())
}

/// The `envoy.lb` destination in an answer's dynamic metadata.
pub fn lb_destination(r: &pb::ProcessingResponse) -> Option<String> {
    let lb = r.dynamic_metadata.as_ref()?.fields.get("envoy.lb")?;
    let Some(Kind::StructValue(s)) = &lb.kind else {
        return None;
    };
    match &s.fields.get("x-gateway-destination-endpoint")?.kind {
        Some(Kind::StringValue(v)) => Some(v.clone()),
        _ => None,
    }
}

/// A streamed body chunk (request or response side): its bytes and end-of-stream flag.
pub fn streamed(r: &pb::ProcessingResponse) -> (Vec<u8>, bool) {
    let common = match r.response.as_ref() {
        Some(Out::RequestBody(b)) | Some(Out::ResponseBody(b)) => b.response.as_ref().unwrap(),
        other => panic!("not a body answer: {other:?}"),
    };
    match common
        .body_mutation
        .as_ref()
        .and_then(|m| m.mutation.as_ref())
    {
        Some(pb::body_mutation::Mutation::StreamedResponse(s)) => (s.body.clone(), s.end_of_stream),
        other => panic!("not a streamed body: {other:?}"),
    }
}

/// The status and JSON body of an immediate response.
pub fn immediate(r: &pb::ProcessingResponse) -> (i32, serde_json::Value) {
    match r.response.as_ref() {
        Some(Out::ImmediateResponse(i)) => (
            i.status.as_ref().unwrap().code,
            serde_json::from_slice(&i.body).unwrap(),
        ),
        other => panic!("not an immediate response: {other:?}"),
    }
}

/// A completions body whose prompt is `tokens`.
pub fn token_body(tokens: &[u32]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"model": "m", "prompt": tokens, "max_tokens": 4}))
        .unwrap()
}

/// A deterministic token prompt of `n` tokens (ids under a real vocabulary's 150,000); `seed`
/// tells prompts apart.
pub fn prompt(n: u32, seed: u32) -> Vec<u32> {
    (0..n)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) % 150_000)
        .collect()
}

/// Signals as a fresh scrape of `address` would report them.
pub fn scraped(p: &Picker, address: &str, waiting: u32, kv_usage: f64) {
    p.live(address).set_signals(kvpick_scheduler::PodSignals {
        waiting,
        kv_usage,
        ..kvpick_scheduler::PodSignals::idle(p.shared.clock.now())
    });
}

/// Sends a token request with `headers` and returns the first answer.
pub async fn first_answer(p: &Picker, headers: &[(&str, &str)]) -> pb::ProcessingResponse {
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", headers, false, None))
        .await;
    s.send(request_body(&token_body(&prompt(64, 3)), true))
        .await;
    s.recv().await
}

pub fn drop_reason(r: &pb::ProcessingResponse) -> Option<String> {
    let Some(Out::ImmediateResponse(i)) = &r.response else {
        return None;
    };
    i.headers
        .as_ref()?
        .set_headers
        .iter()
        .find(|h| {
            h.header
                .as_ref()
                .is_some_and(|h| h.key == "x-kvpick-drop-reason")
        })
        .and_then(|h| h.header.as_ref())
        .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
}

/// The sum of this process's `metric` series whose labels include every one of `labels`.
pub fn metric_sum(metric: &str, labels: &[(&str, &str)]) -> f64 {
    let page = kvpick_epp::telemetry::install().render();
    page.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
