//! One simulated vLLM server's HTTP side: vLLM's routes over hyper (HTTP/1.1, as vLLM's uvicorn).
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`,
//! `POST /tokenize`, `GET /metrics`, `GET /version`, and fault injection under `/admin/`
//! (`POST /admin/fault {"error_rate": p}`, `POST /admin/stall {"ms": n}`, `POST /admin/restart`).
//! Bounded: request bodies (`413` past the limit), concurrent connections (accepting waits for a
//! free slot), header read time, the engine's command queue (`503` when full).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::driver::{Command, Progress, Submission};
use super::openai::{self, Api, ApiError, ModelInfo, ResponseHead};
use super::respond::{Body, Reply, error, full, json};
use super::sidecar::{self, Prefill, Sidecar};
use super::stats::{self, EngineStats, PageInfo};

/// Bounds of one server.
#[derive(Copy, Clone, Debug)]
pub struct ServerLimits {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time allowed to read a request's headers.
    pub header_timeout: Duration,
}

/// Everything the routes share.
#[derive(Debug)]
pub struct ServerState {
    /// Model, adapters, limits, tokenizer.
    pub info: ModelInfo,
    /// `/metrics` labels.
    pub rank: u32,
    /// KV block size (cache config info).
    pub block_size: u32,
    /// KV blocks (cache config info).
    pub num_gpu_blocks: u32,
    /// `--max-loras`.
    pub max_loras: u32,
    /// The engine driver's queue.
    pub commands: mpsc::Sender<Command>,
    /// The engine's counters.
    pub stats: Arc<Mutex<EngineStats>>,
    /// False while restarting.
    pub up: Arc<AtomicBool>,
    /// Fault injection: share of generation requests answered with a 500.
    pub error_rate: Mutex<(f64, SmallRng)>,
    /// Body limit.
    pub limits: ServerLimits,
    /// Seed of response ids and output streams.
    pub seed: u64,
    /// Responses so far (ids, output streams).
    pub served: AtomicU64,
    /// P/D: a decode pod's routing sidecar ([`super::sidecar`]); `None` on prefill pods and in
    /// aggregated fleets.
    pub sidecar: Option<Sidecar>,
    /// Its own address (the prefill side's `kv_transfer_params`).
    pub address: std::net::SocketAddr,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Accepts connections on `listener` until `cancel`; each connection is a task on `tracker`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(state.limits.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (st, cancel) = (state.clone(), cancel.clone());
        let header_timeout = state.limits.header_timeout;
        tracker.spawn(async move {
            let svc = service_fn(move |req| {
                let st = st.clone();
                async move { Ok::<_, Infallible>(route(req, st).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
            drop(permit);
        });
    }
}

async fn body(req: Request<Incoming>, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {limit} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!("reading the body: {e}"))),
    }
}

async fn route(req: Request<Incoming>, st: Arc<ServerState>) -> Response<Body> {
    let up = st.up.load(Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/health") => {
            let mut r = Response::new(full(""));
            if !up {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
        (Method::GET, "/metrics") => metrics(&st),
        (Method::GET, "/version") => json(StatusCode::OK, &json!({"version": "kvpick-sim"})),
        (Method::GET, "/v1/models") => models(&st),
        (Method::POST, "/v1/completions") => generate(req, &st, Api::Completions).await,
        (Method::POST, "/v1/chat/completions") => generate(req, &st, Api::Chat).await,
        (Method::POST, "/tokenize") => tokenize(req, &st).await,
        (Method::POST, "/reset_prefix_cache") => {
            match st.commands.send(Command::ResetPrefixCache).await {
                Ok(()) => Response::new(full("")),
                Err(_) => error(&ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "engine stopped",
                )),
            }
        }
        (Method::POST, p) if p.starts_with("/admin/") => admin(req, &st).await,
        _ => json(StatusCode::NOT_FOUND, &json!({"detail": "Not Found"})),
    }
}

fn metrics(st: &ServerState) -> Response<Body> {
    let info = PageInfo {
        model: &st.info.model,
        engine: st.rank,
        block_size: st.block_size,
        num_gpu_blocks: st.num_gpu_blocks,
        max_loras: st.max_loras,
    };
    let page = stats::render(&st.stats.lock(), &info);
    let mut r = Response::new(full(page));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn models(st: &ServerState) -> Response<Body> {
    let created = unix_secs();
    let card = |id: &str, parent: Option<&str>| {
        json!({"id": id, "object": "model", "created": created, "owned_by": "vllm",
               "root": parent.unwrap_or(id), "parent": parent,
               "max_model_len": st.info.max_model_len, "permission": []})
    };
    let mut data = vec![card(&st.info.model, None)];
    data.extend(st.info.loras.iter().map(|l| card(l, Some(&st.info.model))));
    json(StatusCode::OK, &json!({"object": "list", "data": data}))
}

async fn generate(req: Request<Incoming>, st: &ServerState, api: Api) -> Response<Body> {
    if !st.up.load(Ordering::SeqCst) {
        return error(&ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine is restarting",
        ));
    }
    let prefiller = sidecar::target(req.headers());
    let path = req.uri().path().to_owned();
    let bytes = match body(req, st.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    let g = match openai::parse(api, &bytes, &st.info) {
        Ok(g) => g,
        Err(e) => return error(&e),
    };
    // P/D: prefill on the named pod first (decode pods), or say where this prefill's KV is
    // (a prefill-only request from a decode pod).
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let remote_decode = v
        .pointer("/kv_transfer_params/do_remote_decode")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let kv_transfer_params = remote_decode.then(|| {
        let blocks = (g.prompt.len() as u32).div_ceil(st.block_size.max(1));
        sidecar::transfer_params(st.address, blocks)
    });
    let (mut transferred, mut reported_cached) = (0, None);
    if let (Some(target), Some(sc)) = (prefiller, &st.sidecar) {
        match sc.prefill(&target, &path, &v).await {
            Prefill::Local | Prefill::Fallback => {}
            Prefill::Remote { cached_tokens } => {
                tokio::time::sleep(sc.transfer_time(g.prompt.len() as u32)).await;
                transferred = g.prompt.len() as u32;
                reported_cached = Some(cached_tokens);
                st.stats.lock().remote_prefills += 1;
            }
            Prefill::Answer(status, body) => {
                let mut r = Response::new(full(body));
                *r.status_mut() = status;
                return r;
            }
        }
    }
    let fail = {
        let mut guard = st.error_rate.lock();
        let (rate, rng) = &mut *guard;
        *rate > 0.0 && rng.random::<f64>() < *rate
    };
    if fail {
        return error(&ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "simulated engine failure (fault injection)",
        ));
    }
    let n = st.served.fetch_add(1, Ordering::Relaxed);
    let output_id = xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), st.seed);
    let prefix = if api == Api::Chat { "chatcmpl" } else { "cmpl" };
    let reply = Reply {
        head: ResponseHead {
            id: format!("{prefix}-{output_id:016x}{n:016x}"),
            created: unix_secs(),
            model: g.model.clone(),
            api,
        },
        tokenizer: st.info.tokenizer.clone(),
        output_id,
        prompt_len: g.prompt.len() as u32,
        max_tokens: g.max_tokens,
        include_usage: g.include_usage,
        cached_tokens: reported_cached,
        kv_transfer_params,
    };
    let (tx, rx) = watch::channel(Progress::default());
    let submission = Submission {
        prompt: g.prompt,
        max_tokens: g.max_tokens,
        output_id,
        lora: g.lora,
        transferred,
        progress: tx,
    };
    if st.commands.try_send(Command::Submit(submission)).is_err() {
        return error(&ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine's request queue is full",
        ));
    }
    if g.stream {
        reply.stream(rx)
    } else {
        reply.whole(rx).await
    }
}

async fn tokenize(req: Request<Incoming>, st: &ServerState) -> Response<Body> {
    let bytes = match body(req, st.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return error(&ApiError::bad_request(format!("invalid JSON body: {e}"))),
    };
    let tok = &st.info.tokenizer;
    let ids = if v.get("messages").is_some() {
        tok.chat(&v).map_err(ApiError::bad_request)
    } else {
        let special = v.get("add_special_tokens").and_then(Value::as_bool);
        openai::completion_prompt(v.get("prompt"), special.unwrap_or(true), tok)
    };
    match ids {
        Ok(tokens) => {
            let mut r = json(
                StatusCode::OK,
                &json!({"count": tokens.len(), "max_model_len": st.info.max_model_len,
                        "tokens": tokens, "token_strs": null}),
            );
            // Say which rule made these ids (the fallback is no model's tokenizer).
            r.headers_mut().insert(
                "x-kvpick-sim-tokenizer",
                hyper::header::HeaderValue::from_static(tok.name()),
            );
            r
        }
        Err(e) => error(&e),
    }
}

async fn admin(req: Request<Incoming>, st: &ServerState) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let bytes = match body(req, 4096).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let num = |k: &str| v.get(k).and_then(Value::as_f64);
    let command = match path.as_str() {
        "/admin/fault" => match num("error_rate").filter(|p| (0.0..=1.0).contains(p)) {
            Some(p) => {
                st.error_rate.lock().0 = p;
                None
            }
            None => return error(&ApiError::bad_request("error_rate must be in [0, 1]")),
        },
        "/admin/stall" => match num("ms").filter(|m| m.is_finite() && *m >= 0.0) {
            Some(ms) => Some(Command::Stall(Duration::from_secs_f64(ms / 1000.0))),
            None => return error(&ApiError::bad_request("ms must be a non-negative number")),
        },
        "/admin/restart" => Some(Command::Restart),
        _ => return json(StatusCode::NOT_FOUND, &json!({"detail": "Not Found"})),
    };
    if let Some(c) = command
        && st.commands.send(c).await.is_err()
    {
        return error(&ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine stopped",
        ));
    }
    json(StatusCode::OK, &json!({"ok": true}))
}

/// A seeded generator for the error-rate roll.
pub fn error_rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed ^ 0xfa17_5eed)
}
