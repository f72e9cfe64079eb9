//! Where a text may be cut so that encoding the pieces gives the ids of encoding the whole.
//!
//! HF `tokenizers` first splits the input on added tokens (leftmost-longest, on the raw text for
//! tokens with `normalized: false`), then normalizes, pre-tokenizes and runs the model on each piece
//! separately. So the start of an added-token match is a cut that changes nothing, provided the match
//! is found identically in the piece and in the whole. That holds for a token `t` when:
//!
//! - `t` is matched on raw text (`normalized: false`) and has no `lstrip` (which would reach left
//!   across the cut) and no `single_word` (which looks at the character before it);
//! - `t` starts with ASCII punctuation other than `_`: then `rstrip`/`single_word` of a token ending
//!   right before the cut behave as at the end of a text (they stop at a non-space, non-word char);
//! - no added token can overlap the cut: none is a longer token starting with `t` (leftmost-longest
//!   would take it), and no proper suffix of any added token is prefix-compatible with `t` (an earlier
//!   match straddling the cut would swallow `t`, even one later discarded by `single_word`);
//! - the model is deterministic (no BPE dropout).
//!
//! The only offset-dependent step, Metaspace's `prepend_scheme: first`, looks at whether a piece starts
//! at offset 0 of the input; pieces after a cut start with `t` itself, so their text pieces are never
//! at offset 0, in the piece or in the whole. [`Boundaries::analyze`] applies these rules per tokenizer
//! at load; [`Boundaries::self_check`] then compares piecewise and whole encodes on probes, and the
//! property tests in `tests/splice.rs` do so on random texts.

use tokenizers::models::ModelWrapper;
use tokenizers::{AddedToken, Tokenizer};

/// The added tokens at whose start a text may be cut.
#[derive(Debug, Clone, Default)]
pub struct Boundaries {
    /// Boundary token contents, longest first.
    tokens: Vec<String>,
    /// Whether a byte can start a boundary token.
    first_bytes: Box<[bool]>,
}

impl Boundaries {
    /// No cuts: the text is always encoded whole.
    pub fn none() -> Self {
        Self {
            tokens: Vec::new(),
            first_bytes: vec![false; 256].into_boxed_slice(),
        }
    }

    /// The boundary tokens of `tokenizer`, by the rules in the module doc.
    pub fn analyze(tokenizer: &Tokenizer) -> Self {
        if tokenizer.get_encode_special_tokens() {
            return Self::none();
        }
        if let ModelWrapper::BPE(bpe) = tokenizer.get_model()
            && bpe.dropout.is_some_and(|p| p > 0.0)
        {
            return Self::none();
        }
        let decoder = tokenizer.get_added_tokens_decoder();
        let raw: Vec<&AddedToken> = decoder.values().filter(|t| !t.normalized).collect();
        let mut tokens: Vec<String> = raw
            .iter()
            .filter(|t| is_boundary(t, &raw))
            .map(|t| t.content.clone())
            .collect();
        tokens.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        tokens.dedup();
        let mut first_bytes = vec![false; 256];
        for t in &tokens {
            first_bytes[t.as_bytes()[0] as usize] = true;
        }
        Self {
            tokens,
            first_bytes: first_bytes.into_boxed_slice(),
        }
    }

    /// The boundary tokens.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Whether any cut is possible.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Cuts `text` before every boundary-token occurrence; the pieces concatenate back to `text`.
    pub fn split<'t>(&self, text: &'t str) -> Segments<'_, 't> {
        Segments {
            boundaries: self,
            text,
            start: 0,
        }
    }

    /// Encodes each probe whole and cut at boundaries; `false` if any differs.
    pub fn self_check(&self, tokenizer: &Tokenizer) -> bool {
        let mut probes = Vec::new();
        let fillers = ["", " ", "x", "\n", " hello  world\n\n", "é😀", "_a", "  "];
        for t in self.tokens.iter().take(8) {
            for f in fillers {
                for g in fillers {
                    probes.push(format!("{f}{t}{g}{t}{f}"));
                }
            }
        }
        probes.iter().all(|p| {
            let whole = tokenizer
                .encode_fast(p.as_str(), false)
                .map(|e| e.get_ids().to_vec());
            let mut pieces = Vec::new();
            for s in self.split(p) {
                match tokenizer.encode_fast(s, false) {
                    Ok(e) => pieces.extend_from_slice(e.get_ids()),
                    Err(_) => return false,
                }
            }
            whole.is_ok_and(|w| w == pieces)
        })
    }
}

fn is_boundary(t: &AddedToken, raw: &[&AddedToken]) -> bool {
    let content = t.content.as_str();
    let Some(first) = content.chars().next() else {
        return false;
    };
    if t.lstrip || t.single_word || !first.is_ascii_punctuation() || first == '_' {
        return false;
    }
    raw.iter().all(|a| {
        let other = a.content.as_str();
        if other == content {
            return true;
        }
        if other.len() > content.len() && other.starts_with(content) {
            return false;
        }
        // A proper suffix of `other` that agrees with the start of `t` could straddle the cut.
        !other.char_indices().skip(1).any(|(k, _)| {
            let suffix = &other[k..];
            suffix.starts_with(content) || content.starts_with(suffix)
        })
    })
}

/// Iterator over the pieces of a text cut at boundary tokens.
#[derive(Debug)]
pub struct Segments<'b, 't> {
    boundaries: &'b Boundaries,
    text: &'t str,
    start: usize,
}

impl<'t> Iterator for Segments<'_, 't> {
    type Item = &'t str;

    fn next(&mut self) -> Option<&'t str> {
        if self.start >= self.text.len() {
            return None;
        }
        let bytes = self.text.as_bytes();
        // A piece starting with a boundary token keeps it: scan past it for the next cut.
        let mut i = self.start + self.token_at(self.start).unwrap_or(0);
        while i < bytes.len() {
            if self.boundaries.first_bytes[bytes[i] as usize]
                && let Some(len) = self.token_at(i)
            {
                if i > self.start {
                    let piece = &self.text[self.start..i];
                    self.start = i;
                    return Some(piece);
                }
                i += len;
                continue;
            }
            i += 1;
        }
        let piece = &self.text[self.start..];
        self.start = self.text.len();
        Some(piece)
    }
}

impl Segments<'_, '_> {
    /// Length of the boundary token starting at byte `i`, if any (tokens start with ASCII, so `i`
    /// matching one is a char boundary).
    fn token_at(&self, i: usize) -> Option<usize> {
        let rest = &self.text.as_bytes()[i..];
        self.boundaries
            .tokens
            .iter()
            .find(|t| rest.starts_with(t.as_bytes()))
            .map(String::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(list: &[(&str, bool, bool)]) -> Vec<AddedToken> {
        list.iter()
            .map(|(c, lstrip, single)| {
                AddedToken::from(*c, true)
                    .lstrip(*lstrip)
                    .single_word(*single)
                    .normalized(false)
            })
            .collect()
    }

    #[test]
    fn boundary_rules() {
        let all = tokens(&[
            ("<|im_start|>", false, false),
            ("<|im_end|>", false, false),
            ("<mask>", true, false),
            ("[INST]", false, false),
            ("[INST]x", false, false),
            ("word", false, false),
            ("a<|x|>", false, false),
            ("<|x|>", false, false),
        ]);
        let raw: Vec<&AddedToken> = all.iter().collect();
        let ok: Vec<&str> = all
            .iter()
            .filter(|t| is_boundary(t, &raw))
            .map(|t| t.content.as_str())
            .collect();
        // <mask>: lstrip; [INST]: prefix of a longer token; word: starts with a word char;
        // <|x|>: a suffix of a<|x|>; [INST]x: fine.
        assert_eq!(ok, vec!["<|im_start|>", "<|im_end|>", "[INST]x"]);
    }

    #[test]
    fn split_cuts_before_each_token_and_concatenates_back() {
        let b = Boundaries {
            tokens: vec!["<|im_start|>".into(), "<|im_end|>".into()],
            first_bytes: {
                let mut f = vec![false; 256];
                f[b'<' as usize] = true;
                f.into_boxed_slice()
            },
        };
        let text = "<|im_start|>user\nhi <b><|im_end|>\n<|im_start|><|im_start|>x";
        let pieces: Vec<&str> = b.split(text).collect();
        assert_eq!(
            pieces,
            vec![
                "<|im_start|>user\nhi <b>",
                "<|im_end|>\n",
                "<|im_start|>",
                "<|im_start|>x"
            ]
        );
        assert_eq!(pieces.concat(), text);
        assert_eq!(b.split("").count(), 0);
        assert_eq!(b.split("plain").collect::<Vec<_>>(), vec!["plain"]);
    }
}
