//! From a parsed request to the prompt the scheduler sees: the seam where a tokenizer slots in.
//!
//! Token-array prompts are used as is: their block keys come straight from the ids. Text and chat
//! prompts go through a [`Tokenize`] implementation; until a real tokenizer is configured,
//! [`NoTokenizer`] declines and the scheduler gets [`Prompt::Text`], which only the approximate
//! prefix scorer can use. For chat requests that text is the raw `messages` JSON: successive turns
//! of one conversation share its prefix, which is all an approximate scorer needs.

use kvpick_scheduler::Prompt;
use serde_json::value::RawValue;

use crate::request::PromptInput;

/// Turns text prompts into the token ids the pod will see. Implementations must be cheap to share
/// between requests (`Send + Sync`) and return `None` for a model they do not know.
pub trait Tokenize: Send + Sync + std::fmt::Debug {
    /// Token ids of a completions prompt.
    fn completion(&self, model: &str, text: &str) -> Option<Vec<u32>>;
    /// Token ids of a chat conversation after the model's chat template.
    fn chat(&self, model: &str, messages: &RawValue) -> Option<Vec<u32>>;
}

/// The tokenizer used until one is configured: declines everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTokenizer;

impl Tokenize for NoTokenizer {
    fn completion(&self, _model: &str, _text: &str) -> Option<Vec<u32>> {
        None
    }

    fn chat(&self, _model: &str, _messages: &RawValue) -> Option<Vec<u32>> {
        None
    }
}

/// Token ids produced for a request, kept beside it so that [`Prompt`] can borrow them.
#[derive(Debug, Default)]
pub struct Tokenized(Option<Vec<u32>>);

impl Tokenized {
    /// Runs `tokenizer` over a text or chat prompt (token prompts need nothing).
    pub fn new(tokenizer: &dyn Tokenize, model: &str, input: &PromptInput<'_>) -> Self {
        Self(match input {
            PromptInput::Text(text) => tokenizer.completion(model, text),
            PromptInput::Chat(messages) => tokenizer.chat(model, messages),
            PromptInput::Tokens(_) | PromptInput::None => None,
        })
    }

    /// The scheduler's view of `input`, preferring token ids.
    pub fn prompt<'a>(&'a self, input: &'a PromptInput<'_>) -> Prompt<'a> {
        if let Some(tokens) = &self.0 {
            return Prompt::Tokens(tokens);
        }
        match input {
            PromptInput::Tokens(tokens) => Prompt::Tokens(tokens),
            PromptInput::Text(text) => Prompt::Text(text),
            PromptInput::Chat(messages) => Prompt::Text(messages.get()),
            PromptInput::None => Prompt::Empty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[derive(Debug)]
    struct Bytes;
    impl Tokenize for Bytes {
        fn completion(&self, _: &str, text: &str) -> Option<Vec<u32>> {
            Some(text.bytes().map(u32::from).collect())
        }
        fn chat(&self, _: &str, _: &RawValue) -> Option<Vec<u32>> {
            None
        }
    }

    #[test]
    fn tokens_pass_through_and_text_falls_back() {
        let tokens = PromptInput::Tokens(vec![1, 2]);
        let t = Tokenized::new(&NoTokenizer, "m", &tokens);
        assert_eq!(t.prompt(&tokens), Prompt::Tokens(&[1, 2]));
        let text = PromptInput::Text(Cow::Borrowed("ab"));
        let t = Tokenized::new(&NoTokenizer, "m", &text);
        assert_eq!(t.prompt(&text), Prompt::Text("ab"));
        assert_eq!(
            Tokenized::default().prompt(&PromptInput::None),
            Prompt::Empty
        );
    }

    #[test]
    fn a_tokenizer_turns_text_into_tokens() {
        let text = PromptInput::Text(Cow::Borrowed("ab"));
        let t = Tokenized::new(&Bytes, "m", &text);
        assert_eq!(t.prompt(&text), Prompt::Tokens(&[97, 98]));
    }
}
