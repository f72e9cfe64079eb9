//! Reads one YAML mapping field by field, naming every problem by its path
//! (`schedulingProfiles[0].plugins[2].weight: ...`). Unknown fields are errors, never ignored.

use std::time::Duration;

use serde_yaml::{Mapping, Value};

use crate::error::Error;

/// `path.key`, or `key` at the root.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// An error at `path`.
pub(crate) fn invalid(path: &str, problem: impl std::fmt::Display) -> Error {
    let path = if path.is_empty() { "config" } else { path };
    Error::InvalidConfig(format!("{path}: {problem}"))
}

/// The YAML type of `value`, for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// The fields of one mapping, checked against the names it may have.
#[derive(Debug)]
pub(crate) struct Fields<'v> {
    path: String,
    map: Option<&'v Mapping>,
}

impl<'v> Fields<'v> {
    /// The mapping at `path` (`null` or absent reads as empty). Any key outside `known` is an
    /// error; `owner` says who rejects it when `known` is empty.
    pub(crate) fn new(
        value: Option<&'v Value>,
        path: &str,
        known: &[&str],
        owner: &str,
    ) -> Result<Self, Error> {
        let map = match value {
            None | Some(Value::Null) => None,
            Some(Value::Mapping(m)) => Some(m),
            Some(other) => {
                return Err(invalid(
                    path,
                    format!("expected a mapping, got {}", kind(other)),
                ));
            }
        };
        for key in map.into_iter().flat_map(Mapping::keys) {
            let Some(key) = key.as_str() else {
                return Err(invalid(
                    path,
                    format!("field names must be strings, got {}", kind(key)),
                ));
            };
            if !known.contains(&key) {
                let expected = if known.is_empty() {
                    format!("{owner} takes no fields")
                } else {
                    format!("expected one of: {}", known.join(", "))
                };
                return Err(invalid(
                    &join(path, key),
                    format!("unknown field ({expected})"),
                ));
            }
        }
        Ok(Self {
            path: path.to_owned(),
            map,
        })
    }

    /// The path of field `key`.
    pub(crate) fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The raw value of `key`, if present and not null.
    pub(crate) fn value(&self, key: &str) -> Option<&'v Value> {
        self.map?.get(key).filter(|v| !v.is_null())
    }

    /// A string field.
    pub(crate) fn str(&self, key: &str) -> Result<Option<&'v str>, Error> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(key, "a string", other)),
        }
    }

    /// A required string field.
    pub(crate) fn required_str(&self, key: &str) -> Result<&'v str, Error> {
        self.str(key)?
            .ok_or_else(|| invalid(&self.path(key), "required"))
    }

    /// A number field that must be finite and ≥ 0.
    pub(crate) fn non_negative(&self, key: &str) -> Result<Option<f64>, Error> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        match v.as_f64() {
            Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
            Some(x) => Err(invalid(
                &self.path(key),
                format!("must be a finite number ≥ 0, got {x}"),
            )),
            None => Err(self.wrong(key, "a number", v)),
        }
    }

    /// A number field in [0, 1].
    pub(crate) fn fraction(&self, key: &str) -> Result<Option<f64>, Error> {
        match self.non_negative(key)? {
            Some(x) if x > 1.0 => Err(invalid(
                &self.path(key),
                format!("must be between 0 and 1, got {x}"),
            )),
            x => Ok(x),
        }
    }

    /// An integer field of at least `min`.
    pub(crate) fn int(&self, key: &str, min: u64) -> Result<Option<u64>, Error> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        match (v.as_u64(), v.as_i64()) {
            (Some(n), _) if n >= min => Ok(Some(n)),
            (Some(n), _) => Err(invalid(
                &self.path(key),
                format!("must be at least {min}, got {n}"),
            )),
            (None, Some(n)) => Err(invalid(
                &self.path(key),
                format!("must be at least {min}, got {n}"),
            )),
            _ => Err(self.wrong(key, "an integer", v)),
        }
    }

    /// A list field.
    pub(crate) fn list(&self, key: &str) -> Result<Option<&'v [Value]>, Error> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Sequence(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(key, "a list", other)),
        }
    }

    /// A duration field, Go-style (`"200ms"`, `"2s"`, `"1m30s"`).
    pub(crate) fn duration(&self, key: &str) -> Result<Option<Duration>, Error> {
        let Some(text) = self.str(key)? else {
            return Ok(None);
        };
        parse_duration(text).map(Some).ok_or_else(|| {
            invalid(
                &self.path(key),
                format!("expected a duration such as \"500ms\" or \"2s\", got {text:?}"),
            )
        })
    }

    fn wrong(&self, key: &str, want: &str, got: &Value) -> Error {
        invalid(
            &self.path(key),
            format!("expected {want}, got {}", kind(got)),
        )
    }
}

/// Parses a sequence of `<decimal><unit>` with units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (whole, frac) = rest[..digits]
            .split_once('.')
            .unwrap_or((&rest[..digits], ""));
        if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 9 {
            return None;
        }
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_nanos: u128 = match &rest[..unit] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit..];
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let frac_value: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        };
        let scale = 10u128.pow(frac.len() as u32);
        nanos = nanos
            .checked_add(whole.checked_mul(unit_nanos)?)?
            .checked_add(frac_value * unit_nanos / scale)?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        let d = |s| parse_duration(s);
        assert_eq!(d("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(d("2s"), Some(Duration::from_secs(2)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(d("250us"), Some(Duration::from_micros(250)));
        for bad in ["", "2", "s", "2 s", "2x", "-1s", "1..5s"] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }
}
