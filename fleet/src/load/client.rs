//! One request against an OpenAI-compatible server, measured at the client.
//!
//! Streaming: TTFT is the time to the first SSE event carrying a generated token, each later such
//! event adds an inter-token gap, `usage` comes from the final chunk (`stream_options.
//! include_usage`); a non-streaming request has only its end-to-end time and usage. Bodies are
//! bounded (an event over 1 MiB or a body over 64 MiB fails the request).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

const MAX_EVENT: usize = 1 << 20;
const MAX_BODY: usize = 64 << 20;

/// The HTTP client the load generator shares between requests.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client (plain HTTP).
pub fn client(max_idle: usize) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .build(kvpick_tokenize::remote::connector(Duration::from_secs(10)))
}

/// What one request measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// HTTP status (0 when none arrived).
    pub status: u16,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Send to first generated text, s.
    pub ttft_s: Option<f64>,
    /// Send to end of body, s.
    pub e2e_s: Option<f64>,
    /// Gaps between token-carrying events, s.
    #[serde(skip)]
    pub gaps_s: Vec<f64>,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens`.
    pub completion_tokens: Option<u64>,
    /// `usage.prompt_tokens_details.cached_tokens` (0 when the server omits it).
    pub cached_tokens: u64,
    /// Token-carrying events received.
    pub chunks: u32,
}

impl Outcome {
    fn fail(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }

    fn take_usage(&mut self, v: &Value) {
        let Some(u) = v.get("usage").filter(|u| u.is_object()) else {
            return;
        };
        self.prompt_tokens = u.get("prompt_tokens").and_then(Value::as_u64);
        self.completion_tokens = u.get("completion_tokens").and_then(Value::as_u64);
        self.cached_tokens = u
            .pointer("/prompt_tokens_details/cached_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
    }
}

/// Whether a chunk carries a generated token. A completion chunk does whatever its text: vLLM
/// sends one per token and leaves `text` empty while a multi-byte character is incomplete (a
/// byte-level tokenizer's first token often is), so waiting for text would add a step to TTFT. A
/// chat chunk counts only with content: the first one carries the role, before any token.
fn carries_token(v: &Value) -> bool {
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        return false;
    };
    choices.iter().any(|c| {
        c.get("text").is_some_and(Value::is_string)
            || c.pointer("/delta/content")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty())
    })
}

/// Sends `body` to `url` and measures it until `timeout`.
pub async fn send(
    client: &HttpClient,
    url: &str,
    body: Bytes,
    stream: bool,
    timeout: Duration,
) -> Outcome {
    let started = Instant::now();
    let out = Outcome::default();
    let req = match hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
    {
        Ok(r) => r,
        Err(e) => return out.fail(format!("request: {e}")),
    };
    let measured = async {
        let resp = match client.request(req).await {
            Ok(r) => r,
            Err(e) => return out.fail(format!("connect/send: {e}")),
        };
        let mut out = Outcome {
            status: resp.status().as_u16(),
            ..out
        };
        let ok = resp.status().is_success();
        let body = resp.into_body();
        out = if stream && ok {
            read_stream(body, out, started).await
        } else {
            read_whole(body, out, ok).await
        };
        out.e2e_s = Some(started.elapsed().as_secs_f64());
        out
    };
    match tokio::time::timeout(timeout, measured).await {
        Ok(o) => o,
        Err(_) => Outcome::default().fail(format!("no complete response within {timeout:?}")),
    }
}

async fn read_whole(mut body: Incoming, mut out: Outcome, ok: bool) -> Outcome {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    if buf.len() + d.len() > MAX_BODY {
                        return out.fail("response body too large");
                    }
                    buf.extend_from_slice(d);
                }
            }
            Err(e) => return out.fail(format!("body: {e}")),
        }
    }
    let v: Value = serde_json::from_slice(&buf).unwrap_or(Value::Null);
    if !ok {
        let msg = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .map_or_else(|| String::from_utf8_lossy(&buf).into_owned(), str::to_owned);
        let status = out.status;
        return out.fail(format!("HTTP {status}: {msg}"));
    }
    out.take_usage(&v);
    out
}

async fn read_stream(mut body: Incoming, mut out: Outcome, started: Instant) -> Outcome {
    let mut buf = BytesMut::new();
    let mut last: Option<Instant> = None;
    let mut done = false;
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Err(e) => return out.fail(format!("stream: {e}")),
        };
        let now = Instant::now();
        buf.extend_from_slice(&data);
        while let Some(end) = find_event_end(&buf) {
            let event = buf.split_to(end.0 + end.1);
            for line in event[..end.0].split(|&b| b == b'\n') {
                let Some(payload) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let payload = payload.trim_ascii();
                if payload == b"[DONE]" {
                    done = true;
                    continue;
                }
                let Ok(v) = serde_json::from_slice::<Value>(payload) else {
                    return out.fail("an SSE event is not JSON");
                };
                if let Some(e) = v.get("error") {
                    let msg = e.get("message").and_then(Value::as_str).unwrap_or("error");
                    return out.fail(format!("in-stream error: {msg}"));
                }
                if carries_token(&v) {
                    match last {
                        None => out.ttft_s = Some((now - started).as_secs_f64()),
                        Some(t) => out.gaps_s.push((now - t).as_secs_f64()),
                    }
                    last = Some(now);
                    out.chunks += 1;
                }
                out.take_usage(&v);
            }
        }
        if buf.len() > MAX_EVENT {
            return out.fail("an SSE event exceeds 1 MiB");
        }
    }
    if !done {
        return out.fail("stream ended without [DONE]");
    }
    out
}

/// End of the first SSE event in `buf`: (its length, the separator's length).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_token_detection() {
        assert_eq!(find_event_end(b"data: x\n\ndata: y"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: x\r\n\r\n"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: x\n"), None);
        let chat: Value =
            serde_json::from_str(r#"{"choices":[{"delta":{"content":"a"}}]}"#).unwrap();
        let role: Value =
            serde_json::from_str(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#)
                .unwrap();
        let usage: Value =
            serde_json::from_str(r#"{"choices":[],"usage":{"prompt_tokens":3}}"#).unwrap();
        let partial: Value = serde_json::from_str(r#"{"choices":[{"text":""}]}"#).unwrap();
        assert!(carries_token(&chat) && carries_token(&partial));
        assert!(!carries_token(&role) && !carries_token(&usage));
        let mut o = Outcome::default();
        o.take_usage(&usage);
        assert_eq!((o.prompt_tokens, o.cached_tokens), (Some(3), 0));
    }
}
