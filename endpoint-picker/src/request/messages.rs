//! Anthropic Messages bodies (`/v1/messages`): `system` and `messages` (content blocks) are the
//! conversation, rendered with the model's chat template ([`kvpick_tokenize::anthropic`] builds
//! the chat request vLLM renders).

use kvpick_tokenize::ChatApi;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{InferenceRequest, PromptInput, Text, conversation, from_json};
use crate::error::Error;

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default)]
    cache_salt: Option<Text<'a>>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
}

/// Parses a Messages body (`model` is required).
pub(super) fn parse(body: &[u8]) -> Result<InferenceRequest<'_>, Error> {
    let parsed: Body<'_> = from_json(body)?;
    let prompt = match parsed.messages {
        Some(raw) if raw.get().starts_with('[') => PromptInput::Chat(raw),
        None => PromptInput::None,
        Some(raw) if raw.get() == "null" => PromptInput::None,
        Some(_) => return Err(Error::InvalidBody("`messages` must be a list".into())),
    };
    conversation(
        parsed.model,
        parsed.stream,
        parsed.cache_salt,
        prompt,
        ChatApi::Messages,
        parsed.max_tokens,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_the_conversation() {
        let r = parse(
            br#"{"model":"claude","max_tokens":64,"system":"s","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(r.model, "claude");
        assert_eq!(r.max_tokens, Some(64));
        assert_eq!(r.chat_api, ChatApi::Messages);
        let PromptInput::Chat(raw) = r.prompt else {
            panic!()
        };
        assert_eq!(raw.get(), r#"[{"role":"user","content":"hi"}]"#);
    }

    #[test]
    fn bad_bodies_are_named() {
        assert!(matches!(
            parse(br#"{"model":"m","messages":"hi"}"#),
            Err(Error::InvalidBody(_))
        ));
        assert!(matches!(
            parse(br#"{"messages":[]}"#),
            Err(Error::MissingModel)
        ));
        assert!(matches!(parse(b"\xff"), Err(Error::InvalidBody(_))));
    }
}
