//! Loading a model's tokenizer files the way transformers does (see [`super`]).

use std::hash::{BuildHasher, Hasher};
use std::path::Path;

use serde_json::{Map, Value};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Encoding, Token, Tokenizer};

use super::ModelTokenizer;
use crate::encode::Pipeline;
use crate::error::Error;
use crate::hf_config::{SPECIAL_NAMES, config_templates, parse_json, read, token_of};
use crate::limits::TemplatePolicy;
use crate::segment::Boundaries;
use crate::template::ChatTemplates;

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
