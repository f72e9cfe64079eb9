//! vLLM's own `/tokenize` endpoint, for models without a local tokenizer.
//!
//! vLLM serves `POST /tokenize` with either `{model, prompt, add_special_tokens}` or
//! `{model, messages, add_generation_prompt, continue_final_message, add_special_tokens, tools, ...}`
//! and answers `{tokens, count, max_model_len}`. The pod renders and tokenizes exactly as it will for
//! the real request, at the price of a round trip and the pod's CPU. The HTTP client is a trait so the
//! endpoint picker can share its connection pool; [`HyperClient`] is a plain HTTP/1 implementation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::model::TokenizeInput;

/// Largest `/tokenize` answer read (a 1M-token prompt is about 8 MB of JSON).
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A boxed future, for object-safe async trait methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Sends one JSON POST and returns the status and body.
pub trait HttpClient: Send + Sync + std::fmt::Debug {
    /// POSTs `body` (JSON) to `url`.
    fn post_json(
        &self,
        url: http::Uri,
        body: Bytes,
    ) -> BoxFuture<'_, Result<(http::StatusCode, Bytes), Error>>;
}

/// [`HttpClient`] over hyper-util's pooled HTTP/1 client.
#[derive(Debug, Clone)]
pub struct HyperClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The TCP connector kvpick's HTTP clients share (this one, the endpoint picker's scrapes, the
/// fleet's load generator): plain HTTP, `TCP_NODELAY` (requests are small and latency-bound), and
/// a connect timeout so that an unreachable peer fails fast instead of after the OS's minutes.
pub fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector
}

impl HyperClient {
    /// A client with its own connection pool (must be created inside a tokio runtime).
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector(Duration::from_secs(2))),
        }
    }
}

impl Default for HyperClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient for HyperClient {
    fn post_json(
        &self,
        url: http::Uri,
        body: Bytes,
    ) -> BoxFuture<'_, Result<(http::StatusCode, Bytes), Error>> {
        Box::pin(async move {
            let request = http::Request::post(url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body))
                .map_err(|e| Error::Remote(e.to_string()))?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| Error::Remote(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| Error::Remote(format!("reading body: {e}")))?
                .to_bytes();
            Ok((status, body))
        })
    }
}

/// Asks a vLLM pod to tokenize, with a deadline.
#[derive(Debug, Clone)]
pub struct RemoteTokenizer {
    client: Arc<dyn HttpClient>,
    timeout: Duration,
}

impl RemoteTokenizer {
    /// Calls through `client`, giving up after `timeout`.
    pub fn new(client: Arc<dyn HttpClient>, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// The ids pod `base` (e.g. `http://10.0.0.5:8000`) computes for `input` under `model`.
    pub async fn tokenize(
        &self,
        base: &str,
        model: &str,
        input: &TokenizeInput,
    ) -> Result<Vec<u32>, Error> {
        let url: http::Uri = format!("{}/tokenize", base.trim_end_matches('/'))
            .parse()
            .map_err(|e| Error::Remote(format!("bad endpoint {base:?}: {e}")))?;
        let body = Bytes::from(request_body(model, input).to_string());
        let (status, body) = tokio::time::timeout(self.timeout, self.client.post_json(url, body))
            .await
            .map_err(|_| Error::RemoteTimeout)??;
        if !status.is_success() {
            let excerpt = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(Error::Remote(format!("status {status}: {excerpt}")));
        }
        parse_response(&body)
    }
}

/// vLLM's `TokenizeCompletionRequest` or `TokenizeChatRequest` body.
pub fn request_body(model: &str, input: &TokenizeInput) -> Value {
    match input {
        TokenizeInput::Prompt {
            text,
            add_special_tokens,
        } => json!({"model": model, "prompt": text, "add_special_tokens": add_special_tokens}),
        TokenizeInput::Chat(chat) => {
            let mut body = Map::new();
            body.insert("model".into(), model.into());
            body.insert("messages".into(), Value::Array(chat.messages.clone()));
            body.insert(
                "add_generation_prompt".into(),
                chat.add_generation_prompt.into(),
            );
            body.insert(
                "continue_final_message".into(),
                chat.continue_final_message.into(),
            );
            body.insert("add_special_tokens".into(), chat.add_special_tokens.into());
            if let Some(tools) = &chat.tools {
                body.insert("tools".into(), Value::Array(tools.clone()));
            }
            if let Some(documents) = &chat.documents {
                body.insert("documents".into(), Value::Array(documents.clone()));
            }
            if let Some(template) = &chat.chat_template {
                body.insert("chat_template".into(), template.clone().into());
            }
            if !chat.chat_template_kwargs.is_empty() {
                body.insert(
                    "chat_template_kwargs".into(),
                    Value::Object(chat.chat_template_kwargs.clone()),
                );
            }
            Value::Object(body)
        }
    }
}

/// Reads `tokens` from vLLM's `TokenizeResponse`, checking `count` when present.
pub fn parse_response(body: &[u8]) -> Result<Vec<u32>, Error> {
    #[derive(serde::Deserialize)]
    struct Response {
        tokens: Vec<u32>,
        count: Option<usize>,
    }
    let r: Response = serde_json::from_slice(body)
        .map_err(|e| Error::Remote(format!("bad /tokenize answer: {e}")))?;
    if r.count.is_some_and(|c| c != r.tokens.len()) {
        return Err(Error::Remote(
            "`count` differs from the number of `tokens`".into(),
        ));
    }
    Ok(r.tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ChatRequest;

    #[test]
    fn bodies_match_vllm_requests() {
        let prompt = TokenizeInput::Prompt {
            text: "hi".into(),
            add_special_tokens: true,
        };
        assert_eq!(
            request_body("m", &prompt).to_string(),
            r#"{"model":"m","prompt":"hi","add_special_tokens":true}"#
        );
        let chat = TokenizeInput::Chat(ChatRequest::new(vec![
            json!({"role": "user", "content": "x"}),
        ]));
        assert_eq!(
            request_body("m", &chat).to_string(),
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"add_generation_prompt":true,"continue_final_message":false,"add_special_tokens":false}"#
        );
    }

    #[test]
    fn parses_responses() {
        assert_eq!(
            parse_response(br#"{"tokens":[1,2,3],"count":3,"max_model_len":4096}"#).unwrap(),
            vec![1, 2, 3]
        );
        assert!(parse_response(br#"{"tokens":[1],"count":2}"#).is_err());
        assert!(parse_response(b"nope").is_err());
    }
}
