//! The slice of msgpack the KV-event codec needs: a zero-copy reader over a byte slice and the
//! writer rules msgspec follows (smallest int/str/bin/array/map header, floats as float64).
//!
//! The reader never allocates, never recurses ([`Reader::skip`] counts pending values instead)
//! and checks every length header against the bytes left before anyone reserves memory for it:
//! each element takes at least one byte, so a header claiming 2^32 elements in a short payload
//! fails at once.

mod read;
pub(super) mod write;

pub(super) use read::Reader;

use std::fmt;

/// Why the reader stopped, with the byte offset where it happened. Cheap to make: the decoder
/// adds the human context (which event, which field) only on the error path.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The payload ended inside a value.
    Truncated { at: usize },
    /// A value of another type than the field takes.
    Type {
        expected: &'static str,
        marker: u8,
        at: usize,
    },
    /// A length header claims more than the remaining bytes could hold.
    Length {
        claimed: u64,
        remaining: usize,
        at: usize,
    },
    /// An integer outside the field's range.
    Range { expected: &'static str, at: usize },
    /// A string that is not UTF-8.
    Utf8 { at: usize },
    /// More elements than the codec accepts in one place (see the `MAX_*` consts).
    Limit {
        claimed: usize,
        limit: usize,
        at: usize,
    },
    /// Values nested deeper than the codec follows.
    Depth { limit: usize, at: usize },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fault::Truncated { at } => write!(f, "payload ends inside a value at byte {at}"),
            Fault::Type {
                expected,
                marker,
                at,
            } => write!(
                f,
                "expected {expected}, found {} (0x{marker:02x}) at byte {at}",
                marker_name(marker)
            ),
            Fault::Length {
                claimed,
                remaining,
                at,
            } => write!(
                f,
                "length header at byte {at} claims {claimed} but only {remaining} bytes remain"
            ),
            Fault::Range { expected, at } => write!(f, "expected {expected} at byte {at}"),
            Fault::Utf8 { at } => write!(f, "string at byte {at} is not UTF-8"),
            Fault::Limit { claimed, limit, at } => write!(
                f,
                "{claimed} elements at byte {at} exceed the limit of {limit}"
            ),
            Fault::Depth { limit, at } => {
                write!(f, "value at byte {at} is nested deeper than {limit} levels")
            }
        }
    }
}

/// What a msgpack marker byte introduces, for error messages.
fn marker_name(m: u8) -> &'static str {
    match m {
        0x00..=0x7f | 0xcc..=0xcf => "an unsigned int",
        0xe0..=0xff | 0xd0..=0xd3 => "a signed int",
        0x80..=0x8f | 0xde | 0xdf => "a map",
        0x90..=0x9f | 0xdc | 0xdd => "an array",
        0xa0..=0xbf | 0xd9..=0xdb => "a string",
        0xc0 => "nil",
        0xc2 | 0xc3 => "a bool",
        0xc4..=0xc6 => "bytes",
        0xca | 0xcb => "a float",
        0xc7..=0xc9 | 0xd4..=0xd8 => "an ext value",
        0xc1 => "the reserved marker",
    }
}

/// One decoded msgpack header; containers carry their length, scalars their value.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum Head<'a> {
    Nil,
    Bool(bool),
    /// Every msgpack integer fits `i128` exactly, whatever its encoding.
    Int(i128),
    Float(f64),
    Str(&'a str),
    Bin(&'a [u8]),
    Array(usize),
    Map(usize),
    /// An extension value (type, data); the codec has no use for them.
    Ext,
}
