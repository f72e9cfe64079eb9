//! The decode pod's half of llm-d's prefill/decode disaggregation, as llm-d's routing sidecar
//! does it in front of vLLM with the NIXL connector.
//!
//! A generation request carrying `x-prefiller-host-port: ip:port` (or the older
//! `x-prefiller-url: http://ip:port`; a comma list uses its first entry) is first sent to that
//! prefill pod as a prefill-only request: the same body with `max_tokens` (and
//! `max_completion_tokens`) 1, `stream` false, no `stream_options`, and
//! `kv_transfer_params: {do_remote_decode: true, ...}`. Its answer carries the KV cache's
//! whereabouts (`kv_transfer_params`) and the prefill pod's own cache hit
//! (`usage.prompt_tokens_details.cached_tokens`). The decode pod then waits the transfer time
//! ([`kvpick_sim::transfer`], at the fleet's speed) and decodes locally with the whole prompt
//! counted as transferred (vLLM's `external_kv_transfer` tokens); its response reports the
//! prefill pod's cached tokens, as the sidecar rewrites them.
//!
//! As llm-d's sidecar: a target outside the fleet's own pods is refused with 403 (SSRF
//! protection); a prefill answer of 400–451 goes back to the client as is; any other failure
//! (a 5xx, no connection, a timeout) falls back to decoding with a local prefill. A request
//! without the header is served as usual.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::openai::ApiError;
use crate::load::client::{HttpClient, client};
use kvpick_scheduler::disagg::{PREFILLER_HOST_PORT, PREFILLER_URL};
use kvpick_sim::transfer::KvTransfer;

/// Largest prefill answer read (a one-token response).
const MAX_ANSWER: usize = 1 << 20;
/// Longest wait for a prefill pod.
const PREFILL_TIMEOUT: Duration = Duration::from_secs(120);

/// What a decode pod needs to prefill remotely.
#[derive(Debug)]
pub struct Sidecar {
    /// The pods it may call: the fleet's own (filled as they start).
    pub allowed: Arc<Mutex<Vec<SocketAddr>>>,
    /// Its own address, never a prefill target.
    pub own: SocketAddr,
    /// How long the KV takes to arrive.
    pub transfer: KvTransfer,
    /// KV block size.
    pub block_size: u32,
    /// Simulated seconds per real second.
    pub speed: f64,
    client: HttpClient,
}

/// What became of a request's remote prefill.
#[derive(Debug)]
pub enum Prefill {
    /// No prefill pod named (or it named this pod): serve as usual.
    Local,
    /// Prefilled there: decode with the prompt transferred, reporting its cached tokens.
    Remote {
        /// The prefill pod's cached prompt tokens.
        cached_tokens: u32,
    },
    /// The prefill pod failed in a way the decode pod recovers from: prefill locally.
    Fallback,
    /// Answer the client with this (a refused target, or the prefill pod's 4xx).
    Answer(StatusCode, Bytes),
}

/// The prefill pod a request names, if any.
pub fn target(headers: &HeaderMap) -> Option<String> {
    let first = |v: &str| v.split(',').next().unwrap_or("").trim().to_owned();
    if let Some(v) = headers
        .get(PREFILLER_HOST_PORT)
        .and_then(|v| v.to_str().ok())
    {
        return Some(first(v)).filter(|t| !t.is_empty());
    }
    let url = headers.get(PREFILLER_URL).and_then(|v| v.to_str().ok())?;
    let url = first(url);
    let host = url
        .strip_prefix("http://")
        .unwrap_or(&url)
        .trim_end_matches('/');
    Some(host.to_owned()).filter(|t| !t.is_empty())
}

/// The prefill-only request's body: one token, not streamed, with NIXL's transfer parameters.
pub fn prefill_body(body: &Value) -> Value {
    let mut b = body.clone();
    if let Some(o) = b.as_object_mut() {
        for limit in ["max_tokens", "max_completion_tokens"] {
            if limit == "max_tokens" || o.contains_key(limit) {
                o.insert(limit.to_owned(), json!(1));
            }
        }
        o.insert("stream".to_owned(), json!(false));
        o.remove("stream_options");
        o.insert(
            "kv_transfer_params".to_owned(),
            json!({"do_remote_decode": true, "do_remote_prefill": false,
                   "remote_engine_id": null, "remote_block_ids": null,
                   "remote_host": null, "remote_port": null}),
        );
    }
    b
}

/// What a prefill pod answers in `kv_transfer_params` (vLLM's NIXL connector's shape).
pub fn transfer_params(engine: SocketAddr, blocks: u32) -> Value {
    json!({"do_remote_prefill": true, "do_remote_decode": false,
           "remote_engine_id": engine.to_string(),
           "remote_block_ids": (0..blocks).collect::<Vec<u32>>(),
           "remote_host": engine.ip().to_string(), "remote_port": engine.port(),
           "tp_size": 1})
}

impl Sidecar {
    /// A sidecar for the pod at `own`.
    pub fn new(
        own: SocketAddr,
        allowed: Arc<Mutex<Vec<SocketAddr>>>,
        transfer: KvTransfer,
        block_size: u32,
        speed: f64,
    ) -> Self {
        Self {
            allowed,
            own,
            transfer,
            block_size,
            speed,
            client: client(8),
        }
    }

    /// Runs the prefill-only request `body` (parsed) for `path` on `target`.
    pub async fn prefill(&self, target: &str, path: &str, body: &Value) -> Prefill {
        let Ok(addr) = target.parse::<SocketAddr>() else {
            return forbidden(target);
        };
        if addr == self.own {
            return Prefill::Local;
        }
        if !self.allowed.lock().contains(&addr) {
            return forbidden(target);
        }
        let request = hyper::Request::post(format!("http://{addr}{path}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(prefill_body(body).to_string())));
        let Ok(request) = request else {
            return Prefill::Fallback;
        };
        let answer = tokio::time::timeout(PREFILL_TIMEOUT, async {
            let resp = self.client.request(request).await.ok()?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .ok()?
                .to_bytes();
            Some((status, bytes))
        })
        .await
        .ok()
        .flatten();
        let Some((status, bytes)) = answer else {
            return Prefill::Fallback;
        };
        if (400..=451).contains(&status.as_u16()) {
            return Prefill::Answer(status, bytes);
        }
        if !status.is_success() {
            return Prefill::Fallback;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            return Prefill::Fallback;
        };
        let cached = v
            .pointer("/usage/prompt_tokens_details/cached_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Prefill::Remote {
            cached_tokens: u32::try_from(cached).unwrap_or(u32::MAX),
        }
    }

    /// The real time `prompt_len` tokens' KV take to arrive.
    pub fn transfer_time(&self, prompt_len: u32) -> Duration {
        let us = self.transfer.time_us(prompt_len, self.block_size) as f64 / self.speed;
        Duration::from_secs_f64(us / 1e6)
    }
}

fn forbidden(target: &str) -> Prefill {
    let e = ApiError::new(
        StatusCode::FORBIDDEN,
        format!("prefill target {target:?} is not one of the fleet's pods (SSRF protection)"),
    );
    Prefill::Answer(StatusCode::FORBIDDEN, e.body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_comes_from_either_header_first_entry() {
        let mut h = HeaderMap::new();
        assert_eq!(target(&h), None);
        h.insert(PREFILLER_URL, "http://10.0.0.1:8000/".parse().unwrap());
        assert_eq!(target(&h).as_deref(), Some("10.0.0.1:8000"));
        h.insert(
            PREFILLER_HOST_PORT,
            "10.0.0.2:8000, 10.0.0.3:8000".parse().unwrap(),
        );
        assert_eq!(target(&h).as_deref(), Some("10.0.0.2:8000"));
    }

    #[test]
    fn the_prefill_body_asks_one_unstreamed_token_with_nixl_parameters() {
        let b = prefill_body(&json!({"prompt": [1, 2], "max_tokens": 50, "stream": true,
                                      "stream_options": {"include_usage": true}}));
        assert_eq!(b["max_tokens"], 1);
        assert_eq!(b["stream"], false);
        assert!(b.get("stream_options").is_none());
        assert!(b.get("max_completion_tokens").is_none());
        assert_eq!(b["kv_transfer_params"]["do_remote_decode"], true);
        let chat = prefill_body(&json!({"messages": [], "max_completion_tokens": 9}));
        assert_eq!(
            (&chat["max_completion_tokens"], &chat["max_tokens"]),
            (&json!(1), &json!(1))
        );
    }
}
