//! What one request is expected to cost the endpoint it goes to.

/// What one request is expected to cost the endpoint it goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Of those, tokens expected to hit the endpoint's prefix cache (tier-weighted).
    pub cached_tokens: u32,
    /// Tokens it is expected to generate (`max_tokens`, or a configured expectation).
    pub output_tokens: u32,
}

impl Cost {
    /// Prompt tokens the endpoint must compute: at least one, as vLLM always computes one.
    pub fn uncached_tokens(&self) -> u32 {
        self.prompt_tokens.saturating_sub(self.cached_tokens).max(1)
    }

    /// Attention pairs its prefill computes: each uncached token attends to the cached prefix
    /// and to the uncached tokens before it. Long prompts spend a large share of their prefill
    /// here (a 40k-token prompt: ~1.4 s of ~5.4 s on an H100 pair), so the progress of the one
    /// being computed is measured against it too.
    pub fn attention_pairs(&self) -> u64 {
        let own = u64::from(self.uncached_tokens());
        let cached = u64::from(self.prompt_tokens).saturating_sub(own);
        own * cached + own * (own + 1) / 2
    }

    /// KV tokens it holds while decoding, on average over its decode (prompt + half its output).
    pub(super) fn mean_context(&self) -> u64 {
        u64::from(self.prompt_tokens) + u64::from(self.output_tokens) / 2
    }

    /// KV tokens it adds to the endpoint's cache at its peak: its cached prefix is shared with
    /// whoever holds it, the rest of the prompt and its output are its own.
    pub fn kv_tokens(&self) -> u64 {
        u64::from(self.uncached_tokens()) + u64::from(self.output_tokens)
    }
}
