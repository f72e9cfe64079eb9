//! Chat templates: HF jinja2 templates compiled with minijinja in transformers' configuration.
//!
//! transformers renders with `trim_blocks`, `lstrip_blocks`, loop controls, its own `tojson`
//! (`json.dumps` with `ensure_ascii=False`), `raise_exception`, `strftime_now`, and the
//! `{% generation %}` tag; values print as Python's `str()`. This module reproduces that environment;
//! [`crate::chat`] builds the context the way vLLM and transformers do.

use std::collections::BTreeMap;

use minijinja::{Environment, ErrorKind, Value};

use crate::error::Error;
use crate::limits::{self, CappedOutput, TemplatePolicy};
use crate::pyjson;

mod cancel;
mod functions;
mod rewrite;
mod strftime;

/// How vLLM passes message content to a template (vLLM's `--chat-template-content-format auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentFormat {
    /// Text parts joined with `\n` into one string.
    String,
    /// OpenAI parts kept as a list of `{"type": "text", "text": ...}`: the template loops over them.
    OpenAi,
}

/// The chat templates of one model, compiled once.
#[derive(Debug)]
pub struct ChatTemplates {
    env: Environment<'static>,
    /// Template name → how its content is passed; `default` is the single-template case.
    formats: BTreeMap<String, ContentFormat>,
    policy: TemplatePolicy,
}

/// The environment every template (the model's or a request's own) renders in, with the policy's
/// fuel (see [`crate::limits`]).
fn environment(policy: &TemplatePolicy) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_fuel(Some(policy.fuel));
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(Error::from)?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", functions::tojson);
    env.add_function("raise_exception", functions::raise_exception);
    env.add_function("strftime_now", functions::strftime_now);
    env.add_function("range", cancel::range);
    env.add_function(rewrite::TICK, cancel::tick);
    env.set_formatter(|out, state, value| {
        match pyjson::py_str_capped(value, limits::value_cap())? {
            Some(s) => out
                .write_str(&s)
                .map_err(|_| minijinja::Error::from(ErrorKind::WriteFailure)),
            None => minijinja::escape_formatter(out, state, value),
        }
    });
    Ok(env)
}

impl ChatTemplates {
    /// Compiles `templates` (name → source) to render under `policy`. A single unnamed template
    /// is named `default`.
    pub fn compile(
        templates: Vec<(String, String)>,
        policy: TemplatePolicy,
    ) -> Result<Self, Error> {
        let mut env = environment(&policy)?;
        let mut formats = BTreeMap::new();
        for (name, source) in templates {
            let format = content_format(&source);
            env.add_template_owned(name.clone(), rewrite::rewrite(&source))?;
            formats.insert(name, format);
        }
        Ok(Self {
            env,
            formats,
            policy,
        })
    }

    /// The template transformers picks: a request's named template, else `tool_use` when the request
    /// has tools (even an empty list) and the model has one, else `default`.
    pub fn select(&self, requested: Option<&str>, has_tools: bool) -> Result<&str, Error> {
        let pick = |name: &str| self.formats.get_key_value(name).map(|(k, _)| k.as_str());
        if let Some(name) = requested {
            return pick(name)
                .ok_or_else(|| Error::NoChatTemplate(format!("no template named {name:?}")));
        }
        if has_tools && let Some(name) = pick("tool_use") {
            return Ok(name);
        }
        if let Some(name) = pick("default") {
            return Ok(name);
        }
        Err(Error::NoChatTemplate(format!(
            "several templates and no default: {:?}",
            self.formats.keys().collect::<Vec<_>>()
        )))
    }

    /// How content is passed to template `name`.
    pub fn format(&self, name: &str) -> ContentFormat {
        self.formats
            .get(name)
            .copied()
            .unwrap_or(ContentFormat::String)
    }

    /// How these templates run.
    pub fn policy(&self) -> &TemplatePolicy {
        &self.policy
    }

    /// Renders template `name` with `context`.
    pub fn render(&self, name: &str, context: &Value) -> Result<String, Error> {
        render_capped(
            &self.env.get_template(name)?,
            context,
            self.policy.max_output_bytes,
        )
    }

    /// Renders a template given in the request itself (vLLM's `chat_template` request field),
    /// when `policy` trusts such templates.
    pub fn render_source(
        source: &str,
        context: &Value,
        policy: &TemplatePolicy,
    ) -> Result<(String, ContentFormat), Error> {
        if !policy.trust_request_template {
            return Err(Error::UntrustedTemplate);
        }
        let env = environment(policy)?;
        let rewritten = rewrite::rewrite(source);
        let template = env.template_from_str(&rewritten)?;
        let rendered = render_capped(&template, context, policy.max_output_bytes)?;
        Ok((rendered, content_format(source)))
    }
}

/// Renders into an output capped at `max` bytes that stops when the render is cancelled.
fn render_capped(
    template: &minijinja::Template<'_, '_>,
    context: &Value,
    max: usize,
) -> Result<String, Error> {
    limits::with_value_cap(max, || {
        let mut out = CappedOutput::new(max);
        template.render_captured_to(context, &mut out)?;
        String::from_utf8(out.buf)
            .map_err(|_| Error::Template("rendered prompt is not UTF-8".into()))
    })
}

/// vLLM detects the "openai" content format when the template iterates over a message's content
/// (`{% for part in message['content'] %}` or `message.content`); otherwise text parts are joined.
pub fn content_format(source: &str) -> ContentFormat {
    let mut rest = source;
    while let Some(pos) = rest.find("{%") {
        let tag = &rest[pos + 2..];
        let end = tag.find("%}").unwrap_or(tag.len());
        let body = tag[..end].trim_start_matches('-').trim();
        if let Some(for_body) = body.strip_prefix("for ")
            && let Some((_, iterable)) = for_body.split_once(" in ")
        {
            let iterable = iterable.trim_end_matches('-').trim();
            let iterable = iterable.split_whitespace().next().unwrap_or("");
            let is_content = iterable.ends_with(".content")
                || iterable.ends_with("['content']")
                || iterable.ends_with("[\"content\"]");
            if is_content {
                return ContentFormat::OpenAi;
            }
        }
        rest = &tag[end..];
    }
    ContentFormat::String
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_transparent_blocks() {
        let src = "a{%- generation %}b{% endgeneration -%} c";
        let t = ChatTemplates::compile(vec![("default".into(), src.into())], Default::default())
            .unwrap();
        assert_eq!(t.render("default", &Value::from(())).unwrap(), "abc");
    }

    #[test]
    fn content_format_detects_loops_over_content() {
        assert_eq!(
            content_format("{% for p in message['content'] %}"),
            ContentFormat::OpenAi
        );
        assert_eq!(
            content_format("{%- for p in m.content -%}"),
            ContentFormat::OpenAi
        );
        assert_eq!(
            content_format("{{ message.content }}{% for m in messages %}"),
            ContentFormat::String
        );
    }

    #[test]
    fn python_semantics_in_templates() {
        let t = ChatTemplates::compile(vec![(
            "default".into(),
            "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ n }}|{{ b }}|{{ ' a '.strip() }}|{{ 'a,b'.split(',') }}"
                .into(),
        )], TemplatePolicy::default())
        .unwrap();
        let ctx = Value::from(minijinja::value::Serde(
            serde_json::json!({"x": {"k": [1, "é<"]}, "n": null, "b": true}),
        ));
        assert_eq!(
            t.render("default", &ctx).unwrap(),
            "{\"k\": [1, \"é<\"]}|{\n  \"k\": [\n    1,\n    \"é<\"\n  ]\n}|None|True|a|['a', 'b']"
        );
        let err = ChatTemplates::compile(
            vec![("default".into(), "{{ raise_exception('no') }}".into())],
            TemplatePolicy::default(),
        )
        .unwrap()
        .render("default", &ctx)
        .unwrap_err();
        assert!(matches!(err, Error::Template(m) if m.contains("no")));
    }
}
