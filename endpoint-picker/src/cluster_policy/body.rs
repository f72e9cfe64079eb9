//! The request body's `model`, read and rewritten without touching anything else the client sent:
//! the top-level object's entries are taken as raw JSON text (`RawValue`), and a rewritten body is
//! those entries again, in their order, with every top-level `model` value replaced. Only the
//! whitespace between top-level entries is not kept. A body that is not a JSON object, or whose
//! `model` is not a string, is left alone (the request parser then says what is wrong).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The top-level entries, raw.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'de>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(V)
    }
}

fn entries(body: &[u8]) -> Option<Entries<'_>> {
    serde_json::from_slice(body).ok()
}

fn as_model(raw: &RawValue) -> Option<String> {
    serde_json::from_str(raw.get()).ok()
}

/// The body's model: its first top-level `model`, when that is a string.
pub fn model(body: &[u8]) -> Option<String> {
    let Entries(entries) = entries(body)?;
    let (_, raw) = entries.iter().find(|(k, _)| k == "model")?;
    as_model(raw)
}

/// `body` with its top-level `model` set to `to`; `None` when it has no string `model`.
pub fn with_model(body: &[u8], to: &str) -> Option<Vec<u8>> {
    let Entries(entries) = entries(body)?;
    if !entries
        .iter()
        .any(|(k, raw)| k == "model" && as_model(raw).is_some())
    {
        return None;
    }
    let to = serde_json::to_string(to).ok()?;
    let mut out = Vec::with_capacity(body.len() + to.len());
    out.push(b'{');
    for (i, (key, raw)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(serde_json::to_string(key).ok()?.as_bytes());
        out.push(b':');
        let value = if key == "model" { &to } else { raw.get() };
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'}');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_model_changes() {
        let body = br#"{"model": "a", "prompt": "x\u00e9\"y", "temperature": 1e400, "n": 12345678901234567890123, "stream": true}"#;
        assert_eq!(model(body).as_deref(), Some("a"));
        let out = with_model(body, "b/c\"d").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"b/c\"d","prompt":"x\u00e9\"y","temperature":1e400,"n":12345678901234567890123,"stream":true}"#
        );
        assert_eq!(model(&out).as_deref(), Some("b/c\"d"));
    }

    #[test]
    fn every_top_level_model_is_replaced_and_nested_ones_kept() {
        let body = br#"{"model":"a","messages":[{"model":"inner"}],"model":"a2"}"#;
        let out = with_model(body, "b").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"b","messages":[{"model":"inner"}],"model":"b"}"#
        );
    }

    #[test]
    fn bodies_without_a_string_model_are_left_alone() {
        for body in [
            &br#"{"prompt":"x"}"#[..],
            br#"{"model":1}"#,
            br#"["model"]"#,
            b"{\"model\":\"a\"",
            b"",
            b"\xff",
        ] {
            assert_eq!(with_model(body, "b"), None, "{body:?}");
            assert_eq!(model(body), None, "{body:?}");
        }
    }
}
