//! The tokenizer pipeline for one text, returning only ids.
//!
//! `Tokenizer::encode_fast` builds a full `Encoding` (token strings, offsets, words, masks) that the
//! router never reads. This runs the same steps as its single-sequence path (added-token extraction
//! and normalization, pre-tokenization, the model) and collects ids only. It also skips Unicode
//! normalizers on text they leave unchanged: an `NFC` normalizer on text the Unicode quick check
//! (the tables tokenizers itself uses) says is already NFC, and likewise NFD/NFKC/NFKD. Both are
//! checked against `encode_fast` by the splice property tests and against Python by the exactness
//! tests.

use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::{Model, OffsetReferential, OffsetType, PreTokenizer, Tokenizer};
use unicode_normalization_alignments::{
    IsNormalized, is_nfc_quick, is_nfd_quick, is_nfkc_quick, is_nfkd_quick,
};

use crate::error::Error;

/// Appends the ids of `tokenizer.encode(text, add_special_tokens=False)` to `out`; returns how many.
pub fn encode_ids(tokenizer: &Tokenizer, text: &str, out: &mut Vec<u32>) -> Result<usize, Error> {
    let err = |e: tokenizers::Error| Error::Encode(e.to_string());
    let normalizer = tokenizer.get_normalizer().filter(|n| !is_noop(n, text));
    let mut pretokenized = tokenizer
        .get_added_vocabulary()
        .extract_and_normalize(normalizer, text);
    if let Some(pre) = tokenizer.get_pre_tokenizer() {
        pre.pre_tokenize(&mut pretokenized).map_err(err)?;
    }
    let model = tokenizer.get_model();
    pretokenized
        .tokenize(|n| model.tokenize(n.get()))
        .map_err(err)?;
    let before = out.len();
    for (_, _, tokens) in pretokenized.get_splits(OffsetReferential::Original, OffsetType::None) {
        if let Some(tokens) = tokens {
            out.extend(tokens.iter().map(|t| t.id));
        }
    }
    Ok(out.len() - before)
}

/// Whether `normalizer` certainly leaves `text` unchanged.
fn is_noop(normalizer: &NormalizerWrapper, text: &str) -> bool {
    let yes = |r: IsNormalized| r == IsNormalized::Yes;
    match normalizer {
        NormalizerWrapper::NFC(_) => yes(is_nfc_quick(text.chars())),
        NormalizerWrapper::NFD(_) => yes(is_nfd_quick(text.chars())),
        NormalizerWrapper::NFKC(_) => yes(is_nfkc_quick(text.chars())),
        NormalizerWrapper::NFKD(_) => yes(is_nfkd_quick(text.chars())),
        NormalizerWrapper::Sequence(seq) => seq.as_ref().iter().all(|n| is_noop(n, text)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::normalizers::{NFC, NFKC, Sequence};

    #[test]
    fn unicode_normalizers_are_skipped_only_on_normalized_text() {
        let nfc = NormalizerWrapper::NFC(NFC);
        assert!(is_noop(&nfc, "plain ascii"));
        assert!(is_noop(&nfc, "café 中文 😀"));
        assert!(!is_noop(&nfc, "cafe\u{301}"), "decomposed é is not NFC");
        let nfkc = NormalizerWrapper::NFKC(NFKC);
        assert!(
            !is_noop(&nfkc, "ｆｕｌｌ"),
            "full-width letters change under NFKC"
        );
        let seq = NormalizerWrapper::Sequence(Sequence::new(vec![nfc.clone(), nfkc]));
        assert!(is_noop(&seq, "abc") && !is_noop(&seq, "ｆ"));
        let lower = NormalizerWrapper::Lowercase(tokenizers::normalizers::Lowercase);
        assert!(!is_noop(&lower, "abc"), "other normalizers always run");
    }
}
