//! OpenAI Responses bodies (`/v1/responses`): `input` (a string or a list of items) is the
//! conversation, rendered with the model's chat template like chat messages
//! ([`kvpick_tokenize::responses`] builds the chat request vLLM renders).

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
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_output_tokens: Option<&'a RawValue>,
}

/// Parses a Responses body; `model` may be left out ([`Error::MissingModel`] then).
pub(super) fn parse(body: &[u8]) -> Result<InferenceRequest<'_>, Error> {
    let parsed: Body<'_> = from_json(body)?;
    let prompt = match parsed.input {
        None => PromptInput::None,
        Some(raw) if raw.get() == "null" => PromptInput::None,
        Some(raw) if raw.get().starts_with(['"', '[']) => PromptInput::Chat(raw),
        Some(_) => {
            return Err(Error::InvalidBody(
                "`input` must be a string or a list of items".into(),
            ));
        }
    };
    conversation(
        parsed.model,
        parsed.stream,
        parsed.cache_salt,
        prompt,
        ChatApi::Responses,
        parsed.max_output_tokens,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_the_conversation() {
        let r = parse(
            br#"{"model":"m","input":"hi","max_output_tokens":9,"stream":true,"cache_salt":"s"}"#,
        )
        .unwrap();
        let PromptInput::Chat(raw) = r.prompt else {
            panic!("{r:?}")
        };
        assert_eq!(raw.get(), r#""hi""#);
        assert_eq!((r.max_tokens, r.stream), (Some(9), true));
        assert_eq!(r.cache_salt.as_deref(), Some("s"));
        assert_eq!(r.chat_api, ChatApi::Responses);
        let r = parse(br#"{"model":"m","input":[{"role":"user","content":"x"}]}"#).unwrap();
        assert!(matches!(r.prompt, PromptInput::Chat(_)));
        assert_eq!(
            parse(br#"{"model":"m"}"#).unwrap().prompt,
            PromptInput::None
        );
    }

    #[test]
    fn bad_bodies_are_named() {
        assert!(matches!(
            parse(br#"{"model":"m","input":3}"#),
            Err(Error::InvalidBody(_))
        ));
        assert!(matches!(
            parse(br#"{"input":"x"}"#),
            Err(Error::MissingModel)
        ));
        assert!(matches!(parse(b"{"), Err(Error::InvalidBody(_))));
        assert!(matches!(
            parse(br#"{"model":"m","input":"x","stream":"yes"}"#),
            Err(Error::InvalidBody(_))
        ));
    }
}
