//! Splicing cached segments gives exactly the ids of encoding the whole text.
//!
//! Random texts are built from fragments chosen to stress the cut points: every added token of the
//! model (boundary or not), pieces of them, whitespace runs, word characters and punctuation right
//! before and after tokens, Unicode, and text that prefixes or overlaps tokens. For each, the cache is
//! warmed with a random other text first (so some segments hit, some miss), then the spliced ids are
//! compared with a whole `encode`, with and without special tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::path::Path;

use kvpick_tokenize::{ModelTokenizer, TokenCache};
use proptest::prelude::*;

fn load(name: &str) -> ModelTokenizer {
    ModelTokenizer::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .expect("fixture model loads")
}

const FRAGMENTS: &[&str] = &[
    " ", "  ", "\n", "\n\n", "\t", "\r\n", "a", "hello", " world", "_", "x_y", "123", "4567", ".",
    ",", "!?", "'s", "é", "e\u{301}", "😀", "中文", "▁", "<", ">", "|", "[", "]", "/", "<|", "|>",
    "<|im", "_start", "<s", "s>", "</", "[INST", "INST]", "<tool", "call>", "\u{a0}", "\u{200b}",
];

fn text_strategy(tokens: Vec<String>) -> impl Strategy<Value = String> {
    let mut pool: Vec<String> = FRAGMENTS.iter().map(|s| s.to_string()).collect();
    pool.extend(tokens.iter().cloned());
    pool.extend(tokens.iter().cloned()); // tokens twice as likely
    proptest::collection::vec(proptest::sample::select(pool), 0..40)
        .prop_map(|parts| parts.concat())
}

fn check(model: &ModelTokenizer, warm: &str, text: &str) -> Result<(), TestCaseError> {
    let cache = TokenCache::new(1 << 20);
    for add_special_tokens in [false, true] {
        model
            .encode(warm, add_special_tokens, &cache)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let spliced = model
            .encode(text, add_special_tokens, &cache)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let whole = model
            .tokenizer()
            .encode_fast(text, add_special_tokens)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&spliced.ids, &whole.get_ids().to_vec(), "text {:?}", text);
        prop_assert_eq!(
            spliced.cached_tokens + spliced.fresh_tokens <= spliced.ids.len(),
            true
        );
    }
    Ok(())
}

fn all_added(model: &ModelTokenizer) -> Vec<String> {
    model
        .tokenizer()
        .get_added_tokens_decoder()
        .values()
        .map(|t| t.content.clone())
        .collect()
}

macro_rules! splice_props {
    ($($test:ident => $model:literal),* $(,)?) => {$(
        proptest! {
            #[test]
            fn $test((warm, text) in {
                let tokens = all_added(&load($model));
                (text_strategy(tokens.clone()), text_strategy(tokens))
            }) {
                thread_local! { static MODEL: ModelTokenizer = load($model); }
                MODEL.with(|m| check(m, &warm, &text))?;
                // The warm text itself, then its own extension (the next turn of a chat).
                MODEL.with(|m| check(m, &text, &format!("{text}{warm}")))?;
            }
        }
    )*};
}

splice_props! {
    chatml_splices_exactly => "chatml",
    llama3_splices_exactly => "llama3",
    mistral_splices_exactly => "mistral",
}

/// The chatml tokenizer plus added tokens that make cuts unsafe: one containing `<|im_start|>`
/// (a match straddling the cut), a longer token starting with `<|im_end|>`, an `lstrip` token, a
/// `single_word` token, a normalized one and one starting with a word character.
fn hazards() -> ModelTokenizer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chatml");
    let json = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    let config = serde_json::json!({"added_tokens_decoder": {
        "5000": {"content": "ab<|im_start|>", "special": true, "normalized": false},
        "5001": {"content": "<|im_end|>!!", "special": true, "normalized": false},
        "5002": {"content": "<mask>", "special": true, "normalized": false, "lstrip": true},
        "5003": {"content": "<w>", "special": true, "normalized": false, "single_word": true},
        "5004": {"content": "<norm>", "special": false, "normalized": true},
        "5005": {"content": "tok<x>", "special": true, "normalized": false},
    }});
    ModelTokenizer::from_parts(&json, &config, Vec::new()).unwrap()
}

#[test]
fn hazardous_tokens_are_not_boundaries_and_a_naive_cut_would_differ() {
    let model = hazards();
    let b = model.boundaries().tokens();
    for t in [
        "<|im_start|>",
        "<|im_end|>",
        "<mask>",
        "<w>",
        "<norm>",
        "tok<x>",
    ] {
        assert!(
            !b.contains(&t.to_string()),
            "{t} must not be a boundary: {b:?}"
        );
    }
    assert!(b.contains(&"<tool_call>".to_string()));
    // Cutting "ab<|im_start|>user" before <|im_start|> would change the ids.
    let t = model.tokenizer();
    let whole = t
        .encode_fast("ab<|im_start|>user", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let mut naive = t.encode_fast("ab", false).unwrap().get_ids().to_vec();
    naive.extend(t.encode_fast("<|im_start|>user", false).unwrap().get_ids());
    assert_ne!(whole, naive);
}

proptest! {
    #[test]
    fn hazards_still_splice_exactly((warm, text) in {
        let tokens = all_added(&hazards());
        (text_strategy(tokens.clone()), text_strategy(tokens))
    }) {
        thread_local! { static MODEL: ModelTokenizer = hazards(); }
        MODEL.with(|m| check(m, &warm, &text))?;
        MODEL.with(|m| check(m, &text, &format!("{text}{warm}")))?;
    }
}

#[test]
fn a_repeated_conversation_is_served_from_the_cache() {
    let model = load("chatml");
    let cache = TokenCache::new(1 << 20);
    let turn = "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\nhi!<|im_end|>\n";
    let first = model.encode(&turn.repeat(3), false, &cache).unwrap();
    assert_eq!(first.cached_tokens, first.ids.len() - first.fresh_tokens);
    let next = model
        .encode(
            &format!("{}<|im_start|>user\nmore", turn.repeat(3)),
            false,
            &cache,
        )
        .unwrap();
    assert!(
        next.cached_tokens >= first.ids.len(),
        "the whole history hits"
    );
    assert!(
        next.fresh_tokens > 0 && next.fresh_tokens < 8,
        "only the new turn is encoded"
    );
}

proptest! {
    /// The ids-only pipeline (byte-level fast path, skipped no-op normalizers) against `encode_fast`
    /// on arbitrary text, with and without special tokens.
    #[test]
    fn ids_only_pipeline_equals_encode_fast(text in "\\PC{0,60}|[ ▁\\t\\n\\r\\u{a0}\\u{2028}a-zA-Z0-9'.,!?<>|_\\u{301}é😀中]{0,80}") {
        thread_local! {
            static MODELS: Vec<ModelTokenizer> = vec![load("chatml"), load("llama3"), load("mistral"), hazards()];
        }
        MODELS.with(|models| -> Result<(), TestCaseError> {
            for model in models {
                for special in [false, true] {
                    let ours = model.encode(&text, special, &TokenCache::new(0)).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let theirs = model.tokenizer().encode_fast(text.as_str(), special).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(&ours.ids, &theirs.get_ids().to_vec(), "text {:?}", text);
                }
            }
            Ok(())
        })?;
    }
}

/// The Metaspace fixture with one merge across a `▁` (`a` + `▁b` → `a▁b`), as a tokenizer trained
/// on unsplit lines has: cutting before `▁` would change its ids, so the fast path must be off.
#[test]
fn metaspace_with_a_merge_across_the_marker_takes_the_exact_path() {
    use tokenizers::Model;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mistral");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let model = &mut json["model"];
    let next = model["vocab"].as_object().unwrap().len();
    model["vocab"]["a▁b"] = next.into();
    model["merges"]
        .as_array_mut()
        .unwrap()
        .insert(0, serde_json::json!(["a", "▁b"]));
    let m =
        ModelTokenizer::from_parts(&json.to_string(), &serde_json::json!({}), Vec::new()).unwrap();
    assert!(!m.is_fast_path());
    let bpe = m.tokenizer().get_model();
    let whole: Vec<u32> = bpe
        .tokenize("▁xa▁b")
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    let mut cut: Vec<u32> = bpe.tokenize("▁xa").unwrap().iter().map(|t| t.id).collect();
    cut.extend(bpe.tokenize("▁b").unwrap().iter().map(|t| t.id));
    assert_ne!(whole, cut, "a naive cut would differ");
    let ours = m.encode("xa b", true, &TokenCache::new(0)).unwrap().ids;
    assert_eq!(
        ours,
        m.tokenizer().encode_fast("xa b", true).unwrap().get_ids()
    );
}
