//! `session-affinity-scorer`: send a session back to the endpoint that served it last.
//!
//! A multi-turn conversation re-sends its history every turn; the endpoint that served the last
//! turn holds it. This matters most where prefix scoring is blind (no KV events, text prompts).
//! llm-d's scorer of the same name round-trips the endpoint through a response header; kvpick
//! remembers it instead, in a bounded LRU of session → endpoint keyed by a 64-bit hash of the
//! session id, so memory is `capacity` × a few dozen bytes however long the ids are. The hash is
//! keyed by a per-process secret (SipHash, [`BuildKeyHasher`]): session ids come from clients, and
//! with an unkeyed hash a client could craft an id that collides with another tenant's and
//! overwrite where that tenant's session goes.

use std::collections::HashMap;
use std::hash::BuildHasher;

use parking_lot::RwLock;

use super::{ScoreContext, Scorer};
use crate::lru::{BuildKeyHasher, LruList, LruSlab};
use crate::pods::EndpointId;

/// Tunables of [`SessionAffinity`].
#[derive(Clone, Debug, PartialEq)]
pub struct SessionAffinityParams {
    /// Sessions remembered (`capacity`, default 65,536); the least recently routed go first.
    pub capacity: usize,
}

impl Default for SessionAffinityParams {
    fn default() -> Self {
        Self { capacity: 1 << 16 }
    }
}

#[derive(Debug, Default)]
struct Sessions {
    slab: LruSlab<(u64, EndpointId)>,
    recency: LruList,
    by_session: HashMap<u64, u32, BuildKeyHasher>,
}

/// Scores 1 for the endpoint that last served the request's session; see the module docs.
#[derive(Debug)]
pub struct SessionAffinity {
    capacity: usize,
    /// Keys the session-id hash; drawn per process.
    ids: BuildKeyHasher,
    sessions: RwLock<Sessions>,
}

impl SessionAffinity {
    /// A scorer remembering up to `params.capacity` sessions.
    pub fn new(params: SessionAffinityParams) -> Self {
        Self {
            capacity: params.capacity.max(1),
            ids: BuildKeyHasher::default(),
            sessions: RwLock::default(),
        }
    }

    /// Sessions remembered now.
    pub fn len(&self) -> usize {
        self.sessions.read().slab.len()
    }

    /// Whether no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Scorer for SessionAffinity {
    fn score(&self, ctx: &ScoreContext<'_, '_>, out: &mut [f64]) {
        out.fill(0.0);
        let Some(session) = ctx.request.session else {
            return;
        };
        let sessions = self.sessions.read();
        if let Some(&at) = sessions.by_session.get(&self.ids.hash_one(session))
            && let Some(i) = ctx.position(sessions.slab.get(at).1)
        {
            out[i] = 1.0;
        }
    }

    fn observe(&self, ctx: &ScoreContext<'_, '_>, chosen: EndpointId) {
        let Some(session) = ctx.request.session else {
            return;
        };
        let hash = self.ids.hash_one(session);
        let mut guard = self.sessions.write();
        let Sessions {
            slab,
            recency,
            by_session,
        } = &mut *guard;
        if let Some(&at) = by_session.get(&hash) {
            slab.get_mut(at).1 = chosen;
            slab.touch(recency, at);
            return;
        }
        while recency.len() >= self.capacity {
            let Some(old) = slab.back(recency) else { break };
            slab.remove(recency, old);
            by_session.remove(&slab.get(old).0);
        }
        if let Some(at) = slab.push_front(recency, (hash, chosen)) {
            by_session.insert(hash, at);
        }
    }

    fn forget(&self, endpoint: EndpointId) {
        let mut guard = self.sessions.write();
        let Sessions {
            slab,
            recency,
            by_session,
        } = &mut *guard;
        by_session.retain(|_, at| {
            let keep = slab.get(*at).1 != endpoint;
            if !keep {
                slab.remove(recency, *at);
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::endpoint;
    use super::super::{ScoreContext, positions_of};
    use super::*;
    use crate::index::PrefixMatches;
    use crate::keys::BlockSize;
    use crate::pods::{Endpoint, PodSignals};
    use crate::request::{Candidate, EventsState, Prompt, Request};
    use crate::time::Timestamp;

    fn with_ctx<R>(
        eps: &[Endpoint],
        session: Option<&str>,
        f: impl FnOnce(&ScoreContext<'_, '_>) -> R,
    ) -> R {
        let signals = PodSignals::idle(Timestamp::ZERO);
        let candidates: Vec<_> = eps
            .iter()
            .map(|endpoint| Candidate {
                endpoint,
                signals: &signals,
                events: EventsState::Live,
            })
            .collect();
        let mut positions = Vec::new();
        positions_of(&candidates, &mut positions);
        let mut req = Request::new("m", Prompt::Empty);
        req.session = session;
        let matches = PrefixMatches::default();
        let ctx = ScoreContext {
            request: &req,
            candidates: &candidates,
            keys: &[],
            block_size: BlockSize::DEFAULT,
            matches: &matches,
            looked_up: true,
            costs: &[],
            predictions: &[],
            positions: &positions,
            now: Timestamp::ZERO,
        };
        f(&ctx)
    }

    fn scores(s: &SessionAffinity, eps: &[Endpoint], session: Option<&str>) -> Vec<f64> {
        with_ctx(eps, session, |ctx| {
            let mut out = vec![f64::NAN; eps.len()];
            s.score(ctx, &mut out);
            out
        })
    }

    #[test]
    fn the_last_endpoint_of_the_session_scores_one() {
        let eps: Vec<_> = (0..3).map(endpoint).collect();
        let s = SessionAffinity::new(SessionAffinityParams::default());
        assert_eq!(scores(&s, &eps, Some("a")), [0.0; 3]);
        with_ctx(&eps, Some("a"), |ctx| s.observe(ctx, eps[1].id));
        assert_eq!(scores(&s, &eps, Some("a")), [0.0, 1.0, 0.0]);
        assert_eq!(scores(&s, &eps, Some("b")), [0.0; 3]);
        assert_eq!(scores(&s, &eps, None), [0.0; 3]);
        with_ctx(&eps, Some("a"), |ctx| s.observe(ctx, eps[2].id));
        assert_eq!(scores(&s, &eps, Some("a")), [0.0, 0.0, 1.0]);
        assert_eq!(s.len(), 1);
        s.forget(eps[2].id);
        assert_eq!(scores(&s, &eps, Some("a")), [0.0; 3]);
        assert!(s.is_empty());
    }

    #[test]
    fn capacity_evicts_the_least_recently_routed_session() {
        let eps: Vec<_> = (0..2).map(endpoint).collect();
        let s = SessionAffinity::new(SessionAffinityParams { capacity: 2 });
        for name in ["a", "b"] {
            with_ctx(&eps, Some(name), |ctx| s.observe(ctx, eps[0].id));
        }
        with_ctx(&eps, Some("a"), |ctx| s.observe(ctx, eps[1].id));
        with_ctx(&eps, Some("c"), |ctx| s.observe(ctx, eps[0].id));
        assert_eq!(s.len(), 2);
        assert_eq!(scores(&s, &eps, Some("b")), [0.0, 0.0], "b was evicted");
        assert_eq!(scores(&s, &eps, Some("a")), [0.0, 1.0]);
        assert_eq!(scores(&s, &eps, Some("c")), [1.0, 0.0]);
    }
}
