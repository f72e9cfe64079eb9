//! Generated prompt text: pseudo-English with code and Unicode, Zipf-distributed words (shared by
//! the tokenization benchmark and the long-context load benchmark).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const COMMON: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "from",
    "at",
    "or",
    "an",
    "not",
    "have",
    "which",
    "but",
    "all",
    "they",
    "were",
    "model",
    "token",
    "cache",
    "request",
    "prefix",
    "block",
    "memory",
    "server",
    "latency",
    "router",
    "question",
    "answer",
    "because",
    "however",
    "performance",
    "configuration",
    "implementation",
];
const EXTRAS: &[&str] = &[
    "\n\n",
    "\n",
    "```python\ndef f(x):\n    return x * 2\n```\n",
    "中文文本",
    "café",
    "😀",
    "    ",
    "{\"key\": [1, 2, 3]}",
    "https://example.com/a?b=c",
];

/// Pseudo-English: common words plus a Zipf-distributed vocabulary of syllable words.
#[derive(Debug)]
pub struct Prose {
    /// The generator, for callers that draw their own lengths.
    pub rng: SmallRng,
    vocab: Vec<String>,
}

impl Prose {
    /// A generator seeded with `seed` (its vocabulary too).
    pub fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let syllables = [
            "ka", "lo", "mi", "ter", "san", "vo", "rin", "del", "qua", "ph", "ex", "ing", "tion",
        ];
        let vocab = (0..5000)
            .map(|_| {
                let n = rng.random_range(1..5);
                (0..n)
                    .map(|_| syllables[rng.random_range(0..syllables.len())])
                    .collect()
            })
            .collect();
        Self { rng, vocab }
    }

    /// `words` words of prose.
    pub fn text(&mut self, words: usize) -> String {
        let mut out = String::new();
        for i in 0..words {
            let r: f64 = self.rng.random();
            if r < 0.55 {
                out.push_str(COMMON[self.rng.random_range(0..COMMON.len())]);
            } else if r < 0.97 {
                // Zipf-like: rank ~ 1/u.
                let u: f64 = self.rng.random_range(0.0002..1.0);
                let rank = ((1.0 / u) as usize).min(self.vocab.len()) - 1;
                out.push_str(&self.vocab[rank]);
            } else if r < 0.985 {
                out.push_str(&self.rng.random_range(0..100_000).to_string());
            } else {
                out.push_str(EXTRAS[self.rng.random_range(0..EXTRAS.len())]);
            }
            let p: f64 = self.rng.random();
            out.push_str(if p < 0.06 {
                ". "
            } else if p < 0.1 {
                ", "
            } else if i + 1 < words {
                " "
            } else {
                "."
            });
        }
        out
    }
}
