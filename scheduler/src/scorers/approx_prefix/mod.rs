//! `prefix-cache-scorer`: approximate prefix scoring from routing history, for endpoints that
//! send no KV events and prompts that could not be tokenized.
//!
//! It assumes an endpoint still holds the prompts recently routed to it, as llm-d's scorer of the
//! same name does: per endpoint it remembers, in a bounded LRU ([`table`]), the keys of what
//! [`crate::Scheduler::pick`] sent there, and scores a candidate by the run of the request's keys
//! from key 0 it holds, over the request's keys (at most `maxPrefixBlocksToMatch`).
//!
//! Keys: for a token prompt, one per `blockSize` tokens. Block keys are chained (a key names its
//! whole prefix), so a coarser block's key is simply the index-sized key of its last block: no
//! second hashing pass, which is why `blockSize` is a multiple of the index's. For a text prompt,
//! one per `textChunkChars` characters ([`chunks`]).
//!
//! When the profile also reads the KV index (a `precise-prefix-cache-scorer`), an endpoint whose
//! events are `Live` gets its prefix evidence from the index alone and scores 0 here on token
//! prompts, so that no endpoint is credited twice for the same blocks. History is recorded for
//! every endpoint regardless, so it is warm when an endpoint's events go stale.

mod chunks;
mod table;

use std::num::NonZeroUsize;

use parking_lot::RwLock;

use self::table::RoutedBlocks;
use super::{Needs, ScoreContext, Scorer};
use crate::keys::BlockKey;
use crate::pods::EndpointId;
use crate::request::{EventsState, Prompt};

/// Tunables of [`ApproxPrefix`].
#[derive(Clone, Debug, PartialEq)]
pub struct ApproxPrefixParams {
    /// Tokens per remembered block (`blockSize`); a multiple of the index's block size. `None`:
    /// the smallest multiple of it of at least 64 tokens (llm-d's default is 64).
    pub block_tokens: Option<u32>,
    /// Characters per chunk of a text prompt (`textChunkChars`, default 256, about 64 tokens).
    pub text_chunk_chars: NonZeroUsize,
    /// Blocks matched and recorded per request at most (`maxPrefixBlocksToMatch`, default 256).
    pub max_blocks: usize,
    /// Keys remembered per endpoint (`lruCapacityPerServer`, default 31,250, llm-d's default).
    /// Each costs about 24 bytes plus its share of a hash map entry.
    pub capacity_per_endpoint: usize,
}

impl Default for ApproxPrefixParams {
    fn default() -> Self {
        Self {
            block_tokens: None,
            text_chunk_chars: NonZeroUsize::MIN.saturating_add(255),
            max_blocks: 256,
            capacity_per_endpoint: 31_250,
        }
    }
}

impl ApproxPrefixParams {
    /// How many index blocks make one remembered block, for an index block size of `index_block`.
    pub fn stride(&self, index_block: u32) -> usize {
        let index_block = index_block.max(1);
        let tokens = self
            .block_tokens
            .unwrap_or_else(|| 64u32.div_ceil(index_block) * index_block);
        (tokens / index_block).max(1) as usize
    }
}

/// Routing-history prefix scorer; see the module docs.
#[derive(Debug)]
pub struct ApproxPrefix {
    params: ApproxPrefixParams,
    routed: RwLock<RoutedBlocks>,
}

impl ApproxPrefix {
    /// A scorer with empty history.
    pub fn new(params: ApproxPrefixParams) -> Self {
        Self {
            routed: RwLock::new(RoutedBlocks::new(params.capacity_per_endpoint)),
            params,
        }
    }

    /// (endpoint, key) pairs remembered now; at most `lruCapacityPerServer` per endpoint.
    pub fn entries(&self) -> usize {
        self.routed.read().len()
    }

    /// The request's keys at this scorer's granularity, at most `max_blocks` of them.
    fn keys(&self, ctx: &ScoreContext<'_, '_>, out: &mut Vec<BlockKey>) {
        out.clear();
        match ctx.request.prompt {
            Prompt::Tokens(_) => {
                let stride = self.params.stride(ctx.block_size.get());
                out.extend(
                    ctx.keys
                        .iter()
                        .skip(stride - 1)
                        .step_by(stride)
                        .take(self.params.max_blocks)
                        .copied(),
                );
            }
            Prompt::Text(text) => chunks::chunk_keys(
                ctx.request.partition().root(),
                text,
                self.params.text_chunk_chars,
                self.params.max_blocks,
                out,
            ),
            Prompt::Empty => {}
        }
    }
}

impl Scorer for ApproxPrefix {
    fn needs(&self) -> Needs {
        Needs {
            keys: true,
            lookup: false,
            predict: false,
        }
    }

    fn score(&self, ctx: &ScoreContext<'_, '_>, out: &mut [f64]) {
        out.fill(0.0);
        let mut keys = Vec::new();
        self.keys(ctx, &mut keys);
        if keys.is_empty() {
            return;
        }
        let index_covers_live = ctx.looked_up && matches!(ctx.request.prompt, Prompt::Tokens(_));
        let mut runs = vec![0u32; ctx.candidates.len()];
        self.routed.read().match_runs(
            &keys,
            |e| {
                let i = ctx.position(e)?;
                let live = ctx.candidates[i].events == EventsState::Live;
                (!(index_covers_live && live)).then_some(i)
            },
            &mut runs,
        );
        let total = keys.len() as f64;
        for (o, r) in out.iter_mut().zip(runs) {
            *o = f64::from(r) / total;
        }
    }

    fn observe(&self, ctx: &ScoreContext<'_, '_>, chosen: EndpointId) {
        let mut keys = Vec::new();
        self.keys(ctx, &mut keys);
        if !keys.is_empty() {
            self.routed.write().record(chosen, &keys);
        }
    }

    fn forget(&self, endpoint: EndpointId) {
        self.routed.write().forget(endpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::super::positions_of;
    use super::super::testing::endpoint;
    use super::*;
    use crate::index::PrefixMatches;
    use crate::keys::{BlockSize, block_keys};
    use crate::pods::{Endpoint, PodSignals};
    use crate::request::{Candidate, Request};
    use crate::time::Timestamp;

    struct Fixture {
        eps: Vec<Endpoint>,
        events: Vec<EventsState>,
        looked_up: bool,
    }

    impl Fixture {
        fn new(n: u32) -> Self {
            Self {
                eps: (0..n).map(endpoint).collect(),
                events: vec![EventsState::Absent; n as usize],
                looked_up: false,
            }
        }

        /// Runs `f` on a context for `prompt` over all endpoints.
        fn with<R>(&self, prompt: Prompt<'_>, f: impl FnOnce(&ScoreContext<'_, '_>) -> R) -> R {
            let signals = PodSignals::idle(Timestamp::ZERO);
            let candidates: Vec<_> = self
                .eps
                .iter()
                .zip(&self.events)
                .map(|(endpoint, &events)| Candidate {
                    endpoint,
                    signals: &signals,
                    events,
                })
                .collect();
            let mut positions = Vec::new();
            positions_of(&candidates, &mut positions);
            let req = Request::new("m", prompt);
            let keys: Vec<_> = match prompt {
                Prompt::Tokens(t) => {
                    block_keys(req.partition().root(), t, BlockSize::DEFAULT).collect()
                }
                _ => Vec::new(),
            };
            let matches = PrefixMatches::default();
            f(&ScoreContext {
                request: &req,
                candidates: &candidates,
                keys: &keys,
                block_size: BlockSize::DEFAULT,
                matches: &matches,
                looked_up: self.looked_up,
                costs: &[],
                predictions: &[],
                positions: &positions,
                now: Timestamp::ZERO,
            })
        }

        fn scores(&self, s: &ApproxPrefix, prompt: Prompt<'_>) -> Vec<f64> {
            self.with(prompt, |ctx| {
                let mut out = vec![f64::NAN; ctx.candidates.len()];
                s.score(ctx, &mut out);
                out
            })
        }

        fn route(&self, s: &ApproxPrefix, prompt: Prompt<'_>, to: usize) {
            self.with(prompt, |ctx| s.observe(ctx, self.eps[to].id));
        }
    }

    fn tokens(seed: u32, n: usize) -> Vec<u32> {
        (0..n as u32)
            .map(|i| i.wrapping_mul(seed) % 50_000)
            .collect()
    }

    #[test]
    fn a_repeated_token_prompt_goes_back_where_it_went() {
        let f = Fixture::new(3);
        let s = ApproxPrefix::new(ApproxPrefixParams::default());
        let t = tokens(7, 1024); // 16 blocks of 64 tokens
        assert_eq!(f.scores(&s, Prompt::Tokens(&t)), [0.0; 3]);
        f.route(&s, Prompt::Tokens(&t), 1);
        assert_eq!(f.scores(&s, Prompt::Tokens(&t)), [0.0, 1.0, 0.0]);
        // Same first half, different second half: half the blocks match.
        let mut u = t.clone();
        u[600] += 1;
        assert_eq!(f.scores(&s, Prompt::Tokens(&u)), [0.0, 0.5625, 0.0]);
        assert_eq!(s.entries(), 16);
        s.forget(f.eps[1].id);
        assert_eq!(f.scores(&s, Prompt::Tokens(&t)), [0.0; 3]);
    }

    #[test]
    fn blocks_are_every_stride_th_index_key_capped_at_max_blocks() {
        let f = Fixture::new(1);
        let params = ApproxPrefixParams {
            block_tokens: Some(32),
            max_blocks: 5,
            ..ApproxPrefixParams::default()
        };
        assert_eq!(params.stride(16), 2);
        assert_eq!(ApproxPrefixParams::default().stride(16), 4);
        assert_eq!(
            ApproxPrefixParams::default().stride(48),
            2,
            "96 ≥ 64 tokens"
        );
        let s = ApproxPrefix::new(params);
        let t = tokens(3, 16 * 13);
        let keys = f.with(Prompt::Tokens(&t), |ctx| {
            let mut k = Vec::new();
            s.keys(ctx, &mut k);
            assert_eq!(k, [1, 3, 5, 7, 9].map(|i| ctx.keys[i]));
            k
        });
        assert_eq!(keys.len(), 5);
    }

    #[test]
    fn a_repeated_text_prompt_goes_back_where_it_went() {
        let f = Fixture::new(2);
        let s = ApproxPrefix::new(ApproxPrefixParams {
            text_chunk_chars: NonZeroUsize::new(8).unwrap(),
            ..ApproxPrefixParams::default()
        });
        let text = "Grüße aus Köln — 東京の天気は晴れです 😀 and some ASCII to end.";
        f.route(&s, Prompt::Text(text), 0);
        assert_eq!(f.scores(&s, Prompt::Text(text)), [1.0, 0.0]);
        assert_eq!(
            f.scores(&s, Prompt::Text("entirely different text")),
            [0.0; 2]
        );
        assert_eq!(f.scores(&s, Prompt::Text("short")), [0.0; 2]);
    }

    #[test]
    fn live_endpoints_are_left_to_the_index_when_it_is_read() {
        let mut f = Fixture::new(2);
        f.events = vec![EventsState::Live, EventsState::Stale];
        let s = ApproxPrefix::new(ApproxPrefixParams::default());
        let t = tokens(11, 256);
        f.route(&s, Prompt::Tokens(&t), 0);
        f.route(&s, Prompt::Tokens(&t), 1);
        assert_eq!(f.scores(&s, Prompt::Tokens(&t)), [1.0, 1.0]);
        f.looked_up = true;
        assert_eq!(f.scores(&s, Prompt::Tokens(&t)), [0.0, 1.0]);
        // The index cannot read text: history scores everyone.
        f.route(&s, Prompt::Text(&"x".repeat(600)), 0);
        assert_eq!(f.scores(&s, Prompt::Text(&"x".repeat(600))), [1.0, 0.0]);
    }
}
