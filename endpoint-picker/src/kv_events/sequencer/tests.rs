use super::*;

#[derive(Debug, PartialEq)]
enum Fx {
    Apply(u64),
    Clear(Reset),
    Replay(u64, u64),
    Note(Note),
}

#[derive(Default)]
struct Rec(Vec<Fx>);

impl Effects for Rec {
    fn apply(&mut self, batch: Batch) {
        self.0.push(Fx::Apply(batch.seq));
    }
    fn clear(&mut self, why: Reset) {
        self.0.push(Fx::Clear(why));
    }
    fn replay(&mut self, r: ReplayRequest) {
        self.0.push(Fx::Replay(r.id, r.from));
    }
    fn note(&mut self, what: Note) {
        self.0.push(Fx::Note(what));
    }
}

impl Rec {
    fn take(&mut self) -> Vec<Fx> {
        std::mem::take(&mut self.0)
    }
}

fn b(seq: u64) -> Batch {
    tagged(seq, "a")
}

fn tagged(seq: u64, incarnation: &str) -> Batch {
    Batch::new(seq, Bytes::from(format!("{incarnation}{seq}")))
}

fn done(seqs: impl IntoIterator<Item = u64>) -> ReplayOutcome {
    ReplayOutcome::Done(seqs.into_iter().map(b).collect())
}

const COOL: Duration = Duration::from_secs(5);
const HOLD: HoldLimits = HoldLimits {
    batches: 8,
    bytes: 1 << 20,
};

fn connected(replay: bool) -> (Sequencer, Rec, Instant) {
    let now = Instant::now();
    let mut s = Sequencer::new(replay, false, HOLD, COOL);
    let mut fx = Rec::default();
    s.on_connected(now, &mut fx);
    (s, fx, now)
}

#[test]
fn in_order_duplicates_gaps_and_restarts_without_replay() {
    let (mut s, mut fx, now) = connected(false);
    assert_eq!(s.state(), EventsState::Stale);
    for seq in [4, 5, 5, 6] {
        s.on_batch(b(seq), now, &mut fx);
    }
    assert_eq!(s.state(), EventsState::Live);
    assert_eq!(
        fx.take(),
        [
            Fx::Apply(4),
            Fx::Apply(5),
            Fx::Note(Note::Duplicate),
            Fx::Apply(6)
        ]
    );
    s.on_batch(b(9), now, &mut fx);
    assert_eq!(
        fx.take(),
        [Fx::Note(Note::Gap), Fx::Clear(Reset::Gap), Fx::Apply(9)]
    );
    s.on_batch(b(0), now, &mut fx);
    assert_eq!(
        fx.take(),
        [
            Fx::Note(Note::Restart),
            Fx::Clear(Reset::Restart),
            Fx::Apply(0)
        ]
    );
    // A different batch under an already-seen number is a restart too.
    s.on_batch(tagged(0, "b"), now, &mut fx);
    assert_eq!(
        fx.take(),
        [
            Fx::Note(Note::Restart),
            Fx::Clear(Reset::Restart),
            Fx::Apply(0)
        ]
    );
}

#[test]
fn warm_start_replays_from_zero_and_merges_live_batches() {
    let (mut s, mut fx, now) = connected(true);
    assert_eq!(fx.take(), [Fx::Replay(0, 0)]);
    s.on_batch(b(5), now, &mut fx);
    s.on_batch(b(6), now, &mut fx);
    assert_eq!((s.state(), s.held()), (EventsState::Stale, 2));
    s.on_replay(0, done(0..=5), now, &mut fx);
    let mut want: Vec<Fx> = (0..=5).map(Fx::Apply).collect();
    want.extend([Fx::Note(Note::Duplicate), Fx::Apply(6)]);
    assert_eq!(fx.take(), want);
    assert_eq!(s.state(), EventsState::Live);
}

#[test]
fn gap_is_filled_by_a_replay_that_proves_continuity() {
    let (mut s, mut fx, now) = connected(true);
    s.on_replay(0, done(0..=3), now, &mut fx);
    fx.take();
    s.on_batch(b(6), now, &mut fx);
    s.on_batch(b(7), now, &mut fx);
    assert_eq!(fx.take(), [Fx::Note(Note::Gap), Fx::Replay(1, 3)]);
    s.on_replay(1, done(3..=6), now, &mut fx);
    assert_eq!(
        fx.take(),
        [
            Fx::Apply(4),
            Fx::Apply(5),
            Fx::Apply(6),
            Fx::Note(Note::Duplicate),
            Fx::Apply(7)
        ]
    );
    assert_eq!(s.state(), EventsState::Live);
}

#[test]
fn replay_that_no_longer_reaches_back_clears_then_applies_the_suffix() {
    let (mut s, mut fx, now) = connected(true);
    s.on_replay(0, done(0..=3), now, &mut fx);
    fx.take();
    s.on_batch(b(9), now, &mut fx);
    fx.take();
    s.on_replay(1, done(5..=9), now, &mut fx);
    let mut want = vec![Fx::Clear(Reset::ReplayShort)];
    want.extend((5..=9).map(Fx::Apply));
    want.push(Fx::Note(Note::Duplicate));
    assert_eq!(fx.take(), want);
}

#[test]
fn reconnection_to_a_restarted_pod_is_detected_by_the_replay() {
    let (mut s, mut fx, now) = connected(true);
    s.on_replay(0, done(0..=3), now, &mut fx);
    s.on_disconnected();
    assert_eq!(s.state(), EventsState::Stale);
    s.on_connected(now, &mut fx);
    fx.take();
    // Same number, different batch: another process.
    let other = ReplayOutcome::Done((0..=4).map(|q| tagged(q, "b")).collect());
    s.on_replay(
        1,
        ReplayOutcome::Done(vec![tagged(3, "b"), tagged(4, "b")]),
        now,
        &mut fx,
    );
    assert_eq!(
        fx.take(),
        [
            Fx::Note(Note::Restart),
            Fx::Clear(Reset::Incarnation),
            Fx::Replay(2, 0)
        ]
    );
    s.on_replay(2, other, now, &mut fx);
    assert_eq!(fx.take(), (0..=4).map(Fx::Apply).collect::<Vec<_>>());
    // Nothing at or after the anchor: also another process.
    s.on_disconnected();
    s.on_connected(now, &mut fx);
    fx.take();
    s.on_replay(3, done([]), now, &mut fx);
    assert_eq!(
        fx.take(),
        [
            Fx::Note(Note::Restart),
            Fx::Clear(Reset::Incarnation),
            Fx::Replay(4, 0)
        ]
    );
}

#[test]
fn failed_replay_clears_and_cools_down() {
    let (mut s, mut fx, now) = connected(true);
    s.on_replay(0, done(0..=3), now, &mut fx);
    s.on_batch(b(6), now, &mut fx);
    fx.take();
    s.on_replay(1, ReplayOutcome::Failed, now, &mut fx);
    assert_eq!(fx.take(), [Fx::Clear(Reset::ReplayFailed), Fx::Apply(6)]);
    s.on_batch(b(8), now + Duration::from_secs(1), &mut fx);
    assert_eq!(
        fx.take(),
        [Fx::Note(Note::Gap), Fx::Clear(Reset::Gap), Fx::Apply(8)]
    );
    s.on_batch(b(10), now + COOL, &mut fx);
    assert_eq!(fx.take(), [Fx::Note(Note::Gap), Fx::Replay(2, 8)]);
    // The late answer to an abandoned request changes nothing.
    s.on_replay(1, done(0..=10), now + COOL, &mut fx);
    assert!(fx.take().is_empty());
}

#[test]
fn restart_during_a_replay_abandons_it() {
    let (mut s, mut fx, now) = connected(true);
    s.on_batch(b(10), now, &mut fx);
    s.on_batch(b(11), now, &mut fx);
    fx.take();
    s.on_batch(tagged(0, "b"), now, &mut fx);
    assert_eq!(
        fx.take(),
        [
            Fx::Note(Note::Restart),
            Fx::Clear(Reset::Restart),
            Fx::Apply(0)
        ]
    );
    s.on_replay(0, done(0..=11), now, &mut fx);
    assert!(fx.take().is_empty());
    assert_eq!(s.state(), EventsState::Live);
}

#[test]
fn restarted_pod_seen_only_after_a_replay_is_not_taken_for_a_duplicate() {
    let (mut s, mut fx, now) = connected(true);
    s.on_batch(tagged(0, "new"), now, &mut fx);
    fx.take();
    s.on_replay(0, done(0..=5), now, &mut fx);
    let mut want: Vec<Fx> = (0..=5).map(Fx::Apply).collect();
    want.extend([
        Fx::Note(Note::Restart),
        Fx::Clear(Reset::Restart),
        Fx::Apply(0),
    ]);
    assert_eq!(fx.take(), want);
}

#[test]
fn held_overflow_resets_and_stops_replaying_for_a_while() {
    let (mut s, mut fx, now) = connected(true);
    for seq in 1..=9 {
        s.on_batch(b(seq), now, &mut fx);
    }
    assert_eq!(
        fx.take(),
        [Fx::Replay(0, 0), Fx::Clear(Reset::Overflow), Fx::Apply(9)]
    );
    s.on_overflow(now, &mut fx);
    assert_eq!(fx.take(), [Fx::Clear(Reset::Overflow)]);
    s.on_overflow(now + COOL, &mut fx);
    assert_eq!(fx.take(), [Fx::Clear(Reset::Overflow), Fx::Replay(1, 0)]);
}

#[test]
fn bind_mode_is_absent_until_heard() {
    let now = Instant::now();
    let mut s = Sequencer::new(false, true, HOLD, COOL);
    let mut fx = Rec::default();
    assert_eq!(s.state(), EventsState::Absent);
    s.on_batch(b(3), now, &mut fx);
    assert_eq!(s.state(), EventsState::Live);
}

#[test]
fn batches_lost_before_the_first_one_seen_are_replayed_when_the_pod_had_none_buffered() {
    let (mut s, mut fx, now) = connected(true);
    s.on_replay(0, done([]), now, &mut fx);
    assert_eq!(s.state(), EventsState::Live);
    fx.take();
    s.on_batch(b(3), now, &mut fx);
    assert_eq!(fx.take(), [Fx::Note(Note::Gap), Fx::Replay(1, 0)]);
    // The pod buffers nothing after all: take what comes.
    s.on_replay(1, done([]), now, &mut fx);
    assert_eq!(fx.take(), [Fx::Apply(3)]);
}

#[test]
fn held_bytes_are_bounded_too() {
    let now = Instant::now();
    let hold = HoldLimits {
        batches: 100,
        bytes: 10,
    };
    let mut s = Sequencer::new(true, false, hold, COOL);
    let mut fx = Rec::default();
    s.on_connected(now, &mut fx);
    s.on_batch(Batch::new(1, Bytes::from(vec![0u8; 6])), now, &mut fx);
    assert_eq!(s.held(), 1);
    s.on_batch(Batch::new(2, Bytes::from(vec![0u8; 6])), now, &mut fx);
    assert_eq!(
        fx.take(),
        [Fx::Replay(0, 0), Fx::Clear(Reset::Overflow), Fx::Apply(2)]
    );
}

fn anchored(seq: u64) -> (Sequencer, Rec, Instant) {
    let now = Instant::now();
    let mut s = Sequencer::new(true, false, HOLD, COOL);
    let a = b(seq);
    s.anchor(Anchor {
        seq,
        len: a.payload.len() as u64,
        hash: xxh3_64(&a.payload),
    });
    (s, Rec::default(), now)
}

#[test]
fn a_restored_endpoint_resumes_from_its_anchor_once_continuity_is_proven() {
    let (mut s, mut fx, now) = anchored(7);
    assert_eq!(
        s.state(),
        EventsState::Live,
        "the peer's view, until a replay says otherwise"
    );
    assert_eq!(s.last().map(|a| a.seq), Some(7));
    s.on_connected(now, &mut fx);
    assert_eq!(fx.take(), [Fx::Replay(0, 7)]);
    s.on_batch(b(10), now, &mut fx);
    s.on_replay(0, done(7..=9), now, &mut fx);
    // Batch 7 is the anchor (already in the index): only what came after it is applied.
    assert_eq!(fx.take(), [Fx::Apply(8), Fx::Apply(9), Fx::Apply(10)]);
    assert_eq!(s.state(), EventsState::Live);
}

#[test]
fn a_restored_endpoint_whose_pod_moved_on_starts_over() {
    // The pod's buffer no longer reaches the anchor: what was restored cannot be vouched for.
    let (mut s, mut fx, now) = anchored(7);
    s.on_connected(now, &mut fx);
    s.on_replay(0, done(9..=10), now, &mut fx);
    assert_eq!(
        fx.take(),
        [
            Fx::Replay(0, 7),
            Fx::Clear(Reset::ReplayShort),
            Fx::Apply(9),
            Fx::Apply(10)
        ]
    );
    // A different batch at the anchor: the pod restarted since the peer's dump.
    let (mut s, mut fx, now) = anchored(7);
    s.on_connected(now, &mut fx);
    s.on_replay(
        0,
        ReplayOutcome::Done(vec![tagged(7, "other")]),
        now,
        &mut fx,
    );
    let fx = fx.take();
    assert!(fx.contains(&Fx::Clear(Reset::Incarnation)), "{fx:?}");
    assert_ne!(s.state(), EventsState::Live);
}
