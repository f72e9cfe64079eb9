//! A stand-in vLLM server for the end-to-end tests: real HTTP/1.1 on loopback, speaking enough of
//! vLLM's API (`/v1/completions` with and without SSE streaming, `/metrics` in Prometheus text).
//! Each answer says which pod served it, so tests can see where Envoy sent a request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// What a test can see and steer on one pod.
#[derive(Debug, Default)]
pub struct PodState {
    /// Reported as `vllm:num_requests_waiting`.
    pub waiting: AtomicU32,
    /// Completions served.
    pub served: AtomicU32,
    /// A streaming response sends its first event, then waits here before the rest.
    pub release: Notify,
}

/// One running stand-in pod.
pub struct Pod {
    pub addr: SocketAddr,
    pub state: Arc<PodState>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

impl Pod {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(PodState::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, addr, state.clone(), stop.clone()));
        Self {
            addr,
            state,
            stop,
            task: Some(task),
        }
    }

    /// Stops serving: the port closes and open connections are cut.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<PodState>,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
        };
        let state = state.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| handle(req, addr, state.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
    conns.shutdown().await;
}

async fn handle(
    req: Request<Incoming>,
    addr: SocketAddr,
    state: Arc<PodState>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/metrics" {
        let page = format!(
            "# TYPE vllm:num_requests_waiting gauge\n\
             vllm:num_requests_waiting{{engine=\"0\",model_name=\"m\"}} {}\n\
             vllm:num_requests_running{{engine=\"0\",model_name=\"m\"}} 1\n\
             vllm:kv_cache_usage_perc{{engine=\"0\",model_name=\"m\"}} 0.1\n\
             vllm:cache_config_info{{block_size=\"16\",num_gpu_blocks=\"1000\"}} 1.0\n",
            state.waiting.load(Ordering::Relaxed)
        );
        return Ok(Response::new(full(page)));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    state.served.fetch_add(1, Ordering::Relaxed);
    let served_by = addr.to_string();
    if json["stream"] == true {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let event = |text: &str| {
                Ok(Frame::data(Bytes::from(format!(
                    "data: {}\n\n",
                    serde_json::json!({"choices": [{"text": text}], "served_by": served_by, "usage": null})
                ))))
            };
            let _ = tx.send(event("first")).await;
            state.release.notified().await;
            let _ = tx.send(event("second")).await;
            let usage = serde_json::json!({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}});
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(format!(
                    "data: {usage}\n\ndata: [DONE]\n\n"
                )))))
                .await;
        });
        let body = StreamBody::new(ReceiverStream::new(rx)).boxed();
        let mut r = Response::new(body);
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        return Ok(r);
    }
    let answer = serde_json::json!({
        "id": "cmpl-1", "object": "text_completion", "model": json["model"],
        "choices": [{"index": 0, "text": "ok", "finish_reason": "length"}],
        "served_by": served_by,
        "body_bytes": body.len(),
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
    });
    let mut r = Response::new(full(answer.to_string()));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(r)
}
