//! Token ids equal to vLLM's reference ids on every fixture case, for every fixture model.
//!
//! `tests/fixtures/reference.json` comes from `make_fixtures.py`: chat requests normalised as vLLM
//! does, rendered by `transformers.apply_chat_template` (jinja2), encoded by Python `tokenizers`.
//! OpenAI Responses and Anthropic Messages bodies (`api_chats`, converted by vLLM's own code) are
//! converted by kvpick and checked the same way. Each case is checked three ways: without a cache,
//! with a cold cache, and again warm (spliced from cached segments). Any mismatch fails, with the first differing position reported.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::path::{Path, PathBuf};

use kvpick_tokenize::{ChatApi, ChatRequest, Error, ModelTokenizer, TokenCache, TokenizeInput};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json parses")
}

fn first_difference(a: &[u32], b: &[u32]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn chat_request(case: &Value) -> ChatRequest {
    let body = case["request"].as_object().expect("request object");
    ChatRequest::from_body(body).expect("fixture request parses")
}

/// Checks one model; returns (cases checked, mismatch descriptions).
fn check_model(name: &str, cases: &Value) -> (usize, Vec<String>) {
    let model = ModelTokenizer::load(&fixtures().join(name)).expect("fixture model loads");
    let uncached = TokenCache::new(0);
    let cache = TokenCache::new(64 << 20);
    let mut checked = 0;
    let mut bad = Vec::new();
    let compare = |bad: &mut Vec<String>, what: String, input: TokenizeInput, want: &[u32]| {
        for (pass, cache) in [("uncached", &uncached), ("cold", &cache), ("warm", &cache)] {
            match model.tokenize(&input, cache) {
                Ok(got) if got.ids == want => {}
                Ok(got) => bad.push(format!(
                    "{name} {what} ({pass}): {} ids, want {}; first difference at {}",
                    got.ids.len(),
                    want.len(),
                    first_difference(&got.ids, want)
                )),
                Err(e) => bad.push(format!("{name} {what} ({pass}): error {e}")),
            }
        }
    };
    for (i, case) in cases["completions"]
        .as_array()
        .expect("completions")
        .iter()
        .enumerate()
    {
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).expect("ids");
        let input = TokenizeInput::Prompt {
            text: case["prompt"].as_str().expect("prompt").to_string(),
            add_special_tokens: true,
        };
        compare(&mut bad, format!("completion #{i}"), input, &want);
        checked += 1;
    }
    for (i, case) in cases["chats"].as_array().expect("chats").iter().enumerate() {
        let request = chat_request(case);
        checked += 1;
        if case.get("error").is_some() {
            match model.render_chat(&request) {
                Err(Error::Template(_)) | Err(Error::InvalidRequest(_)) => {}
                other => bad.push(format!(
                    "{name} chat #{i}: transformers refused it, we gave {other:?}"
                )),
            }
            continue;
        }
        let want_text = case["text"].as_str().expect("text");
        match model.render_chat(&request) {
            Ok(text) if text == want_text => {}
            Ok(text) => {
                let at = text
                    .bytes()
                    .zip(want_text.bytes())
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                let lo = text.floor_char_boundary(at.saturating_sub(40));
                bad.push(format!(
                    "{name} chat #{i}: rendered text differs at byte {at}: got {:?}, want {:?}",
                    &text[lo..text.floor_char_boundary((at + 40).min(text.len()))],
                    &want_text[want_text.floor_char_boundary(lo.min(want_text.len()))
                        ..want_text.floor_char_boundary((at + 40).min(want_text.len()))]
                ));
                continue;
            }
            Err(e) => {
                bad.push(format!("{name} chat #{i}: {e}"));
                continue;
            }
        }
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).expect("ids");
        compare(
            &mut bad,
            format!("chat #{i}"),
            TokenizeInput::Chat(request),
            &want,
        );
    }
    let api_chats = cases["api_chats"].as_array().expect("api_chats");
    for (i, case) in api_chats.iter().enumerate() {
        let api = match case["api"].as_str() {
            Some("responses") => ChatApi::Responses,
            _ => ChatApi::Messages,
        };
        let body = case["body"].as_object().expect("body");
        let request = ChatRequest::from_api_body(api, body);
        checked += 1;
        match (case.get("ids"), request) {
            (None, Ok(r)) => {
                if model.render_chat(&r).is_ok() {
                    bad.push(format!(
                        "{name} api chat #{i}: vLLM or transformers refused it, we rendered it"
                    ));
                }
            }
            (None, Err(_)) => {}
            (Some(_), Err(e)) => bad.push(format!("{name} api chat #{i}: {e}")),
            (Some(ids), Ok(r)) => {
                let want: Vec<u32> = serde_json::from_value(ids.clone()).expect("ids");
                compare(
                    &mut bad,
                    format!("api chat #{i}"),
                    TokenizeInput::Chat(r),
                    &want,
                );
            }
        }
    }
    (checked, bad)
}

#[test]
fn every_fixture_case_matches_the_reference_ids() {
    let reference = reference();
    let models = reference["models"].as_object().expect("models");
    assert_eq!(models.len(), 3, "three fixture models");
    let mut total = 0;
    let mut mismatches = Vec::new();
    for (name, cases) in models {
        let (checked, bad) = check_model(name, cases);
        total += checked;
        mismatches.extend(bad);
    }
    assert!(total > 200, "only {total} cases");
    assert!(
        mismatches.is_empty(),
        "{} mismatches of {total} cases:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn fixture_models_take_the_allocation_light_path() {
    for name in ["chatml", "llama3", "mistral"] {
        let m = ModelTokenizer::load(&fixtures().join(name)).expect("loads");
        assert!(m.is_fast_path(), "{name}");
    }
}

#[test]
fn fixture_models_have_the_expected_boundaries() {
    let boundaries = |name: &str| {
        let m = ModelTokenizer::load(&fixtures().join(name)).expect("loads");
        let mut b = m.boundaries().tokens().to_vec();
        b.sort();
        b
    };
    assert_eq!(
        boundaries("chatml"),
        [
            "</tool_call>",
            "<tool_call>",
            "<|endoftext|>",
            "<|im_end|>",
            "<|im_start|>"
        ]
    );
    assert!(boundaries("llama3").contains(&"<|eot_id|>".to_string()));
    // `[INST]` is a prefix of nothing and `</s>`, `<s>` cannot straddle each other.
    let mistral = boundaries("mistral");
    for t in ["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]"] {
        assert!(mistral.contains(&t.to_string()), "{t} in {mistral:?}");
    }
}
