//! The tokenizer pipeline for one text, returning only ids.
//!
//! `Tokenizer::encode_fast` builds a full `Encoding` (token strings, offsets, words, masks) that the
//! router never reads, and its pre-tokenizers allocate an aligned `NormalizedString` per word per
//! stage: at 100k tokens, allocation is most of the time. This runs the same steps (added-token
//! extraction and normalization, pre-tokenization, the model) and collects ids only:
//!
//! - Unicode normalizers are skipped on text they leave unchanged: `NFC` on text the Unicode quick
//!   check (the tables tokenizers itself uses) says is NFC, likewise NFD/NFKC/NFKD.
//! - The byte-level family (`Split` regexes with `Isolated` behaviour, then `ByteLevel` without a
//!   prefix space: GPT-2, Llama-3, Qwen2, DeepSeek) is pre-tokenized on plain `&str` slices with the
//!   same regex engine and patterns, then mapped through the GPT-2 byte table into one reused buffer,
//!   and handed to the tokenizer's own model.
//! - The SentencePiece style (`Metaspace`) is run as `' '` → `▁`, the prepend rule, and the model on
//!   each piece cut before a `▁`; with `split: false` that cut is exact only when no vocabulary
//!   token holds `▁` past its start (true of SentencePiece-trained vocabularies), which is checked.
//!
//! Any other pre-tokenizer runs as tokenizers runs it.
//!
//! Checked against `encode_fast` by the splice property tests and against Python by the exactness
//! tests.

use serde_json::Value;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::utils::SysRegex;
use tokenizers::{Model, OffsetReferential, OffsetType, PreTokenizer, Tokenizer};
use unicode_normalization_alignments::{
    IsNormalized, is_nfc_quick, is_nfd_quick, is_nfkc_quick, is_nfkd_quick,
};

use crate::error::Error;

/// How one tokenizer's pre-tokenizer is run.
#[derive(Debug, Default)]
pub struct Pipeline {
    byte_level: Option<ByteLevelSplits>,
    metaspace: Option<MetaspacePieces>,
}

/// A Metaspace pre-tokenizer (SentencePiece style) whose model never merges across a `▁`.
#[derive(Debug)]
struct MetaspacePieces {
    replacement: char,
    prepend: Prepend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prepend {
    Always,
    First,
    Never,
}

/// A byte-level pre-tokenizer as regex stages plus the GPT-2 byte table.
#[derive(Debug)]
struct ByteLevelSplits {
    stages: Vec<SysRegex>,
    bytes: [char; 256],
}

/// ByteLevel's own word regex (GPT-2), used when `use_regex` is set.
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

impl Pipeline {
    /// Recognises the byte-level family in `tokenizer`'s pre-tokenizer (read from its serialized
    /// form, the same data `tokenizer.json` holds).
    pub fn analyze(tokenizer: &Tokenizer) -> Self {
        let byte_level = tokenizer
            .get_pre_tokenizer()
            .and_then(|p| serde_json::to_value(p).ok())
            .and_then(|v| byte_level_stages(&v))
            .map(|stages| ByteLevelSplits {
                stages,
                bytes: gpt2_bytes(),
            });
        let metaspace = metaspace_pieces(tokenizer);
        Self {
            byte_level,
            metaspace,
        }
    }

    /// Whether an allocation-light path (byte-level or Metaspace) is used.
    pub fn is_fast(&self) -> bool {
        self.byte_level.is_some() || self.metaspace.is_some()
    }

    /// Appends the ids of `tokenizer.encode(text, add_special_tokens=False)` to `out`; returns how
    /// many.
    pub fn encode_ids(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<usize, Error> {
        let normalizer = tokenizer.get_normalizer().filter(|n| !is_noop(n, text));
        match (&self.byte_level, &self.metaspace) {
            (Some(fast), _) if normalizer.is_none() => fast.encode(tokenizer, text, out),
            (_, Some(fast)) if normalizer.is_none() => fast.encode(tokenizer, text, out),
            _ => encode_ids(tokenizer, text, out),
        }
    }
}

impl ByteLevelSplits {
    fn encode(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<usize, Error> {
        let model = tokenizer.get_model();
        let mut mapped = String::new();
        encode_pieces(tokenizer, text, out, |piece, _, out| {
            let mut failure = None;
            self.split(0, piece, &mut |word| {
                if failure.is_some() {
                    return;
                }
                mapped.clear();
                mapped.extend(word.bytes().map(|b| self.bytes[b as usize]));
                failure = model_ids(model, &mapped, out).err();
            });
            failure.map_or(Ok(()), Err)
        })
    }

    /// `NormalizedString::split(regex, Isolated)` for each stage in turn: matches and the gaps
    /// between them, in order, empty pieces dropped.
    fn split(&self, stage: usize, s: &str, emit: &mut impl FnMut(&str)) {
        let Some(regex) = self.stages.get(stage) else {
            if !s.is_empty() {
                emit(s);
            }
            return;
        };
        let mut prev = 0;
        for (start, end) in regex.find_iter(s) {
            if prev != start {
                self.split(stage + 1, &s[prev..start], emit);
            }
            self.split(stage + 1, &s[start..end], emit);
            prev = end;
        }
        if prev != s.len() {
            self.split(stage + 1, &s[prev..], emit);
        }
    }
}

impl MetaspacePieces {
    /// Metaspace replaces `' '` with `▁` and prepends one (`always`, or `first`: at offset 0 of the
    /// input), then hands the model each piece; with `split: false` the model sees the whole text,
    /// but since no vocabulary token holds `▁` past its first character, no merge spans a `▁`, and
    /// cutting before each `▁` (what `split: true` does) changes nothing while letting the model's
    /// word cache work.
    fn encode(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<usize, Error> {
        let model = tokenizer.get_model();
        let mut replaced = String::new();
        encode_pieces(tokenizer, text, out, |piece, start, out| {
            replaced.clear();
            let prepend = match self.prepend {
                Prepend::Always => true,
                Prepend::First => start == 0,
                Prepend::Never => false,
            };
            if prepend && !piece.starts_with(' ') && !piece.starts_with(self.replacement) {
                replaced.push(self.replacement);
            }
            replaced.extend(
                piece
                    .chars()
                    .map(|c| if c == ' ' { self.replacement } else { c }),
            );
            let mut rest = replaced.as_str();
            while !rest.is_empty() {
                let cut = rest
                    .char_indices()
                    .skip(1)
                    .find(|(_, c)| *c == self.replacement)
                    .map_or(rest.len(), |(i, _)| i);
                let (word, tail) = rest.split_at(cut);
                model_ids(model, word, out)?;
                rest = tail;
            }
            Ok(())
        })
    }
}

/// The pipeline around a fast pre-tokenizer (whose normalizer the caller found to be a no-op):
/// added tokens are cut out of `text` and their ids appended to `out`; every other piece goes to
/// `pretokenize` with its byte offset in `text`. Returns how many ids were appended.
fn encode_pieces(
    tokenizer: &Tokenizer,
    text: &str,
    out: &mut Vec<u32>,
    mut pretokenize: impl FnMut(&str, usize, &mut Vec<u32>) -> Result<(), Error>,
) -> Result<usize, Error> {
    let before = out.len();
    let pieces = tokenizer
        .get_added_vocabulary()
        .extract_and_normalize(None::<&NormalizerWrapper>, text);
    for (piece, (start, _), tokens) in
        pieces.get_splits(OffsetReferential::Original, OffsetType::None)
    {
        match tokens {
            Some(tokens) => out.extend(tokens.iter().map(|t| t.id)),
            None => pretokenize(piece, start, out)?,
        }
    }
    Ok(out.len() - before)
}

/// The model's ids for one pre-tokenized word, appended to `out`.
fn model_ids(model: &impl Model, word: &str, out: &mut Vec<u32>) -> Result<(), Error> {
    let tokens = model
        .tokenize(word)
        .map_err(|e| Error::Encode(e.to_string()))?;
    out.extend(tokens.iter().map(|t| t.id));
    Ok(())
}

/// A Metaspace pre-tokenizer over a BPE model where cutting before each `▁` is exact: `split: true`,
/// or no vocabulary token with `▁` after its first character (and `▁` itself known, so unknown
/// characters cannot fuse across it), no dropout, no `ignore_merges` (a whole piece found in the
/// vocabulary could differ from what merges make of the longer text).
fn metaspace_pieces(tokenizer: &Tokenizer) -> Option<MetaspacePieces> {
    let pre = serde_json::to_value(tokenizer.get_pre_tokenizer()?).ok()?;
    if pre.get("type")?.as_str()? != "Metaspace" {
        return None;
    }
    let replacement = {
        let mut chars = pre.get("replacement")?.as_str()?.chars();
        let c = chars.next()?;
        chars.next().is_none().then_some(c)?
    };
    let prepend = match pre.get("prepend_scheme")?.as_str()? {
        "always" => Prepend::Always,
        "first" => Prepend::First,
        "never" => Prepend::Never,
        _ => return None,
    };
    let split = pre.get("split")?.as_bool()?;
    let tokenizers::models::ModelWrapper::BPE(bpe) = tokenizer.get_model() else {
        return None;
    };
    if bpe.dropout.is_some() || bpe.ignore_merges {
        return None;
    }
    let vocab = bpe.get_vocab();
    let mut buf = [0u8; 4];
    let marker: &str = replacement.encode_utf8(&mut buf);
    let inner = vocab
        .keys()
        .any(|t| t.chars().skip(1).any(|c| c == replacement));
    if !split && (inner || !vocab.contains_key(marker)) {
        return None;
    }
    Some(MetaspacePieces {
        replacement,
        prepend,
    })
}

/// The regex stages of `Split(Regex, Isolated, invert: false)`* then `ByteLevel(add_prefix_space:
/// false)`, or `None` for any other shape.
fn byte_level_stages(pre: &Value) -> Option<Vec<SysRegex>> {
    let steps: Vec<&Value> = match pre.get("type")?.as_str()? {
        "Sequence" => pre.get("pretokenizers")?.as_array()?.iter().collect(),
        _ => vec![pre],
    };
    let (last, splits) = steps.split_last()?;
    if last.get("type")?.as_str()? != "ByteLevel" || last.get("add_prefix_space")?.as_bool()? {
        return None;
    }
    let mut stages = Vec::new();
    for split in splits {
        let plain = split.get("type")?.as_str()? == "Split"
            && split.get("behavior")?.as_str()? == "Isolated"
            && !split.get("invert")?.as_bool()?;
        let pattern = split.get("pattern")?.get("Regex")?.as_str()?;
        if !plain {
            return None;
        }
        stages.push(SysRegex::new(pattern).ok()?);
    }
    if last.get("use_regex")?.as_bool()? {
        stages.push(SysRegex::new(GPT2_PATTERN).ok()?);
    }
    Some(stages)
}

/// GPT-2's byte → char table: printable Latin-1 bytes map to themselves, the others to U+0100 on.
fn gpt2_bytes() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut next = 0x100;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

/// Appends the ids of `tokenizer.encode(text, add_special_tokens=False)` to `out` by the generic
/// path; returns how many.
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
