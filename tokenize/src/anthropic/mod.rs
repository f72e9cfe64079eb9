//! Anthropic Messages bodies (`/v1/messages`) as the chat request vLLM 0.32 renders for them.
//!
//! vLLM converts a Messages request into an OpenAI chat request before it renders anything, and
//! that chat request then takes the chat path ([`crate::conversation`], the template): the
//! top-level `system` (a string, or text blocks with Claude Code's billing block dropped, joined
//! with no separator) becomes one leading system message; each message's blocks become content
//! parts (`text`), reasoning (`thinking`, joined), tool calls (`tool_use`, whose `input` becomes
//! its JSON arguments) and, for a user's `tool_result`, a `tool` message placed before that user
//! message (a user message left with no content is dropped); tools become function tools (an
//! `input_schema` without `type` gets `"type": "object"`); `output_config.effort` becomes the
//! template's `reasoning_effort` (with `enable_thinking`).
//!
//! Shapes whose prompt depends on more than the body are refused as [`Error::Unsupported`] (the
//! picker then routes without exact ids): images, system messages inside `messages` (vLLM merges
//! them or not after probing the template), `thinking: {"type": "disabled"}` (its effort is also
//! probed), a `tool_use` without an `id` (vLLM makes one from the clock), tool references. What
//! vLLM's request validation refuses is [`Error::InvalidRequest`].

use serde_json::{Map, Value, json};

use crate::chat::ChatRequest;
use crate::error::Error;

/// The chat request vLLM renders for the Messages `body`.
pub fn chat_request(body: &Map<String, Value>) -> Result<ChatRequest, Error> {
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Err(invalid("`messages` must be a list"));
    };
    let mut out = Vec::with_capacity(messages.len() + 1);
    if let Some(system) = system_text(body.get("system"))? {
        out.push(json!({"role": "system", "content": system}));
    }
    for message in messages {
        convert_message(message, &mut out)?;
    }
    let mut chat = ChatRequest::new(out);
    chat.tools = tools(body.get("tools"))?;
    if let Some(kwargs) = body.get("chat_template_kwargs").filter(|v| !v.is_null()) {
        chat.chat_template_kwargs = kwargs
            .as_object()
            .ok_or_else(|| invalid("`chat_template_kwargs` must be an object"))?
            .clone();
    }
    if let Some(effort) = effort(body)? {
        chat.set_reasoning_effort(effort);
    }
    Ok(chat)
}

fn invalid(what: &str) -> Error {
    Error::InvalidRequest(what.to_owned())
}

const BILLING_HEADER: &str = "x-anthropic-billing-header";

/// The top-level `system`: a string as it is, or its non-empty text blocks (Claude Code's billing
/// block dropped) joined with nothing between them; `None` when that leaves nothing.
fn system_text(system: Option<&Value>) -> Result<Option<String>, Error> {
    let text = match system {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for block in blocks {
                let block = as_block(block)?;
                if block_type(block)? == "text"
                    && let Some(t) = string_field(block, "text")?
                    && !t.starts_with(BILLING_HEADER)
                {
                    text.push_str(t);
                }
            }
            text
        }
        Some(_) => return Err(invalid("`system` must be a string or a list of blocks")),
    };
    Ok((!text.is_empty()).then_some(text))
}

fn as_block(block: &Value) -> Result<&Map<String, Value>, Error> {
    block
        .as_object()
        .ok_or_else(|| invalid("a content block must be an object"))
}

/// A block's `type`, one of those vLLM 0.32 accepts.
fn block_type(block: &Map<String, Value>) -> Result<&str, Error> {
    const KNOWN: [&str; 9] = [
        "text",
        "image",
        "tool_use",
        "tool_result",
        "tool_reference",
        "thinking",
        "redacted_thinking",
        "tool_addition",
        "tool_removal",
    ];
    match block.get("type").and_then(Value::as_str) {
        Some(t) if KNOWN.contains(&t) => Ok(t),
        _ => Err(invalid("a content block has no known `type`")),
    }
}

/// An optional string field: absent and null are `None`, anything but a string is refused.
fn string_field<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, Error> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::InvalidRequest(format!("`{key}` must be a string"))),
    }
}

fn convert_message(message: &Value, out: &mut Vec<Value>) -> Result<(), Error> {
    let m = message
        .as_object()
        .ok_or_else(|| invalid("a message must be an object"))?;
    let role = match m.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant")) => r,
        Some("system") => {
            return Err(Error::Unsupported(
                "system messages inside `messages` (vLLM merges them after probing the template)",
            ));
        }
        _ => {
            return Err(invalid(
                "a message's `role` must be user, assistant or system",
            ));
        }
    };
    let mut converted = Map::new();
    converted.insert("role".into(), role.into());
    match m.get("content") {
        Some(Value::String(s)) => {
            converted.insert("content".into(), s.as_str().into());
        }
        Some(Value::Array(blocks)) => convert_blocks(role, blocks, &mut converted, out)?,
        _ => return Err(invalid("a message's `content` must be a string or a list")),
    }
    // A user message left with no content (only tool results) is dropped.
    if role != "user" || converted.contains_key("content") {
        out.push(Value::Object(converted));
    }
    Ok(())
}

/// A message's blocks: its content parts, reasoning and tool calls into `message`; a user's tool
/// results straight into `out`, ahead of the message.
fn convert_blocks(
    role: &str,
    blocks: &[Value],
    message: &mut Map<String, Value>,
    out: &mut Vec<Value>,
) -> Result<(), Error> {
    let mut parts: Vec<String> = Vec::new();
    let mut calls = Vec::new();
    let mut reasoning: Option<String> = None;
    for block in blocks {
        let block = as_block(block)?;
        match block_type(block)? {
            "text" => {
                if let Some(t) = string_field(block, "text")?.filter(|t| !t.is_empty()) {
                    parts.push(t.to_owned());
                }
            }
            "image" => return Err(Error::Unsupported("images")),
            "thinking" => {
                if let Some(t) = string_field(block, "thinking")? {
                    reasoning.get_or_insert_default().push_str(t);
                }
            }
            "redacted_thinking" | "tool_reference" => {}
            "tool_use" => calls.push(tool_call(block)?),
            "tool_result" if role == "user" => out.push(tool_result(block)?),
            "tool_result" => parts.push(format!("Tool result: {}", assistant_result(block)?)),
            _ => {
                return Err(invalid(
                    "tool_addition and tool_removal blocks are only allowed in system messages",
                ));
            }
        }
    }
    if let Some(r) = reasoning {
        message.insert("reasoning".into(), r.into());
    }
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    match parts.len() {
        0 => {}
        1 => {
            message.insert("content".into(), parts.swap_remove(0).into());
        }
        _ => {
            let parts = parts
                .into_iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect();
            message.insert("content".into(), Value::Array(parts));
        }
    }
    Ok(())
}

/// A `tool_use` block as an OpenAI tool call; its `input` (an object) becomes the JSON arguments.
fn tool_call(block: &Map<String, Value>) -> Result<Value, Error> {
    let id = match string_field(block, "id")? {
        Some(id) if !id.is_empty() => id,
        _ => return Err(Error::Unsupported("a tool_use block without an id")),
    };
    let input = match block.get("input") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(invalid("a tool_use block's `input` must be an object")),
    };
    let arguments = serde_json::to_string(&input).map_err(|e| invalid(&e.to_string()))?;
    Ok(json!({
        "id": id,
        "type": "function",
        "function": {"name": string_field(block, "name")?.unwrap_or(""), "arguments": arguments},
    }))
}

/// A user's `tool_result` block as a `tool` message: its text, or its text items joined by lines.
fn tool_result(block: &Map<String, Value>) -> Result<Value, Error> {
    let text = match block.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            let mut texts = Vec::with_capacity(items.len());
            for item in items {
                let Value::Object(item) = item else {
                    return Err(invalid("tool_result content items must be objects"));
                };
                match item.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(match item.get("text") {
                        None => "",
                        Some(Value::String(s)) => s.as_str(),
                        Some(_) => return Err(Error::Unsupported("a non-string tool result text")),
                    }),
                    Some("image") => return Err(Error::Unsupported("images")),
                    Some("tool_reference") => {
                        return Err(Error::Unsupported("tool references in tool results"));
                    }
                    _ => {}
                }
            }
            texts.join("\n")
        }
        Some(_) => return Err(invalid("tool_result `content` must be a string or a list")),
    };
    Ok(json!({
        "role": "tool",
        "tool_call_id": string_field(block, "tool_use_id")?.unwrap_or(""),
        "content": text,
    }))
}

/// An assistant's `tool_result` block's text (vLLM prints Python's `str()` of its content).
fn assistant_result(block: &Map<String, Value>) -> Result<&str, Error> {
    match block.get("content") {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(a)) if a.is_empty() => Ok(""),
        Some(Value::Array(_)) => Err(Error::Unsupported(
            "an assistant's tool_result with a list (vLLM prints its Python repr)",
        )),
        Some(_) => Err(invalid("tool_result `content` must be a string or a list")),
    }
}

/// `tools` as OpenAI function tools; `None` when absent.
fn tools(tools: Option<&Value>) -> Result<Option<Vec<Value>>, Error> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(t)) => t,
        Some(_) => return Err(invalid("`tools` must be a list")),
    };
    let mut out = Vec::with_capacity(tools.len());
    for tool in tools {
        let t = tool
            .as_object()
            .ok_or_else(|| invalid("a tool must be an object"))?;
        let name = string_field(t, "name")?.ok_or_else(|| invalid("a tool needs a `name`"))?;
        let mut schema = match t.get("input_schema") {
            Some(Value::Object(s)) => s.clone(),
            _ => return Err(invalid("a tool's `input_schema` must be an object")),
        };
        if !schema.contains_key("type") {
            schema.insert("type".into(), "object".into());
        }
        let mut function = Map::new();
        function.insert("name".into(), name.into());
        let description = string_field(t, "description")?;
        function.insert(
            "description".into(),
            description.map_or(Value::Null, Into::into),
        );
        function.insert("parameters".into(), Value::Object(schema));
        for key in ["strict", "defer_loading"] {
            match t.get(key) {
                None | Some(Value::Null) => {}
                Some(b @ Value::Bool(_)) => {
                    function.insert(key.into(), b.clone());
                }
                Some(_) => return Err(Error::InvalidRequest(format!("`{key}` must be a boolean"))),
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Some(out))
}

/// The template's `reasoning_effort`: `output_config.effort`; `thinking.type` `disabled` is refused
/// (vLLM picks its effort by probing the template).
fn effort(body: &Map<String, Value>) -> Result<Option<String>, Error> {
    const EFFORTS: [&str; 5] = ["low", "medium", "high", "xhigh", "max"];
    if let Some(thinking) = body.get("thinking").filter(|v| !v.is_null()) {
        match thinking.get("type").and_then(Value::as_str) {
            Some("disabled") => {
                return Err(Error::Unsupported(
                    "thinking disabled (vLLM probes the template for its effort)",
                ));
            }
            Some("enabled" | "adaptive") => {}
            _ => {
                return Err(invalid(
                    "`thinking.type` must be enabled, disabled or adaptive",
                ));
            }
        }
    }
    let Some(config) = body.get("output_config").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let config = config
        .as_object()
        .ok_or_else(|| invalid("`output_config` must be an object"))?;
    match config.get("effort") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(e)) if EFFORTS.contains(&e.as_str()) => Ok(Some(e.clone())),
        Some(_) => Err(invalid("`output_config.effort` is not a known effort")),
    }
}

#[cfg(test)]
mod tests;
