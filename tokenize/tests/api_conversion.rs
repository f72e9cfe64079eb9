//! Responses and Anthropic Messages bodies become the chat requests vLLM 0.32 makes of them.
//!
//! `tests/fixtures/api_conversions.json` comes from `make_api_fixtures.py`, which runs vLLM's own
//! converters. For each case kvpick's conversion must give, after the chat normalisation both go
//! through before rendering ([`conversation`], [`tool_schema`]), the same messages (for either
//! content format), tools, template kwargs and generation flags; or refuse what vLLM refuses. A
//! case may be declined as `Unsupported` (kvpick then routes without exact ids) only when listed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::path::Path;

use kvpick_tokenize::conversation::{conversation, tool_schema};
use kvpick_tokenize::template::ContentFormat;
use kvpick_tokenize::{ChatApi, ChatRequest, Error};
use serde_json::{Map, Value};

fn cases() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/api_conversions.json");
    let text = std::fs::read_to_string(path).expect("api_conversions.json");
    let all: Value = serde_json::from_str(&text).expect("api_conversions.json parses");
    all["cases"].as_array().expect("cases").clone()
}

fn normalised(messages: &[Value], format: ContentFormat) -> Result<Vec<Value>, Error> {
    conversation(messages, format)
}

fn tools(tools: Option<&[Value]>) -> Option<Vec<Value>> {
    tools.map(|t| t.iter().map(|t| tool_schema(t).unwrap()).collect())
}

/// Compares kvpick's chat request with vLLM's; returns what differs.
fn differences(ours: &ChatRequest, theirs: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let their_messages = theirs["messages"].as_array().expect("messages");
    for format in [ContentFormat::String, ContentFormat::OpenAi] {
        let (a, b) = (
            normalised(&ours.messages, format),
            normalised(their_messages, format),
        );
        if a != b {
            out.push(format!("messages ({format:?}): ours {a:?}, vLLM's {b:?}"));
        }
    }
    let their_tools = theirs["tools"].as_array().map(Vec::as_slice);
    if tools(ours.tools.as_deref()) != tools(their_tools) {
        out.push(format!(
            "tools: ours {:?}, vLLM's {their_tools:?}",
            ours.tools
        ));
    }
    let mut kwargs: Map<String, Value> = theirs["kwargs"].as_object().expect("kwargs").clone();
    let flag =
        |kwargs: &mut Map<String, Value>, key: &str| kwargs.remove(key).and_then(|v| v.as_bool());
    let generation = flag(&mut kwargs, "add_generation_prompt");
    let continued = flag(&mut kwargs, "continue_final_message");
    if generation != Some(ours.add_generation_prompt)
        || continued != Some(ours.continue_final_message)
    {
        out.push(format!(
            "flags: ours ({}, {}), vLLM's ({generation:?}, {continued:?})",
            ours.add_generation_prompt, ours.continue_final_message
        ));
    }
    if kwargs != ours.chat_template_kwargs {
        out.push(format!(
            "template kwargs: ours {:?}, vLLM's {kwargs:?}",
            ours.chat_template_kwargs
        ));
    }
    out
}

/// Cases vLLM converts but kvpick declines (their prompt needs what the body does not say).
const DECLINED: [&str; 0] = [];

#[test]
fn conversions_match_vllms() {
    let (mut compared, mut refused) = (0, 0);
    let mut bad = Vec::new();
    for case in cases() {
        let api = match case["api"].as_str() {
            Some("responses") => ChatApi::Responses,
            Some("messages") => ChatApi::Messages,
            other => panic!("unknown api {other:?}"),
        };
        let body = case["body"].as_object().expect("body");
        let shown = serde_json::to_string(body).unwrap();
        let ours = ChatRequest::from_api_body(api, body);
        match (case.get("error"), ours) {
            (Some(_), Err(Error::InvalidRequest(_) | Error::Unsupported(_))) => refused += 1,
            (Some(e), ours) => {
                bad.push(format!("{shown}: vLLM refuses it ({e}), we gave {ours:?}"))
            }
            (None, Err(Error::Unsupported(_))) if DECLINED.contains(&shown.as_str()) => {}
            (None, Err(e)) => bad.push(format!("{shown}: vLLM converts it, we gave {e:?}")),
            (None, Ok(ours)) => {
                compared += 1;
                for d in differences(&ours, &case["chat"]) {
                    bad.push(format!("{shown}: {d}"));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(
        compared >= 20 && refused >= 6,
        "{compared} compared, {refused} refused"
    );
}
