//! The fast path for the request path's costliest common body: a completions object whose
//! `prompt` is a flat array of token ids (8,192 ids are ~50 KB of digits, and serde_json's
//! visitors turn them into integers one call at a time).
//!
//! The top-level object is walked here; every value but the prompt is still parsed by serde_json,
//! into the very types of [`Body`]'s fields, and the prompt's digits, commas and whitespace are
//! read straight into `u32`s. Whatever this path could answer differently from serde_json alone
//! (an escaped, control-character or duplicate known key, a prompt that is not a non-empty flat
//! array of ids in `u32` range, a `messages` field, a deeply nested value, any syntax error) makes
//! it return `None`, and the caller parses the whole body with serde_json: errors and unusual
//! bodies get the reference parser's answer. `tests::agrees_with_serde` and the `request_body`
//! fuzz target check that the two agree on every input.

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{Body, PromptField};

/// Bracket bytes a non-prompt array or object value may hold (an upper bound of its nesting):
/// well under serde_json's depth limit, which counts the body's own level too.
const MAX_BRACKETS: usize = 100;

/// The body, if it is a JSON object with a flat token-id `prompt` this path reads exactly.
pub(super) fn body(text: &str) -> Option<Body<'_>> {
    let b = text.as_bytes();
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut out = Body::default();
    let mut seen = 0u8;
    loop {
        i = ws(b, i + 1);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let start = i + 1;
        let len = (b.get(start..)?.iter()).position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if b[start + len] != b'"' {
            return None;
        }
        let key = &b[start..start + len];
        i = ws(b, start + len + 1);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = ws(b, i + 1);
        let bit = match key {
            b"model" => 1,
            b"stream" => 2,
            b"cache_salt" => 4,
            b"add_special_tokens" => 8,
            b"prompt" => 16,
            b"max_tokens" => 32,
            b"max_completion_tokens" => 64,
            b"messages" => return None,
            _ => 0,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        let rest = text.get(i..)?;
        i += match key {
            b"prompt" => {
                let (ids, n) = ids(rest.as_bytes())?;
                out.prompt = Some(PromptField::Tokens(ids));
                n
            }
            b"model" => value(rest, &mut out.model)?,
            b"stream" => value(rest, &mut out.stream)?,
            b"cache_salt" => value(rest, &mut out.cache_salt)?,
            b"add_special_tokens" => value(rest, &mut out.add_special_tokens)?,
            b"max_tokens" => value(rest, &mut out.max_tokens)?,
            b"max_completion_tokens" => value(rest, &mut out.max_completion_tokens)?,
            _ => value::<IgnoredAny>(rest, &mut None)?,
        };
        i = ws(b, i);
        match b.get(i) {
            Some(b',') => {}
            Some(b'}') => break,
            _ => return None,
        }
    }
    (seen & 16 != 0 && ws(b, i + 1) == b.len()).then_some(out)
}

/// The index of the first non-whitespace byte at or after `i` (JSON's four whitespace bytes).
fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Parses the value at the start of `text` (`null` gives `None`, as for an optional field) into
/// `slot`; returns its length.
fn value<'a, T: Deserialize<'a>>(text: &'a str, slot: &mut Option<T>) -> Option<usize> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Option<T>>();
    *slot = stream.next()?.ok()?;
    let n = stream.byte_offset();
    let raw = text.as_bytes().get(..n)?;
    // Nesting depth is at most half the length, and at most the number of opening brackets.
    let deep = raw.len() > 2 * MAX_BRACKETS
        && raw.iter().filter(|&&c| c == b'[' || c == b'{').count() > MAX_BRACKETS;
    (!deep).then_some(n)
}

/// A non-empty flat array of JSON integers in `u32` range at the start of `b`: the ids and the
/// array's length in bytes. `None` for anything else (serde_json then says what is wrong).
fn ids(b: &[u8]) -> Option<(Vec<u32>, usize)> {
    if b.first() != Some(&b'[') {
        return None;
    }
    let mut out = Vec::with_capacity(1024);
    let mut i = ws(b, 1);
    loop {
        let first = *b.get(i)?;
        if !first.is_ascii_digit() {
            return None;
        }
        i += 1;
        let mut v = u32::from(first - b'0');
        if first == b'0' {
            // JSON has no leading zeros.
            if b.get(i).is_some_and(u8::is_ascii_digit) {
                return None;
            }
        } else {
            while let Some(&c) = b.get(i)
                && c.is_ascii_digit()
            {
                v = v.checked_mul(10)?.checked_add(u32::from(c - b'0'))?;
                i += 1;
            }
        }
        out.push(v);
        i = ws(b, i);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b']') => return Some((out, i + 1)),
            // A fraction, an exponent, or anything else.
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{InferenceRequest, parse, parse_reference};
    use crate::error::Error;

    /// `parse` (fast path first) and `parse_reference` (serde_json alone) give the same answer.
    fn agree(body: &[u8]) {
        let show = |r: &Result<InferenceRequest<'_>, Error>| format!("{r:?}");
        match (parse(body), parse_reference(body)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!(
                "{}: fast {} vs reference {}",
                String::from_utf8_lossy(body),
                show(&a),
                show(&b)
            ),
        }
    }

    #[test]
    fn a_token_body_takes_the_fast_path() {
        let body =
            r#" {"model" : "m","prompt":[ 1 ,2,3,4294967295, 0 ],"max_tokens":16, "x":{"y":[]}}"#;
        assert!(super::body(body).is_some());
        agree(body.as_bytes());
        for not_fast in [
            r#"{"model":"m","prompt":[]}"#,
            r#"{"model":"m","prompt":"text"}"#,
            r#"{"model":"m","prompt":[1,4294967296]}"#,
            r#"{"model":"m","prompt":[1,-1]}"#,
            r#"{"model":"m","prompt":[01]}"#,
            r#"{"model":"m","prompt":[1.0]}"#,
            r#"{"model":"m","prompt":[1e2]}"#,
            r#"{"model":"m","prompt":[1,]}"#,
            r#"{"model":"m","prompt":[[1]]}"#,
            r#"{"model":"m","prompt":[1],"prompt":[2]}"#,
            r#"{"model":"m","prompt":[1],"model":"n"}"#,
            r#"{"mod\u0065l":"m","prompt":[1]}"#,
            r#"{"model":"m","prompt":[1],"messages":[]}"#,
            r#"{"model":"m","prompt":[1]} x"#,
            r#"{"model":"m","prompt":[1],}"#,
            r#"{"model":"m"}"#,
            "{}",
        ] {
            assert!(super::body(not_fast).is_none(), "{not_fast}");
            agree(not_fast.as_bytes());
        }
    }

    #[test]
    fn nesting_near_serde_jsons_limit_agrees() {
        for depth in [99, 100, 101, 126, 127, 128, 129] {
            let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            agree(format!(r#"{{"model":"m","prompt":[1],"x":{deep}}}"#).as_bytes());
            agree(format!(r#"{{"x":{deep},"model":"m","prompt":[1]}}"#).as_bytes());
        }
    }

    fn id() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => any::<u32>().prop_map(|v| v.to_string()),
            2 => (0u32..100).prop_map(|v| v.to_string()),
            1 => prop::sample::select(vec![
                "0", "-0", "-1", "01", "00", "1.5", "1e3", "1E3", "4294967295", "4294967296",
                "18446744073709551616", "\"7\"", "[1]", "null", "true", "", " ",
            ])
            .prop_map(String::from),
        ]
    }

    fn space() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", "", " ", "\n", " \t\r\n", "\u{a0}"])
    }

    fn prompt() -> impl Strategy<Value = String> {
        let array = prop::collection::vec((space(), id(), space()), 0..12).prop_map(|ids| {
            let inner: Vec<String> = ids.iter().map(|(a, v, b)| format!("{a}{v}{b}")).collect();
            format!("[{}]", inner.join(","))
        });
        prop_oneof![
            8 => array,
            1 => Just(r#""some text""#.to_owned()),
            1 => Just("null".to_owned()),
            1 => Just("[[1,2],[3]]".to_owned()),
        ]
    }

    fn field() -> impl Strategy<Value = (String, String)> {
        let key = prop::sample::select(vec![
            "model",
            "model",
            "stream",
            "cache_salt",
            "add_special_tokens",
            "max_tokens",
            "max_completion_tokens",
            "messages",
            "extra",
            "mod\\u0065l",
            "prompt",
            "n\u{e9}",
        ]);
        let value = prop::sample::select(vec![
            r#""m""#,
            r#""""#,
            r#""a\"b\u00e9""#,
            "true",
            "false",
            "null",
            "16",
            "-3",
            "1.5",
            "99999999999999999999",
            r#"{"a":[1,{}],"b":null}"#,
            "[1,2]",
            r#"[{"role":"user","content":"hi"}]"#,
            "[1,",
            "tru",
        ]);
        (key, value).prop_map(|(k, v)| (k.to_owned(), v.to_owned()))
    }

    /// An object of some fields and a prompt, then maybe one byte replaced, inserted or removed.
    fn bodies() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(field(), 0..5),
            prompt(),
            any::<prop::sample::Index>(),
            space(),
            prop::option::of((any::<prop::sample::Index>(), 0u8..3, any::<u8>())),
        )
            .prop_map(|(mut fields, prompt, at, pad, mutation)| {
                fields.insert(at.index(fields.len() + 1), ("prompt".into(), prompt));
                let inner: Vec<String> = (fields.iter())
                    .map(|(k, v)| format!(r#"{pad}"{k}"{pad}:{pad}{v}{pad}"#))
                    .collect();
                let mut body = format!("{pad}{{{}}}{pad}", inner.join(",")).into_bytes();
                if let Some((at, kind, byte)) = mutation {
                    let i = at.index(body.len());
                    match kind {
                        0 => body[i] = byte,
                        1 => body.insert(i, byte),
                        _ => {
                            body.remove(i);
                        }
                    }
                }
                body
            })
    }

    proptest! {
        #[test]
        fn agrees_with_serde(body in bodies()) {
            agree(&body);
        }
    }
}
