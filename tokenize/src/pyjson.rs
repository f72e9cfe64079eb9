//! Python's `json.dumps` and `str()` over template values, byte for byte.
//!
//! HF chat templates run under jinja2 in Python, where `tojson` is `json.dumps(x, ensure_ascii=False,
//! indent=None, separators=None, sort_keys=False)` and `{{ x }}` prints `str(x)`. Tool schemas and
//! tool-call arguments go through these into the prompt, so any difference (a space after `:`, `1e+16`
//! against `1e16`, `True` against `true`) changes the tokens.

use std::fmt::Write;

use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, Value};

/// How `json.dumps` lays out its output.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Escape every non-ASCII character as `\uXXXX` (surrogate pairs above the BMP).
    pub ensure_ascii: bool,
    /// `None`: one line; `Some(s)`: newline and `s` repeated per level (an int `n` is `n` spaces).
    pub indent: Option<String>,
    /// Between items and between key and value.
    pub item_sep: String,
    /// Between key and value.
    pub key_sep: String,
    /// Sort map keys.
    pub sort_keys: bool,
    /// Largest output in bytes; past it, an error (a template can build values whose dump is far
    /// larger than the values: one long string referenced many times, or a long indent).
    pub max_len: usize,
}

impl Default for DumpOptions {
    fn default() -> Self {
        Self {
            ensure_ascii: false,
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            sort_keys: false,
            max_len: usize::MAX,
        }
    }
}

impl DumpOptions {
    /// Python's default separators depend on indent: `(', ', ': ')` without, `(',', ': ')` with.
    pub fn with_indent(mut self, indent: Option<String>) -> Self {
        if indent.is_some() {
            self.item_sep = ",".into();
        }
        self.indent = indent;
        self
    }
}

/// `json.dumps(value, **options)`.
pub fn dumps(value: &Value, options: &DumpOptions) -> Result<String, Error> {
    let mut out = String::new();
    write_json(&mut out, value, options, 0)?;
    Ok(out)
}

fn newline(out: &mut String, options: &DumpOptions, level: usize) -> Result<(), Error> {
    if let Some(indent) = &options.indent {
        let grow = indent.len().saturating_mul(level).saturating_add(1);
        within(out.len().saturating_add(grow), options.max_len)?;
        out.push('\n');
        for _ in 0..level {
            out.push_str(indent);
        }
    }
    Ok(())
}

/// Fails when `len` is past `max`.
fn within(len: usize, max: usize) -> Result<(), Error> {
    if len > max {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("serialized value over {max} bytes"),
        ));
    }
    Ok(())
}

fn write_json(out: &mut String, v: &Value, o: &DumpOptions, level: usize) -> Result<(), Error> {
    within(out.len(), o.max_len)?;
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, v),
        ValueKind::String => write_string(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, o, level + 1)?;
                write_json(out, item, o, level + 1)?;
            }
            newline(out, o, level)?;
            out.push(']');
        }
        ValueKind::Map => {
            let mut pairs: Vec<(Value, Value)> = Vec::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                pairs.push((key, item));
            }
            if o.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if pairs.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, item)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, o, level + 1)?;
                write_key(out, key, o)?;
                out.push_str(&o.key_sep);
                write_json(out, item, o, level + 1)?;
            }
            newline(out, o, level)?;
            out.push('}');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of kind {} is not JSON serializable", v.kind()),
            ));
        }
    }
    Ok(())
}

/// JSON object keys: Python converts numbers, bools and None to strings; anything else is a TypeError.
fn write_key(out: &mut String, key: &Value, o: &DumpOptions) -> Result<(), Error> {
    match key.kind() {
        ValueKind::String => write_string(out, key.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::None => out.push_str("\"null\""),
        ValueKind::Bool => out.push_str(if key.is_true() {
            "\"true\""
        } else {
            "\"false\""
        }),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(&mut s, key);
            write_string(out, &s, o.ensure_ascii);
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "keys must be str, int, float, bool or None",
            ));
        }
    }
    Ok(())
}

fn write_number(out: &mut String, v: &Value) {
    if v.is_integer() {
        // Integers print as they are (minijinja holds up to i128/u128).
        let _ = write!(out, "{v}");
    } else if let Ok(f) = f64::try_from(v.clone()) {
        out.push_str(&float_repr(f, true));
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Python's `repr(float)`: the shortest round-trip digits, fixed notation for decimal exponents in
/// [-4, 16), scientific (`1e+16`, `1.5e-05`) outside. `json` spells the non-finite ones
/// `NaN`/`Infinity`, `str()` spells them `nan`/`inf`.
pub fn float_repr(f: f64, json: bool) -> String {
    if f.is_nan() {
        return if json { "NaN" } else { "nan" }.into();
    }
    if f.is_infinite() {
        let s = if json { "Infinity" } else { "inf" };
        return if f < 0.0 { format!("-{s}") } else { s.into() };
    }
    // `{:e}` gives the shortest round-trip digits as `d.ddddde[-]x`.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mant = if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.abs())
    }
}

fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `str(value)` as jinja2 prints it: `None`, `True`, float repr, and `repr` for containers.
pub fn py_str(value: &Value) -> Option<String> {
    py_str_capped(value, usize::MAX).ok().flatten()
}

/// [`py_str`] that fails once the text passes `max` bytes (a template can build a list whose `str()`
/// is far larger than the list: one long string referenced many times).
pub fn py_str_capped(value: &Value, max: usize) -> Result<Option<String>, Error> {
    Ok(match value.kind() {
        ValueKind::None => Some("None".into()),
        ValueKind::Bool => Some(if value.is_true() { "True" } else { "False" }.into()),
        ValueKind::Number if !value.is_integer() => f64::try_from(value.clone())
            .ok()
            .map(|f| float_repr(f, false)),
        ValueKind::Seq | ValueKind::Map => {
            let mut out = String::new();
            py_repr(&mut out, value, max)?;
            Some(out)
        }
        _ => None,
    })
}

fn py_repr(out: &mut String, v: &Value, max: usize) -> Result<(), Error> {
    within(out.len(), max)?;
    match v.kind() {
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            let quote = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            out.push(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                        let _ = write!(out, "\\x{:02x}", c as u32);
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
        }
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(out, &item, max)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let item = v.get_item(&key)?;
                py_repr(out, &key, max)?;
                out.push_str(": ");
                py_repr(out, &item, max)?;
            }
            out.push('}');
        }
        _ => match py_str(v) {
            Some(s) => out.push_str(&s),
            None => {
                let _ = write!(out, "{v}");
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (21.5, "21.5"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789012345.0, "123456789012345.0"),
            (-2.5e22, "-2.5e+22"),
            (-0.0, "-0.0"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f, true), want, "{f}");
        }
        assert_eq!(float_repr(f64::NAN, true), "NaN");
        assert_eq!(float_repr(f64::NEG_INFINITY, false), "-inf");
    }

    #[test]
    fn dumps_matches_python_defaults_and_indent() {
        let v = Value::from(minijinja::value::Serde(
            serde_json::json!({"b": [1, 2.5, null, true], "a": "é\"\n", "c": {}}),
        ));
        assert_eq!(
            dumps(&v, &DumpOptions::default()).unwrap(),
            r#"{"b": [1, 2.5, null, true], "a": "é\"\n", "c": {}}"#
        );
        let ascii = DumpOptions {
            ensure_ascii: true,
            ..DumpOptions::default()
        };
        assert_eq!(
            dumps(&Value::from("é😀"), &ascii).unwrap(),
            r#""\u00e9\ud83d\ude00""#
        );
        let indented = DumpOptions::default().with_indent(Some("  ".into()));
        assert_eq!(
            dumps(&v, &indented).unwrap(),
            "{\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"a\": \"é\\\"\\n\",\n  \"c\": {}\n}"
        );
    }

    #[test]
    fn str_prints_like_python() {
        assert_eq!(py_str(&Value::from(())).as_deref(), Some("None"));
        assert_eq!(py_str(&Value::from(true)).as_deref(), Some("True"));
        let v = Value::from(minijinja::value::Serde(
            serde_json::json!(["a'b", {"k": 1}]),
        ));
        assert_eq!(py_str(&v).as_deref(), Some(r#"["a'b", {'k': 1}]"#));
    }
}
