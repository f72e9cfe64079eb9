//! OpenAI-style request bodies (`/v1/completions`, `/v1/chat/completions`), parsed once.
//!
//! Pure: bytes in, a borrowed view out. Strings borrow from the body unless JSON escapes force a
//! copy; `messages` is kept as its raw JSON text and never copied. A prompt given as token ids is
//! the only thing allocated per request, once. Fuzzable: any input gives `Ok` or an error, never a
//! panic.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::Error;

mod fields;
mod scan;

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
    /// Chat `messages`, as the raw JSON array text of the body.
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

fn assemble(parsed: Body<'_>) -> Result<InferenceRequest<'_>, Error> {
    let model = match parsed.model {
        Some(Text(m)) if !m.is_empty() => m,
        _ => return Err(Error::MissingModel),
    };
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
        max_tokens: parsed
            .max_completion_tokens
            .or(parsed.max_tokens)
            .and_then(|v| v.get().parse().ok()),
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
mod tests {
    use super::*;

    fn ok(body: &str) -> InferenceRequest<'_> {
        parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn completions_with_text_borrows_the_body() {
        let r = ok(r#"{"model":"m","prompt":"hello world","stream":true}"#);
        assert_eq!(r.model, "m");
        assert!(r.stream);
        assert!(matches!(
            r.prompt,
            PromptInput::Text(Cow::Borrowed("hello world"))
        ));
        assert!(matches!(r.model, Cow::Borrowed(_)));
    }

    #[test]
    fn escaped_text_is_unescaped() {
        let r = ok(r#"{"model":"m","prompt":"a\"b\u00e9"}"#);
        assert_eq!(r.prompt, PromptInput::Text(Cow::Owned("a\"bé".into())));
    }

    #[test]
    fn token_prompts_single_and_batched() {
        assert_eq!(
            ok(r#"{"model":"m","prompt":[1,2,3]}"#).prompt,
            PromptInput::Tokens(vec![1, 2, 3])
        );
        assert_eq!(
            ok(r#"{"model":"m","prompt":[[4,5],[6]]}"#).prompt,
            PromptInput::Tokens(vec![4, 5])
        );
        assert_eq!(
            ok(r#"{"model":"m","prompt":["first","second"]}"#).prompt,
            PromptInput::Text(Cow::Borrowed("first"))
        );
        assert_eq!(ok(r#"{"model":"m","prompt":[]}"#).prompt, PromptInput::None);
    }

    #[test]
    fn bad_token_ids_are_rejected() {
        for body in [
            r#"{"model":"m","prompt":[1,-2]}"#,
            r#"{"model":"m","prompt":[1,4294967296]}"#,
            r#"{"model":"m","prompt":[1,"a"]}"#,
            r#"{"model":"m","prompt":[1,2.5]}"#,
            r#"{"model":"m","prompt":[1,]}"#,
            r#"{"model":"m","prompt":[01]}"#,
            r#"{"model":"m","prompt":[[1],[true]]}"#,
            r#"{"model":"m","prompt":["a",{"x":1}]}"#,
            r#"{"model":"m","prompt":[1,[2]]}"#,
        ] {
            assert!(
                matches!(parse(body.as_bytes()), Err(Error::InvalidBody(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn chat_keeps_raw_messages() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"cache_salt":"s"}"#;
        let r = ok(body);
        let PromptInput::Chat(raw) = r.prompt else {
            panic!("not chat")
        };
        assert_eq!(raw.get(), r#"[{"role":"user","content":"hi"}]"#);
        assert_eq!(r.cache_salt.as_deref(), Some("s"));
        assert!(!r.stream);
    }

    #[test]
    fn missing_or_empty_model_is_its_own_error() {
        assert!(matches!(
            parse(br#"{"prompt":"x"}"#),
            Err(Error::MissingModel)
        ));
        assert!(matches!(
            parse(br#"{"model":"","prompt":"x"}"#),
            Err(Error::MissingModel)
        ));
    }

    #[test]
    fn malformed_bodies_name_the_problem() {
        let Err(Error::InvalidBody(msg)) = parse(b"{\"model\":") else {
            panic!()
        };
        assert!(msg.contains("truncated"), "{msg}");
        let Err(Error::InvalidBody(msg)) = parse(b"\xff\xfe") else {
            panic!()
        };
        assert!(msg.contains("UTF-8"), "{msg}");
        assert!(matches!(parse(b"[1,2]"), Err(Error::InvalidBody(_))));
        assert!(matches!(
            parse(br#"{"model":7}"#),
            Err(Error::InvalidBody(_))
        ));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let r = ok(r#"{"model":"m","max_tokens":5,"input":"x","extra":{"a":[1]}}"#);
        assert_eq!(r.prompt, PromptInput::None);
    }
}
