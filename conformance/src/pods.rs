//! Stand-in model servers, one per pool endpoint: enough of vLLM for a picker and a gateway.
//!
//! `GET /metrics` reports the load the suite sets, in vLLM's metric names (queue, running, KV
//! cache usage, LoRA info); any `POST` is an inference request: the pod reads the whole body and
//! answers a completion (or, for `"stream": true`, server-sent events), with headers saying what
//! it saw: its own address ([`POD`], which the gateway turns into the served-endpoint metadata),
//! the destination header the gateway sent it ([`DESTINATION_SEEN`]) and the body's length and
//! digest. A pod told to fail answers 503; a streamed answer asked to hold ([`HOLD`]) stops after
//! its first event until the suite releases it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::Error;

/// Response header: the pod's own address.
pub const POD: &str = "x-conformance-pod";
/// Response header: the `x-gateway-destination-endpoint` request header the pod received.
pub const DESTINATION_SEEN: &str = "x-conformance-destination";
/// Response headers: the request body's length and FNV-1a digest as the pod received it.
pub const BODY_BYTES: &str = "x-conformance-body-bytes";
/// See [`BODY_BYTES`].
pub const BODY_DIGEST: &str = "x-conformance-body-digest";
/// Request header: hold a streamed answer after its first event until [`Pods::release`].
pub const HOLD: &str = "x-conformance-hold";
/// Events in a streamed answer, before `[DONE]`.
pub const EVENTS: usize = 4;

/// Largest request body a pod reads.
const MAX_BODY: usize = 16 << 20;

type Body = BoxBody<Bytes, Infallible>;

/// What the suite sets on one pod.
#[derive(Debug)]
struct Control {
    address: SocketAddr,
    model: String,
    waiting: AtomicU32,
    running: AtomicU32,
    /// KV cache usage in thousandths.
    kv_permille: AtomicU32,
    failing: AtomicBool,
    release: Arc<Semaphore>,
}

/// The running stand-in pods.
#[derive(Debug)]
pub struct Pods {
    controls: Vec<Arc<Control>>,
    stop: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Pods {
    /// Serves one stand-in on each of `addresses`, for `model`.
    pub async fn serve(addresses: &[SocketAddr], model: &str) -> Result<Self, Error> {
        let mut pods = Self {
            controls: Vec::new(),
            stop: Vec::new(),
            tasks: Vec::new(),
        };
        for &address in addresses {
            let listener = TcpListener::bind(address)
                .await
                .map_err(|source| Error::Bind { address, source })?;
            let control = Arc::new(Control {
                address,
                model: model.to_owned(),
                waiting: AtomicU32::new(0),
                running: AtomicU32::new(0),
                kv_permille: AtomicU32::new(0),
                failing: AtomicBool::new(false),
                release: Arc::new(Semaphore::new(0)),
            });
            let (tx, rx) = oneshot::channel();
            pods.tasks
                .push(tokio::spawn(accept(listener, control.clone(), rx)));
            pods.controls.push(control);
            pods.stop.push(tx);
        }
        Ok(pods)
    }

    fn control(&self, pod: SocketAddr) -> &Control {
        self.controls
            .iter()
            .find(|c| c.address == pod)
            .unwrap_or_else(|| panic!("{pod} is not a pool endpoint"))
    }

    /// Sets what `pod`'s `/metrics` reports: requests waiting, running, and KV cache usage.
    pub fn set_load(&self, pod: SocketAddr, waiting: u32, running: u32, kv_usage: f64) {
        let c = self.control(pod);
        c.waiting.store(waiting, Ordering::Relaxed);
        c.running.store(running, Ordering::Relaxed);
        c.kv_permille.store(
            (kv_usage.clamp(0.0, 1.0) * 1000.0) as u32,
            Ordering::Relaxed,
        );
    }

    /// Every pod idle again, and none failing.
    pub fn reset(&self) {
        for c in &self.controls {
            self.set_load(c.address, 0, 0, 0.0);
            c.failing.store(false, Ordering::Relaxed);
        }
    }

    /// Makes `pod` answer inference requests with 503 (its `/metrics` still answers).
    pub fn set_failing(&self, pod: SocketAddr, failing: bool) {
        self.control(pod).failing.store(failing, Ordering::Relaxed);
    }

    /// Lets one held streamed answer on `pod` go on.
    pub fn release(&self, pod: SocketAddr) {
        self.control(pod).release.add_permits(1);
    }

    /// Stops every pod and waits for them.
    pub async fn stop(mut self) {
        for c in &self.controls {
            c.release.close();
        }
        for tx in self.stop.drain(..) {
            let _ = tx.send(());
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

/// Accepts connections until `stop`; each connection is a task of a set aborted and joined then.
async fn accept(listener: TcpListener, control: Arc<Control>, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let control = control.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let control = control.clone();
                        async move { Ok::<_, Infallible>(handle(&control, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

/// FNV-1a, 64 bits: the body digest pods report.
pub fn digest(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

async fn handle(control: &Control, req: Request<Incoming>) -> Response<Body> {
    if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
        return Response::new(full(metrics(control)));
    }
    let destination = req
        .headers()
        .get("x-gateway-destination-endpoint")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let hold = req.headers().contains_key(HOLD);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(control, 413, &destination),
    };
    if control.failing.load(Ordering::Relaxed) {
        return status(control, 503, &destination);
    }
    let stream = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .is_some_and(|v| v["stream"] == true);
    let builder = Response::builder()
        .header(POD, control.address.to_string())
        .header(DESTINATION_SEEN, destination)
        .header(BODY_BYTES, body.len().to_string())
        .header(BODY_DIGEST, digest(&body));
    let response = if stream {
        builder
            .header("content-type", "text/event-stream")
            .body(events(control, hold))
    } else {
        let answer = serde_json::json!({"id": "cmpl-conformance", "object": "text_completion",
            "model": control.model, "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
        builder
            .header("content-type", "application/json")
            .body(full(answer.to_string()))
    };
    response.unwrap_or_else(|_| Response::new(full("")))
}

fn status(control: &Control, code: u16, destination: &str) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(POD, control.address.to_string())
        .header(DESTINATION_SEEN, destination)
        .body(full(""))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// A streamed answer: [`EVENTS`] events then `[DONE]`, held after the first when asked (until
/// released, or the pods stop).
fn events(control: &Control, hold: bool) -> Body {
    let release = hold.then(|| control.release.clone());
    let stream = futures::stream::unfold((0, release), |(i, release)| async move {
        if i > EVENTS {
            return None;
        }
        if i == 1
            && let Some(release) = &release
        {
            match release.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return None,
            }
        }
        let event = if i == EVENTS {
            "data: [DONE]\n\n".to_owned()
        } else {
            format!("data: {{\"index\":{i},\"text\":\"t{i}\"}}\n\n")
        };
        Some((Ok(Frame::data(Bytes::from(event))), (i + 1, release)))
    });
    StreamBody::new(stream).boxed()
}

/// The pod's `/metrics`, in vLLM's names.
fn metrics(c: &Control) -> String {
    let model = &c.model;
    let waiting = c.waiting.load(Ordering::Relaxed);
    let running = c.running.load(Ordering::Relaxed);
    let kv = f64::from(c.kv_permille.load(Ordering::Relaxed)) / 1000.0;
    format!(
        "# TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{model_name=\"{model}\"}} {running}\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"{model}\"}} {waiting}\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{model_name=\"{model}\"}} {kv}\n\
         # TYPE vllm:gpu_cache_usage_perc gauge\n\
         vllm:gpu_cache_usage_perc{{model_name=\"{model}\"}} {kv}\n\
         # TYPE vllm:lora_requests_info gauge\n\
         vllm:lora_requests_info{{max_lora=\"0\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"}} 1\n\
         # TYPE vllm:cache_config_info gauge\n\
         vllm:cache_config_info{{block_size=\"16\",num_gpu_blocks=\"4096\"}} 1\n"
    )
}
