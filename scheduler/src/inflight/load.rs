//! One endpoint's load as the accounting sees it: this replica's reservations, its peers'
//! reports, and what the last scrape shows beyond both.

use std::time::Duration;

use super::State;
use crate::pods::EndpointId;
use crate::time::Timestamp;

/// One endpoint's load as the accounting sees it at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EndpointLoad {
    /// Reserved requests not yet past their first token (this replica's and its peers').
    pub prefill_requests: u32,
    /// Their uncached prompt tokens, summed.
    pub prefill_tokens: u64,
    /// Uncached tokens of the oldest of this replica's (the one the engine is most likely
    /// computing; peers' queued prefill gets no credit for progress).
    pub head_tokens: u64,
    /// Attention pairs of the oldest of them ([`super::Cost::attention_pairs`]).
    pub head_pairs: u64,
    /// How long the oldest has been the one computed (since it was picked, or since the previous
    /// one's first token).
    pub head_elapsed: Duration,
    /// Reserved requests decoding.
    pub decode_requests: u32,
    /// Their mean KV context (prompt + half the output), summed.
    pub decode_context: u64,
    /// KV tokens all reservations add at their peak (uncached prompt + output), summed.
    pub kv_tokens: u64,
    /// Waiting requests the last scrape showed beyond the reservations (other pickers' traffic).
    pub external_waiting: u32,
    /// Running requests the last scrape showed beyond the reservations.
    pub external_running: u32,
    /// Mean uncached prompt tokens of recent reservations anywhere: the guess for external work.
    pub typical_uncached: u64,
    /// Mean context of recent reservations anywhere.
    pub typical_context: u64,
    /// Picks per second over the whole pool (this replica's and its peers'), averaged over the
    /// last [`RATE_WINDOW`].
    pub pick_rate: f64,
}

/// The time constant of the pick-rate average: long enough that a burst reads as a burst (a
/// few picks over the window), not as a sustained rate.
pub const RATE_WINDOW: Duration = Duration::from_secs(30);

impl State {
    pub(super) fn load(&self, endpoint: EndpointId, now: Timestamp) -> EndpointLoad {
        let peers = self.peers.on(endpoint);
        let mut load = EndpointLoad {
            prefill_requests: peers.prefill_requests,
            prefill_tokens: peers.prefill_tokens,
            decode_requests: peers.decode_requests,
            decode_context: peers.decode_context,
            kv_tokens: peers.kv_tokens,
            typical_uncached: self.typical_uncached.round() as u64,
            typical_context: self.typical_context.round() as u64,
            pick_rate: self.rate_now(now) + self.peers.rate(),
            ..EndpointLoad::default()
        };
        let Some(e) = self.endpoints.get(endpoint.index()) else {
            return load;
        };
        let head = e
            .prefill
            .first_key_value()
            .map_or((0, 0), |(_, &(t, p))| (u64::from(t), p));
        load.prefill_requests += e.prefill.len() as u32;
        load.prefill_tokens += e.prefill_tokens;
        load.head_tokens = head.0;
        load.head_pairs = head.1;
        load.head_elapsed = now.saturating_since(e.head_since);
        load.decode_requests += e.decode_requests;
        load.decode_context += e.decode_context;
        load.kv_tokens += e.kv_tokens;
        load.external_waiting = e.external_waiting;
        load.external_running = e.external_running;
        load
    }
}
