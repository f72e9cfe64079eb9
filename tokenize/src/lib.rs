//! Tokenization for kvpick: the token ids a vLLM pod will compute for a request, computed here.
//!
//! Precise prefix routing matches a request's blocks against the blocks each pod holds, so it needs
//! the pod's own token ids. Clients mostly send text, so this crate reproduces vLLM's tokenization
//! exactly (HF `tokenizer.json`, `tokenizer_config.json`, chat templates rendered as transformers
//! renders them) and cheaply (a content-addressed cache splices the unchanged history of a
//! conversation), off the async reactor with a deadline, and falls back to the pod's `/tokenize`.
//!
//! - [`registry`]: model name → tokenizer, loaded once from a directory layout or `MODEL=DIR` entries.
//! - [`hf_config`]: `tokenizer_config.json` values as transformers reads them.
//! - [`model`]: one model's tokenizer, templates and special tokens; `tokenize` for prompts and chats.
//! - [`chat`]: an OpenAI chat request and its rendering with the model's template.
//! - [`responses`], [`anthropic`]: OpenAI Responses and Anthropic Messages bodies as the chat
//!   requests vLLM renders for them.
//! - [`conversation`]: messages and tools normalised as vLLM and transformers do.
//! - [`template`]: the jinja environment HF templates expect (minijinja with Python semantics).
//! - [`limits`]: fuel, output cap, cancellation and trust for chat-template renders.
//! - [`pyjson`]: Python's `json.dumps` and `str()` for template values.
//! - [`encode`]: the tokenizer pipeline returning ids only, skipping no-op Unicode normalizers.
//! - [`segment`]: where a prompt may be cut without changing its ids (added-token boundaries).
//! - [`cache`]: token ids by segment content, byte-budgeted LRU.
//! - [`remote`]: vLLM's `/tokenize` over an injected HTTP client.
//! - [`pool`]: [`Tokenization::tokenize`], the async API with a bounded pool and a deadline.
//! - [`flags`]: parsers for the endpoint picker's `--tokenize-*` flags.
//! - [`error`]: the crate's one error type.
#![forbid(unsafe_code)]

pub mod anthropic;
pub mod cache;
pub mod chat;
pub mod conversation;
pub mod encode;
pub mod error;
pub mod hf_config;
pub mod limits;
pub mod model;
pub mod pool;
pub mod pyjson;
pub mod registry;
pub mod remote;
pub mod responses;
pub mod segment;
pub mod template;

pub use cache::TokenCache;
pub use chat::{ChatApi, ChatRequest};
pub use error::Error;
pub use limits::{Cancel, TemplatePolicy};
pub use model::{Encoded, ModelTokenizer, TokenizeInput};
pub use pool::{
    Tokenization, TokenizationOptions, TokenizeOutcome, TokenizeRequest, TokenizeSource,
    Unavailable,
};
pub use registry::{ModelSource, RegistryConfig, TokenizerRegistry};
pub use remote::{HttpClient, HyperClient, RemoteTokenizer};
