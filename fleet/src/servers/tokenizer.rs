//! How the fleet turns text into token ids and back.
//!
//! With `--tokenizer DIR` it uses a model's own files (`tokenizer.json`, `tokenizer_config.json`,
//! chat templates) through `kvpick-tokenize`, the same code kvpick-epp uses and exact with vLLM:
//! completions prompts with special tokens (vLLM's default), chat requests rendered with the
//! model's template (the whole request: messages, tools, `chat_template_kwargs`...).
//!
//! Without one, a deterministic fallback, documented and named by `/tokenize` (header
//! `x-kvpick-sim-tokenizer: fallback-whitespace-words`): text is split on whitespace; a word the
//! fleet itself wrote for token `t` (three consonant-vowel syllables, see [`word`]) reads back as
//! `t`, any other word is `xxh3(word) mod 151,936`. So generated text sent back as conversation
//! history tokenizes to the very ids the engine generated, and equal text gives equal ids, which
//! is all prefix caching needs. Chat messages are rendered ChatML-like (`<|im_start|>role content
//! <|im_end|>`, then `<|im_start|>assistant`) first. It is no model's tokenizer: a gateway that
//! tokenizes text itself computes other ids (the demo sends token ids).
//!
//! Token-id prompts bypass all this.

use std::path::Path;
use std::sync::Arc;

use kvpick_tokenize::{ChatRequest, ModelTokenizer, TokenCache, TokenizeInput};
use serde_json::Value;

use crate::FleetError;
use kvpick_sim::trace::tokens::VOCAB;

/// What `/tokenize` names the fallback (header `x-kvpick-sim-tokenizer`).
pub const FALLBACK_NAME: &str = "fallback-whitespace-words";

const CONSONANTS: &[u8; 14] = b"bdfgklmnprstvz";
const VOWELS: &[u8; 5] = b"aeiou";
const SYLLABLES: u32 = 70;

/// The word the fallback writes for token `id` (`id < 343,000`).
pub fn word(id: u32) -> String {
    let mut out = String::with_capacity(6);
    let mut rest = id;
    for _ in 0..3 {
        let s = rest % SYLLABLES;
        rest /= SYLLABLES;
        out.push(CONSONANTS[(s / 5) as usize] as char);
        out.push(VOWELS[(s % 5) as usize] as char);
    }
    out
}

/// The token a word written by [`word`] stands for.
fn parse_word(w: &str) -> Option<u32> {
    let b = w.as_bytes();
    if b.len() != 6 {
        return None;
    }
    let mut id = 0u32;
    for i in (0..3).rev() {
        let c = CONSONANTS.iter().position(|&c| c == b[2 * i])? as u32;
        let v = VOWELS.iter().position(|&v| v == b[2 * i + 1])? as u32;
        id = id * SYLLABLES + c * 5 + v;
    }
    (id < VOCAB).then_some(id)
}

fn fallback_encode(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .map(|w| {
            parse_word(w)
                .unwrap_or_else(|| (xxhash_rust::xxh3::xxh3_64(w.as_bytes()) % VOCAB as u64) as u32)
        })
        .collect()
}

fn fallback_chat(body: &Value) -> Result<String, String> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages must be a list")?;
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("messages[{i}].role must be a string"))?;
        out.push_str("<|im_start|>");
        out.push_str(role);
        out.push(' ');
        match m.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Array(parts)) => {
                for t in parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                {
                    out.push_str(t);
                    out.push(' ');
                }
            }
            Some(_) => {
                return Err(format!(
                    "messages[{i}].content must be a string or a list of parts"
                ));
            }
        }
        out.push_str(" <|im_end|>\n");
    }
    if body.get("add_generation_prompt").and_then(Value::as_bool) != Some(false) {
        out.push_str("<|im_start|>assistant");
    }
    Ok(out)
}

/// The fleet's tokenizer.
#[derive(Clone, Debug, Default)]
pub enum Tokenizer {
    /// The deterministic whitespace-word rule (see the module docs).
    #[default]
    Fallback,
    /// A model's tokenizer files.
    Model(Arc<ModelTokenizer>),
}

impl Tokenizer {
    /// Loads a model's tokenizer from `dir` (`tokenizer.json`, `tokenizer_config.json`, ...).
    pub fn load(dir: &Path) -> Result<Self, FleetError> {
        let model = ModelTokenizer::load(dir).map_err(|e| {
            FleetError::InvalidConfig(format!("--tokenizer {}: {e}", dir.display()))
        })?;
        Ok(Self::Model(Arc::new(model)))
    }

    /// What `/tokenize` names it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fallback => FALLBACK_NAME,
            Self::Model(_) => "tokenizer.json",
        }
    }

    /// Token ids of a completions prompt (`add_special_tokens`: vLLM's flag, default true).
    pub fn prompt(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        match self {
            Self::Fallback => Ok(fallback_encode(text)),
            Self::Model(m) => m
                .encode(text, add_special_tokens, &TokenCache::new(0))
                .map(|e| e.ids)
                .map_err(|e| e.to_string()),
        }
    }

    /// Token ids of a chat request (the whole `/v1/chat/completions` body).
    pub fn chat(&self, body: &Value) -> Result<Vec<u32>, String> {
        match self {
            Self::Fallback => fallback_chat(body).map(|t| fallback_encode(&t)),
            Self::Model(m) => {
                let map = body.as_object().ok_or("the body must be an object")?;
                let req = ChatRequest::from_body(map).map_err(|e| e.to_string())?;
                m.tokenize(&TokenizeInput::Chat(req), &TokenCache::new(0))
                    .map(|e| e.ids)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// The text of one generated token (a model's decoding of `id` modulo its vocabulary).
    pub fn decode_token(&self, id: u32) -> String {
        match self {
            Self::Fallback => format!(" {}", word(id)),
            Self::Model(m) => {
                let t = m.tokenizer();
                let id = id % t.get_vocab_size(true).max(1) as u32;
                t.decode(&[id], false).unwrap_or_default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_words_read_back_as_their_ids() {
        let t = Tokenizer::Fallback;
        for id in [0, 1, 69, 70, 4899, VOCAB - 1] {
            assert_eq!(t.prompt(&t.decode_token(id), true), Ok(vec![id]), "{id}");
        }
        let ids = t.prompt("hello  world\nhello", true).unwrap();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[0], ids[2]);
        assert!(ids.iter().all(|&i| i < VOCAB));
        assert_eq!(parse_word("zuzuzu"), None, "past the vocabulary");
    }

    #[test]
    fn fallback_chat_rendering() {
        let body: Value = serde_json::from_str(
            r#"{"messages": [{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi"}]}]}"#,
        )
        .unwrap();
        let text = fallback_chat(&body).unwrap();
        assert!(text.starts_with("<|im_start|>system be brief <|im_end|>"));
        assert!(text.ends_with("<|im_start|>assistant"));
        let bad = serde_json::json!({"messages": [{"content": "x"}]});
        assert!(Tokenizer::Fallback.chat(&bad).is_err());
    }
}
