//! `BlockStored.extra_keys` both ways: per block, nil or a tuple of arbitrary values (multimodal
//! hashes with offsets, LoRA name, `cache_salt`, prompt-embedding hashes).
//!
//! The one recursive, allocation-heavy part of the schema: a single wire byte (`nil`, `[]`)
//! becomes a 24–32-byte value, so decoder and encoder share a per-batch budget and a depth
//! limit, and nothing here recurses deeper than [`MAX_EXTRA_KEY_DEPTH`].

use super::ExtraKey;
use super::encode::len;
use super::msgpack::{Fault, Head, Reader, write};

/// Extra-key values (per-block entries, tuple elements, nested values) in one batch. This, not
/// the payload size, bounds the memory extra keys take.
pub const MAX_EXTRA_KEY_VALUES: usize = 1 << 20;
/// Nesting of values inside a block's tuple (vLLM nests one level: `(mm_hash, offset)`).
pub const MAX_EXTRA_KEY_DEPTH: usize = 16;

/// How many extra-key values a batch may still hold.
#[derive(Debug)]
pub(super) struct Budget(usize);

impl Default for Budget {
    fn default() -> Self {
        Self(MAX_EXTRA_KEY_VALUES)
    }
}

impl Budget {
    /// Takes `n`; `false` (taking nothing) when fewer are left.
    fn spend(&mut self, n: usize) -> bool {
        match self.0.checked_sub(n) {
            Some(left) => {
                self.0 = left;
                true
            }
            None => false,
        }
    }

    fn read(&mut self, n: usize, at: usize) -> Result<usize, Fault> {
        if self.spend(n) {
            Ok(n)
        } else {
            Err(Fault::Limit {
                claimed: n,
                limit: MAX_EXTRA_KEY_VALUES,
                at,
            })
        }
    }

    fn write(&mut self, n: usize) -> Result<u32, String> {
        if !self.spend(n) {
            return Err(format!(
                "more than {MAX_EXTRA_KEY_VALUES} extra-key values in the batch"
            ));
        }
        len(n, MAX_EXTRA_KEY_VALUES)
    }
}

fn too_deep(key_is_container: bool, depth: usize) -> bool {
    key_is_container && depth >= MAX_EXTRA_KEY_DEPTH
}

/// Reads the field's value: nil, or an array of (nil or an array of values).
pub(super) fn read(
    r: &mut Reader<'_>,
    budget: &mut Budget,
) -> Result<Option<Vec<Option<Vec<ExtraKey>>>>, Fault> {
    if r.nil() {
        return Ok(None);
    }
    let at = r.pos();
    let n = budget.read(r.array_len()?, at)?;
    let mut blocks = Vec::with_capacity(n);
    for _ in 0..n {
        if r.nil() {
            blocks.push(None);
            continue;
        }
        let at = r.pos();
        let m = budget.read(r.array_len()?, at)?;
        let mut keys = Vec::with_capacity(m);
        for _ in 0..m {
            keys.push(read_value(r, budget, 1)?);
        }
        blocks.push(Some(keys));
    }
    Ok(Some(blocks))
}

/// One value `depth` levels inside a block's tuple.
fn read_value(r: &mut Reader<'_>, budget: &mut Budget, depth: usize) -> Result<ExtraKey, Fault> {
    let at = r.pos();
    let head = r.head()?;
    if too_deep(matches!(head, Head::Array(_) | Head::Map(_)), depth) {
        return Err(Fault::Depth {
            limit: MAX_EXTRA_KEY_DEPTH,
            at,
        });
    }
    Ok(match head {
        Head::Nil => ExtraKey::Nil,
        Head::Bool(b) => ExtraKey::Bool(b),
        Head::Int(v) => match i64::try_from(v) {
            Ok(v) => ExtraKey::Int(v),
            // Above i64::MAX, so within u64: msgpack has no wider ints.
            Err(_) => ExtraKey::UInt(v as u64),
        },
        Head::Float(v) => ExtraKey::Float(v),
        Head::Str(s) => ExtraKey::Str(s.to_owned()),
        Head::Bin(b) => ExtraKey::Bytes(b.to_vec()),
        Head::Array(n) => {
            let mut items = Vec::with_capacity(budget.read(n, at)?);
            for _ in 0..n {
                items.push(read_value(r, budget, depth + 1)?);
            }
            ExtraKey::Array(items)
        }
        Head::Map(n) => {
            budget.read(2 * n, at)?;
            let mut pairs = Vec::with_capacity(n);
            for _ in 0..n {
                let key = read_value(r, budget, depth + 1)?;
                pairs.push((key, read_value(r, budget, depth + 1)?));
            }
            ExtraKey::Map(pairs)
        }
        Head::Ext => return Err(r.type_fault("an extra-key value (not an ext)", at)),
    })
}

/// Writes the field's value; refuses what [`read`] would refuse.
pub(super) fn write(
    out: &mut Vec<u8>,
    blocks: Option<&[Option<Vec<ExtraKey>>]>,
    budget: &mut Budget,
) -> Result<(), String> {
    let Some(blocks) = blocks else {
        write::nil(out);
        return Ok(());
    };
    write::array(out, budget.write(blocks.len())?);
    for block in blocks {
        match block {
            None => write::nil(out),
            Some(keys) => {
                write::array(out, budget.write(keys.len())?);
                for key in keys {
                    write_value(out, key, budget, 1)?;
                }
            }
        }
    }
    Ok(())
}

fn write_value(
    out: &mut Vec<u8>,
    key: &ExtraKey,
    budget: &mut Budget,
    depth: usize,
) -> Result<(), String> {
    if too_deep(matches!(key, ExtraKey::Array(_) | ExtraKey::Map(_)), depth) {
        return Err(format!(
            "extra key nested deeper than {MAX_EXTRA_KEY_DEPTH} levels"
        ));
    }
    match key {
        ExtraKey::Nil => write::nil(out),
        ExtraKey::Bool(b) => write::bool(out, *b),
        ExtraKey::Int(v) => write::int(out, *v),
        ExtraKey::UInt(v) => write::uint(out, *v),
        ExtraKey::Float(v) => write::float(out, *v),
        ExtraKey::Str(s) => {
            len(s.len(), u32::MAX as usize)?;
            write::str(out, s);
        }
        ExtraKey::Bytes(b) => {
            len(b.len(), u32::MAX as usize)?;
            write::bin(out, b);
        }
        ExtraKey::Array(items) => {
            write::array(out, budget.write(items.len())?);
            for item in items {
                write_value(out, item, budget, depth + 1)?;
            }
        }
        ExtraKey::Map(pairs) => {
            budget.write(pairs.len().saturating_mul(2))?;
            write::map(out, len(pairs.len(), MAX_EXTRA_KEY_VALUES)?);
            for (k, v) in pairs {
                write_value(out, k, budget, depth + 1)?;
                write_value(out, v, budget, depth + 1)?;
            }
        }
    }
    Ok(())
}
