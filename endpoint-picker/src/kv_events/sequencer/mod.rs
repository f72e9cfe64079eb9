//! One endpoint's batch order: sequence checks, gaps, pod restarts, and the merge of a replay
//! with the live batches that keep arriving while it runs.
//!
//! Pure: events in (a batch, a connection change, a replay outcome, `now`), effects out through
//! [`Effects`] (apply, clear, ask for a replay, count). The rule it keeps: the index only holds
//! what a contiguous run of this endpoint's batches says. Any doubt (a hole that cannot be
//! filled, a sequence that went back, a replay that does not line up with what was applied)
//! clears the endpoint first. Applying a contiguous *suffix* of a pod's history to an empty
//! endpoint is safe: blocks whose parents came before the suffix are refused by the index,
//! removals of unknown blocks are no-ops.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kvpick_scheduler::EventsState;
use tokio::time::Instant;
use xxhash_rust::xxh3::xxh3_64;

use super::anchors::Anchor;
use super::batch::Batch;

/// Identifies a batch's payload without keeping it (a kept `Bytes` would pin the whole receive
/// buffer it was cut from).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Fingerprint(usize, u64);

impl Fingerprint {
    fn of(payload: &[u8]) -> Self {
        Self(payload.len(), xxh3_64(payload))
    }
}

/// Why an endpoint's blocks were dropped (a metric label).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reset {
    /// Batches were lost and no replay could fill the hole.
    Gap,
    /// The sequence went back: the pod restarted and its cache is gone.
    Restart,
    /// Our queue for the endpoint overflowed.
    Overflow,
    /// The replay meant to fill a hole failed.
    ReplayFailed,
    /// The pod's replay buffer no longer reaches the last batch applied.
    ReplayShort,
    /// The replay shows a different history than the one applied (the pod restarted).
    Incarnation,
    /// A batch did not decode, so its events are lost (decided by the worker, not here).
    DecodeError,
}

impl Reset {
    pub fn label(self) -> &'static str {
        match self {
            Reset::Gap => "gap",
            Reset::Restart => "restart",
            Reset::Overflow => "overflow",
            Reset::ReplayFailed => "replay_failed",
            Reset::ReplayShort => "replay_short",
            Reset::Incarnation => "incarnation",
            Reset::DecodeError => "decode_error",
        }
    }
}

/// What the sequencer noticed, for counters.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// A sequence number was skipped.
    Gap,
    /// The sequence number went back.
    Restart,
    /// A batch already applied (replay overlap, or the same batch twice).
    Duplicate,
}

/// A replay to start: every buffered batch from `from` on, tagged `id` so a late answer to an
/// abandoned request is recognised.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReplayRequest {
    pub id: u64,
    pub from: u64,
}

/// How a replay ended.
#[derive(Debug)]
pub(crate) enum ReplayOutcome {
    /// The batches up to the end marker, in the order sent.
    Done(Vec<Batch>),
    /// Timeout, connection failure, malformed reply or too many bytes.
    Failed,
}

/// What the sequencer asks of its endpoint.
pub(crate) trait Effects {
    /// Applies a batch to the index.
    fn apply(&mut self, batch: Batch);
    /// Drops every block of the endpoint.
    fn clear(&mut self, why: Reset);
    /// Starts a replay; its outcome comes back through [`Sequencer::on_replay`].
    fn replay(&mut self, request: ReplayRequest);
    /// Counts something noticed.
    fn note(&mut self, what: Note);
}

enum Phase {
    Streaming,
    /// A replay is out; live batches wait in `held` (by seq, first copy kept).
    Replaying {
        id: u64,
        /// The seq of the last batch applied, when the replay must first prove continuity.
        anchor: Option<u64>,
        held: BTreeMap<u64, Batch>,
        /// Payload bytes in `held`.
        bytes: usize,
    },
}

/// How much a replay may hold back.
#[derive(Copy, Clone, Debug)]
pub(crate) struct HoldLimits {
    pub batches: usize,
    pub bytes: usize,
}

/// One endpoint's ordering state.
pub(crate) struct Sequencer {
    can_replay: bool,
    cooldown: Duration,
    cooldown_until: Option<Instant>,
    hold: HoldLimits,
    /// Bind mode: no connection to watch, and silence means "publishes nothing".
    bind_mode: bool,
    last: Option<(u64, Fingerprint)>,
    /// A replay from 0 found nothing, so the pod's first batch is seq 0: a later first seq
    /// means the batches before it were lost (e.g. published before our subscription took).
    expect_zero: bool,
    connected: bool,
    confirmed: bool,
    /// The index holds a peer's view of the endpoint up to the anchor: trusted as the peer
    /// trusted it until the first replay says otherwise.
    restored: bool,
    heard: bool,
    phase: Phase,
    next_request: u64,
}

impl Sequencer {
    pub fn new(can_replay: bool, bind_mode: bool, hold: HoldLimits, cooldown: Duration) -> Self {
        Self {
            can_replay,
            cooldown,
            cooldown_until: None,
            hold,
            bind_mode,
            last: None,
            expect_zero: false,
            connected: bind_mode,
            confirmed: false,
            restored: false,
            heard: false,
            phase: Phase::Streaming,
            next_request: 0,
        }
    }

    /// The index already holds this endpoint's history up to `anchor` (restored from a peer):
    /// the next connection replays from it, and continuity is proven against its fingerprint
    /// before anything is applied (a pod that restarted or whose buffer moved past it resets).
    pub fn anchor(&mut self, anchor: Anchor) {
        self.last = Some((anchor.seq, Fingerprint(anchor.len as usize, anchor.hash)));
        self.restored = true;
    }

    /// The last batch applied, while the index holds a contiguous run ending there.
    pub fn last(&self) -> Option<Anchor> {
        self.last.map(|(seq, Fingerprint(len, hash))| Anchor {
            seq,
            len: len as u64,
            hash,
        })
    }

    /// Whether the index's picture of the endpoint can be trusted now.
    pub fn state(&self) -> EventsState {
        match self.phase {
            _ if self.restored => EventsState::Live,
            Phase::Replaying { .. } => EventsState::Stale,
            Phase::Streaming if !self.connected => EventsState::Stale,
            Phase::Streaming if self.confirmed => EventsState::Live,
            Phase::Streaming if self.bind_mode && !self.heard => EventsState::Absent,
            Phase::Streaming => EventsState::Stale,
        }
    }

    /// Live batches held while a replay runs.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        match &self.phase {
            Phase::Replaying { held, .. } => held.len(),
            Phase::Streaming => 0,
        }
    }

    /// A (new) connection to the publisher: batches may have been missed, and after a
    /// reconnection the pod may be a new process. With replay, ask for everything after the last
    /// batch applied (from 0 when nothing was: the warm start); without, the next batch decides.
    pub fn on_connected(&mut self, now: Instant, fx: &mut impl Effects) {
        self.connected = true;
        self.confirmed = false;
        if matches!(self.phase, Phase::Streaming) && self.replay_allowed(now) {
            let anchor = self.last.as_ref().map(|(seq, _)| *seq);
            self.begin_replay(anchor, BTreeMap::new(), fx);
        }
    }

    /// The connection dropped: nothing can be vouched for until the next one proves continuity.
    pub fn on_disconnected(&mut self) {
        self.connected = false;
        self.confirmed = false;
    }

    /// Our queue overflowed, so batches were dropped: start over.
    pub fn on_overflow(&mut self, now: Instant, fx: &mut impl Effects) {
        if matches!(self.phase, Phase::Replaying { .. }) {
            // Even the replay could not keep up: resolve gaps by resets for a while.
            self.cooldown_until = Some(now + self.cooldown);
        }
        self.reset(Reset::Overflow, fx);
        self.phase = Phase::Streaming;
        if self.replay_allowed(now) {
            self.begin_replay(None, BTreeMap::new(), fx);
        }
    }

    /// A live batch.
    pub fn on_batch(&mut self, batch: Batch, now: Instant, fx: &mut impl Effects) {
        self.heard = true;
        let Phase::Replaying { held, bytes, .. } = &mut self.phase else {
            return self.stream(batch, now, fx);
        };
        if let Some((&max, _)) = held.last_key_value()
            && batch.seq < max
            && held
                .get(&batch.seq)
                .is_none_or(|b| b.payload != batch.payload)
        {
            // The live stream went back while we were replaying: the pod restarted.
            fx.note(Note::Restart);
            return self.restart(batch, now, fx);
        }
        if held.contains_key(&batch.seq) {
            return fx.note(Note::Duplicate);
        }
        let size = batch.payload.len();
        if held.len() >= self.hold.batches || *bytes + size > self.hold.bytes {
            self.on_overflow(now, fx);
            return self.on_batch(batch, now, fx);
        }
        *bytes += size;
        held.insert(batch.seq, batch);
    }

    /// The outcome of replay `id` (answers to abandoned requests are ignored).
    pub fn on_replay(
        &mut self,
        id: u64,
        outcome: ReplayOutcome,
        now: Instant,
        fx: &mut impl Effects,
    ) {
        let Phase::Replaying { id: want, .. } = self.phase else {
            return;
        };
        if id != want {
            return;
        }
        self.restored = false;
        let Phase::Replaying { anchor, held, .. } =
            std::mem::replace(&mut self.phase, Phase::Streaming)
        else {
            return;
        };
        let batches = match outcome {
            ReplayOutcome::Done(batches) => batches,
            ReplayOutcome::Failed => {
                self.cooldown_until = Some(now + self.cooldown);
                if self.last.is_some() {
                    self.reset(Reset::ReplayFailed, fx);
                }
                return self.drain(held, &BTreeMap::new(), now, fx);
            }
        };
        let mut batches = batches.into_iter().peekable();
        let mut replayed = BTreeMap::new();
        if let Some(anchor) = anchor {
            let first = batches.peek().map(|b| (b.seq, &b.payload));
            let same = |p: &Bytes| self.last.is_some_and(|(_, l)| l == Fingerprint::of(p));
            match first {
                Some((seq, payload)) if seq == anchor && same(payload) => {
                    // Continuity proven: the pod is the one we followed.
                    replayed.insert(seq, payload.clone());
                    batches.next();
                }
                Some((seq, _)) if seq > anchor => self.reset(Reset::ReplayShort, fx),
                _ => {
                    // Nothing at or after the anchor, or a different batch there: a new process.
                    fx.note(Note::Restart);
                    self.reset(Reset::Incarnation, fx);
                    return self.begin_replay(None, held, fx);
                }
            }
        }
        self.expect_zero = anchor.is_none() && batches.peek().is_none() && held.is_empty();
        for batch in batches {
            replayed.insert(batch.seq, batch.payload.clone());
            self.on_batch(batch, now, fx);
        }
        self.drain(held, &replayed, now, fx);
        if matches!(self.phase, Phase::Streaming) {
            self.confirmed = self.connected;
        }
    }

    /// Feeds held live batches after a replay: those the replay already covered are duplicates
    /// when identical; an older batch that differs means the pod restarted meanwhile.
    fn drain(
        &mut self,
        held: BTreeMap<u64, Batch>,
        replayed: &BTreeMap<u64, Bytes>,
        now: Instant,
        fx: &mut impl Effects,
    ) {
        for batch in held.into_values() {
            let applied = matches!(self.phase, Phase::Streaming)
                && self.last.as_ref().is_some_and(|(s, _)| batch.seq <= *s);
            if applied && replayed.get(&batch.seq) == Some(&batch.payload) {
                fx.note(Note::Duplicate);
                continue;
            }
            self.on_batch(batch, now, fx);
        }
    }

    fn stream(&mut self, batch: Batch, now: Instant, fx: &mut impl Effects) {
        let Some((last, payload)) = &self.last else {
            if self.expect_zero && batch.seq > 0 && self.replay_allowed(now) {
                fx.note(Note::Gap);
                return self.begin_replay(None, BTreeMap::from([(batch.seq, batch)]), fx);
            }
            return self.apply(batch, fx);
        };
        let last = *last;
        if batch.seq == last.wrapping_add(1) {
            self.apply(batch, fx);
        } else if batch.seq == last && *payload == Fingerprint::of(&batch.payload) {
            fx.note(Note::Duplicate);
        } else if batch.seq <= last {
            fx.note(Note::Restart);
            self.restart(batch, now, fx);
        } else {
            fx.note(Note::Gap);
            if self.replay_allowed(now) {
                self.begin_replay(Some(last), BTreeMap::from([(batch.seq, batch)]), fx);
            } else {
                self.reset(Reset::Gap, fx);
                self.apply(batch, fx);
            }
        }
    }

    /// The pod restarted: its cache is gone. Start over from its new history.
    fn restart(&mut self, batch: Batch, now: Instant, fx: &mut impl Effects) {
        self.reset(Reset::Restart, fx);
        self.phase = Phase::Streaming;
        if batch.seq != 0 && self.replay_allowed(now) {
            self.begin_replay(None, BTreeMap::from([(batch.seq, batch)]), fx);
        } else {
            self.apply(batch, fx);
        }
    }

    fn apply(&mut self, batch: Batch, fx: &mut impl Effects) {
        self.expect_zero = false;
        self.restored = false;
        self.last = Some((batch.seq, Fingerprint::of(&batch.payload)));
        self.confirmed = self.connected;
        fx.apply(batch);
    }

    fn reset(&mut self, why: Reset, fx: &mut impl Effects) {
        self.last = None;
        self.restored = false;
        self.expect_zero = false;
        self.confirmed = false;
        fx.clear(why);
    }

    fn begin_replay(
        &mut self,
        anchor: Option<u64>,
        held: BTreeMap<u64, Batch>,
        fx: &mut impl Effects,
    ) {
        let id = self.next_request;
        self.next_request += 1;
        self.confirmed = false;
        let bytes = held.values().map(|b| b.payload.len()).sum();
        self.phase = Phase::Replaying {
            id,
            anchor,
            held,
            bytes,
        };
        fx.replay(ReplayRequest {
            id,
            from: anchor.unwrap_or(0),
        });
    }

    fn replay_allowed(&self, now: Instant) -> bool {
        self.can_replay && self.cooldown_until.is_none_or(|t| now >= t)
    }
}

#[cfg(test)]
mod tests;
