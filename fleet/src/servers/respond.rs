//! Turns a request's progress into its HTTP response: one JSON body once it ends, or an SSE
//! stream (`data: {chunk}\n\n` per update, the usage chunk when asked, `data: [DONE]`).
//!
//! A failure before the first byte is an error response with its status; a failure mid-stream is
//! an `data: {"error": ...}` event followed by `[DONE]`, as vLLM does.

use std::convert::Infallible;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::watch;

use super::driver::{End, Progress, Refusal};
use super::openai::{Api, ApiError, ResponseHead, usage};
use super::tokenizer::Tokenizer;
use kvpick_sim::trace::tokens;

/// Response body type of the fleet's server.
pub type Body = BoxBody<Bytes, Infallible>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON response.
pub fn json(status: StatusCode, v: &Value) -> Response<Body> {
    json_bytes(status, Bytes::from(v.to_string()))
}

/// An error response.
pub fn error(e: &ApiError) -> Response<Body> {
    json_bytes(e.status, e.body())
}

/// The error a refusal becomes.
pub fn refusal_error(r: Refusal, prompt_len: u32, max_tokens: u32) -> ApiError {
    match r {
        Refusal::TooLong | Refusal::TooBig => ApiError::bad_request(format!(
            "the request ({prompt_len} prompt + {max_tokens} output tokens) cannot fit this \
             engine's KV cache or max_model_len"
        )),
        Refusal::QueueFull => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine's waiting queue is full",
        ),
        Refusal::Restarted => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the engine restarted while serving the request",
        ),
        Refusal::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ),
    }
}

/// What the response needs besides the progress channel.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Id, creation time, model, endpoint.
    pub head: ResponseHead,
    /// Where the generated text comes from.
    pub tokenizer: Tokenizer,
    /// The request's output stream.
    pub output_id: u64,
    /// Prompt tokens (for `usage`).
    pub prompt_len: u32,
    /// Tokens asked.
    pub max_tokens: u32,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// P/D, on the decode pod: the prefill pod's cached tokens, reported instead of its own (as
    /// llm-d's sidecar rewrites `usage`).
    pub cached_tokens: Option<u32>,
    /// P/D, on the prefill pod: `kv_transfer_params` for the decode pod (a whole body only).
    pub kv_transfer_params: Option<Value>,
}

impl Reply {
    fn text(&self, from: u32, to: u32) -> String {
        (from..to)
            .map(|i| {
                self.tokenizer
                    .decode_token(tokens::token(self.output_id, i))
            })
            .collect()
    }

    fn usage(&self, p: &Progress, whole: bool) -> Value {
        let whole = whole.then_some(self.head.api);
        let cached = p.cached_tokens.map(|c| self.cached_tokens.unwrap_or(c));
        usage(self.prompt_len, p.generated, cached, whole)
    }

    /// Waits for the end and answers with one JSON body.
    pub async fn whole(self, mut rx: watch::Receiver<Progress>) -> Response<Body> {
        let p = match rx.wait_for(|p| p.end.is_some()).await {
            Ok(p) => p.clone(),
            Err(_) => Progress {
                end: Some(End::Refused(Refusal::ShuttingDown)),
                ..Progress::default()
            },
        };
        match p.end {
            Some(End::Finished) => {
                let mut body = self
                    .head
                    .full(&self.text(0, p.generated), self.usage(&p, true));
                if let Some(params) = &self.kv_transfer_params {
                    body["kv_transfer_params"] = params.clone();
                }
                json(StatusCode::OK, &body)
            }
            Some(End::Refused(r)) => error(&refusal_error(r, self.prompt_len, self.max_tokens)),
            None => error(&ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no result",
            )),
        }
    }

    /// Answers with an SSE stream that follows the progress.
    pub fn stream(self, rx: watch::Receiver<Progress>) -> Response<Body> {
        let state = Sse {
            reply: self,
            rx,
            sent: 0,
            phase: Phase::Tokens,
        };
        let events =
            futures::stream::unfold(state, Sse::next).map(|b| Ok::<_, Infallible>(Frame::data(b)));
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(events)));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        r
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    Tokens,
    Usage,
    Done,
    Over,
}

struct Sse {
    reply: Reply,
    rx: watch::Receiver<Progress>,
    sent: u32,
    phase: Phase,
}

fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

impl Sse {
    fn after_finish(&self) -> Phase {
        if self.reply.include_usage {
            Phase::Usage
        } else {
            Phase::Done
        }
    }

    async fn next(mut self) -> Option<(Bytes, Self)> {
        loop {
            match self.phase {
                Phase::Over => return None,
                Phase::Done => {
                    self.phase = Phase::Over;
                    return Some((Bytes::from_static(b"data: [DONE]\n\n"), self));
                }
                Phase::Usage => {
                    self.phase = Phase::Done;
                    let p = self.rx.borrow().clone();
                    let chunk = self.reply.head.usage_chunk(self.reply.usage(&p, false));
                    return Some((event(&chunk), self));
                }
                Phase::Tokens => {}
            }
            let p = self.rx.borrow_and_update().clone();
            if p.generated > self.sent {
                let done = p.end == Some(End::Finished) && p.generated >= self.reply.max_tokens;
                let text = self.reply.text(self.sent, p.generated);
                let head = &self.reply.head;
                let mut bytes = Vec::new();
                if self.sent == 0 && head.api == Api::Chat {
                    // vLLM opens a chat stream with the role and empty content.
                    bytes.extend_from_slice(&event(&head.chunk("", true, None)));
                }
                let chunk = head.chunk(&text, false, done.then_some("length"));
                bytes.extend_from_slice(&event(&chunk));
                self.sent = p.generated;
                if done {
                    self.phase = self.after_finish();
                }
                return Some((Bytes::from(bytes), self));
            }
            let failure = match p.end {
                Some(End::Finished) => {
                    // The last tokens went out before the end was seen: close with an empty
                    // chunk carrying finish_reason, as vLLM does.
                    let chunk = self.reply.head.chunk("", false, Some("length"));
                    self.phase = self.after_finish();
                    return Some((event(&chunk), self));
                }
                Some(End::Refused(r)) => {
                    refusal_error(r, self.reply.prompt_len, self.reply.max_tokens)
                }
                None if self.rx.changed().await.is_ok() => continue,
                None => refusal_error(Refusal::ShuttingDown, 0, 0),
            };
            self.phase = Phase::Done;
            return Some((
                event(&serde_json::json!({ "error": failure.object() })),
                self,
            ));
        }
    }
}
