//! The request body's `model`, found and replaced without touching anything else the client sent:
//! the top-level object's entries are read as raw JSON text (`RawValue`, borrowed from the body),
//! and a rewrite splices the new name's JSON string over the old one's bytes, so every other byte
//! (whitespace, number spellings, escapes, key order) goes upstream as sent. A body that is not a
//! JSON object, whose `model` is not a string, or that has more than one top-level `model` is
//! left alone (the request parser then says what is wrong).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

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

/// The body's one top-level string `model`: its name and where its JSON string lies in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// The name, unescaped.
    pub name: String,
    span: Range<usize>,
}

impl Model {
    /// The length of the body with the model's JSON string replaced by `to_json`.
    pub fn rewritten_len(&self, body_len: usize, to_json: &str) -> usize {
        body_len - self.span.len() + to_json.len()
    }

    /// `body` (the one this was found in) with the model's JSON string replaced by `to_json`.
    pub fn rewrite(&self, body: &[u8], to_json: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.rewritten_len(body.len(), to_json));
        out.extend_from_slice(&body[..self.span.start]);
        out.extend_from_slice(to_json.as_bytes());
        out.extend_from_slice(&body[self.span.end..]);
        out
    }
}

/// The body's model: its only top-level `model`, when that is a string.
pub fn model(body: &[u8]) -> Option<Model> {
    let Entries(entries) = serde_json::from_slice(body).ok()?;
    let mut models = entries.iter().filter(|(k, _)| k == "model");
    let (_, raw) = models.next()?;
    if models.next().is_some() {
        return None;
    }
    let name = serde_json::from_str(raw.get()).ok()?;
    // The raw value is borrowed from `body`: its offset is where its bytes start.
    let start = (raw.get().as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let span = start..start.checked_add(raw.get().len())?;
    (body.get(span.clone())? == raw.get().as_bytes()).then_some(Model { name, span })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(body: &[u8], to: &str) -> Option<String> {
        let m = model(body)?;
        let to = serde_json::to_string(to).unwrap();
        let out = m.rewrite(body, &to);
        assert_eq!(out.len(), m.rewritten_len(body.len(), &to));
        Some(String::from_utf8(out).unwrap())
    }

    #[test]
    fn only_the_model_changes() {
        let body = br#" { "prompt": "x\u00e9\"y",  "model" :  "a\u0062" , "temperature": 1e400, "n": 12345678901234567890123, "stream": true}"#;
        assert_eq!(model(body).unwrap().name, "ab");
        let out = rewrite(body, "b/c\"d").unwrap();
        assert_eq!(
            out,
            r#" { "prompt": "x\u00e9\"y",  "model" :  "b/c\"d" , "temperature": 1e400, "n": 12345678901234567890123, "stream": true}"#
        );
        assert_eq!(model(out.as_bytes()).unwrap().name, "b/c\"d");
    }

    #[test]
    fn nested_models_are_kept() {
        let body = br#"{"messages":[{"model":"inner"}],"model":"a"}"#;
        assert_eq!(
            rewrite(body, "b").unwrap(),
            r#"{"messages":[{"model":"inner"}],"model":"b"}"#
        );
    }

    #[test]
    fn bodies_without_one_string_model_are_left_alone() {
        for body in [
            &br#"{"prompt":"x"}"#[..],
            br#"{"model":1}"#,
            br#"{"model":"a","model":"a"}"#,
            br#"["model"]"#,
            b"{\"model\":\"a\"",
            b"",
            b"\xff",
        ] {
            assert_eq!(model(body), None, "{body:?}");
        }
    }
}
