//! Chat templates: HF jinja2 templates compiled with minijinja in transformers' configuration.
//!
//! transformers renders with `trim_blocks`, `lstrip_blocks`, loop controls, its own `tojson`
//! (`json.dumps` with `ensure_ascii=False`), `raise_exception`, `strftime_now`, and the
//! `{% generation %}` tag; values print as Python's `str()`. This module reproduces that environment;
//! [`crate::chat`] builds the context the way vLLM and transformers do.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Environment, ErrorKind, State, Value};

use crate::error::Error;
use crate::limits::{self, CappedOutput, TemplatePolicy};
use crate::pyjson::{self, DumpOptions};

mod rewrite;

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
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_function("range", range);
    env.add_function(rewrite::TICK, tick);
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

/// Called at the start of every loop iteration ([`rewrite`]): fails once the render is
/// cancelled, so a loop over anything stops as soon as its caller gives up.
fn tick() -> Result<bool, minijinja::Error> {
    if limits::cancelled() {
        // The kind a cancelled output write fails with: counted as a template limit the same way.
        return Err(minijinja::Error::new(
            ErrorKind::WriteFailure,
            "render cancelled",
        ));
    }
    Ok(false)
}

/// Python's `range` as minijinja's (at most 100,000 items), except that iteration ends when the
/// render is cancelled: a loop of loops stops as soon as its caller gives up.
fn range(lower: i64, upper: Option<i64>, step: Option<i64>) -> Result<Value, minijinja::Error> {
    const MAX_ITEMS: i128 = 100_000;
    let (start, end) = match upper {
        Some(upper) => (lower, upper),
        None => (0, lower),
    };
    let step = step.unwrap_or(1);
    if step == 0 {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "cannot create range with step of 0",
        ));
    }
    let (start, end, step) = (i128::from(start), i128::from(end), i128::from(step));
    let span = if step > 0 { end - start } else { start - end };
    let len = if span <= 0 {
        0
    } else {
        (span + step.abs() - 1) / step.abs()
    };
    if len > MAX_ITEMS {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "range has too many elements",
        ));
    }
    let items = CancellableRange {
        next: start,
        step,
        left: len as usize,
    };
    Ok(Value::make_iterable(move || items.clone()))
}

/// The items of a [`range`]; yields nothing more once the render is cancelled.
#[derive(Debug, Clone)]
struct CancellableRange {
    next: i128,
    step: i128,
    left: usize,
}

impl Iterator for CancellableRange {
    type Item = i64;

    fn next(&mut self) -> Option<i64> {
        if self.left == 0 || limits::cancelled() {
            return None;
        }
        let item = i64::try_from(self.next).ok()?;
        self.left -= 1;
        self.next += self.step;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for CancellableRange {}

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

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
/// Serialising costs fuel as minijinja's own `tojson` does (a quarter fuel per byte), and the
/// result is capped like the render's output.
fn tojson(
    state: &State,
    value: &Value,
    args: Rest<Value>,
    kwargs: Kwargs,
) -> Result<Value, minijinja::Error> {
    tick()?;
    let mut positional = args.0.into_iter();
    let ensure_ascii = kwargs
        .get::<Option<Value>>("ensure_ascii")?
        .or_else(|| positional.next());
    let indent = kwargs
        .get::<Option<Value>>("indent")?
        .or_else(|| positional.next());
    let separators = kwargs
        .get::<Option<Value>>("separators")?
        .or_else(|| positional.next());
    let sort_keys = kwargs
        .get::<Option<Value>>("sort_keys")?
        .or_else(|| positional.next());
    kwargs.assert_all_used()?;

    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::Number => {
            let n = usize::try_from(i64::try_from(v)?.max(0)).unwrap_or(usize::MAX);
            if n > limits::value_cap() {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson indent is too large",
                ));
            }
            Some(" ".repeat(n))
        }
        Some(v) => Some(v.as_str().unwrap_or_default().to_string()),
    };
    let mut options = DumpOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
        ..DumpOptions::default()
    }
    .with_indent(indent);
    if let Some(seps) = separators.filter(|v| !v.is_none()) {
        let parts: Vec<Value> = seps.try_iter()?.collect();
        if let [item, key] = parts.as_slice() {
            options.item_sep = item.as_str().unwrap_or_default().to_string();
            options.key_sep = key.as_str().unwrap_or_default().to_string();
        }
    }
    options.max_len = limits::value_cap();
    let json = pyjson::dumps(value, &options)?;
    state.consume_fuel(json.len() as u64 / 4)?;
    Ok(Value::from(json))
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `datetime.now().strftime(format)` for the directives chat templates use (UTC).
fn strftime_now(_state: &State, format: String) -> Result<Value, minijinja::Error> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Value::from(strftime(secs, &format)))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats Unix time `secs` (UTC) with C `strftime` directives.
pub fn strftime(secs: i64, format: &str) -> String {
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3).
    let (hour, minute, second) = (tod / 3600, tod / 60 % 60, tod % 60);
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') | Some('h') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 13:25:09 UTC, a Friday.
        let t = 1_722_000_309;
        assert_eq!(strftime(t, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(
            strftime(t, "%A %B %e, %H:%M:%S %p %j %y %%"),
            "Friday July 26, 13:25:09 PM 208 24 %"
        );
        assert_eq!(strftime(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
    }

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
