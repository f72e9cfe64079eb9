//! vLLM's request normalisation, then transformers': what a template actually receives.
//!
//! vLLM's OpenAI server turns content parts into a string (or keeps them as parts when the template
//! loops over them), keeps only the message fields it knows, passes tool calls through the OpenAI
//! client's field definitions (pydantic reorders each call's fields as declared), parses their
//! `arguments` into objects and dumps `tools` through its pydantic models (absent
//! `description`/`parameters` become `null`, unknown fields go). transformers (v5) then drops
//! `None`-valued message keys and aliases reasoning fields. Checked against vLLM 0.32's `/tokenize`
//! (`endpoint-picker/tests/real_vllm.rs`).

use serde_json::{Map, Value};

use crate::error::Error;
use crate::template::ContentFormat;

/// vLLM's message normalisation, then transformers': `None` keys dropped, reasoning aliased.
pub fn conversation(messages: &[Value], format: ContentFormat) -> Result<Vec<Value>, Error> {
    messages
        .iter()
        .map(|m| normalize_message(m, format))
        .collect()
}

fn normalize_message(message: &Value, format: ContentFormat) -> Result<Value, Error> {
    let m = message
        .as_object()
        .ok_or_else(|| Error::InvalidRequest("a message must be an object".into()))?;
    let role = m
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::InvalidRequest("a message needs a string `role`".into()))?;
    let mut texts = content_texts(m.get("content"))?;
    if role == "system" {
        strip_billing_header(&mut texts);
    }
    let mut out = Map::new();
    out.insert("role".into(), Value::String(role.into()));
    let content = match format {
        ContentFormat::String => Value::String(texts.join("\n")),
        ContentFormat::OpenAi => Value::Array(
            texts
                .iter()
                .map(|t| serde_json::json!({"type": "text", "text": t}))
                .collect(),
        ),
    };
    out.insert("content".into(), content);
    match role {
        "assistant" => {
            if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
                out.insert("tool_calls".into(), normalize_tool_calls(calls)?);
            }
            if let Some(reasoning) = m.get("reasoning").filter(|v| !v.is_null()) {
                out.insert("reasoning".into(), reasoning.clone());
                out.insert("reasoning_content".into(), reasoning.clone());
            }
        }
        "tool" => {
            if let Some(id) = m.get("tool_call_id") {
                out.insert("tool_call_id".into(), id.clone());
            }
            if let Some(Value::Array(parts)) = out.get("content") {
                let joined: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| p.get("text")?.as_str())
                    .collect();
                let joined = joined.join("\n");
                out.insert("content".into(), Value::String(joined));
            }
        }
        _ => {}
    }
    if let Some(name @ Value::String(_)) = m.get("name") {
        out.insert("name".into(), name.clone());
    }
    if let Some(task @ Value::String(_)) = m.get("task") {
        out.insert("task".into(), task.clone());
    }
    if role == "developer" {
        out.insert(
            "tools".into(),
            m.get("tools").cloned().unwrap_or(Value::Null),
        );
    }
    // transformers v5: keys whose value is None are dropped, then reasoning is aliased.
    out.retain(|_, v| !v.is_null());
    Ok(alias_reasoning(out))
}

/// The text of a message's content: a string, or the text parts of a list; media is refused.
fn content_texts(content: Option<&Value>) -> Result<Vec<String>, Error> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match part {
                    Value::String(s) => texts.push(s.clone()),
                    Value::Object(p) => {
                        let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
                        let field = match kind {
                            "text" | "input_text" | "output_text" => "text",
                            "refusal" => "refusal",
                            _ => return Err(Error::Unsupported("non-text content parts")),
                        };
                        match p.get(field) {
                            None | Some(Value::Null) => {}
                            Some(Value::String(s)) => texts.push(s.clone()),
                            Some(_) => {
                                return Err(Error::InvalidRequest(
                                    "a text part's text must be a string".into(),
                                ));
                            }
                        }
                    }
                    _ => {
                        return Err(Error::InvalidRequest(
                            "a content part must be an object".into(),
                        ));
                    }
                }
            }
            Ok(texts)
        }
        Some(_) => Err(Error::InvalidRequest(
            "`content` must be a string or a list".into(),
        )),
    }
}

/// Claude Code's attribution line in a system prompt (its `cch` value changes on every request):
/// vLLM 0.32 drops that line from each system text that starts with it, and the text when nothing
/// follows it.
const BILLING_HEADER: &str = "x-anthropic-billing-header";

fn strip_billing_header(texts: &mut Vec<String>) {
    texts.retain_mut(|t| {
        if !t.starts_with(BILLING_HEADER) {
            return true;
        }
        let rest = t.split_once('\n').map_or("", |(_, r)| r);
        *t = rest.to_owned();
        !t.is_empty()
    });
}

/// A map's `fields` first, in that order, then its other fields in request order: pydantic's
/// output for a TypedDict (declared fields in declaration order, extra fields after).
fn declared_order(map: &Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    for f in fields {
        if let Some(v) = map.get(*f) {
            out.insert((*f).to_owned(), v.clone());
        }
    }
    for (k, v) in map {
        if !out.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// vLLM validates each call against the OpenAI client's `ChatCompletionMessageFunctionToolCallParam`
/// (`id`, `function` {`arguments`, `name`}, `type`, in that order), parses its `arguments` JSON
/// string into an object (`{}` when empty, invalid or not an object) and drops an empty
/// `tool_calls` list. `arguments` absent or given as anything but a string (an object, as some
/// clients send) fails that validation: vLLM 0.32 answers 400, so no ids are made for a prompt it never
/// renders (the picker routes such a request without them, and counts it).
fn normalize_tool_calls(calls: &Value) -> Result<Value, Error> {
    let Value::Array(calls) = calls else {
        return Ok(calls.clone());
    };
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        let call = call
            .as_object()
            .ok_or_else(|| Error::InvalidRequest("tool_calls entries must be objects".into()))?;
        let mut call = declared_order(call, &["id", "function", "type"]);
        if let Some(Value::Object(f)) = call.get("function") {
            let f = declared_order(f, &["arguments", "name"]);
            call.insert("function".into(), Value::Object(f));
        }
        let function = call
            .get_mut("function")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| Error::InvalidRequest("a tool call needs a `function` object".into()))?;
        let parsed = match function.get("arguments") {
            Some(Value::String(s)) if !s.is_empty() => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(o)) => Value::Object(o),
                _ => Value::Object(Map::new()),
            },
            Some(Value::String(_)) => Value::Object(Map::new()),
            other => {
                return Err(Error::InvalidRequest(format!(
                    "tool call `arguments` must be a JSON string, not {} (vLLM answers 400)",
                    other.map_or("absent", kind)
                )));
            }
        };
        function.insert("arguments".into(), parsed);
        out.push(Value::Object(call));
    }
    Ok(if out.is_empty() {
        Value::Null
    } else {
        Value::Array(out)
    })
}

/// A JSON value's kind, for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// transformers: `{"thinking": r, **message, "reasoning_content": r}` when a message has reasoning.
fn alias_reasoning(message: Map<String, Value>) -> Value {
    let reasoning = ["reasoning_content", "thinking", "reasoning"]
        .iter()
        .find_map(|k| message.get(*k).filter(|v| !v.is_null()).cloned());
    let Some(r) = reasoning else {
        return Value::Object(message);
    };
    let mut out = Map::new();
    out.insert("thinking".into(), r.clone());
    for (k, v) in message {
        out.insert(k, v);
    }
    out.insert("reasoning_content".into(), r);
    Value::Object(out)
}

/// vLLM's `tools` as its pydantic models dump them: `type`, then `function` with `name`,
/// `description` and `parameters` (null when absent) and `strict`/`defer_loading` when set, then
/// the tool's `defer_loading` when set (also copied into a function without its own). Unknown
/// fields are dropped.
pub fn tool_schema(tool: &Value) -> Result<Value, Error> {
    let t = tool
        .as_object()
        .ok_or_else(|| Error::InvalidRequest("a tool must be an object".into()))?;
    let f = t
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::InvalidRequest("a tool needs a `function` object".into()))?;
    if !f.get("name").is_some_and(Value::is_string) {
        return Err(Error::InvalidRequest(
            "a tool function needs a string `name`".into(),
        ));
    }
    let set = |m: &Map<String, Value>, key: &str| m.get(key).filter(|v| !v.is_null()).cloned();
    let tool_defer = set(t, "defer_loading");
    let mut function = Map::new();
    for key in ["name", "description", "parameters"] {
        function.insert(key.into(), f.get(key).cloned().unwrap_or(Value::Null));
    }
    if let Some(strict) = set(f, "strict") {
        function.insert("strict".into(), strict);
    }
    if let Some(defer) = set(f, "defer_loading").or_else(|| tool_defer.clone()) {
        function.insert("defer_loading".into(), defer);
    }
    let mut out = Map::new();
    out.insert(
        "type".into(),
        t.get("type").cloned().unwrap_or_else(|| "function".into()),
    );
    out.insert("function".into(), Value::Object(function));
    if let Some(defer) = tool_defer {
        out.insert("defer_loading".into(), defer);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_normalise_like_vllm_and_transformers() {
        let m = json!({"role": "assistant", "content": null, "reasoning": "r", "extra": 1,
            "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]});
        let got = normalize_message(&m, ContentFormat::String).unwrap();
        assert_eq!(
            serde_json::to_string(&got).unwrap(),
            r#"{"thinking":"r","role":"assistant","content":"","tool_calls":[{"id":"a","function":{"arguments":{},"name":"f"},"type":"function"}],"reasoning":"r","reasoning_content":"r"}"#
        );
        let parts = json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]});
        assert_eq!(
            normalize_message(&parts, ContentFormat::String).unwrap()["content"],
            "a\nb"
        );
        let image =
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]});
        assert_eq!(
            normalize_message(&image, ContentFormat::String),
            Err(Error::Unsupported("non-text content parts"))
        );
    }

    #[test]
    fn tools_dump_like_pydantic() {
        let t = tool_schema(&json!({"function": {"x": 1, "name": "f"}, "extra": true})).unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"type":"function","function":{"name":"f","description":null,"parameters":null}}"#
        );
        let t = tool_schema(&json!({"defer_loading": true,
            "function": {"strict": false, "name": "f", "defer_loading": null}}))
        .unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"type":"function","function":{"name":"f","description":null,"parameters":null,"strict":false,"defer_loading":true},"defer_loading":true}"#
        );
    }

    #[test]
    fn tool_call_arguments_must_be_text_as_vllm_requires() {
        let absent = json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
            "function": {"name": "f"}}]});
        assert!(normalize_message(&absent, ContentFormat::String).is_err());
        for args in [
            json!({"city": "Oslo"}),
            json!({}),
            json!(null),
            json!([1]),
            json!(3),
        ] {
            let m = json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "f", "arguments": args}}]});
            assert!(
                matches!(normalize_message(&m, ContentFormat::String), Err(Error::InvalidRequest(e)) if e.contains("must be a JSON string")),
                "{args}"
            );
        }
    }

    #[test]
    fn tool_calls_take_the_openai_field_order() {
        let m = json!({"role": "assistant", "tool_calls": [{"type": "function", "x": 1,
            "function": {"name": "f", "y": 2, "arguments": "{\"b\": 1, \"a\": 2}"}, "id": "c"}]});
        let got = normalize_message(&m, ContentFormat::String).unwrap();
        assert_eq!(
            serde_json::to_string(&got["tool_calls"]).unwrap(),
            r#"[{"id":"c","function":{"arguments":{"b":1,"a":2},"name":"f","y":2},"type":"function","x":1}]"#
        );
    }

    #[test]
    fn system_prompts_lose_claude_codes_billing_line() {
        let m = json!({"role": "system", "content": [
            {"type": "text", "text": "x-anthropic-billing-header: cch=1\nBe brief."},
            {"type": "text", "text": "x-anthropic-billing-header: cch=2"},
            {"type": "text", "text": "Rules."}]});
        let got = normalize_message(&m, ContentFormat::String).unwrap();
        assert_eq!(got["content"], "Be brief.\nRules.");
        let user = json!({"role": "user", "content": "x-anthropic-billing-header: a\nb"});
        assert_eq!(
            normalize_message(&user, ContentFormat::String).unwrap()["content"],
            "x-anthropic-billing-header: a\nb"
        );
    }
}
