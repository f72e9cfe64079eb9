//! What transformers adds to a template's environment: its `tojson` filter, `raise_exception` and
//! `strftime_now`.

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{ErrorKind, State, Value};

use crate::limits;
use crate::pyjson::{self, DumpOptions};

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
/// Serialising costs fuel as minijinja's own `tojson` does (a quarter fuel per byte), and the
/// result is capped like the render's output.
pub(super) fn tojson(
    state: &State,
    value: &Value,
    args: Rest<Value>,
    kwargs: Kwargs,
) -> Result<Value, minijinja::Error> {
    super::cancel::tick()?;
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

/// jinja has no `raise`: transformers' templates call this to refuse a conversation.
pub(super) fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `datetime.now().strftime(format)` for the directives chat templates use (UTC).
pub(super) fn strftime_now(_state: &State, format: String) -> Result<Value, minijinja::Error> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Value::from(super::strftime::strftime(secs, &format)))
}
