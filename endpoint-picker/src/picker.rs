//! From a request to a destination: candidates from the pool view, then [`Scheduler::pick`].
//!
//! Candidate selection, in order: the proxy's subset hint (only those addresses; none known →
//! refuse), the model (endpoints serving it as base model or loaded LoRA adapter; if none does,
//! every endpoint, since vLLM loads adapters on demand), and liveness (endpoints with fresh
//! signals; if none is fresh, all of them rather than none, since a broken metrics port does not
//! mean a broken serving port).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kvpick_scheduler::{
    Candidate, Decision, EndpointSet, PodSignals, Prompt, Request, Scheduler, Timestamp,
};

use crate::clock::Clock;
use crate::error::Error;
use crate::pool::{Member, Pool};

/// How the picker turns a decision into a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickerConfig {
    /// Fallback endpoints listed after the primary.
    pub fallbacks: usize,
    /// Signals older than this mark an endpoint stale.
    pub staleness: Duration,
    /// Put each candidate's scores in the dynamic metadata.
    pub emit_scores: bool,
}

impl Default for PickerConfig {
    fn default() -> Self {
        Self {
            fallbacks: 0,
            staleness: Duration::from_secs(2),
            emit_scores: false,
        }
    }
}

/// One request as the picker needs it.
#[derive(Clone, Copy, Debug)]
pub struct RouteRequest<'a> {
    /// The `model` field (empty for headers-only requests: any model).
    pub model: &'a str,
    /// vLLM's `cache_salt`.
    pub cache_salt: Option<&'a str>,
    /// The prompt.
    pub prompt: Prompt<'a>,
    /// Session id for affinity.
    pub session: Option<&'a str>,
    /// The proxy's subset hint.
    pub subset: Option<&'a [SocketAddr]>,
}

/// One candidate's scores, for `--emit-scores` and the query API.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// The endpoint.
    pub address: SocketAddr,
    /// Weighted total.
    pub score: f64,
    /// Per scorer, in the order of [`Scheduler::scorer_names`].
    pub scores: Vec<f64>,
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    /// `ip:port` of the primary, then fallbacks, comma-separated.
    pub destination: String,
    /// The primary.
    pub primary: SocketAddr,
    /// Blocks of the prompt the primary holds.
    pub matched_blocks: u32,
    /// Full blocks in the prompt.
    pub total_blocks: u32,
    /// Every eligible candidate's scores, best first.
    pub scored: Vec<Scored>,
}

/// The request-path glue between the pool and the scheduler. Shared by all streams.
#[derive(Debug)]
pub struct Picker {
    scheduler: Arc<Scheduler>,
    pool: Arc<Pool>,
    clock: Clock,
    config: PickerConfig,
}

impl Picker {
    /// A picker over `pool` deciding with `scheduler`.
    pub fn new(
        scheduler: Arc<Scheduler>,
        pool: Arc<Pool>,
        clock: Clock,
        config: PickerConfig,
    ) -> Self {
        Self {
            scheduler,
            pool,
            clock,
            config,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &PickerConfig {
        &self.config
    }

    /// The scheduler it decides with.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// The pool it picks from.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Ranks the eligible endpoints for `req` and returns the full decision, mapped to addresses.
    pub fn rank(&self, req: &RouteRequest<'_>) -> Result<(Decision, Vec<SocketAddr>), Error> {
        let view = self.pool.view();
        if view.members.is_empty() {
            return Err(Error::NoEndpoint("no endpoints discovered".into()));
        }
        let now = self.clock.now();
        let mut chosen: Vec<(&Member, Option<Arc<PodSignals>>)> = view
            .members
            .iter()
            .filter(|m| req.subset.is_none_or(|s| s.contains(&m.endpoint.address)))
            .map(|m| (m, m.live.signals()))
            .collect();
        if chosen.is_empty() {
            return Err(Error::NoEndpoint(
                "no known endpoint is in the subset hint".into(),
            ));
        }
        if !req.model.is_empty()
            && chosen
                .iter()
                .any(|(m, s)| serves(m, s.as_deref(), req.model))
        {
            chosen.retain(|(m, s)| serves(m, s.as_deref(), req.model));
        }
        if chosen
            .iter()
            .any(|(_, s)| fresh(s.as_deref(), now, self.config.staleness))
        {
            chosen.retain(|(_, s)| fresh(s.as_deref(), now, self.config.staleness));
        }
        let idle = PodSignals::idle(now);
        let candidates: Vec<Candidate<'_>> = chosen
            .iter()
            .map(|(m, s)| Candidate {
                endpoint: &m.endpoint,
                signals: s.as_deref().unwrap_or(&idle),
                events: m.live.events(),
            })
            .collect();
        let subset: Option<EndpointSet> = req
            .subset
            .map(|_| candidates.iter().map(|c| c.endpoint.id).collect());
        let request = Request {
            model: req.model,
            cache_salt: req.cache_salt,
            prompt: req.prompt,
            session: req.session,
            subset: subset.as_ref(),
        };
        let decision = self.scheduler.pick(&request, &candidates, now)?;
        let addresses = decision
            .ranked
            .iter()
            .filter_map(|r| view.by_id(r.endpoint).map(|m| m.endpoint.address))
            .collect();
        Ok((decision, addresses))
    }

    /// Picks the destination for `req`: the primary and up to `fallbacks` more.
    pub fn route(&self, req: &RouteRequest<'_>) -> Result<Routing, Error> {
        let (decision, addresses) = self.rank(req)?;
        let Some(&primary) = addresses.first() else {
            return Err(Error::NoEndpoint("no candidate is eligible".into()));
        };
        let mut destination = String::with_capacity(22 * (1 + self.config.fallbacks));
        for (i, a) in addresses.iter().take(1 + self.config.fallbacks).enumerate() {
            if i > 0 {
                destination.push(',');
            }
            // Writing to a String cannot fail.
            let _ = std::fmt::Write::write_fmt(&mut destination, format_args!("{a}"));
        }
        let scored = if self.config.emit_scores {
            decision
                .ranked
                .iter()
                .zip(&addresses)
                .map(|(r, &address)| Scored {
                    address,
                    score: r.score,
                    scores: r.scores.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Routing {
            destination,
            primary,
            matched_blocks: decision.matched_blocks,
            total_blocks: decision.total_blocks,
            scored,
        })
    }
}

fn serves(m: &Member, signals: Option<&PodSignals>, model: &str) -> bool {
    &*m.endpoint.model == model || signals.is_some_and(|s| s.lora.has(model))
}

fn fresh(signals: Option<&PodSignals>, now: Timestamp, threshold: Duration) -> bool {
    signals.is_some_and(|s| s.age(now) <= threshold)
}
