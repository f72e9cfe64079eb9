//! vLLM's request normalisation, then transformers': what a template actually receives.
//!
//! vLLM's OpenAI server turns content parts into a string (or keeps them as parts when the template
//! loops over them), keeps only the message fields it knows, parses tool-call `arguments` into objects
//! and dumps `tools` through its pydantic models (absent `description`/`parameters` become `null`).
//! transformers (v5) then drops `None`-valued message keys and aliases reasoning fields.

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
    let texts = content_texts(m.get("content"))?;
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

/// vLLM parses each call's `arguments` JSON string into an object (`{}` when empty, invalid or not an
/// object) and drops an empty `tool_calls` list.
fn normalize_tool_calls(calls: &Value) -> Result<Value, Error> {
    let Value::Array(calls) = calls else {
        return Ok(calls.clone());
    };
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        let mut call = call
            .as_object()
            .cloned()
            .ok_or_else(|| Error::InvalidRequest("tool_calls entries must be objects".into()))?;
        let function = call
            .get_mut("function")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| Error::InvalidRequest("a tool call needs a `function` object".into()))?;
        let parsed = match function.get("arguments") {
            Some(Value::String(s)) if !s.is_empty() => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(o)) => Value::Object(o),
                _ => Value::Object(Map::new()),
            },
            Some(Value::Object(o)) if !o.is_empty() => Value::Object(o.clone()),
            _ => Value::Object(Map::new()),
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
/// `description` and `parameters` (null when absent), then any extra fields in request order.
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
    let mut function = Map::new();
    for key in ["name", "description", "parameters"] {
        function.insert(key.into(), f.get(key).cloned().unwrap_or(Value::Null));
    }
    for (k, v) in f {
        if !function.contains_key(k) {
            function.insert(k.clone(), v.clone());
        }
    }
    let mut out = Map::new();
    out.insert(
        "type".into(),
        t.get("type").cloned().unwrap_or_else(|| "function".into()),
    );
    out.insert("function".into(), Value::Object(function));
    for (k, v) in t {
        if !out.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
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
            r#"{"thinking":"r","role":"assistant","content":"","tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":{}}}],"reasoning":"r","reasoning_content":"r"}"#
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
            r#"{"type":"function","function":{"name":"f","description":null,"parameters":null,"x":1},"extra":true}"#
        );
    }
}
