//! What a request asks for and who could serve it: the inputs of [`crate::Scheduler::pick`].

use std::time::Duration;

use crate::keys::Partition;
use crate::pods::{Endpoint, EndpointSet, PodSignals};

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
///
/// `S` is how the proxy's subset hint is given: endpoint ids ([`EndpointSet`], what
/// [`crate::Scheduler::pick`] takes), or the caller's own addresses until it resolves them
/// ([`Request::with_subset`]).
#[derive(Debug)]
pub struct Request<'a, S: ?Sized = EndpointSet> {
    /// The `model` field: a base model, or a LoRA adapter served on top of one.
    pub model: &'a str,
    /// vLLM's `cache_salt`, which partitions the prefix cache.
    pub cache_salt: Option<&'a str>,
    /// The prompt.
    pub prompt: Prompt<'a>,
    /// A session id for session affinity (`x-session-token` / `x-session-id`).
    pub session: Option<&'a str>,
    /// The proxy's subset hint: pick only from it when present.
    pub subset: Option<&'a S>,
    /// `max_tokens` (or `max_completion_tokens`): what it may generate, for the latency model.
    pub max_tokens: Option<u32>,
    /// Latency objectives from its headers (`x-slo-ttft-ms`, `x-slo-tpot-ms`, llm-d's names).
    pub slo: Slo,
    /// Its InferenceObjective name (`x-gateway-inference-objective`), for per-objective SLOs.
    pub objective: Option<&'a str>,
    /// Its priority (negative: sheddable), for what to do when no endpoint is predicted to meet
    /// its objectives ([`crate::SloVerdict::action`]).
    pub priority: i32,
}

/// Latency objectives of one request; unset ones fall back to the config's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slo {
    /// Time to first token.
    pub ttft: Option<Duration>,
    /// Time per output token.
    pub tpot: Option<Duration>,
}

impl Slo {
    /// Longest objective accepted from a request, in ms (an hour).
    pub const MAX_MS: u64 = 3_600_000;

    /// One objective given in whole milliseconds, as the request's headers and traces give it:
    /// `None` unless 1..=[`Slo::MAX_MS`].
    pub fn objective_ms(ms: u64) -> Option<Duration> {
        (1..=Self::MAX_MS)
            .contains(&ms)
            .then(|| Duration::from_millis(ms))
    }

    /// Each objective of `self`, or `fallback`'s where `self` sets none.
    pub fn or(self, fallback: Slo) -> Slo {
        Slo {
            ttft: self.ttft.or(fallback.ttft),
            tpot: self.tpot.or(fallback.tpot),
        }
    }

    /// Whether no objective is set.
    pub fn is_empty(&self) -> bool {
        self.ttft.is_none() && self.tpot.is_none()
    }
}

// By hand: derived impls would require `S: Clone`, which an unsized `S` (`[SocketAddr]`) is not.
impl<S: ?Sized> Clone for Request<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: ?Sized> Copy for Request<'_, S> {}

impl<'a, S: ?Sized> Request<'a, S> {
    /// A request for `model` with `prompt` and nothing else set.
    pub fn new(model: &'a str, prompt: Prompt<'a>) -> Self {
        Self {
            model,
            cache_salt: None,
            prompt,
            session: None,
            subset: None,
            max_tokens: None,
            slo: Slo::default(),
            objective: None,
            priority: 0,
        }
    }

    /// The same request with its subset hint given as `subset` (e.g. resolved to endpoint ids).
    pub fn with_subset<T: ?Sized>(self, subset: Option<&'a T>) -> Request<'a, T> {
        Request {
            model: self.model,
            cache_salt: self.cache_salt,
            prompt: self.prompt,
            session: self.session,
            subset,
            max_tokens: self.max_tokens,
            slo: self.slo,
            objective: self.objective,
            priority: self.priority,
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
