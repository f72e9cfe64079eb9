//! Writes msgpack exactly as msgspec does for the same Python values.

/// `None`.
pub(crate) fn nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

/// A bool.
pub(crate) fn bool(out: &mut Vec<u8>, v: bool) {
    out.push(if v { 0xc3 } else { 0xc2 });
}

/// A non-negative int in its smallest unsigned form.
#[inline]
pub(crate) fn uint(out: &mut Vec<u8>, v: u64) {
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
#[inline]
pub(crate) fn int(out: &mut Vec<u8>, v: i64) {
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
pub(crate) fn float(out: &mut Vec<u8>, v: f64) {
    out.push(0xcb);
    out.extend_from_slice(&v.to_be_bytes());
}

/// A header with a length: `fix` holds the fix-form marker and its capacity.
fn len_head(out: &mut Vec<u8>, n: u32, fix: Option<(u8, u32)>, m8: Option<u8>, m16: u8) {
    match (fix, m8) {
        (Some((marker, cap)), _) if n < cap => out.push(marker | n as u8),
        (_, Some(marker)) if n <= u32::from(u8::MAX) => out.extend_from_slice(&[marker, n as u8]),
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
pub(crate) fn str(out: &mut Vec<u8>, s: &str) {
    len_head(out, s.len() as u32, Some((0xa0, 32)), Some(0xd9), 0xda);
    out.extend_from_slice(s.as_bytes());
}

/// Bytes (the caller checked `len <= u32::MAX`).
pub(crate) fn bin(out: &mut Vec<u8>, b: &[u8]) {
    len_head(out, b.len() as u32, None, Some(0xc4), 0xc5);
    out.extend_from_slice(b);
}

/// An array header.
pub(crate) fn array(out: &mut Vec<u8>, n: u32) {
    len_head(out, n, Some((0x90, 16)), None, 0xdc);
}

/// A map header.
pub(crate) fn map(out: &mut Vec<u8>, n: u32) {
    len_head(out, n, Some((0x80, 16)), None, 0xde);
}
