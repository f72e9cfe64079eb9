//! Embeddings bodies (`/v1/embeddings`): routed by load, and by prefix when `input` is text or
//! token ids that the pod takes as they are (no truncation, no padding); chat-style embeddings
//! (`messages`, or messages in `input`) go by load alone.

use kvpick_tokenize::ChatApi;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{InferenceRequest, PromptField, PromptInput, Text, from_json, model};
use crate::error::Error;

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
    #[serde(borrow, default)]
    cache_salt: Option<Text<'a>>,
    #[serde(default)]
    add_special_tokens: Option<bool>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    truncate_prompt_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    padding: Option<&'a RawValue>,
}

/// Parses an embeddings body; `model` may be left out ([`Error::MissingModel`] then).
pub(super) fn parse(body: &[u8]) -> Result<InferenceRequest<'_>, Error> {
    let parsed: Body<'_> = from_json(body)?;
    let set = |v: Option<&RawValue>| v.is_some_and(|v| v.get() != "null");
    let as_is =
        !set(parsed.messages) && !set(parsed.truncate_prompt_tokens) && !set(parsed.padding);
    let prompt = match parsed.input {
        Some(raw) if as_is => match serde_json::from_str::<PromptField<'_>>(raw.get()) {
            Ok(PromptField::Text(t)) => PromptInput::Text(t),
            Ok(PromptField::Tokens(t)) => PromptInput::Tokens(t),
            // Chat messages in `input`, or a shape the pod will refuse: load decides.
            Ok(PromptField::Empty) | Err(_) => PromptInput::None,
        },
        _ => PromptInput::None,
    };
    Ok(InferenceRequest {
        model: model(parsed.model)?,
        stream: false,
        cache_salt: parsed.cache_salt.map(|t| t.0),
        add_special_tokens: parsed.add_special_tokens,
        prompt,
        chat_api: ChatApi::ChatCompletions,
        max_tokens: Some(0),
    })
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn prompt(body: &str) -> PromptInput<'_> {
        parse(body.as_bytes()).unwrap().prompt
    }

    #[test]
    fn text_and_ids_route_by_prefix_the_rest_by_load() {
        assert_eq!(
            prompt(r#"{"model":"e","input":"hello"}"#),
            PromptInput::Text(Cow::Borrowed("hello"))
        );
        assert_eq!(
            prompt(r#"{"model":"e","input":["a","b"]}"#),
            PromptInput::Text(Cow::Borrowed("a"))
        );
        assert_eq!(
            prompt(r#"{"model":"e","input":[[1,2],[3]]}"#),
            PromptInput::Tokens(vec![1, 2])
        );
        for by_load in [
            r#"{"model":"e","input":"x","truncate_prompt_tokens":8}"#,
            r#"{"model":"e","input":"x","padding":"max_length"}"#,
            r#"{"model":"e","input":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"e","messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"e","input":7}"#,
            r#"{"model":"e"}"#,
        ] {
            assert_eq!(prompt(by_load), PromptInput::None, "{by_load}");
        }
        let r = parse(br#"{"model":"e","input":"x","add_special_tokens":false}"#).unwrap();
        assert_eq!((r.add_special_tokens, r.max_tokens), (Some(false), Some(0)));
        assert!(matches!(
            parse(br#"{"input":"x"}"#),
            Err(Error::MissingModel)
        ));
    }
}
