//! The OpenAI-compatible request and response bodies, shaped as vLLM's server writes them.
//!
//! Parsing is lenient where vLLM is (unknown fields are ignored: clients send sampling
//! parameters a simulated engine has no use for) and strict where it must be: one prompt per
//! request (`n` = 1, no batched prompts), prompt + `max_tokens` within `max_model_len` (vLLM's
//! own 400 message), a served model or LoRA adapter name. Every generation runs to `max_tokens`
//! (as with `ignore_eos`), so `finish_reason` is `"length"`.

use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{Value, json};

use super::tokenizer::Tokenizer;

/// Which endpoint.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Api {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    Chat,
}

/// An error as vLLM returns it: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// A 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// Any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => "BadRequestError",
            StatusCode::NOT_FOUND => "NotFoundError",
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                "ServiceUnavailableError"
            }
            _ => "InternalServerError",
        }
    }

    /// The error object (`{"message", "type", "param", "code"}`).
    pub fn object(&self) -> Value {
        json!({"message": self.message, "type": self.kind(), "param": null,
               "code": self.status.as_u16()})
    }

    /// The response body.
    pub fn body(&self) -> Bytes {
        Bytes::from(json!({ "error": self.object() }).to_string())
    }
}

/// What the server knows to check a request.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Served model name.
    pub model: Arc<str>,
    /// LoRA adapters served besides it.
    pub loras: Vec<Arc<str>>,
    /// `--max-model-len`.
    pub max_model_len: u32,
    /// `max_tokens` when the request gives none (capped by the context left).
    pub default_max_tokens: u32,
    /// How text becomes tokens.
    pub tokenizer: Tokenizer,
}

/// A parsed generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct GenRequest {
    /// Which endpoint.
    pub api: Api,
    /// The model name as requested (echoed in responses).
    pub model: String,
    /// The LoRA adapter, when the model named one.
    pub lora: Option<Arc<str>>,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Tokens to generate.
    pub max_tokens: u32,
    /// SSE streaming.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

fn token_ids(v: &[Value]) -> Result<Vec<u32>, ApiError> {
    v.iter()
        .map(|t| {
            t.as_u64()
                .filter(|&t| t < kvpick_sim::trace::tokens::VOCAB as u64)
                .map(|t| t as u32)
                .ok_or_else(|| ApiError::bad_request(format!("token id {t} is out of vocabulary")))
        })
        .collect()
}

/// The ids of a completions `prompt` (text, token ids, or a one-element list of either);
/// `add_special_tokens` is vLLM's flag for text (default true).
pub fn completion_prompt(
    v: Option<&Value>,
    add_special_tokens: bool,
    tok: &Tokenizer,
) -> Result<Vec<u32>, ApiError> {
    match v {
        Some(Value::String(s)) => tok
            .prompt(s, add_special_tokens)
            .map_err(ApiError::bad_request),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => token_ids(items),
        Some(Value::Array(items)) if items.len() == 1 => {
            completion_prompt(items.first(), add_special_tokens, tok)
        }
        Some(Value::Array(_)) => Err(ApiError::bad_request(
            "batched prompts are not supported by the simulated fleet: send one prompt per request",
        )),
        _ => Err(ApiError::bad_request(
            "prompt must be a string or a list of token ids",
        )),
    }
}

/// Parses a request body for `api`.
pub fn parse(api: Api, body: &[u8], info: &ModelInfo) -> Result<GenRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let model = match v.get("model") {
        None | Some(Value::Null) => info.model.to_string(),
        Some(Value::String(m)) => m.clone(),
        Some(_) => return Err(ApiError::bad_request("model must be a string")),
    };
    let lora = if model == *info.model {
        None
    } else if let Some(l) = info.loras.iter().find(|l| ***l == *model) {
        Some(l.clone())
    } else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("The model `{model}` does not exist."),
        ));
    };
    if v.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request(
            "the simulated fleet supports n = 1 only",
        ));
    }
    let prompt = match api {
        Api::Completions => {
            let special = v.get("add_special_tokens").and_then(Value::as_bool);
            completion_prompt(v.get("prompt"), special.unwrap_or(true), &info.tokenizer)?
        }
        Api::Chat => info.tokenizer.chat(&v).map_err(ApiError::bad_request)?,
    };
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty"));
    }
    let asked = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_u64));
    let len = prompt.len() as u64;
    let max_len = info.max_model_len as u64;
    let max_tokens =
        asked.unwrap_or_else(|| (info.default_max_tokens as u64).min(max_len.saturating_sub(len)));
    if max_tokens == 0 || len + max_tokens > max_len {
        return Err(ApiError::bad_request(format!(
            "This model's maximum context length is {max_len} tokens. However, you requested {} \
             tokens ({len} in the messages, {max_tokens} in the completion). Please reduce the \
             length of the messages or completion.",
            len + max_tokens
        )));
    }
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = stream
        && v.pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    Ok(GenRequest {
        api,
        model,
        lora,
        prompt,
        max_tokens: max_tokens as u32,
        stream,
        include_usage,
    })
}

/// The `usage` object; `cached` goes in `prompt_tokens_details` when given and non-zero, as vLLM
/// with `--enable-prompt-tokens-details` does.
pub fn usage(prompt: u32, completion: u32, cached: Option<u32>) -> Value {
    let mut u = json!({"prompt_tokens": prompt, "total_tokens": prompt + completion,
                       "completion_tokens": completion});
    if let Some(c) = cached.filter(|&c| c > 0) {
        u["prompt_tokens_details"] = json!({ "cached_tokens": c });
    }
    u
}

/// Identity of one response: id, creation time, echoed model.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    /// `cmpl-...` or `chatcmpl-...`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model as requested.
    pub model: String,
    /// Which endpoint.
    pub api: Api,
}

impl ResponseHead {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.api, chunk) {
            (Api::Completions, _) => "text_completion",
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
        }
    }

    /// A whole (non-streaming) response.
    pub fn full(&self, text: &str, usage: Value) -> Value {
        let choice = match self.api {
            Api::Completions => json!({"index": 0, "text": text, "logprobs": null,
                "finish_reason": "length", "stop_reason": null, "prompt_logprobs": null}),
            Api::Chat => json!({"index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": null, "finish_reason": "length", "stop_reason": null}),
        };
        json!({"id": self.id, "object": self.object(false), "created": self.created,
               "model": self.model, "choices": [choice], "usage": usage})
    }

    /// One SSE chunk with `text` (chat: `role` too when `first`), closing with `finish`.
    pub fn chunk(&self, text: &str, first: bool, finish: Option<&str>) -> Value {
        let choice = match self.api {
            Api::Completions => json!({"index": 0, "text": text, "logprobs": null,
                "finish_reason": finish, "stop_reason": null}),
            Api::Chat => {
                let delta = if first {
                    json!({"role": "assistant", "content": text})
                } else {
                    json!({ "content": text })
                };
                json!({"index": 0, "delta": delta, "logprobs": null,
                       "finish_reason": finish, "stop_reason": null})
            }
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created,
               "model": self.model, "choices": [choice]})
    }

    /// The final usage chunk of a stream (`stream_options.include_usage`).
    pub fn usage_chunk(&self, usage: Value) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created,
               "model": self.model, "choices": [], "usage": usage})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ModelInfo {
        ModelInfo {
            model: "m".into(),
            loras: vec!["adapter".into()],
            max_model_len: 100,
            default_max_tokens: 16,
            tokenizer: Tokenizer::Fallback,
        }
    }

    #[test]
    fn parses_prompts_and_limits() {
        let p = |b: &str| parse(Api::Completions, b.as_bytes(), &info());
        let r = p(
            r#"{"model":"m","prompt":[1,2,3],"max_tokens":5,"stream":true,
                      "stream_options":{"include_usage":true},"temperature":0.2}"#,
        )
        .unwrap();
        assert_eq!(
            (r.prompt.as_slice(), r.max_tokens, r.include_usage),
            (&[1, 2, 3][..], 5, true)
        );
        assert_eq!(p(r#"{"prompt":"a b c"}"#).unwrap().max_tokens, 16);
        assert_eq!(
            p(r#"{"model":"adapter","prompt":[[7]]}"#)
                .unwrap()
                .lora
                .as_deref(),
            Some("adapter")
        );
        assert_eq!(
            p(r#"{"model":"x","prompt":"a"}"#).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        let long = p(r#"{"prompt":[1,2,3],"max_tokens":98}"#).unwrap_err();
        assert!(
            long.message.contains("maximum context length is 100"),
            "{long:?}"
        );
        assert!(p(r#"{"prompt":["a","b"]}"#).is_err());
        assert!(p(r#"{"prompt":[-1]}"#).is_err());
        assert!(p(r#"{"prompt":"a","n":2}"#).is_err());
        assert!(p("{").is_err());
        let chat = parse(
            Api::Chat,
            br#"{"messages":[{"role":"user","content":"hi"}],
            "max_completion_tokens":3}"#,
            &info(),
        )
        .unwrap();
        assert_eq!(chat.max_tokens, 3);
    }

    #[test]
    fn usage_details_only_when_cached() {
        assert!(usage(10, 2, Some(0)).get("prompt_tokens_details").is_none());
        assert_eq!(
            usage(10, 2, Some(8))["prompt_tokens_details"]["cached_tokens"],
            8
        );
        assert_eq!(usage(10, 2, None)["total_tokens"], 12);
    }
}
