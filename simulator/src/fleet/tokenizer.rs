//! How the fleet turns text into token ids and back, when no real tokenizer is configured.
//!
//! The fallback is deterministic and documented (it is what `/tokenize` answers): text is split on
//! whitespace; a word the fleet itself wrote for token `t` (three consonant-vowel syllables, see
//! [`word`]) reads back as `t`, any other word is `xxh3(word) mod 151,936`. So generated text sent
//! back as conversation history tokenizes to the very ids the engine generated, and equal text
//! gives equal ids, which is all prefix caching needs. Chat messages are rendered ChatML-like
//! (`<|im_start|>role content <|im_end|>`, then `<|im_start|>assistant` for the generation
//! prompt) before tokenizing. Token-id prompts bypass all this. It is not any model's tokenizer:
//! a gateway that tokenizes text itself must use the same rule (kvpick-epp gets token-id prompts
//! in the demo).

use serde_json::Value;

use crate::trace::tokens::VOCAB;

/// What `/tokenize` names this tokenizer (header `x-kvpick-sim-tokenizer`).
pub const FALLBACK_NAME: &str = "fallback-whitespace-words";

const CONSONANTS: &[u8; 14] = b"bdfgklmnprstvz";
const VOWELS: &[u8; 5] = b"aeiou";
const SYLLABLES: u32 = 70;

/// The word the fleet writes for token `id` (`id < 343,000`).
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

/// The fleet's tokenizer.
#[derive(Clone, Debug, Default)]
pub struct Tokenizer;

impl Tokenizer {
    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        text.split_whitespace()
            .map(|w| {
                parse_word(w).unwrap_or_else(|| {
                    (xxhash_rust::xxh3::xxh3_64(w.as_bytes()) % VOCAB as u64) as u32
                })
            })
            .collect()
    }

    /// The text of one generated token (a leading space, then its word).
    pub fn decode_token(&self, id: u32) -> String {
        format!(" {}", word(id))
    }

    /// The prompt text of a chat conversation, or why it is not one.
    pub fn render_chat(
        &self,
        messages: &[Value],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
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
                    for p in parts {
                        if let Some(t) = p.get("text").and_then(Value::as_str) {
                            out.push_str(t);
                            out.push(' ');
                        }
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
        if add_generation_prompt {
            out.push_str("<|im_start|>assistant");
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_words_read_back_as_their_ids() {
        let t = Tokenizer;
        for id in [0, 1, 69, 70, 4899, VOCAB - 1] {
            assert_eq!(t.encode(&t.decode_token(id)), vec![id], "{id}");
        }
        let ids = t.encode("hello  world\nhello");
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[0], ids[2]);
        assert!(ids.iter().all(|&i| i < VOCAB));
        assert_eq!(parse_word("zuzuzu"), None, "past the vocabulary");
    }

    #[test]
    fn chat_rendering() {
        let t = Tokenizer;
        let msgs: Vec<Value> = serde_json::from_str(
            r#"[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}]"#,
        )
        .unwrap();
        let text = t.render_chat(&msgs, true).unwrap();
        assert!(text.starts_with("<|im_start|>system be brief <|im_end|>"));
        assert!(text.ends_with("<|im_start|>assistant"));
        assert!(
            t.render_chat(&[serde_json::json!({"content": "x"})], true)
                .is_err()
        );
    }
}
