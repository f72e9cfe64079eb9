//! OpenAI Responses bodies (`/v1/responses`) as the chat request vLLM 0.32 renders for them.
//!
//! vLLM (models without Harmony) builds chat messages from the request and renders them with the
//! model's chat template: `instructions` first as a system message; a string `input` as one user
//! message; a list `input` item by item: messages with a `role` pass through as chat messages
//! (an assistant's text taken from its first content part), `function_call` items become an
//! assistant's tool calls, `reasoning` items its reasoning, and consecutive assistant items merge
//! into one message while the field they fill is still empty; `function_call_output` items become
//! `tool` messages. Function tools (`{"type": "function", "name", ...}`) become chat tools, other
//! tool types are not shown to the model; `reasoning.effort` is the template's `reasoning_effort`;
//! a final assistant message or reasoning item still `in_progress` or `incomplete` is continued
//! rather than answered.
//!
//! A request that continues a stored conversation (`previous_response_id`,
//! `previous_input_messages`) is refused as [`Error::Unsupported`]: its prompt starts with what
//! the pod stored, which the body does not hold. So are namespace and custom tools and custom
//! tool calls.

use serde_json::{Map, Value, json};

use crate::chat::ChatRequest;
use crate::error::Error;

/// The chat request vLLM renders for the Responses `body`.
pub fn chat_request(body: &Map<String, Value>) -> Result<ChatRequest, Error> {
    for key in ["previous_response_id", "previous_input_messages"] {
        if body.get(key).is_some_and(|v| !v.is_null()) {
            return Err(Error::Unsupported(
                "a stored conversation (previous_response_id, previous_input_messages)",
            ));
        }
    }
    let mut messages = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(invalid("`instructions` must be a string")),
    }
    let mut continue_final = false;
    match body.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for item in items {
                add_item(item, &mut messages)?;
            }
            continue_final = items.last().is_some_and(is_partial);
        }
        _ => return Err(invalid("`input` must be a string or a list")),
    }
    let mut chat = ChatRequest::new(messages);
    chat.add_generation_prompt = !continue_final;
    chat.continue_final_message = continue_final;
    chat.tools = tools(body.get("tools"))?;
    if let Some(kwargs) = body.get("chat_template_kwargs").filter(|v| !v.is_null()) {
        chat.chat_template_kwargs = kwargs
            .as_object()
            .ok_or_else(|| invalid("`chat_template_kwargs` must be an object"))?
            .clone();
    }
    if let Some(effort) = body
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|v| !v.is_null())
    {
        let effort = effort
            .as_str()
            .ok_or_else(|| invalid("`reasoning.effort` must be a string"))?;
        chat.set_reasoning_effort(effort.to_owned());
    }
    Ok(chat)
}

fn invalid(what: &str) -> Error {
    Error::InvalidRequest(what.to_owned())
}

/// An item's `type`; a message may leave it out.
fn item_type(item: &Map<String, Value>) -> Option<&str> {
    item.get("type").and_then(Value::as_str)
}

/// Whether `item` is an assistant message or reasoning item the model should continue.
fn is_partial(item: &Value) -> bool {
    let Some(item) = item.as_object() else {
        return false;
    };
    matches!(
        item_type(item).unwrap_or("message"),
        "message" | "reasoning"
    ) && matches!(
        item.get("status").and_then(Value::as_str),
        Some("in_progress" | "incomplete")
    )
}

/// The message `messages` ends with when it is an assistant's.
fn last_assistant(messages: &mut [Value]) -> Option<&mut Map<String, Value>> {
    messages
        .last_mut()
        .and_then(Value::as_object_mut)
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
}

/// Puts `value` under `key` of the previous assistant message when that field is still empty,
/// else starts a new assistant message with it.
fn merge_into_assistant(messages: &mut Vec<Value>, key: &str, value: Value) {
    if let Some(prev) = last_assistant(messages)
        && prev.get(key).is_none_or(Value::is_null)
    {
        prev.insert(key.to_owned(), value);
        return;
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(key.to_owned(), value);
    messages.push(Value::Object(message));
}

fn add_item(item: &Value, messages: &mut Vec<Value>) -> Result<(), Error> {
    let item = item
        .as_object()
        .ok_or_else(|| invalid("an input item must be an object"))?;
    match item_type(item) {
        Some("function_call") => {
            if item.get("namespace").is_some_and(|n| !n.is_null()) {
                return Err(Error::Unsupported("namespaced function calls"));
            }
            let field = |key: &str| match item.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(Error::InvalidRequest(format!(
                    "a function_call needs a string `{key}`"
                ))),
            };
            let call = json!({"id": field("call_id")?, "type": "function",
                "function": {"name": field("name")?, "arguments": field("arguments")?}});
            if let Some(prev) = last_assistant(messages) {
                match prev.get_mut("tool_calls") {
                    None | Some(Value::Null) => {
                        prev.insert("tool_calls".into(), Value::Array(vec![call]));
                        return Ok(());
                    }
                    Some(Value::Array(calls)) => {
                        calls.push(call);
                        return Ok(());
                    }
                    Some(_) => {}
                }
            }
            messages.push(json!({"role": "assistant", "tool_calls": [call]}));
        }
        Some("custom_tool_call" | "custom_tool_call_output") => {
            return Err(Error::Unsupported("custom tool calls"));
        }
        Some("function_call_output") => {
            let output = item.get("output").cloned().unwrap_or(Value::Null);
            let id = item.get("call_id").cloned().unwrap_or(Value::Null);
            messages.push(json!({"role": "tool", "content": output, "tool_call_id": id}));
        }
        Some("reasoning") => {
            if item
                .get("encrypted_content")
                .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()))
            {
                return Err(invalid("encrypted reasoning content is not supported"));
            }
            let first_text = |key: &str| {
                item.get(key)
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                    .and_then(|p| p.get("text"))
                    .and_then(Value::as_str)
            };
            let text = first_text("content")
                .or_else(|| first_text("summary"))
                .unwrap_or("");
            merge_into_assistant(messages, "reasoning", text.into());
        }
        Some("message") | None => {
            let role = item
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("a message item needs a `role`"))?;
            let text = match item.get("content") {
                Some(Value::String(s)) => Some(s.as_str()),
                Some(Value::Array(parts)) => parts
                    .first()
                    .and_then(|p| p.get("text"))
                    .and_then(Value::as_str),
                _ => None,
            };
            match text {
                Some(text) if role == "assistant" => {
                    merge_into_assistant(messages, "content", text.into());
                }
                // Passed through as a chat message.
                _ => messages.push(Value::Object(item.clone())),
            }
        }
        Some(other) => {
            return Err(Error::InvalidRequest(format!(
                "unsupported input item type {other:?}"
            )));
        }
    }
    Ok(())
}

/// Function tools as chat tools; other tool types are not rendered. `None` without tools (an
/// empty list included), as vLLM passes no tools then.
fn tools(tools: Option<&Value>) -> Result<Option<Vec<Value>>, Error> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(t)) if t.is_empty() => return Ok(None),
        Some(Value::Array(t)) => t,
        Some(_) => return Err(invalid("`tools` must be a list")),
    };
    let mut out = Vec::with_capacity(tools.len());
    for tool in tools {
        let t = tool
            .as_object()
            .ok_or_else(|| invalid("a tool must be an object"))?;
        match item_type(t) {
            Some("function") => {
                let mut function = t.clone();
                function.remove("type");
                out.push(json!({"type": "function", "function": function}));
            }
            Some("namespace" | "custom") => {
                return Err(Error::Unsupported("namespace and custom tools"));
            }
            Some(_) => {}
            None => return Err(invalid("a tool needs a `type`")),
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<ChatRequest, Error> {
        chat_request(body.as_object().unwrap())
    }

    #[test]
    fn a_string_input_is_one_user_turn_after_the_instructions() {
        let c = chat(json!({"input": "hi", "instructions": "Be brief."})).unwrap();
        assert_eq!(
            c.messages,
            vec![
                json!({"role": "system", "content": "Be brief."}),
                json!({"role": "user", "content": "hi"})
            ]
        );
        assert!(c.add_generation_prompt && c.tools.is_none());
    }

    #[test]
    fn assistant_items_merge_into_one_message() {
        let c = chat(json!({"input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "reasoning", "id": "r", "summary": [], "content": [{"type": "reasoning_text", "text": "think"}]},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "get", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "It is sunny."}]}],
            "tools": [{"type": "function", "name": "get", "parameters": {}}, {"type": "web_search"}]}))
        .unwrap();
        assert_eq!(c.messages.len(), 4);
        assert_eq!(c.messages[1]["reasoning"], "think");
        assert_eq!(c.messages[1]["tool_calls"][1]["id"], "c2");
        assert_eq!(
            c.messages[2],
            json!({"role": "tool", "content": "sunny", "tool_call_id": "c1"})
        );
        assert_eq!(
            c.messages[3],
            json!({"role": "assistant", "content": "It is sunny."})
        );
        assert_eq!(
            c.tools,
            Some(vec![
                json!({"type": "function", "function": {"name": "get", "parameters": {}}})
            ])
        );
    }

    #[test]
    fn a_partial_final_message_is_continued() {
        let c = chat(json!({"input": [{"role": "user", "content": "go"},
            {"type": "message", "role": "assistant", "status": "incomplete",
             "content": [{"type": "output_text", "text": "Once"}]}]}))
        .unwrap();
        assert!(c.continue_final_message && !c.add_generation_prompt);
    }

    #[test]
    fn stored_conversations_and_bad_shapes_are_refused() {
        assert!(matches!(
            chat(json!({"input": "x", "previous_response_id": "resp_1"})),
            Err(Error::Unsupported(_))
        ));
        for bad in [
            json!({"input": 3}),
            json!({}),
            json!({"input": [1]}),
            json!({"input": [{"type": "function_call", "name": "f"}]}),
            json!({"input": [{"type": "mystery"}]}),
            json!({"input": "x", "tools": "no"}),
        ] {
            assert!(
                matches!(chat(bad.clone()), Err(Error::InvalidRequest(_))),
                "{bad}"
            );
        }
    }
}
