//! The slice of msgpack the KV-event codec needs: a zero-copy reader over a byte slice and the
//! writer rules msgspec follows (smallest int/str/bin/array/map header, floats as float64).
//!
//! The reader never allocates, never recurses ([`Reader::skip`] counts pending values instead)
//! and checks every length header against the bytes left before anyone reserves memory for it:
//! each element takes at least one byte, so a header claiming 2^32 elements in a short payload
//! fails at once.

use std::fmt;

/// Why the reader stopped, with the byte offset where it happened. Cheap to make: the decoder
/// adds the human context (which event, which field) only on the error path.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Fault {
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
pub(super) enum Head<'a> {
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

/// A cursor over one payload.
#[derive(Clone, Debug)]
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Offset of the next byte.
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Fault> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(Fault::Truncated { at: self.pos })?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Fault> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, Fault> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(Fault::Truncated { at: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn be16(&mut self) -> Result<usize, Fault> {
        Ok(u16::from_be_bytes(self.array()?) as usize)
    }

    fn be32(&mut self) -> Result<usize, Fault> {
        Ok(u32::from_be_bytes(self.array()?) as usize)
    }

    /// A container length: each element needs at least one byte, a map entry two.
    fn count(&self, n: usize, per: usize, at: usize) -> Result<usize, Fault> {
        match n.checked_mul(per) {
            Some(need) if need <= self.remaining() => Ok(n),
            _ => Err(Fault::Length {
                claimed: n as u64,
                remaining: self.remaining(),
                at,
            }),
        }
    }

    fn bytes(&mut self, n: usize, at: usize) -> Result<&'a [u8], Fault> {
        if n > self.remaining() {
            return Err(Fault::Length {
                claimed: n as u64,
                remaining: self.remaining(),
                at,
            });
        }
        self.take(n)
    }

    fn text(&mut self, n: usize, at: usize) -> Result<&'a str, Fault> {
        std::str::from_utf8(self.bytes(n, at)?).map_err(|_| Fault::Utf8 { at })
    }

    /// Reads one header (and the payload of scalars, strings, bytes and exts).
    pub(super) fn head(&mut self) -> Result<Head<'a>, Fault> {
        let at = self.pos;
        let m = self.byte()?;
        Ok(match m {
            0x00..=0x7f => Head::Int(i128::from(m)),
            0x80..=0x8f => Head::Map(self.count(usize::from(m & 0x0f), 2, at)?),
            0x90..=0x9f => Head::Array(self.count(usize::from(m & 0x0f), 1, at)?),
            0xa0..=0xbf => Head::Str(self.text(usize::from(m & 0x1f), at)?),
            0xc0 => Head::Nil,
            0xc2 => Head::Bool(false),
            0xc3 => Head::Bool(true),
            0xc4 => {
                let n = usize::from(self.byte()?);
                Head::Bin(self.bytes(n, at)?)
            }
            0xc5 => {
                let n = self.be16()?;
                Head::Bin(self.bytes(n, at)?)
            }
            0xc6 => {
                let n = self.be32()?;
                Head::Bin(self.bytes(n, at)?)
            }
            0xc7..=0xc9 => {
                let n = match m {
                    0xc7 => usize::from(self.byte()?),
                    0xc8 => self.be16()?,
                    _ => self.be32()?,
                };
                self.bytes(n.saturating_add(1), at)?;
                Head::Ext
            }
            0xca => Head::Float(f64::from(f32::from_be_bytes(self.array()?))),
            0xcb => Head::Float(f64::from_be_bytes(self.array()?)),
            0xcc => Head::Int(i128::from(self.byte()?)),
            0xcd => Head::Int(i128::from(u16::from_be_bytes(self.array()?))),
            0xce => Head::Int(i128::from(u32::from_be_bytes(self.array()?))),
            0xcf => Head::Int(i128::from(u64::from_be_bytes(self.array()?))),
            0xd0 => Head::Int(i128::from(i8::from_be_bytes(self.array()?))),
            0xd1 => Head::Int(i128::from(i16::from_be_bytes(self.array()?))),
            0xd2 => Head::Int(i128::from(i32::from_be_bytes(self.array()?))),
            0xd3 => Head::Int(i128::from(i64::from_be_bytes(self.array()?))),
            0xd4..=0xd8 => {
                self.bytes(1 + (1usize << (m - 0xd4)), at)?;
                Head::Ext
            }
            0xd9 => {
                let n = usize::from(self.byte()?);
                Head::Str(self.text(n, at)?)
            }
            0xda => {
                let n = self.be16()?;
                Head::Str(self.text(n, at)?)
            }
            0xdb => {
                let n = self.be32()?;
                Head::Str(self.text(n, at)?)
            }
            0xdc => {
                let n = self.be16()?;
                Head::Array(self.count(n, 1, at)?)
            }
            0xdd => {
                let n = self.be32()?;
                Head::Array(self.count(n, 1, at)?)
            }
            0xde => {
                let n = self.be16()?;
                Head::Map(self.count(n, 2, at)?)
            }
            0xdf => {
                let n = self.be32()?;
                Head::Map(self.count(n, 2, at)?)
            }
            0xe0..=0xff => Head::Int(i128::from(m as i8)),
            0xc1 => return Err(self.type_fault("any value", at)),
        })
    }

    /// The fault for a value at `at` that is not what the field takes.
    pub(super) fn type_fault(&self, expected: &'static str, at: usize) -> Fault {
        Fault::Type {
            expected,
            marker: self.buf.get(at).copied().unwrap_or(0xc1),
            at,
        }
    }

    /// Skips one whole value without recursion: `pending` counts values still to read.
    pub(super) fn skip(&mut self) -> Result<(), Fault> {
        let mut pending: usize = 1;
        while pending > 0 {
            // Every pending value needs a byte: fail now rather than after a long walk.
            if pending > self.remaining() {
                return Err(Fault::Truncated { at: self.buf.len() });
            }
            pending -= 1;
            match self.head()? {
                // `head` checked `n` (or `2n`) against the remaining bytes, so no overflow.
                Head::Array(n) => pending += n,
                Head::Map(n) => pending += 2 * n,
                _ => {}
            }
        }
        Ok(())
    }

    /// Consumes a nil if one is next.
    pub(super) fn nil(&mut self) -> bool {
        let is_nil = self.buf.get(self.pos) == Some(&0xc0);
        self.pos += usize::from(is_nil);
        is_nil
    }

    /// An array header.
    pub(super) fn array_len(&mut self) -> Result<usize, Fault> {
        let at = self.pos;
        match self.head()? {
            Head::Array(n) => Ok(n),
            _ => Err(self.type_fault("an array", at)),
        }
    }

    /// A string.
    pub(super) fn str(&mut self) -> Result<&'a str, Fault> {
        let at = self.pos;
        match self.head()? {
            Head::Str(s) => Ok(s),
            _ => Err(self.type_fault("a string", at)),
        }
    }

    /// An integer of any encoding, range-checked into `T`.
    pub(super) fn int<T: TryFrom<i128>>(&mut self, expected: &'static str) -> Result<T, Fault> {
        let at = self.pos;
        match self.head()? {
            Head::Int(v) => T::try_from(v).map_err(|_| Fault::Range { expected, at }),
            _ => Err(self.type_fault(expected, at)),
        }
    }

    /// A float, or an integer read as one (msgspec's `float` fields take both).
    pub(super) fn float(&mut self) -> Result<f64, Fault> {
        let at = self.pos;
        match self.head()? {
            Head::Float(v) => Ok(v),
            Head::Int(v) => Ok(v as f64),
            _ => Err(self.type_fault("a number", at)),
        }
    }

    /// A token id. Hot: the common encodings are read inline.
    #[inline]
    pub(super) fn u32(&mut self) -> Result<u32, Fault> {
        let at = self.pos;
        match self.buf.get(at) {
            Some(&m) if m < 0x80 => {
                self.pos += 1;
                Ok(u32::from(m))
            }
            Some(&0xcd) if at + 3 <= self.buf.len() => {
                self.pos += 3;
                Ok(u32::from(u16::from_be_bytes([
                    self.buf[at + 1],
                    self.buf[at + 2],
                ])))
            }
            Some(&0xce) if at + 5 <= self.buf.len() => {
                self.pos += 5;
                let b = &self.buf[at + 1..at + 5];
                Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => self.int("a u32 token id"),
        }
    }

    /// A block hash: an int of any encoding (negative ones keep their 64-bit pattern) or bytes,
    /// folded by [`super::EngineHash::from_bytes`].
    #[inline]
    pub(super) fn hash(&mut self) -> Result<u64, Fault> {
        let at = self.pos;
        if let (Some(&0xcf), true) = (self.buf.get(at), at + 9 <= self.buf.len()) {
            let mut be = [0u8; 8];
            be.copy_from_slice(&self.buf[at + 1..at + 9]);
            self.pos += 9;
            return Ok(u64::from_be_bytes(be));
        }
        match self.head()? {
            Head::Int(v) if v < 0 => Ok(v as i64 as u64),
            Head::Int(v) => Ok(v as u64),
            Head::Bin(b) => Ok(super::EngineHash::from_bytes(b).0),
            _ => Err(self.type_fault("an int or bytes block hash", at)),
        }
    }
}

/// Writes msgpack exactly as msgspec does for the same Python values.
pub(super) mod write {
    /// `None`.
    pub(in super::super) fn nil(out: &mut Vec<u8>) {
        out.push(0xc0);
    }

    /// A bool.
    pub(in super::super) fn bool(out: &mut Vec<u8>, v: bool) {
        out.push(if v { 0xc3 } else { 0xc2 });
    }

    /// A non-negative int in its smallest unsigned form.
    pub(in super::super) fn uint(out: &mut Vec<u8>, v: u64) {
        if v < 0x80 {
            out.push(v as u8);
        } else if v <= u64::from(u8::MAX) {
            out.extend_from_slice(&[0xcc, v as u8]);
        } else if v <= u64::from(u16::MAX) {
            out.push(0xcd);
            out.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v <= u64::from(u32::MAX) {
            out.push(0xce);
            out.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// An int: unsigned forms when non-negative (as msgspec does), else the smallest signed one.
    pub(in super::super) fn int(out: &mut Vec<u8>, v: i64) {
        if v >= 0 {
            uint(out, v as u64);
        } else if v >= -32 {
            out.push(v as i8 as u8);
        } else if v >= i64::from(i8::MIN) {
            out.extend_from_slice(&[0xd0, v as i8 as u8]);
        } else if v >= i64::from(i16::MIN) {
            out.push(0xd1);
            out.extend_from_slice(&(v as i16).to_be_bytes());
        } else if v >= i64::from(i32::MIN) {
            out.push(0xd2);
            out.extend_from_slice(&(v as i32).to_be_bytes());
        } else {
            out.push(0xd3);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// A Python float: always float64.
    pub(in super::super) fn float(out: &mut Vec<u8>, v: f64) {
        out.push(0xcb);
        out.extend_from_slice(&v.to_be_bytes());
    }

    /// A header with a length: `fix` holds the fix-form marker and its capacity.
    fn len_head(out: &mut Vec<u8>, n: u32, fix: Option<(u8, u32)>, m8: Option<u8>, m16: u8) {
        match (fix, m8) {
            (Some((marker, cap)), _) if n < cap => out.push(marker | n as u8),
            (_, Some(marker)) if n <= u32::from(u8::MAX) => {
                out.extend_from_slice(&[marker, n as u8])
            }
            _ if n <= u32::from(u16::MAX) => {
                out.push(m16);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                out.push(m16 + 1);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    /// A string (the caller checked `len <= u32::MAX`).
    pub(in super::super) fn str(out: &mut Vec<u8>, s: &str) {
        len_head(out, s.len() as u32, Some((0xa0, 32)), Some(0xd9), 0xda);
        out.extend_from_slice(s.as_bytes());
    }

    /// Bytes (the caller checked `len <= u32::MAX`).
    pub(in super::super) fn bin(out: &mut Vec<u8>, b: &[u8]) {
        len_head(out, b.len() as u32, None, Some(0xc4), 0xc5);
        out.extend_from_slice(b);
    }

    /// An array header.
    pub(in super::super) fn array(out: &mut Vec<u8>, n: u32) {
        len_head(out, n, Some((0x90, 16)), None, 0xdc);
    }

    /// A map header.
    pub(in super::super) fn map(out: &mut Vec<u8>, n: u32) {
        len_head(out, n, Some((0x80, 16)), None, 0xde);
    }
}
