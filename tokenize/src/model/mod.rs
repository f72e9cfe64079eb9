//! One model's tokenizer as vLLM loads it: `tokenizer.json`, `tokenizer_config.json`, chat templates
//! ([`load`](ModelTokenizer::load)), and what it encodes, splicing cached segments where exact.
//!
//! Loading follows transformers (v5, `PreTrainedTokenizerFast`): `tokenizer.json` is authoritative,
//! truncation and padding are off, special tokens named in the config that the tokenizer lacks are
//! added, and a separate `chat_template.jinja` (or `additional_chat_templates/*.jinja`) wins over the
//! config's template. A post-processor in `tokenizer.json` decides BOS/EOS; only when it has none do
//! `add_bos_token`/`add_eos_token` build one, as transformers 4's Llama-family classes do
//! (transformers 5 ignores both flags whenever `tokenizer.json` exists).

use std::sync::Arc;

use tokenizers::Tokenizer;
use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::cache::{SegmentKey, TokenCache};
use crate::chat::{self, ChatRequest};
use crate::encode::Pipeline;
use crate::error::Error;
use crate::limits::TemplatePolicy;
use crate::segment::Boundaries;
use crate::template::ChatTemplates;

mod load;

/// What to tokenize.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizeInput {
    /// A completions `prompt` string; vLLM adds special tokens by default.
    Prompt {
        /// The text.
        text: String,
        /// vLLM's `add_special_tokens` (default true for completions).
        add_special_tokens: bool,
    },
    /// A chat request, rendered with the model's template.
    Chat(ChatRequest),
}

/// Token ids and how many of them came from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The ids vLLM computes for the request.
    pub ids: Vec<u32>,
    /// How many of `ids` were spliced from cached segments.
    pub cached_tokens: usize,
    /// How many of `ids` were encoded now (the rest: cache hits and special-token affixes).
    pub fresh_tokens: usize,
}

/// One model's tokenizer, chat templates and special tokens, loaded once and shared.
#[derive(Debug)]
pub struct ModelTokenizer {
    tokenizer: Tokenizer,
    templates: Option<ChatTemplates>,
    special_tokens: Vec<(String, String)>,
    boundaries: Boundaries,
    pipeline: Pipeline,
    /// Ids the post-processor puts before and after the text with special tokens on, when it only
    /// adds an affix (TemplateProcessing, ByteLevel, Bert, Roberta); else encode whole.
    affix: Option<(Vec<u32>, Vec<u32>)>,
    seed: u64,
    /// How chat templates run (fuel, output cap, request templates).
    policy: TemplatePolicy,
}

impl ModelTokenizer {
    /// The underlying HF tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The added tokens at which prompts are cut for the cache.
    pub fn boundaries(&self) -> &Boundaries {
        &self.boundaries
    }

    /// Whether an allocation-light pre-tokenization (byte-level or Metaspace) is used (see
    /// [`crate::encode`]).
    pub fn is_fast_path(&self) -> bool {
        self.pipeline.is_fast()
    }

    /// Whether the model has a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.templates.is_some()
    }

    /// The prompt text vLLM renders for a chat request.
    pub fn render_chat(&self, request: &ChatRequest) -> Result<String, Error> {
        chat::render(
            self.templates.as_ref(),
            &self.special_tokens,
            request,
            &self.policy,
        )
    }

    /// How this model's (and its requests') chat templates run.
    pub fn template_policy(&self) -> &TemplatePolicy {
        &self.policy
    }

    /// The ids vLLM computes for `input`, splicing cached segments where that is exact.
    pub fn tokenize(&self, input: &TokenizeInput, cache: &TokenCache) -> Result<Encoded, Error> {
        match input {
            TokenizeInput::Prompt {
                text,
                add_special_tokens,
            } => self.encode(text, *add_special_tokens, cache),
            TokenizeInput::Chat(request) => {
                let text = self.render_chat(request)?;
                self.encode(&text, request.add_special_tokens, cache)
            }
        }
    }

    /// Encodes `text` as `tokenizer.encode(text, add_special_tokens)` would.
    pub fn encode(
        &self,
        text: &str,
        add_special_tokens: bool,
        cache: &TokenCache,
    ) -> Result<Encoded, Error> {
        let affix = if add_special_tokens {
            match &self.affix {
                Some(a) => Some(a),
                None => return self.encode_whole(text, true),
            }
        } else {
            None
        };
        if !cache.is_enabled() {
            return self.encode_whole(text, add_special_tokens);
        }
        let mut ids = Vec::with_capacity(text.len() / 3 + 8);
        if let Some((prefix, _)) = affix {
            ids.extend_from_slice(prefix);
        }
        let mut cached_tokens = 0;
        let mut fresh_tokens = 0;
        for segment in self.boundaries.split(text) {
            let key = SegmentKey(xxh3_128_with_seed(segment.as_bytes(), self.seed));
            if let Some(hit) = cache.get(key) {
                ids.extend_from_slice(&hit);
                cached_tokens += hit.len();
                continue;
            }
            let start = ids.len();
            fresh_tokens += self
                .pipeline
                .encode_ids(&self.tokenizer, segment, &mut ids)?;
            cache.insert(key, Arc::from(&ids[start..]));
        }
        if let Some((_, suffix)) = affix {
            ids.extend_from_slice(suffix);
        }
        Ok(Encoded {
            ids,
            cached_tokens,
            fresh_tokens,
        })
    }

    fn encode_whole(&self, text: &str, add_special_tokens: bool) -> Result<Encoded, Error> {
        let ids = match (add_special_tokens, &self.affix) {
            (false, _) => {
                let mut ids = Vec::with_capacity(text.len() / 3 + 8);
                self.pipeline.encode_ids(&self.tokenizer, text, &mut ids)?;
                ids
            }
            (true, Some((prefix, suffix))) => {
                let mut ids = prefix.clone();
                self.pipeline.encode_ids(&self.tokenizer, text, &mut ids)?;
                ids.extend_from_slice(suffix);
                ids
            }
            (true, None) => self
                .tokenizer
                .encode_fast(text, true)
                .map_err(|e| Error::Encode(e.to_string()))?
                .get_ids()
                .to_vec(),
        };
        Ok(Encoded {
            fresh_tokens: ids.len(),
            cached_tokens: 0,
            ids,
        })
    }
}
