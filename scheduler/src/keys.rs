//! Block keys: kvpick's own content address for a KV-cache block.
//!
//! vLLM's block hashes depend on its hash algorithm and a per-process seed, so kvpick never tries to
//! reproduce them. Instead, every block — whether it arrives as token ids in a `BlockStored` event or
//! as part of a request's prompt — gets the same chained key:
//!
//! ```text
//! root      = xxh3-64("kvpick/v1" 0x00 partition 0x00 [0x01 cache_salt])
//! key(0)    = xxh3-64-seeded(seed = root,       tokens[0..B]   as little-endian u32)
//! key(i)    = xxh3-64-seeded(seed = key(i - 1), tokens[iB..iB+B] as little-endian u32)
//! ```
//!
//! Chaining through xxh3's seed makes a key depend on the whole prefix before it (two requests meet
//! in the index only if everything up to that block is identical) without copying the parent key
//! next to the tokens. The partition is what splits vLLM's cache: the model or LoRA adapter name,
//! plus `cache_salt` when a request sets one.

use std::fmt;
use std::num::NonZeroU32;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The content address of one full KV block, chained over the whole prefix before it.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey(u64);

impl BlockKey {
    /// Wraps a raw key, e.g. one read back from a benchmark fixture or a trace.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw 64-bit key.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The key of the block that follows `self` and holds `tokens`.
    #[inline]
    pub fn chain(self, tokens: &[u32]) -> BlockKey {
        BlockKey(hash_tokens(self.0, tokens))
    }
}

impl fmt::Debug for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockKey({:016x})", self.0)
    }
}

/// What partitions vLLM's prefix cache: blocks of different partitions never match.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Partition<'a> {
    /// The served model name, or the LoRA adapter name when the request targets an adapter.
    pub model: &'a str,
    /// vLLM's `cache_salt` request field, if any.
    pub cache_salt: Option<&'a str>,
}

impl<'a> Partition<'a> {
    /// A partition for `model` with no cache salt.
    pub const fn model(model: &'a str) -> Self {
        Self {
            model,
            cache_salt: None,
        }
    }

    /// The parent key of block 0.
    pub fn root(&self) -> BlockKey {
        // A fixed prefix keeps roots distinct from any key computed over tokens, and the 0x00/0x01
        // separators keep ("ab", salt "c") distinct from ("a", salt "bc").
        let mut buf =
            Vec::with_capacity(16 + self.model.len() + self.cache_salt.map_or(0, str::len));
        buf.extend_from_slice(b"kvpick/v1\0");
        buf.extend_from_slice(self.model.as_bytes());
        buf.push(0);
        if let Some(salt) = self.cache_salt {
            buf.push(1);
            buf.extend_from_slice(salt.as_bytes());
        }
        BlockKey(xxh3_64(&buf))
    }
}

/// A KV block size in tokens (vLLM's `--block-size`); never zero.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockSize(NonZeroU32);

impl BlockSize {
    /// vLLM's default block size on GPUs.
    pub const DEFAULT: BlockSize = BlockSize(NonZeroU32::MIN.saturating_add(15));

    /// `None` when `tokens` is zero.
    pub const fn new(tokens: u32) -> Option<Self> {
        match NonZeroU32::new(tokens) {
            Some(n) => Some(Self(n)),
            None => None,
        }
    }

    /// The size in tokens.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// The size in tokens, as a slice length.
    pub const fn tokens(self) -> usize {
        self.0.get() as usize
    }

    /// How many full blocks `tokens` tokens make (a trailing partial block does not count).
    pub const fn full_blocks(self, tokens: usize) -> usize {
        tokens / self.tokens()
    }
}

impl Default for BlockSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The keys of the full blocks of `tokens`, chained from `root`; a trailing partial block is dropped.
pub fn block_keys(root: BlockKey, tokens: &[u32], block_size: BlockSize) -> BlockKeys<'_> {
    BlockKeys {
        parent: root,
        blocks: tokens.chunks_exact(block_size.tokens()),
    }
}

/// Iterator over the chained keys of a token sequence's full blocks.
#[derive(Debug, Clone)]
pub struct BlockKeys<'a> {
    parent: BlockKey,
    blocks: std::slice::ChunksExact<'a, u32>,
}

impl Iterator for BlockKeys<'_> {
    type Item = BlockKey;

    #[inline]
    fn next(&mut self) -> Option<BlockKey> {
        let block = self.blocks.next()?;
        self.parent = self.parent.chain(block);
        Some(self.parent)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.blocks.size_hint()
    }
}

impl ExactSizeIterator for BlockKeys<'_> {}

#[cfg(target_endian = "little")]
#[inline]
fn hash_tokens(seed: u64, tokens: &[u32]) -> u64 {
    // On little-endian targets the in-memory tokens already are the wire bytes: hash them in place.
    xxh3_64_with_seed(bytemuck::cast_slice(tokens), seed)
}

#[cfg(not(target_endian = "little"))]
fn hash_tokens(seed: u64, tokens: &[u32]) -> u64 {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    xxh3_64_with_seed(&bytes, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(n: u32) -> BlockSize {
        BlockSize::new(n).unwrap_or(BlockSize::DEFAULT)
    }

    #[test]
    fn keys_are_little_endian_u32_seeded_by_parent() {
        let root = Partition::model("m").root();
        let tokens = [1u32, 2, 3, 0x0102_0304];
        let mut bytes = Vec::new();
        for t in tokens {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        assert_eq!(
            root.chain(&tokens).get(),
            xxh3_64_with_seed(&bytes, root.get())
        );
    }

    #[test]
    fn trailing_partial_block_is_dropped() {
        let tokens: Vec<u32> = (0..37).collect();
        let keys: Vec<_> = block_keys(BlockKey::from_raw(7), &tokens, bs(16)).collect();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            block_keys(BlockKey::from_raw(7), &tokens[..15], bs(16)).count(),
            0
        );
    }

    #[test]
    fn a_key_depends_on_the_whole_prefix() {
        let root = Partition::model("m").root();
        let a: Vec<u32> = (0..32).collect();
        let mut b = a.clone();
        b[0] = 999;
        let ka: Vec<_> = block_keys(root, &a, bs(16)).collect();
        let kb: Vec<_> = block_keys(root, &b, bs(16)).collect();
        assert_ne!(ka[0], kb[0]);
        assert_ne!(ka[1], kb[1], "block 1 is identical but its prefix is not");
    }

    #[test]
    fn partitions_separate_models_loras_and_salts() {
        let roots = [
            Partition::model("base").root(),
            Partition::model("adapter").root(),
            Partition {
                model: "base",
                cache_salt: Some("s"),
            }
            .root(),
            Partition {
                model: "bas",
                cache_salt: Some("es"),
            }
            .root(),
            Partition {
                model: "base",
                cache_salt: Some(""),
            }
            .root(),
        ];
        for (i, a) in roots.iter().enumerate() {
            for b in &roots[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn iterator_matches_manual_chain() {
        let root = Partition::model("m").root();
        let tokens: Vec<u32> = (100..164).collect();
        let mut parent = root;
        let manual: Vec<_> = tokens
            .chunks_exact(16)
            .map(|c| {
                parent = parent.chain(c);
                parent
            })
            .collect();
        let iter = block_keys(root, &tokens, bs(16));
        assert_eq!(iter.len(), 4);
        assert_eq!(iter.collect::<Vec<_>>(), manual);
    }

    #[test]
    fn block_size_rejects_zero() {
        assert!(BlockSize::new(0).is_none());
        assert_eq!(BlockSize::DEFAULT.get(), 16);
        assert_eq!(bs(16).full_blocks(47), 2);
    }
}
