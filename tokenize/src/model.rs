//! One model's tokenizer as vLLM loads it: `tokenizer.json`, `tokenizer_config.json`, chat templates.
//!
//! Loading follows transformers (v5, `PreTrainedTokenizerFast`): `tokenizer.json` is authoritative,
//! truncation and padding are off, special tokens named in the config that the tokenizer lacks are
//! added, and a separate `chat_template.jinja` (or `additional_chat_templates/*.jinja`) wins over the
//! config's template. A post-processor in `tokenizer.json` decides BOS/EOS; only when it has none do
//! `add_bos_token`/`add_eos_token` build one, as transformers 4's Llama-family classes do
//! (transformers 5 ignores both flags whenever `tokenizer.json` exists).

use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Encoding, Token, Tokenizer};
use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::cache::{SegmentKey, TokenCache};
use crate::chat::{self, ChatRequest};
use crate::encode::Pipeline;
use crate::error::Error;
use crate::hf_config::{SPECIAL_NAMES, config_templates, parse_json, read, token_of};
use crate::limits::TemplatePolicy;
use crate::segment::Boundaries;
use crate::template::ChatTemplates;

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
    /// Loads the tokenizer files of one model directory, with the default [`TemplatePolicy`].
    pub fn load(dir: &Path) -> Result<Self, Error> {
        Self::load_with(dir, TemplatePolicy::default())
    }

    /// Loads the tokenizer files of one model directory; its templates run under `policy`.
    pub fn load_with(dir: &Path, policy: TemplatePolicy) -> Result<Self, Error> {
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer_json = read(&tokenizer_path)?
            .ok_or_else(|| Error::Load(format!("{}: not found", tokenizer_path.display())))?;
        let config_path = dir.join("tokenizer_config.json");
        let config = match read(&config_path)? {
            Some(text) => parse_json(&config_path, &text)?,
            None => Value::Object(Map::new()),
        };
        let mut templates = Vec::new();
        if let Some(t) = read(&dir.join("chat_template.jinja"))? {
            templates.push(("default".to_string(), t));
        }
        if let Ok(entries) = std::fs::read_dir(dir.join("additional_chat_templates")) {
            for entry in entries.flatten() {
                let path = entry.path();
                if let (Some(stem), Some("jinja")) = (
                    path.file_stem().and_then(|s| s.to_str()),
                    path.extension().and_then(|s| s.to_str()),
                ) && let Some(t) = read(&path)?
                {
                    templates.push((stem.to_string(), t));
                }
            }
        }
        if templates.is_empty() {
            templates = config_templates(&config);
        }
        if templates.is_empty() {
            let legacy_path = dir.join("chat_template.json");
            if let Some(text) = read(&legacy_path)? {
                let legacy = parse_json(&legacy_path, &text)?;
                templates = config_templates(&legacy);
            }
        }
        Self::from_parts_with(&tokenizer_json, &config, templates, policy)
            .map_err(|e| Error::Load(format!("{}: {e}", dir.display())))
    }

    /// Builds a tokenizer from `tokenizer.json` text, the parsed `tokenizer_config.json` and the chat
    /// templates (name → source).
    pub fn from_parts(
        tokenizer_json: &str,
        config: &Value,
        templates: Vec<(String, String)>,
    ) -> Result<Self, Error> {
        Self::from_parts_with(tokenizer_json, config, templates, TemplatePolicy::default())
    }

    /// [`Self::from_parts`] with the templates running under `policy`.
    pub fn from_parts_with(
        tokenizer_json: &str,
        config: &Value,
        templates: Vec<(String, String)>,
        policy: TemplatePolicy,
    ) -> Result<Self, Error> {
        let mut tokenizer = Tokenizer::from_bytes(tokenizer_json.as_bytes())
            .map_err(|e| Error::Load(e.to_string()))?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::Load(e.to_string()))?;
        tokenizer.with_padding(None);
        tokenizer.set_encode_special_tokens(false);

        // Tokens the config declares but tokenizer.json lacks are added, as transformers does.
        let present = |t: &Tokenizer, c: &str| {
            t.get_added_tokens_decoder()
                .values()
                .any(|a| a.content == c)
        };
        if let Some(Value::Object(decoder)) = config.get("added_tokens_decoder") {
            let mut entries: Vec<(u64, &Value)> = decoder
                .iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
                .collect();
            entries.sort_by_key(|(id, _)| *id);
            for (_, v) in entries {
                if let Some(t) = token_of(v).filter(|t| !present(&tokenizer, &t.content)) {
                    tokenizer
                        .add_tokens([t])
                        .map_err(|e| Error::Load(e.to_string()))?;
                }
            }
        }
        let mut special_tokens = Vec::new();
        let mut extra: Vec<AddedToken> = Vec::new();
        for name in SPECIAL_NAMES {
            if let Some(t) = config.get(name).and_then(token_of) {
                special_tokens.push((name.to_string(), t.content.clone()));
                extra.push(t);
            }
        }
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            match config.get(key) {
                Some(Value::Array(list)) => extra.extend(list.iter().filter_map(token_of)),
                Some(Value::Object(named)) => {
                    for (name, v) in named {
                        if let Some(t) = token_of(v) {
                            special_tokens.push((name.clone(), t.content.clone()));
                            extra.push(t);
                        }
                    }
                }
                _ => {}
            }
        }
        for t in extra {
            if !present(&tokenizer, &t.content) {
                tokenizer
                    .add_special_tokens([t.special(true)])
                    .map_err(|e| Error::Load(e.to_string()))?;
            }
        }

        if tokenizer.get_post_processor().is_none() {
            let flag = |k: &str| config.get(k).and_then(Value::as_bool).unwrap_or(false);
            let lookup = |name: &str| {
                special_tokens
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, c)| c.clone())
            };
            let mut single = Vec::new();
            let mut specials = Vec::new();
            for (key, name) in [
                ("add_bos_token", "bos_token"),
                ("", "$A"),
                ("add_eos_token", "eos_token"),
            ] {
                if name == "$A" {
                    single.push(name.to_string());
                } else if flag(key)
                    && let Some(c) = lookup(name)
                {
                    let id = tokenizer
                        .token_to_id(&c)
                        .ok_or_else(|| Error::Load(format!("{name} {c:?} has no id")))?;
                    single.push(c.clone());
                    specials.push((c, id));
                }
            }
            if !specials.is_empty() {
                let processor = TemplateProcessing::builder()
                    .try_single(single.join(" "))
                    .map_err(Error::Load)?
                    .special_tokens(specials)
                    .build()
                    .map_err(|e| Error::Load(e.to_string()))?;
                tokenizer.with_post_processor(Some(processor));
            }
        }

        let templates = if templates.is_empty() {
            None
        } else {
            Some(ChatTemplates::compile(templates, policy)?)
        };
        let mut boundaries = Boundaries::analyze(&tokenizer);
        if !boundaries.self_check(&tokenizer) {
            tracing::warn!(
                "tokenizer failed the segment self-check; its prompts are encoded whole"
            );
            boundaries = Boundaries::none();
        }
        let affix = affix_of(&tokenizer);
        let pipeline = Pipeline::analyze(&tokenizer);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write(tokenizer_json.as_bytes());
        Ok(Self {
            tokenizer,
            templates,
            special_tokens,
            boundaries,
            pipeline,
            affix,
            seed: hasher.finish(),
            policy,
        })
    }

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

/// Runs the post-processor on a one-token sentinel encoding: if the output is the sentinel with
/// ids only before and after it, those are the affix added around any text.
fn affix_of(tokenizer: &Tokenizer) -> Option<(Vec<u32>, Vec<u32>)> {
    const SENTINEL: u32 = u32::MAX;
    let probe = |tokens: Vec<Token>| {
        tokenizer
            .post_process(Encoding::from_tokens(tokens, 0), None, true)
            .ok()
            .map(|e| e.get_ids().to_vec())
    };
    let one = probe(vec![Token::new(SENTINEL, "x".into(), (0, 1))])?;
    let two = probe(vec![
        Token::new(SENTINEL, "x".into(), (0, 1)),
        Token::new(SENTINEL, "y".into(), (1, 2)),
    ])?;
    let at = one.iter().position(|&i| i == SENTINEL)?;
    let (prefix, rest) = one.split_at(at);
    let suffix = &rest[1..];
    if suffix.contains(&SENTINEL) {
        return None;
    }
    // The affix must not depend on the text: two tokens in, the same affix around them.
    let expected: Vec<u32> = prefix
        .iter()
        .copied()
        .chain([SENTINEL, SENTINEL])
        .chain(suffix.iter().copied())
        .collect();
    (two == expected).then(|| (prefix.to_vec(), suffix.to_vec()))
}
