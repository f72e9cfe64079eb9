//! The zero-copy reader.

use super::{Fault, Head};

/// For each msgpack marker, how a u32 token id in that form sits in the 5-byte window that
/// starts at the marker (read as a big-endian 40-bit int): (encoded length, right shift,
/// mask). Length 0: not a form the fast path reads.
const TOKEN_FORMS: [(u8, u8, u32); 256] = {
    let mut forms = [(0, 0, 0); 256];
    let mut m = 0;
    while m < 0x80 {
        forms[m] = (1, 32, 0x7f); // positive fixint: the marker is the value
        m += 1;
    }
    forms[0xcc] = (2, 24, 0xff);
    forms[0xcd] = (3, 16, 0xffff);
    forms[0xce] = (5, 0, u32::MAX);
    forms
};

/// A cursor over one payload.
#[derive(Clone, Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Offset of the next byte.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
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
    pub(crate) fn head(&mut self) -> Result<Head<'a>, Fault> {
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
    pub(crate) fn type_fault(&self, expected: &'static str, at: usize) -> Fault {
        Fault::Type {
            expected,
            marker: self.buf.get(at).copied().unwrap_or(0xc1),
            at,
        }
    }

    /// Skips one whole value without recursion: `pending` counts values still to read.
    pub(crate) fn skip(&mut self) -> Result<(), Fault> {
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
    pub(crate) fn nil(&mut self) -> bool {
        let is_nil = self.buf.get(self.pos) == Some(&0xc0);
        self.pos += usize::from(is_nil);
        is_nil
    }

    /// An array header.
    pub(crate) fn array_len(&mut self) -> Result<usize, Fault> {
        let at = self.pos;
        match self.head()? {
            Head::Array(n) => Ok(n),
            _ => Err(self.type_fault("an array", at)),
        }
    }

    /// A string.
    pub(crate) fn str(&mut self) -> Result<&'a str, Fault> {
        let at = self.pos;
        match self.head()? {
            Head::Str(s) => Ok(s),
            _ => Err(self.type_fault("a string", at)),
        }
    }

    /// An integer of any encoding, range-checked into `T`.
    pub(crate) fn int<T: TryFrom<i128>>(&mut self, expected: &'static str) -> Result<T, Fault> {
        let at = self.pos;
        match self.head()? {
            Head::Int(v) => T::try_from(v).map_err(|_| Fault::Range { expected, at }),
            _ => Err(self.type_fault(expected, at)),
        }
    }

    /// A float, or an integer read as one (msgspec's `float` fields take both).
    pub(crate) fn float(&mut self) -> Result<f64, Fault> {
        let at = self.pos;
        match self.head()? {
            Head::Float(v) => Ok(v),
            Head::Int(v) => Ok(v as f64),
            _ => Err(self.type_fault("a number", at)),
        }
    }

    /// `n` token ids (the array header already read), appended to `out`. The hot loop of the
    /// whole codec. Token ids of a real vocabulary mix uint16 and uint32 forms at random, so a
    /// branch per form mispredicts about every other token; instead the marker indexes
    /// [`TOKEN_FORMS`] and the value is shifted out of the 5-byte window it starts. Other forms
    /// (and the last few bytes of the payload) go through [`Reader::int`].
    pub(crate) fn u32s(&mut self, n: usize, out: &mut Vec<u32>) -> Result<(), Fault> {
        let buf = self.buf;
        let mut pos = self.pos;
        out.reserve(n);
        for _ in 0..n {
            if let Some(&[m, a, b, c, d]) = buf.get(pos..pos + 5) {
                let (len, shift, mask) = TOKEN_FORMS[usize::from(m)];
                if len > 0 {
                    let window = u64::from_be_bytes([0, 0, 0, m, a, b, c, d]);
                    out.push((window >> shift) as u32 & mask);
                    pos += usize::from(len);
                    continue;
                }
            }
            self.pos = pos;
            out.push(self.int("a u32 token id")?);
            pos = self.pos;
        }
        self.pos = pos;
        Ok(())
    }

    /// `n` block hashes (the array header already read), appended to `out`; uint64, the form
    /// of nearly every int hash, is read inline.
    pub(crate) fn hashes(&mut self, n: usize, out: &mut Vec<u64>) -> Result<(), Fault> {
        out.reserve(n);
        for _ in 0..n {
            let v = match self.buf.get(self.pos..) {
                Some(&[0xcf, a, b, c, d, e, f, g, h, ..]) => {
                    self.pos += 9;
                    u64::from_be_bytes([a, b, c, d, e, f, g, h])
                }
                _ => self.hash()?,
            };
            out.push(v);
        }
        Ok(())
    }

    /// A block hash: an int of any encoding (negative ones keep their 64-bit pattern) or bytes,
    /// folded by [`crate::events::EngineHash::from_bytes`].
    pub(crate) fn hash(&mut self) -> Result<u64, Fault> {
        let at = self.pos;
        match self.head()? {
            Head::Int(v) if v < 0 => Ok(v as i64 as u64),
            Head::Int(v) => Ok(v as u64),
            Head::Bin(b) => Ok(crate::events::EngineHash::from_bytes(b).0),
            _ => Err(self.type_fault("an int or bytes block hash", at)),
        }
    }
}
