//! The body's fields that serde reads by hand: `prompt` in each of its shapes (token ids kept,
//! checked or refused as vLLM would) and strings that borrow from the body when they can.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// `prompt`: a string, an array of token ids, an array of strings or an array of token arrays.
pub(super) enum PromptField<'a> {
    Tokens(Vec<u32>),
    Text(Cow<'a, str>),
    Empty,
}

impl<'de: 'a, 'a> Deserialize<'de> for PromptField<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PromptVisitor)
    }
}

struct PromptVisitor;

impl<'de> Visitor<'de> for PromptVisitor {
    type Value = PromptField<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, an array of token ids, or an array of either")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(PromptField::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PromptField::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(PromptField::Text(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(PromptField::Empty)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let first = match seq.next_element::<Element<'de>>()? {
            None => return Ok(PromptField::Empty),
            Some(first) => first,
        };
        match first {
            Element::Token(t) => {
                let mut tokens = Vec::with_capacity(seq.size_hint().unwrap_or(1024) + 1);
                tokens.push(t);
                while let Some(t) = seq.next_element::<TokenId>()? {
                    tokens.push(t.0);
                }
                Ok(PromptField::Tokens(tokens))
            }
            // A batch: route on its first prompt (the others ride along to the same pod), but
            // check the others' shape without keeping them.
            Element::Text(t) => {
                while seq.next_element::<Text<'de>>()?.is_some() {}
                Ok(PromptField::Text(t))
            }
            Element::Tokens(t) => {
                while seq.next_element::<CheckedTokens>()?.is_some() {}
                Ok(PromptField::Tokens(t))
            }
        }
    }
}

/// One element of a `prompt` array.
enum Element<'a> {
    Token(u32),
    Text(Cow<'a, str>),
    Tokens(Vec<u32>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Element<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElementVisitor)
    }
}

struct ElementVisitor;

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = Element<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a token id, a string or an array of token ids")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Element::Token(token(v)?))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Err(E::custom(format_args!("token id {v} is negative")))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Element::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Element::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut tokens = Vec::with_capacity(seq.size_hint().unwrap_or(1024));
        while let Some(t) = seq.next_element::<TokenId>()? {
            tokens.push(t.0);
        }
        Ok(Element::Tokens(tokens))
    }
}

/// A string that borrows from the body unless escapes force a copy.
pub(super) struct Text<'a>(pub(super) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// An array of token ids, checked and dropped.
struct CheckedTokens;

impl<'de> Deserialize<'de> for CheckedTokens {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CheckedTokens;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of token ids")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CheckedTokens, A::Error> {
                while seq.next_element::<TokenId>()?.is_some() {}
                Ok(CheckedTokens)
            }
        }
        d.deserialize_seq(V)
    }
}

/// A token id: a JSON integer in `u32` range.
struct TokenId(u32);

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TokenId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a token id (an integer from 0 to 2^32-1)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TokenId, E> {
                token(v).map(TokenId)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TokenId, E> {
                Err(E::custom(format_args!("token id {v} is negative")))
            }
        }
        d.deserialize_u64(V)
    }
}

fn token<E: de::Error>(v: u64) -> Result<u32, E> {
    u32::try_from(v).map_err(|_| E::custom(format_args!("token id {v} exceeds 2^32-1")))
}
