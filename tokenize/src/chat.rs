//! Chat requests: from an OpenAI chat body to the prompt text vLLM renders for it.
//!
//! vLLM first normalises the request (content parts, tool-call arguments, tool schemas as its pydantic
//! models dump them), then calls `transformers.apply_chat_template`, which drops `None`-valued message
//! keys, aliases reasoning fields, and renders with the special tokens in the context. Each of those
//! steps changes the prompt, so each is reproduced here in the same order.

use serde_json::{Map, Value};

use crate::conversation::{conversation, tool_schema};
use crate::error::Error;
use crate::limits::TemplatePolicy;
use crate::template::{ChatTemplates, ContentFormat};

/// The parts of a chat request that decide its prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// OpenAI `messages`.
    pub messages: Vec<Value>,
    /// OpenAI `tools` (function schemas); `None` when absent, which templates distinguish from `[]`.
    pub tools: Option<Vec<Value>>,
    /// vLLM's `documents` (RAG), passed to the template as they are.
    pub documents: Option<Vec<Value>>,
    /// vLLM's `add_generation_prompt` (default true).
    pub add_generation_prompt: bool,
    /// vLLM's `continue_final_message` (default false).
    pub continue_final_message: bool,
    /// vLLM's `add_special_tokens` for chat (default false: the template already wrote them).
    pub add_special_tokens: bool,
    /// A request-level template, or the name of one of the model's templates.
    pub chat_template: Option<String>,
    /// Extra template variables (`chat_template_kwargs`).
    pub chat_template_kwargs: Map<String, Value>,
}

/// The API a chat-style body is written for: each names its conversation differently, and vLLM
/// turns each into the same chat request before rendering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatApi {
    /// OpenAI `/v1/chat/completions` (`messages`).
    ChatCompletions,
    /// OpenAI `/v1/responses` (`input`, `instructions`): [`crate::responses`].
    Responses,
    /// Anthropic `/v1/messages` (`system`, `messages` of content blocks): [`crate::anthropic`].
    Messages,
}

impl ChatRequest {
    /// Reads the chat request a body of `api` stands for.
    pub fn from_api_body(api: ChatApi, body: &Map<String, Value>) -> Result<Self, Error> {
        match api {
            ChatApi::ChatCompletions => Self::from_body(body),
            ChatApi::Responses => crate::responses::chat_request(body),
            ChatApi::Messages => crate::anthropic::chat_request(body),
        }
    }

    /// vLLM passes a request's reasoning effort to the template as `reasoning_effort`, and
    /// `enable_thinking` (false only for `"none"`) unless the request's own kwargs set it.
    pub fn set_reasoning_effort(&mut self, effort: String) {
        if !self.chat_template_kwargs.contains_key("enable_thinking") {
            self.chat_template_kwargs
                .insert("enable_thinking".into(), Value::Bool(effort != "none"));
        }
        self.chat_template_kwargs
            .insert("reasoning_effort".into(), Value::String(effort));
    }

    /// A request with vLLM's defaults.
    pub fn new(messages: Vec<Value>) -> Self {
        Self {
            messages,
            tools: None,
            documents: None,
            add_generation_prompt: true,
            continue_final_message: false,
            add_special_tokens: false,
            chat_template: None,
            chat_template_kwargs: Map::new(),
        }
    }

    /// Reads the fields that shape the prompt from an OpenAI `/v1/chat/completions` body.
    pub fn from_body(body: &Map<String, Value>) -> Result<Self, Error> {
        let list = |key: &str| -> Result<Option<Vec<Value>>, Error> {
            match body.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(items)) => Ok(Some(items.clone())),
                Some(_) => Err(Error::InvalidRequest(format!("`{key}` must be a list"))),
            }
        };
        let flag = |key: &str, default: bool| -> Result<bool, Error> {
            match body.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(Error::InvalidRequest(format!("`{key}` must be a boolean"))),
            }
        };
        let messages = list("messages")?
            .ok_or_else(|| Error::InvalidRequest("`messages` is required".into()))?;
        let chat_template = match body.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(Error::InvalidRequest(
                    "`chat_template` must be a string".into(),
                ));
            }
        };
        let chat_template_kwargs = match body.get("chat_template_kwargs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(Error::InvalidRequest(
                    "`chat_template_kwargs` must be an object".into(),
                ));
            }
        };
        let effort = match body.get("reasoning_effort") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(Error::InvalidRequest(
                    "`reasoning_effort` must be a string".into(),
                ));
            }
        };
        let mut request = Self {
            messages,
            tools: list("tools")?,
            documents: list("documents")?,
            add_generation_prompt: flag("add_generation_prompt", true)?,
            continue_final_message: flag("continue_final_message", false)?,
            add_special_tokens: flag("add_special_tokens", false)?,
            chat_template,
            chat_template_kwargs,
        };
        if let Some(effort) = effort {
            request.set_reasoning_effort(effort);
        }
        Ok(request)
    }
}

/// transformers' marker for `continue_final_message`: appended to the final message, cut after rendering.
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";
/// Names the template context sets itself; `chat_template_kwargs` cannot override them.
const RESERVED: [&str; 6] = [
    "messages",
    "tools",
    "documents",
    "add_generation_prompt",
    "chat_template",
    "tokenize",
];

/// Renders `request` with the model's `templates` and special tokens (`bos_token`, ... → text); a
/// request's own template source only when `policy` trusts it.
pub fn render(
    templates: Option<&ChatTemplates>,
    special_tokens: &[(String, String)],
    request: &ChatRequest,
    policy: &TemplatePolicy,
) -> Result<String, Error> {
    if request.continue_final_message && request.add_generation_prompt {
        return Err(Error::InvalidRequest(
            "continue_final_message and add_generation_prompt are not compatible".into(),
        ));
    }
    let tools = request
        .tools
        .as_ref()
        .map(|t| t.iter().map(tool_schema).collect::<Result<Vec<_>, _>>());
    let tools = tools.transpose()?;
    // A request's own template, unless it names one of the model's.
    let own_source = request
        .chat_template
        .as_deref()
        .filter(|s| templates.is_none_or(|t| t.select(Some(s), false).is_err()));
    if own_source.is_some() && !policy.trust_request_template {
        return Err(Error::UntrustedTemplate);
    }
    let selected = match (own_source, templates) {
        (Some(_), _) => None,
        (None, Some(t)) => Some(t.select(request.chat_template.as_deref(), tools.is_some())?),
        (None, None) => return Err(Error::NoChatTemplate("the model has none".into())),
    };
    let format = match (own_source, selected, templates) {
        (Some(src), _, _) => crate::template::content_format(src),
        (None, Some(name), Some(t)) => t.format(name),
        _ => ContentFormat::String,
    };
    let mut messages = conversation(&request.messages, format)?;
    let continued = if request.continue_final_message {
        let source_has_content = match (own_source, selected) {
            (Some(src), _) => src.contains("content"),
            _ => true,
        };
        Some(tag_final_message(&mut messages, source_has_content)?)
    } else {
        None
    };

    let mut context = Map::new();
    context.insert("messages".into(), Value::Array(messages));
    context.insert(
        "tools".into(),
        tools.map(Value::Array).unwrap_or(Value::Null),
    );
    context.insert(
        "documents".into(),
        request
            .documents
            .clone()
            .map(Value::Array)
            .unwrap_or(Value::Null),
    );
    context.insert(
        "add_generation_prompt".into(),
        Value::Bool(request.add_generation_prompt),
    );
    for (name, text) in special_tokens {
        context.insert(name.clone(), Value::String(text.clone()));
    }
    for (key, value) in &request.chat_template_kwargs {
        if !RESERVED.contains(&key.as_str()) {
            context.insert(key.clone(), value.clone());
        }
    }
    let context = minijinja::Value::from(minijinja::value::Serde(&context));
    let rendered = match (own_source, selected, templates) {
        (Some(src), _, _) => ChatTemplates::render_source(src, &context, policy)?.0,
        (None, Some(name), Some(t)) => t.render(name, &context)?,
        _ => return Err(Error::NoChatTemplate("the model has none".into())),
    };
    match continued {
        Some(final_text) => cut_at_continue_tag(rendered, &final_text),
        None => Ok(rendered),
    }
}

/// Appends transformers' continue tag to the final message's text; returns that text.
fn tag_final_message(
    messages: &mut [Value],
    template_reads_content: bool,
) -> Result<String, Error> {
    let last = messages
        .last_mut()
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            Error::InvalidRequest("continue_final_message on an empty conversation".into())
        })?;
    if !template_reads_content {
        return Err(Error::InvalidRequest(
            "the template does not read `content`".into(),
        ));
    }
    match last.get_mut("content") {
        Some(Value::String(s)) => {
            let text = s.clone();
            s.push_str(CONTINUE_TAG);
            Ok(text)
        }
        Some(Value::Array(parts)) => {
            for part in parts.iter_mut().rev() {
                if let Some(Value::String(s)) = part.get_mut("text") {
                    let text = s.clone();
                    s.push_str(CONTINUE_TAG);
                    return Ok(text);
                }
            }
            Err(Error::InvalidRequest(
                "no text to continue in the final message".into(),
            ))
        }
        _ => Err(Error::InvalidRequest(
            "the final message has no content to continue".into(),
        )),
    }
}

fn cut_at_continue_tag(rendered: String, final_text: &str) -> Result<String, Error> {
    let tag = CONTINUE_TAG.trim();
    let Some(at) = rendered.rfind(tag) else {
        return Err(Error::InvalidRequest(
            "the template dropped the final message".into(),
        ));
    };
    if !rendered.contains(final_text.trim()) {
        return Err(Error::InvalidRequest(
            "the template dropped the final message".into(),
        ));
    }
    if rendered[at..].starts_with(CONTINUE_TAG) {
        Ok(rendered[..at].to_string())
    } else {
        Ok(rendered[..at].trim_end().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn body_fields_and_defaults() {
        let body =
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": null});
        let r = ChatRequest::from_body(body.as_object().unwrap()).unwrap();
        assert_eq!(
            r,
            ChatRequest::new(vec![json!({"role": "user", "content": "hi"})])
        );
        let bad = json!({"messages": "nope"});
        assert!(ChatRequest::from_body(bad.as_object().unwrap()).is_err());
    }
}
