//! The agentic long-context workload: one long system prompt shared by every request, then a
//! question of its own, as chat bodies (text, through the model's chat template in the picker)
//! and as completions bodies of the same token ids.

use std::path::Path;

use anyhow::Context;
use kvpick_benches::prose::Prose;
use kvpick_tokenize::{ChatRequest, ModelTokenizer, TokenCache, TokenizeInput};
use serde_json::{Value, json};

/// The tokenizer fixture (byte-level BPE, ChatML template) the picker is given too.
pub fn tokenizer_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tokenize/tests/fixtures/chatml")
}

/// One request, in both forms.
pub struct Question {
    /// `/v1/chat/completions` body (text).
    pub chat: Vec<u8>,
    /// `/v1/completions` body with the rendered chat's token ids.
    pub tokens: Vec<u8>,
    /// The token ids the engine sees (the chat template applied).
    pub ids: Vec<u32>,
}

/// The workload.
pub struct Workload {
    /// Tokens of the shared part (the rendered system message).
    pub shared_tokens: usize,
    /// The questions.
    pub questions: Vec<Question>,
}

/// Words of prose for about `tokens` tokens, from the fixture's tokens per word on a sample.
fn words_for(model: &ModelTokenizer, prose: &mut Prose, tokens: usize) -> anyhow::Result<usize> {
    let sample = prose.text(2_000);
    let n = model
        .tokenize(
            &TokenizeInput::Prompt {
                text: sample,
                add_special_tokens: false,
            },
            &TokenCache::new(0),
        )?
        .ids
        .len();
    Ok((tokens as f64 * 2_000.0 / n.max(1) as f64).ceil() as usize)
}

impl Workload {
    /// A `system_tokens`-token system prompt and `questions` questions of `question_tokens`.
    pub fn new(
        model_name: &str,
        system_tokens: usize,
        question_tokens: usize,
        questions: usize,
        max_tokens: u32,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(questions >= 2, "at least two questions");
        let model = ModelTokenizer::load(&tokenizer_dir()).context("the chatml fixture")?;
        let mut prose = Prose::new(11);
        let system_words = words_for(&model, &mut prose, system_tokens)?;
        let system = prose.text(system_words);
        let question_words = words_for(&model, &mut prose, question_tokens)?;
        // The system message is one cached segment: each question encodes only its own text.
        let cache = TokenCache::new(256 << 20);
        let mut out = Vec::with_capacity(questions);
        for _ in 0..questions {
            let body = json!({
                "model": model_name,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": prose.text(question_words)},
                ],
                "max_tokens": max_tokens,
            });
            let Value::Object(map) = &body else {
                anyhow::bail!("a chat body is an object");
            };
            let ids = model
                .tokenize(&TokenizeInput::Chat(ChatRequest::from_body(map)?), &cache)?
                .ids;
            let tokens = serde_json::to_vec(
                &json!({"model": model_name, "prompt": ids, "max_tokens": max_tokens}),
            )?;
            out.push(Question {
                chat: serde_json::to_vec(&body)?,
                tokens,
                ids,
            });
        }
        // What every request shares: the common prefix of the first two (the system message).
        let shared_tokens = match &out[..] {
            [a, b, ..] => a.ids.iter().zip(&b.ids).take_while(|(x, y)| x == y).count(),
            _ => 0,
        };
        Ok(Self {
            shared_tokens,
            questions: out,
        })
    }
}
