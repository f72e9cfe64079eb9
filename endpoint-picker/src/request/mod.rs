//! Inference request bodies, parsed once: OpenAI completions and chat completions here, the
//! Responses, Anthropic Messages and embeddings APIs in their own modules ([`parse_for`] picks by
//! the request's [`Api`]).
//!
//! Pure: bytes in, a borrowed view out. Strings borrow from the body unless JSON escapes force a
//! copy; `messages` is kept as its raw JSON text and never copied. A prompt given as token ids is
//! the only thing allocated per request, once. Fuzzable: any input gives `Ok` or an error, never a
//! panic.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use kvpick_tokenize::ChatApi;

use crate::error::Error;

mod api;
mod embeddings;
mod fields;
mod messages;
mod responses;
mod scan;

pub use api::Api;
use fields::{PromptField, Text};

/// What an inference request's body says, borrowing from the body.
#[derive(Debug, PartialEq)]
pub struct InferenceRequest<'a> {
    /// The `model` field: a base model or a LoRA adapter name.
    pub model: Cow<'a, str>,
    /// The `stream` field.
    pub stream: bool,
    /// vLLM's `cache_salt`, which partitions the prefix cache.
    pub cache_salt: Option<Cow<'a, str>>,
    /// vLLM's `add_special_tokens` (for completions; its default is true).
    pub add_special_tokens: Option<bool>,
    /// The prompt.
    pub prompt: PromptInput<'a>,
    /// How a [`PromptInput::Chat`] body names its conversation (which API it is written for).
    pub chat_api: ChatApi,
    /// `max_tokens` (or `max_completion_tokens`) when it is a count that fits a u32; anything
    /// else is the server's to refuse, and the latency model uses its own expectation.
    pub max_tokens: Option<u32>,
}

/// The prompt as the client sent it.
#[derive(Debug)]
pub enum PromptInput<'a> {
    /// Completions `prompt` as token ids (for a batch, its first prompt): used as is.
    Tokens(Vec<u32>),
    /// Completions `prompt` as text (for a batch, its first prompt).
    Text(Cow<'a, str>),
    /// A conversation, rendered with the model's chat template: chat or Messages `messages`, or
    /// Responses `input`, as their raw JSON text (the tokenizer reads the whole body).
    Chat(&'a RawValue),
    /// No prompt.
    None,
}

impl PartialEq for PromptInput<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Tokens(a), Self::Tokens(b)) => a == b,
            (Self::Text(a), Self::Text(b)) => a == b,
            (Self::Chat(a), Self::Chat(b)) => a.get() == b.get(),
            (Self::None, Self::None) => true,
            _ => false,
        }
    }
}

#[derive(Deserialize, Default)]
struct Body<'a> {
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default)]
    cache_salt: Option<Text<'a>>,
    #[serde(default)]
    add_special_tokens: Option<bool>,
    #[serde(borrow, default)]
    prompt: Option<PromptField<'a>>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
}

/// Parses a body of `api`. `Ok(None)`: nothing in it to route on but load, without refusing it
/// (a body of an unknown path that does not parse, or one whose API lets `model` out).
pub fn parse_for(api: Api, body: &[u8]) -> Result<Option<InferenceRequest<'_>>, Error> {
    match api {
        Api::Completions | Api::ChatCompletions => parse(body).map(Some),
        // Whatever it is, the pod answers it: a body kvpick cannot read is routed by load.
        Api::Other => Ok(parse(body).ok()),
        Api::Responses => optional_model(responses::parse(body)),
        Api::Messages => messages::parse(body).map(Some),
        Api::Embeddings => optional_model(embeddings::parse(body)),
    }
}

/// For APIs whose `model` may be left out (vLLM then serves its default model): route by load.
fn optional_model(
    parsed: Result<InferenceRequest<'_>, Error>,
) -> Result<Option<InferenceRequest<'_>>, Error> {
    match parsed {
        Err(Error::MissingModel) => Ok(None),
        other => other.map(Some),
    }
}

/// Parses an OpenAI-style request body. `model` is required; a body with neither `prompt` nor
/// `messages` parses with [`PromptInput::None`] (e.g. embeddings with `input`). A token-id
/// prompt is read by a fast path ([`scan`]); anything else, errors included, by serde_json, and
/// the answer is always [`parse_reference`]'s.
pub fn parse(body: &[u8]) -> Result<InferenceRequest<'_>, Error> {
    let text = utf8(body)?;
    match scan::body(text) {
        Some(parsed) => assemble(parsed),
        None => reference(text),
    }
}

/// [`parse`] with serde_json for the whole body: the reference the fast path is checked (and
/// benchmarked) against.
pub fn parse_reference(body: &[u8]) -> Result<InferenceRequest<'_>, Error> {
    reference(utf8(body)?)
}

fn utf8(body: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(body)
        .map_err(|e| Error::InvalidBody(format!("not UTF-8 at byte {}", e.valid_up_to())))
}

fn reference(text: &str) -> Result<InferenceRequest<'_>, Error> {
    let parsed: Body<'_> =
        serde_json::from_str(text).map_err(|e| Error::InvalidBody(describe(&e)))?;
    assemble(parsed)
}

/// A conversation body's request (Responses, Messages): rendered with the chat template as `api`
/// builds it, no `add_special_tokens` of its own.
fn conversation<'a>(
    model_field: Option<Text<'a>>,
    stream: Option<bool>,
    cache_salt: Option<Text<'a>>,
    prompt: PromptInput<'a>,
    chat_api: ChatApi,
    max_tokens: Option<&RawValue>,
) -> Result<InferenceRequest<'a>, Error> {
    Ok(InferenceRequest {
        model: model(model_field)?,
        stream: stream.unwrap_or(false),
        cache_salt: cache_salt.map(|t| t.0),
        add_special_tokens: None,
        prompt,
        chat_api,
        max_tokens: count(max_tokens),
    })
}

/// `model`, which must be a non-empty string.
fn model(model: Option<Text<'_>>) -> Result<Cow<'_, str>, Error> {
    match model {
        Some(Text(m)) if !m.is_empty() => Ok(m),
        _ => Err(Error::MissingModel),
    }
}

/// A token count when it is an integer that fits a u32; anything else is the server's to refuse.
fn count(value: Option<&RawValue>) -> Option<u32> {
    value.and_then(|v| v.get().parse().ok())
}

/// Parses the whole body with serde_json into `T`, naming the problem when it does not fit.
fn from_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Error> {
    serde_json::from_str(utf8(body)?).map_err(|e| Error::InvalidBody(describe(&e)))
}

fn assemble(parsed: Body<'_>) -> Result<InferenceRequest<'_>, Error> {
    let model = model(parsed.model)?;
    let prompt = match (parsed.prompt, parsed.messages) {
        (Some(PromptField::Tokens(t)), _) => PromptInput::Tokens(t),
        (Some(PromptField::Text(t)), _) => PromptInput::Text(t),
        (Some(PromptField::Empty) | None, Some(m)) => PromptInput::Chat(m),
        (Some(PromptField::Empty) | None, None) => PromptInput::None,
    };
    Ok(InferenceRequest {
        model,
        stream: parsed.stream.unwrap_or(false),
        cache_salt: parsed.cache_salt.map(|t| t.0),
        add_special_tokens: parsed.add_special_tokens,
        prompt,
        chat_api: ChatApi::ChatCompletions,
        max_tokens: count(parsed.max_completion_tokens.or(parsed.max_tokens)),
    })
}

fn describe(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "unexpected JSON value",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} at line {} column {}: {e}", e.line(), e.column())
}

#[cfg(test)]
mod tests;
