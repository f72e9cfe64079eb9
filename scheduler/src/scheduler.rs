//! `Scheduler::pick`: one request, its candidates and `now` in; an ordered decision out.
//!
//! PROVISIONAL: fixes the public API (request, candidate, decision). The plugin pipeline (filters,
//! weighted scorers, pickers, config) replaces the body of `pick`.

use std::sync::Arc;

use crate::error::Error;
use crate::index::{KvIndex, PrefixMatches};
use crate::keys::{Partition, block_keys};
use crate::pods::{Endpoint, EndpointId, EndpointSet, PodSignals};
use crate::time::Timestamp;

/// The prompt as the caller could read it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Prompt<'a> {
    /// Token ids, exactly as the pod will see them (token-array prompts, or tokenized text).
    Tokens(&'a [u32]),
    /// Text that could not be tokenized; only the approximate prefix scorer can use it.
    Text(&'a str),
    /// Nothing to match on (e.g. a headers-only request).
    Empty,
}

/// What the scheduler needs to know about one request.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The `model` field: a base model, or a LoRA adapter served on top of one.
    pub model: &'a str,
    /// vLLM's `cache_salt`, which partitions the prefix cache.
    pub cache_salt: Option<&'a str>,
    /// The prompt.
    pub prompt: Prompt<'a>,
    /// A session id for session affinity (`x-session-token` / `x-session-id`).
    pub session: Option<&'a str>,
    /// The proxy's subset hint, resolved to endpoint ids: pick only from it when present.
    pub subset: Option<&'a EndpointSet>,
}

impl<'a> Request<'a> {
    /// A request for `model` with `prompt` and nothing else set.
    pub fn new(model: &'a str, prompt: Prompt<'a>) -> Self {
        Self {
            model,
            cache_salt: None,
            prompt,
            session: None,
            subset: None,
        }
    }

    /// The cache partition the request's blocks live in.
    pub fn partition(&self) -> Partition<'a> {
        Partition {
            model: self.model,
            cache_salt: self.cache_salt,
        }
    }
}

/// Whether an endpoint's KV events can be trusted for precise prefix scoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EventsState {
    /// Events flow and the index is in sync with the pod.
    #[default]
    Live,
    /// The subscriber fell behind or lost events and is resynchronising.
    Stale,
    /// The endpoint publishes no KV events.
    Absent,
}

/// One endpoint the request may go to, with what is known of it now.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// Who it is.
    pub endpoint: &'a Endpoint,
    /// Its latest scraped signals.
    pub signals: &'a PodSignals,
    /// Whether its KV events are trustworthy.
    pub events: EventsState,
}

/// One ranked endpoint of a decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Its weighted total score.
    pub score: f64,
    /// Its score from each scorer, in the order of [`Scheduler::scorer_names`].
    pub scores: Vec<f64>,
}

/// Where to send a request, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Endpoints in order of preference: the first is the primary, the rest are fallbacks.
    pub ranked: Vec<Ranked>,
    /// Blocks of the prompt the primary holds.
    pub matched_blocks: u32,
    /// Full blocks in the prompt.
    pub total_blocks: u32,
}

impl Decision {
    /// The primary endpoint.
    pub fn primary(&self) -> Option<EndpointId> {
        self.ranked.first().map(|r| r.endpoint)
    }
}

/// The scheduling pipeline, shared by every request.
#[derive(Debug)]
pub struct Scheduler {
    index: Arc<KvIndex>,
    scorer_names: Vec<Arc<str>>,
}

impl Scheduler {
    /// A scheduler reading prefixes from `index`.
    pub fn new(index: Arc<KvIndex>) -> Self {
        Self {
            index,
            scorer_names: vec!["prefix".into(), "queue".into()],
        }
    }

    /// The index it reads.
    pub fn index(&self) -> &Arc<KvIndex> {
        &self.index
    }

    /// Names of the scorers, in the order of [`Ranked::scores`].
    pub fn scorer_names(&self) -> &[Arc<str>] {
        &self.scorer_names
    }

    /// Ranks the eligible candidates for `request`.
    pub fn pick(
        &self,
        request: &Request<'_>,
        candidates: &[Candidate<'_>],
        _now: Timestamp,
    ) -> Result<Decision, Error> {
        let eligible: Vec<&Candidate<'_>> = candidates
            .iter()
            .filter(|c| request.subset.is_none_or(|s| s.contains(c.endpoint.id)))
            .collect();
        if eligible.is_empty() {
            return Err(Error::NoEndpoint("no candidate is eligible"));
        }
        let mut matches = PrefixMatches::default();
        if let Prompt::Tokens(tokens) = request.prompt {
            let keys: Vec<_> =
                block_keys(request.partition().root(), tokens, self.index.block_size()).collect();
            let set: EndpointSet = eligible.iter().map(|c| c.endpoint.id).collect();
            self.index.lookup(&keys, &set, &mut matches);
        }
        let total = matches.total_blocks.max(1) as f64;
        let max_waiting = eligible
            .iter()
            .map(|c| c.signals.waiting)
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let mut ranked: Vec<Ranked> = eligible
            .iter()
            .map(|c| {
                let prefix = matches
                    .get(c.endpoint.id)
                    .map_or(0.0, |m| m.weighted as f64 / total);
                let queue = 1.0 - c.signals.waiting as f64 / max_waiting;
                Ranked {
                    endpoint: c.endpoint.id,
                    score: 2.0 * prefix + queue,
                    scores: vec![prefix, queue],
                }
            })
            .collect();
        ranked.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.endpoint.cmp(&b.endpoint))
        });
        let matched_blocks = ranked
            .first()
            .and_then(|r| matches.get(r.endpoint))
            .map_or(0, |m| m.blocks);
        Ok(Decision {
            ranked,
            matched_blocks,
            total_blocks: matches.total_blocks,
        })
    }
}
