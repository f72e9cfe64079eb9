//! From a parsed request to the prompt the scheduler sees: the seam where a tokenizer slots in.
//!
//! Token-array prompts are used as is: their block keys come straight from the ids. Text and chat
//! prompts go through a [`Tokenize`] implementation ([`crate::tokenizer::Tokenizer`] in the
//! binary), asynchronously: tokenizing runs off the reactor and may ask a pod, so the stream awaits
//! it without blocking other streams. When no ids come back in time (no tokenizer for the model, a
//! timeout, an error), the scheduler gets [`Prompt::Text`], which only the approximate prefix
//! scorer can use. For chat-style requests that text is the conversation's raw JSON (`messages`,
//! or a Responses `input`): successive turns of one conversation share its prefix, which is all
//! an approximate scorer needs. Every text or chat
//! request is counted in `kvpick_tokenize_total{source, outcome}`, and the first fallback of
//! each (model, reason) is logged as a warning, so a missing tokenizer is visible without a
//! log line per request.

use std::collections::HashSet;
use std::sync::OnceLock;

use parking_lot::Mutex;

use bytes::Bytes;
use kvpick_scheduler::Prompt;

use crate::request::{InferenceRequest, PromptInput};
use crate::telemetry as t;

/// A boxed future (`'static` here: it owns what it needs); one alias with the tokenizer crate's.
pub use kvpick_tokenize::remote::BoxFuture;

/// What to tokenize, owned (the work outlives nothing borrowed from the stream).
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizeCall {
    /// A completions prompt.
    Completion {
        /// The request's `model`.
        model: String,
        /// The prompt text.
        text: String,
        /// The body's `add_special_tokens` (vLLM's default for completions: true).
        add_special_tokens: bool,
    },
    /// A conversation: the whole body, since `tools`, `chat_template_kwargs` and friends shape
    /// the prompt too. It is read off the reactor.
    Chat {
        /// The request's `model`.
        model: String,
        /// The request body (a JSON object of `api`).
        body: Bytes,
        /// The API the body is written for (chat completions, Responses, Messages).
        api: kvpick_tokenize::ChatApi,
    },
}

/// What a tokenizer answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tokens {
    /// The ids the pod will compute; `source` is a metric label (`local`, `cache`, `remote`).
    Ids {
        /// The ids.
        ids: Vec<u32>,
        /// Where they came from.
        source: &'static str,
    },
    /// None: route with the text; `reason` is a metric label (`no_tokenizer`, `timeout`, ...).
    Unavailable {
        /// Why.
        reason: &'static str,
    },
}

/// Turns text prompts into the token ids the pod will see. Shared by all streams.
pub trait Tokenize: Send + Sync + std::fmt::Debug {
    /// Whether any model could be tokenized (if not, requests skip building a call).
    fn enabled(&self) -> bool {
        true
    }
    /// Tokenizes `call`; must answer within its own deadline and never panic.
    fn tokenize(&self, call: TokenizeCall) -> BoxFuture<'static, Tokens>;
}

/// The tokenizer used when none is configured: declines everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTokenizer;

impl Tokenize for NoTokenizer {
    fn enabled(&self) -> bool {
        false
    }

    fn tokenize(&self, _call: TokenizeCall) -> BoxFuture<'static, Tokens> {
        Box::pin(std::future::ready(Tokens::Unavailable {
            reason: "no_tokenizer",
        }))
    }
}

/// Token ids produced for a request, kept beside it so that [`Prompt`] can borrow them.
#[derive(Debug, Default)]
pub struct Tokenized(Option<Vec<u32>>);

impl Tokenized {
    /// Runs `tokenizer` over a text or chat prompt (token prompts need nothing); `body` is the
    /// request's body, which `req` was parsed from.
    pub async fn new(tokenizer: &dyn Tokenize, req: &InferenceRequest<'_>, body: &Bytes) -> Self {
        let call = match &req.prompt {
            PromptInput::Tokens(_) | PromptInput::None => return Self(None),
            _ if !tokenizer.enabled() => {
                fell_back(&req.model, "no_tokenizer");
                return Self(None);
            }
            PromptInput::Text(text) => TokenizeCall::Completion {
                model: req.model.to_string(),
                text: text.to_string(),
                add_special_tokens: req.add_special_tokens.unwrap_or(true),
            },
            PromptInput::Chat(_) => TokenizeCall::Chat {
                model: req.model.to_string(),
                body: body.clone(),
                api: req.chat_api,
            },
        };
        match tokenizer.tokenize(call).await {
            Tokens::Ids { ids, source } => {
                count(source, "ok");
                Self(Some(ids))
            }
            Tokens::Unavailable { reason } => {
                fell_back(&req.model, reason);
                Self(None)
            }
        }
    }

    /// Ids given directly (tests, the query API).
    pub fn from_ids(ids: Option<Vec<u32>>) -> Self {
        Self(ids)
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

fn count(source: &'static str, outcome: &'static str) {
    metrics::counter!(t::TOKENIZE, "source" => source, "outcome" => outcome).increment(1);
}

/// (model, reason) pairs already warned about; bounded, since model names come from clients.
const MAX_WARNED: usize = 256;

/// Counts a request routed without token ids, and warns the first time per (model, reason).
fn fell_back(model: &str, reason: &'static str) {
    count("unavailable", reason);
    static WARNED: OnceLock<Mutex<HashSet<(String, &'static str)>>> = OnceLock::new();
    let mut warned = WARNED.get_or_init(Mutex::default).lock();
    if warned.len() >= MAX_WARNED || warned.contains(&(model.to_owned(), reason)) {
        return;
    }
    warned.insert((model.to_owned(), reason));
    drop(warned);
    tracing::warn!(
        model,
        reason,
        "no token ids for a text or chat prompt: routing it by approximate prefix and load only \
         (counted in kvpick_tokenize_total{{source=\"unavailable\"}}; logged once per model and reason)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request;

    #[derive(Debug)]
    struct ByteIds;
    impl Tokenize for ByteIds {
        fn tokenize(&self, call: TokenizeCall) -> BoxFuture<'static, Tokens> {
            Box::pin(std::future::ready(match call {
                TokenizeCall::Completion { text, .. } => Tokens::Ids {
                    ids: text.bytes().map(u32::from).collect(),
                    source: "local",
                },
                TokenizeCall::Chat { .. } => Tokens::Unavailable { reason: "template" },
            }))
        }
    }

    async fn run(tokenizer: &dyn Tokenize, body: &'static [u8]) -> (Option<Vec<u32>>, String) {
        let bytes = Bytes::from_static(body);
        let req = request::parse(body).unwrap();
        let t = Tokenized::new(tokenizer, &req, &bytes).await;
        let shown = format!("{:?}", t.prompt(&req.prompt));
        (t.0, shown)
    }

    #[tokio::test]
    async fn tokens_pass_through_and_text_falls_back() {
        let (ids, p) = run(&NoTokenizer, br#"{"model":"m","prompt":[1,2]}"#).await;
        assert_eq!((ids, p.as_str()), (None, "Tokens([1, 2])"));
        let (ids, p) = run(&NoTokenizer, br#"{"model":"m","prompt":"ab"}"#).await;
        assert_eq!((ids, p.as_str()), (None, r#"Text("ab")"#));
        assert_eq!(
            Tokenized::default().prompt(&PromptInput::None),
            Prompt::Empty
        );
    }

    #[tokio::test]
    async fn a_tokenizer_turns_text_into_tokens_and_declines_fall_back() {
        let (ids, _) = run(&ByteIds, br#"{"model":"m","prompt":"ab"}"#).await;
        assert_eq!(ids, Some(vec![97, 98]));
        let (ids, p) = run(&ByteIds, br#"{"model":"m","messages":[{"a":1}]}"#).await;
        assert_eq!((ids, p.as_str()), (None, r#"Text("[{\"a\":1}]")"#));
    }
}
