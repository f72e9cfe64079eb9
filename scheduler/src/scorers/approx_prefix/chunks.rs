//! Chained keys over fixed-size character chunks of a prompt that could not be tokenized.
//!
//! The same chaining as block keys ([`BlockKey::chain`]'s xxh3 seeded by the parent), over the
//! UTF-8 bytes of each chunk of `chunk_chars` characters, so a key names the whole text before
//! it. Chunks are cut on character boundaries (never inside a multi-byte character) and a
//! trailing partial chunk is dropped, as a partial block is. The root is the request's partition
//! root re-hashed with a text marker, so text keys never meet token keys.
//!
//! [`BlockKey::chain`]: crate::keys::BlockKey::chain

use std::num::NonZeroUsize;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::keys::BlockKey;

/// The parent of chunk 0 for a partition whose block root is `root`.
pub(crate) fn text_root(root: BlockKey) -> BlockKey {
    BlockKey::from_raw(xxh3_64_with_seed(b"kvpick/text-chunks", root.get()))
}

/// Appends to `out` the keys of the first `max` full chunks of `text`, chained from `root`.
pub(crate) fn chunk_keys(
    root: BlockKey,
    text: &str,
    chunk_chars: NonZeroUsize,
    max: usize,
    out: &mut Vec<BlockKey>,
) {
    let bytes = text.as_bytes();
    let mut parent = text_root(root).get();
    let (mut start, mut chars) = (0usize, 0usize);
    for (i, &b) in bytes.iter().enumerate() {
        if out.len() >= max {
            return;
        }
        // A byte that is not a UTF-8 continuation byte starts a character.
        if b & 0xC0 != 0x80 {
            if chars == chunk_chars.get() {
                parent = xxh3_64_with_seed(&bytes[start..i], parent);
                out.push(BlockKey::from_raw(parent));
                start = i;
                chars = 0;
            }
            chars += 1;
        }
    }
    if chars == chunk_chars.get() && out.len() < max {
        out.push(BlockKey::from_raw(xxh3_64_with_seed(
            &bytes[start..],
            parent,
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Partition;

    fn keys(text: &str, chunk: usize, max: usize) -> Vec<BlockKey> {
        let mut out = Vec::new();
        let n = NonZeroUsize::new(chunk).unwrap();
        chunk_keys(Partition::model("m").root(), text, n, max, &mut out);
        out
    }

    #[test]
    fn full_chunks_only_chained_over_the_whole_prefix() {
        assert_eq!(keys("abcdefgh", 4, 99).len(), 2);
        assert_eq!(keys("abcdefghi", 4, 99).len(), 2, "partial chunk dropped");
        assert_eq!(keys("abc", 4, 99).len(), 0);
        let a = keys("abcdwxyz", 4, 99);
        let b = keys("abcewxyz", 4, 99);
        assert_ne!(a[0], b[0]);
        assert_ne!(a[1], b[1], "same second chunk, different prefix");
        assert_eq!(keys("abcdwxyz!!", 4, 99), a);
        assert_eq!(keys("abcdwxyz", 4, 1), a[..1]);
    }

    #[test]
    fn multi_byte_characters_count_as_one_and_are_never_split() {
        // 4 characters per chunk, of 1, 2, 3 and 4 bytes.
        let text = "aé€😀aé€😀";
        let k = keys(text, 4, 99);
        assert_eq!(k.len(), 2);
        let root = text_root(Partition::model("m").root()).get();
        let first = xxh3_64_with_seed("aé€😀".as_bytes(), root);
        assert_eq!(k[0].get(), first);
        assert_eq!(k[1].get(), xxh3_64_with_seed("aé€😀".as_bytes(), first));
        for n in 1..12 {
            keys(text, n, 99); // no panic at any chunk size
        }
    }

    #[test]
    fn partitions_and_token_keys_do_not_meet() {
        let mut a = Vec::new();
        let n = NonZeroUsize::new(2).unwrap();
        chunk_keys(Partition::model("a").root(), "abcd", n, 9, &mut a);
        let mut b = Vec::new();
        chunk_keys(Partition::model("b").root(), "abcd", n, 9, &mut b);
        assert_ne!(a, b);
        let root = Partition::model("a").root();
        assert_ne!(text_root(root), root);
    }

    proptest::proptest! {
        #[test]
        fn any_text_cuts_into_whole_character_chunks(text in "\\PC{0,80}", chunk in 1usize..9) {
            let k = keys(&text, chunk, usize::MAX);
            proptest::prop_assert_eq!(k.len(), text.chars().count() / chunk);
            // A key depends only on the text up to its chunk's end.
            let cut: String = text.chars().take(chunk * k.len()).collect();
            proptest::prop_assert_eq!(keys(&cut, chunk, usize::MAX), k);
        }
    }
}
