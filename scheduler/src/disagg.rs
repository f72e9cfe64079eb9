//! Prefill/decode disaggregation, as llm-d does it.
//!
//! A P/D pool has prefill pods, which compute a prompt's KV cache, and decode pods, which pull it
//! (vLLM's NIXL connector) and generate; pods say which they are with the label
//! `llm-d.ai/role` ([`crate::filters::ByLabel`]). The picker config then has two scheduling
//! profiles, each with its own filters and scorers (typically prefill: prefix cache and waiting
//! queue; decode: KV memory and running batch), and a profile handler
//! (`disagg-profile-handler`, or the older `pd-profile-handler`) that runs them in llm-d's order:
//!
//! 1. the decode profile picks the decode pod, the request's destination (fallbacks are decode
//!    pods too);
//! 2. the decider ([`Decider`]) looks at that pick: is enough of the prompt uncached there to be
//!    worth a remote prefill?
//! 3. if so, the prefill profile picks a prefill pod; the gateway's answer names it in
//!    `x-prefiller-host-port`, and the decode pod's routing sidecar sends it the prompt as a
//!    prefill-only request before decoding with the transferred KV.
//!
//! A pool where the prefill profile finds no pod, or a decider that says no, is served
//! aggregated: the decode pod prefills itself ([`PdOutcome`]).
//!
//! Costs, for the in-flight accounting and the latency model: the prefill pod computes the prompt
//! less what it holds and emits one token; the decode pod computes nothing of the prompt (it
//! arrives over the wire) but holds all of it in KV while it generates.

use crate::decision::Ranked;

/// The request header naming the prefill pod (`ip:port`) to the decode pod's routing sidecar.
pub const PREFILLER_HOST_PORT: &str = "x-prefiller-host-port";
/// The same for older routing sidecars, as a URL (`http://ip:port`).
pub const PREFILLER_URL: &str = "x-prefiller-url";
/// llm-d's other headers to the routing sidecar (encode pods, a data-parallel rank): kvpick sets
/// neither, and a client must not either.
pub const SIDECAR_HEADERS: [&str; 4] = [
    PREFILLER_HOST_PORT,
    PREFILLER_URL,
    "x-encoder-hosts-ports",
    "x-data-parallel-host-port",
];
use crate::inflight::Cost;
use crate::latency::Prediction;

/// Whether a request is worth a remote prefill, given its decode pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decider {
    /// `prefix-based-pd-decider`: disaggregate when the prompt's tokens not cached on the decode
    /// pod are at least `non_cached_tokens` (`nonCachedTokens`; 0 never disaggregates).
    PrefixBased {
        /// The threshold, tokens.
        non_cached_tokens: u32,
    },
    /// `always-disagg-pd-decider`: every request (for tests and benchmarks).
    Always,
}

impl Decider {
    /// Whether a prompt of `prompt_tokens`, of which the decode pick holds `cached_tokens`, is
    /// prefilled remotely. As llm-d's: the prompt itself and its uncached part must both reach
    /// the threshold.
    pub fn disaggregate(&self, prompt_tokens: u32, cached_tokens: u32) -> bool {
        match *self {
            Decider::Always => true,
            Decider::PrefixBased { non_cached_tokens } => {
                non_cached_tokens > 0
                    && prompt_tokens >= non_cached_tokens
                    && prompt_tokens.saturating_sub(cached_tokens) >= non_cached_tokens
            }
        }
    }
}

/// The prefill pod of a disaggregated request.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefillPick {
    /// Prefill candidates in order of preference; the first goes in `x-prefiller-host-port`.
    pub ranked: Vec<Ranked>,
    /// Consecutive blocks from block 0 of the prompt the chosen prefill pod holds.
    pub matched_blocks: u32,
    /// What the prefill-only request costs it (one output token).
    pub cost: Cost,
    /// Its predicted prefill latency, when the prefill profile has a latency scorer.
    pub predicted: Option<Prediction>,
}

impl PrefillPick {
    /// The chosen prefill endpoint.
    pub fn primary(&self) -> Option<crate::pods::EndpointId> {
        self.ranked.first().map(|r| r.endpoint)
    }
}

/// What the profile handler did with one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum PdOutcome {
    /// The config has no P/D handler (or one without a prefill decider): one profile ran.
    #[default]
    Off,
    /// The decider kept the request on its decode pod.
    DecodeOnly,
    /// The decider asked for a remote prefill, but no prefill pod was eligible: served
    /// aggregated on the decode pod.
    NoPrefillEndpoint,
    /// Prefilled on [`PrefillPick`]'s pod, decoded on the decision's primary.
    Disaggregated(PrefillPick),
}

impl PdOutcome {
    /// The prefill pick, when disaggregated.
    pub fn prefill(&self) -> Option<&PrefillPick> {
        match self {
            PdOutcome::Disaggregated(p) => Some(p),
            _ => None,
        }
    }

    /// A stable, low-cardinality label for metrics (`decision`).
    pub fn label(&self) -> &'static str {
        match self {
            PdOutcome::Off => "off",
            PdOutcome::DecodeOnly => "decode_only",
            PdOutcome::NoPrefillEndpoint => "no_prefill_endpoint",
            PdOutcome::Disaggregated(_) => "prefill_decode",
        }
    }
}

/// What a disaggregated request costs its decode pod: the whole prompt arrives cached.
pub fn decode_cost(cost: Cost) -> Cost {
    Cost {
        cached_tokens: cost.prompt_tokens,
        ..cost
    }
}

/// What its prefill-only request costs the prefill pod, which holds `cached_tokens` of it.
pub fn prefill_cost(cost: Cost, cached_tokens: u32) -> Cost {
    Cost {
        prompt_tokens: cost.prompt_tokens,
        cached_tokens: cached_tokens.min(cost.prompt_tokens),
        output_tokens: 1,
    }
}

/// The request's predicted latency end to end: the prefill pod's time to its one token, then the
/// decode pod's first step with the prompt cached; tokens after at the decode pod's pace.
pub fn combined(prefill: &Prediction, decode: &Prediction) -> Prediction {
    Prediction {
        ttft_us: prefill.ttft_us + decode.ttft_us,
        tpot_us: decode.tpot_us,
        prefill_us: prefill.prefill_us,
        cost_us: prefill.cost_us + decode.cost_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_decider_needs_enough_uncached_tokens_and_zero_turns_it_off() {
        let d = Decider::PrefixBased {
            non_cached_tokens: 512,
        };
        assert!(d.disaggregate(4096, 0));
        assert!(d.disaggregate(4096, 4096 - 512), "at the threshold");
        assert!(!d.disaggregate(4096, 4096 - 511));
        assert!(!d.disaggregate(511, 0), "a short prompt stays");
        assert!(!d.disaggregate(100, 4096), "cached beyond the prompt");
        let off = Decider::PrefixBased {
            non_cached_tokens: 0,
        };
        assert!(!off.disaggregate(100_000, 0));
        assert!(Decider::Always.disaggregate(0, 0));
    }

    #[test]
    fn costs_move_the_prefill_and_keep_the_kv_on_the_decode_pod() {
        let c = Cost {
            prompt_tokens: 1000,
            cached_tokens: 200,
            output_tokens: 50,
        };
        // vLLM always computes one token itself.
        assert_eq!(decode_cost(c).uncached_tokens(), 1);
        assert_eq!(decode_cost(c).output_tokens, 50);
        let p = prefill_cost(c, 600);
        assert_eq!((p.uncached_tokens(), p.output_tokens), (400, 1));
        assert_eq!(prefill_cost(c, 5000).cached_tokens, 1000);
    }
}
