//! From a request to a destination: candidates from the pool view, then [`Scheduler::pick`].
//!
//! The router only turns the pool into candidates: the proxy's subset hint (addresses) becomes an
//! [`EndpointSet`], and an endpoint never scraped gets signals dated at the epoch, so that the
//! scheduler's staleness filter treats it like a dead one. Everything else (model and LoRA
//! filters, staleness, scoring, tie-breaks) is the scheduler's, as its config says.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kvpick_scheduler::disagg::PdOutcome;
use kvpick_scheduler::{
    Candidate, Decision, EndpointSet, PodSignals, Prediction, Request, ReservationId, Scheduler,
    SloAction, SloVerdict, Timestamp,
};

use crate::clock::Clock;
use crate::error::Error;
use crate::pool::{Member, Pool};

/// How the router turns a decision into a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// Fallback endpoints listed after the primary.
    pub fallbacks: usize,
    /// Signals older than this mark an endpoint stale (reporting only: the scheduler's config
    /// decides what is picked).
    pub staleness: Duration,
    /// Put each candidate's scores in the dynamic metadata.
    pub emit_scores: bool,
    /// How long an endpoint that answered a 5xx is avoided (while others are eligible); zero
    /// turns passive health off.
    pub failure_cooldown: Duration,
    /// Which client-settable scheduling headers are believed (none by default).
    pub trusted_headers: crate::shedding::TrustedHeaders,
    /// The Inference Extension conformance suite's test hooks (`--conformance-test-hooks`):
    /// never in production.
    pub conformance_test_hooks: bool,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            fallbacks: 0,
            staleness: Duration::from_secs(2),
            emit_scores: false,
            failure_cooldown: Duration::from_secs(2),
            trusted_headers: Default::default(),
            conformance_test_hooks: false,
        }
    }
}

/// One request as the router takes it: the core's [`Request`] with the proxy's subset hint still
/// in addresses (the router resolves them to endpoint ids).
pub type AddressedRequest<'a> = Request<'a, [SocketAddr]>;

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
    /// The cost reserved on the primary; give it back with [`Router::first_token`] and
    /// [`Router::release`].
    pub reservation: Option<ReservationId>,
    /// The primary's predicted latency, when the profile has a latency scorer.
    pub predicted: Option<Prediction>,
    /// P/D: the prefill pod, when the prompt is prefilled there (llm-d's
    /// `x-prefiller-host-port`); the primary and fallbacks are decode pods.
    pub prefill: Option<SocketAddr>,
}

/// The request path's glue between the pool and the scheduler: turns the pool into candidates and
/// a decision into a destination. Shared by all streams.
#[derive(Debug)]
pub struct Router {
    scheduler: Arc<Scheduler>,
    pool: Arc<Pool>,
    clock: Clock,
    config: RouteConfig,
}

impl Router {
    /// A router over `pool` deciding with `scheduler`.
    pub fn new(
        scheduler: Arc<Scheduler>,
        pool: Arc<Pool>,
        clock: Clock,
        config: RouteConfig,
    ) -> Self {
        Self {
            scheduler,
            pool,
            clock,
            config,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &RouteConfig {
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
    pub fn rank(&self, req: &AddressedRequest<'_>) -> Result<(Decision, Vec<SocketAddr>), Error> {
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
        // Endpoints in their failure cool-down are left out while any other is eligible (when
        // every one is failing, picking among them beats refusing).
        if chosen.iter().any(|(m, _)| !m.live.failing(now)) {
            chosen.retain(|(m, _)| !m.live.failing(now));
        }
        if chosen.is_empty() {
            return Err(Error::NoEndpoint(
                "no known endpoint is in the subset hint".into(),
            ));
        }
        let never = PodSignals::idle(Timestamp::ZERO);
        let candidates: Vec<Candidate<'_>> = chosen
            .iter()
            .map(|(m, s)| Candidate {
                endpoint: &m.endpoint,
                signals: s.as_deref().unwrap_or(&never),
                events: m.live.events(),
            })
            .collect();
        let subset: Option<EndpointSet> = req
            .subset
            .map(|_| candidates.iter().map(|c| c.endpoint.id).collect());
        let request = req.with_subset(subset.as_ref());
        let decision = self.scheduler.pick(&request, &candidates, now)?;
        let addresses = decision
            .ranked
            .iter()
            .filter_map(|r| view.by_id(r.endpoint).map(|m| m.endpoint.address))
            .collect();
        Ok((decision, addresses))
    }

    /// Passive health: `address` answered a request with a server error, so it is avoided for
    /// the configured cool-down.
    pub fn report_failure(&self, address: SocketAddr) {
        if self.config.failure_cooldown.is_zero() {
            return;
        }
        let view = self.pool.view();
        if let Some(m) = view.by_address(&address) {
            let until = self.clock.now().since_epoch() + self.config.failure_cooldown;
            m.live.mark_failing(Timestamp::from_duration(until));
            metrics::counter!(crate::telemetry::ENDPOINT_FAILURES, "endpoint" => address.to_string())
                .increment(1);
        }
    }

    /// The request of `id` produced its first response byte: its prefill is done.
    pub fn first_token(&self, id: ReservationId) {
        self.scheduler.first_token(id, self.clock.now());
    }

    /// The request of `id` ended (end of stream, client gone, error). Under P/D this also gives
    /// back its prefill pod's reservation if its first token did not.
    pub fn release(&self, id: ReservationId, endpoint: SocketAddr) {
        self.scheduler.release(id, self.clock.now());
        self.export_inflight(endpoint);
    }

    /// Exports `endpoint`'s in-flight accounting as gauges.
    fn export_inflight(&self, endpoint: SocketAddr) {
        let view = self.pool.view();
        let Some(m) = view.by_address(&endpoint) else {
            return;
        };
        let load = self
            .scheduler
            .inflight()
            .load(m.endpoint.id, self.clock.now());
        let label = endpoint.to_string();
        metrics::gauge!(crate::telemetry::INFLIGHT, "endpoint" => label.clone(), "phase" => "prefill")
            .set(f64::from(load.prefill_requests));
        metrics::gauge!(crate::telemetry::INFLIGHT, "endpoint" => label.clone(), "phase" => "decode")
            .set(f64::from(load.decode_requests));
        metrics::gauge!(crate::telemetry::INFLIGHT_PREFILL_TOKENS, "endpoint" => label)
            .set(load.prefill_tokens as f64);
    }

    /// Picks the destination for `req`: the primary and up to `fallbacks` more, and reserves
    /// the request's cost on the primary.
    pub fn route(&self, req: &AddressedRequest<'_>) -> Result<Routing, Error> {
        self.route_or_queue(req, false)
    }

    /// [`Router::route`], for a request that may wait in flow control (`may_queue`).
    ///
    /// When no endpoint is predicted to meet the request's objectives, a sheddable request is
    /// refused ([`Error::Shed`] with the miss as reason) and one that may queue gets
    /// [`Error::SloUnattainable`]; nothing is reserved for either.
    pub fn route_or_queue(
        &self,
        req: &AddressedRequest<'_>,
        may_queue: bool,
    ) -> Result<Routing, Error> {
        let (decision, addresses) = self.rank(req)?;
        if let SloVerdict::Unattainable(miss) = decision.slo {
            let action = decision.slo.action(req.priority, may_queue);
            let (label, refusal) = match action {
                SloAction::Shed(_) => ("shed", Some(Error::Shed(miss.reason()))),
                SloAction::Queue(_) => ("queued", Some(Error::SloUnattainable(miss))),
                SloAction::Route => ("routed", None),
            };
            metrics::counter!(crate::telemetry::SLO_UNATTAINABLE, "reason" => miss.reason(), "action" => label)
                .increment(1);
            if let Some(e) = refusal {
                return Err(e);
            }
        }
        let Some(&primary) = addresses.first() else {
            return Err(Error::NoEndpoint("no candidate is eligible".into()));
        };
        let reservation = self.scheduler.reserve(&decision, self.clock.now());
        self.export_inflight(primary);
        let prefill = match &decision.pd {
            PdOutcome::Off => None,
            pd => {
                metrics::counter!(crate::telemetry::PD_DECISIONS, "decision" => pd.label())
                    .increment(1);
                let view = self.pool.view();
                let pod = pd.prefill().and_then(|p| p.primary());
                pod.and_then(|id| view.by_id(id).map(|m| m.endpoint.address))
            }
        };
        if let Some(p) = prefill {
            self.export_inflight(p);
        }
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
            reservation,
            predicted: decision.predicted,
            prefill,
        })
    }
}
