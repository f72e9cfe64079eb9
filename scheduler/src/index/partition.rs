//! What a stored block's `extra_keys` mean for its key: the cache salt, or content the tokens do
//! not show.
//!
//! vLLM builds a block's extra keys (`generate_block_hash_extra_keys` in
//! `vllm/v1/core/kv_cache_utils.py`) as the concatenation of: the LoRA name (an int id in old
//! releases), the multimodal inputs overlapping the block (`(identifier, offset)` tuples; bare
//! hash strings in old releases), the request's `cache_salt` on the first block only, and a hash
//! of the block's prompt embeddings (bytes). Requests are keyed from text alone, so:
//!
//! - the salt of block 0 seeds the chain root, exactly as the request side does with its
//!   `cache_salt`;
//! - anything else (multimodal, prompt embeddings) is folded into the block's key, so that block
//!   and everything chained after it can never match a text-only request.
//!
//! Ambiguity: on old vLLM a multimodal hash was a bare string, so block 0 holding only an image
//! hash and no salt reads as salted with that hash. Its key then matches only a request whose
//! `cache_salt` is that very hash string, and the blocks after it carry the hash again and are
//! folded, so no text request meets them.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::events::ExtraKey;
use crate::keys::BlockKey;

/// How a block's extra keys change its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BlockExtras<'a> {
    /// The `cache_salt` found on a chain's first block.
    pub salt: Option<&'a str>,
    /// A digest of extra content (multimodal, prompt embeddings) to fold into the key.
    pub fold: Option<u64>,
}

/// Reads one block's extra keys. `lora_name`/`lora_id` are the event's (their entry is skipped);
/// `chain_start` says whether the block is block 0 of its chain (only there a salt may appear).
pub fn block_extras<'a>(
    lora_name: Option<&str>,
    lora_id: Option<i64>,
    extra: Option<&'a [ExtraKey]>,
    chain_start: bool,
) -> BlockExtras<'a> {
    let mut rest = extra.unwrap_or_default();
    let is_lora = |k: &ExtraKey| match k {
        ExtraKey::Str(s) => lora_name == Some(s.as_str()),
        ExtraKey::Int(i) => lora_id == Some(*i),
        _ => false,
    };
    if let Some((first, tail)) = rest.split_first()
        && is_lora(first)
    {
        rest = tail;
    }
    match rest {
        [] => BlockExtras::default(),
        [ExtraKey::Str(salt)] if chain_start => BlockExtras {
            salt: Some(salt),
            fold: None,
        },
        _ => BlockExtras {
            salt: None,
            fold: Some(digest(rest)),
        },
    }
}

/// `key` with extra content folded in: a key no text-only request produces.
pub fn fold_key(key: BlockKey, fold: u64) -> BlockKey {
    BlockKey::from_raw(xxh3_64_with_seed(
        &fold.to_le_bytes(),
        key.get() ^ FOLD_SEED,
    ))
}

const FOLD_SEED: u64 = 0x6b76_7069_636b_2f78; // "kvpick/x"

/// A stable digest of extra keys (type-tagged, length-prefixed, so distinct values never collide
/// by concatenation).
pub fn digest(keys: &[ExtraKey]) -> u64 {
    fn write(buf: &mut Vec<u8>, k: &ExtraKey) {
        match k {
            ExtraKey::Nil => buf.push(0),
            ExtraKey::Bool(b) => buf.extend_from_slice(&[1, u8::from(*b)]),
            ExtraKey::Int(i) => {
                buf.push(2);
                buf.extend_from_slice(&i.to_le_bytes());
            }
            ExtraKey::Float(f) => {
                buf.push(3);
                buf.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            ExtraKey::Str(s) => bytes(buf, 4, s.as_bytes()),
            ExtraKey::Bytes(b) => bytes(buf, 5, b),
            ExtraKey::Array(items) => {
                buf.push(6);
                buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    write(buf, item);
                }
            }
            ExtraKey::UInt(u) => {
                buf.push(7);
                buf.extend_from_slice(&u.to_le_bytes());
            }
            ExtraKey::Map(pairs) => {
                buf.push(8);
                buf.extend_from_slice(&(pairs.len() as u64).to_le_bytes());
                for (k, v) in pairs {
                    write(buf, k);
                    write(buf, v);
                }
            }
        }
    }
    fn bytes(buf: &mut Vec<u8>, tag: u8, b: &[u8]) {
        buf.push(tag);
        buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
        buf.extend_from_slice(b);
    }
    let mut buf = Vec::with_capacity(64);
    for k in keys {
        write(&mut buf, k);
    }
    xxh3_64_with_seed(&buf, FOLD_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> ExtraKey {
        ExtraKey::Str(v.to_owned())
    }

    fn mm(id: &str, offset: i64) -> ExtraKey {
        ExtraKey::Array(vec![s(id), ExtraKey::Int(offset)])
    }

    #[test]
    fn salt_only_on_block_zero_after_the_lora_name() {
        let keys = [s("adapter"), s("tenant-a")];
        let e = block_extras(Some("adapter"), Some(3), Some(&keys), true);
        assert_eq!(e.salt, Some("tenant-a"));
        assert_eq!(e.fold, None);
        let e = block_extras(None, None, Some(&keys[1..]), true);
        assert_eq!(e.salt, Some("tenant-a"));
        // The same string past block 0 is not a salt: it is unknown content, folded.
        let e = block_extras(None, None, Some(&keys[1..]), false);
        assert_eq!(e.salt, None);
        assert!(e.fold.is_some());
    }

    #[test]
    fn lora_alone_or_nothing_changes_nothing() {
        let keys = [s("adapter")];
        for start in [true, false] {
            assert_eq!(
                block_extras(Some("adapter"), None, Some(&keys), start),
                BlockExtras::default()
            );
            assert_eq!(
                block_extras(None, None, None, start),
                BlockExtras::default()
            );
        }
        let old = [ExtraKey::Int(7)];
        assert_eq!(
            block_extras(None, Some(7), Some(&old), false),
            BlockExtras::default()
        );
    }

    #[test]
    fn multimodal_and_embeddings_are_folded_even_with_a_salt() {
        let with_salt = [s("lora"), mm("img1", 0), s("salt")];
        let e = block_extras(Some("lora"), None, Some(&with_salt), true);
        assert_eq!(e.salt, None);
        let other_image = [s("lora"), mm("img2", 0), s("salt")];
        let f = block_extras(Some("lora"), None, Some(&other_image), true);
        assert!(e.fold.is_some() && f.fold.is_some() && e.fold != f.fold);
        let embeds = [ExtraKey::Bytes(vec![1, 2, 3])];
        assert!(
            block_extras(None, None, Some(&embeds), false)
                .fold
                .is_some()
        );
        let shifted = [mm("img1", 4)];
        assert_ne!(
            block_extras(None, None, Some(&shifted), false).fold,
            block_extras(None, None, Some(&[mm("img1", 0)]), false).fold
        );
    }

    #[test]
    fn folded_keys_differ_from_text_keys() {
        let k = BlockKey::from_raw(12345);
        assert_ne!(fold_key(k, 1), k);
        assert_ne!(fold_key(k, 1), fold_key(k, 2));
        assert_eq!(fold_key(k, 1), fold_key(k, 1));
        assert_ne!(digest(&[s("ab"), s("c")]), digest(&[s("a"), s("bc")]));
    }
}
