//! The routing decision: wait for room in the pool, parse and tokenize the body, pick (on the
//! prompt, or on the headers alone when there is none to see), answer with the decision, and
//! re-send a full-duplex body behind it.

use std::net::SocketAddr;

use bytes::Bytes;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use tokio::time::Instant;

use super::super::{model_rewrite, reply};
use super::{Exchange, Mode, Phase, Resend};
use crate::error::Error;
use crate::prediction::Prediction;
use crate::prompt::Tokenized;
use crate::router::{AddressedRequest, Routing};
use crate::telemetry as t;

impl Exchange {
    /// Routes without a prompt: load, subset hint and session only.
    pub(super) fn route_on_headers(&mut self) -> Result<Routing, Error> {
        let start = Instant::now();
        let (slo, objective, priority) = (self.slo, self.objective.clone(), self.priority);
        let routing = self.route(|router, subset, session| {
            router.route(&AddressedRequest {
                session,
                subset,
                slo,
                objective: objective.as_deref(),
                priority,
                ..AddressedRequest::new("", kvpick_scheduler::Prompt::Empty)
            })
        });
        metrics::histogram!(t::SCHEDULING).record(start.elapsed().as_secs_f64());
        routing
    }

    /// With flow control on, waits until the pool has room for this request (or refuses it).
    pub(super) async fn wait_for_room(&self, bytes: usize) -> Result<(), Error> {
        match &self.shared.flow {
            None => Ok(()),
            Some(flow) => {
                flow.admit(&self.shared, self.priority, &self.flow, bytes)
                    .await
            }
        }
    }

    /// Waits for room, parses the whole body, tokenizes a text prompt, picks, and answers.
    pub(super) async fn decide(
        &mut self,
        out: &mut Vec<pb::ProcessingResponse>,
        trailers_follow: bool,
    ) {
        if let Err(e) = self.wait_for_room(self.body.len()).await {
            self.drop_body();
            return self.refuse(&e, out);
        }
        // Shared with a tokenization job that may outlive its deadline.
        let body = Bytes::from(std::mem::take(&mut self.body));
        let (body, rewritten) = match self.rewrite_model(body, trailers_follow) {
            Ok(rewritten) => rewritten,
            Err(e) => {
                self.drop_body();
                return self.refuse(&e, out);
            }
        };
        let start = Instant::now();
        let tokenizer = self.shared.tokenizer.clone();
        let (slo, objective) = (self.slo, self.objective.clone());
        let routed = match crate::request::parse_for(self.api, &body) {
            // BUFFERED_PARTIAL cut the body at the gateway's buffer limit (or trailers follow a
            // body that does not parse): route on what the headers say.
            Err(_) if matches!(self.request_mode, Mode::Buffered { .. }) && trailers_follow => {
                self.outcome = "routed_on_headers";
                self.route_on_headers()
            }
            Err(e) => Err(e),
            // Nothing to route on but load (an unknown path's opaque body, no `model`).
            Ok(None) => {
                self.outcome = "routed_on_headers";
                self.route_on_headers()
            }
            Ok(Some(req)) => {
                let tokens = Tokenized::new(&*tokenizer, &req, &body).await;
                let prompt = tokens.prompt(&req.prompt);
                self.outcome = "routed";
                // No endpoint predicted to meet the objectives: a critical request waits in
                // flow control for one, picked again in each round with room, up to queueTTL;
                // then (or without flow control) it goes to the best endpoint anyway.
                let mut since = None;
                let mut may_queue = self.shared.flow.is_some();
                loop {
                    let priority = self.priority;
                    let routed = self.route(|router, subset, session| {
                        let r = AddressedRequest {
                            model: &req.model,
                            cache_salt: req.cache_salt.as_deref(),
                            prompt,
                            session,
                            subset,
                            max_tokens: req.max_tokens,
                            slo,
                            objective: objective.as_deref(),
                            priority,
                        };
                        router.route_or_queue(&r, may_queue)
                    });
                    match (routed, &self.shared.flow) {
                        (Err(Error::SloUnattainable(_)), Some(flow)) if may_queue => {
                            let shared = self.shared.clone();
                            let first = *since.get_or_insert_with(|| shared.clock.now());
                            let look = flow
                                .wait_for_objective(
                                    &shared,
                                    priority,
                                    &self.flow,
                                    body.len(),
                                    first,
                                )
                                .await;
                            may_queue = match look {
                                Err(e) => break Err(e),
                                Ok(crate::flow_control::Look::Again) => {
                                    flow.may_wait_for_objective(since, shared.clock.now())
                                }
                                Ok(crate::flow_control::Look::BestEffort) => false,
                            };
                        }
                        (routed, _) => break routed,
                    }
                }
            }
        };
        metrics::histogram!(t::SCHEDULING).record(start.elapsed().as_secs_f64());
        let r = match routed {
            Ok(r) => r,
            Err(e) => {
                self.body_charge.clear();
                return self.refuse(&e, out);
            }
        };
        if r.total_blocks > 0 {
            metrics::histogram!(t::PREFIX_MATCH)
                .record(f64::from(r.matched_blocks) / f64::from(r.total_blocks));
        }
        self.prediction = Some(Prediction::new(&self.shared, &r));
        let metadata = self.metadata(&r);
        match self.request_mode {
            Mode::Duplex => {
                out.push(reply::request_headers(
                    Some(reply::routing_mutation(&r, Some(body.len()))),
                    Some(metadata),
                ));
                // The body charge stays until the last chunk is out.
                self.resend = Some(Resend::new(body, trailers_follow));
            }
            Mode::Buffered { partial } if rewritten => {
                // BUFFERED: Envoy keeps the client's `content-length` and refuses a body that
                // does not match it; BUFFERED_PARTIAL dropped it.
                let length = (!partial).then_some(body.len());
                out.push(model_rewrite::with_body(
                    reply::request_body_buffered(
                        Some(reply::routing_mutation(&r, length)),
                        Some(metadata),
                    ),
                    body,
                ));
                // The body charge stays until the answer is out (`next_owed`).
            }
            _ => {
                out.push(reply::request_body_buffered(
                    Some(reply::routing_mutation(&r, None)),
                    Some(metadata),
                ));
                self.body_charge.clear();
            }
        }
        self.phase = Phase::Decided;
    }

    /// The next answer owed before Envoy's next message is read: the re-sent body's chunks, one
    /// at a time (so the body is not copied whole a second time), then its trailers.
    pub fn next_owed(&mut self) -> Option<pb::ProcessingResponse> {
        let Some(resend) = self.resend.as_mut() else {
            // A buffered body mutation went out with its answer.
            if self.phase == Phase::Decided {
                self.body_charge.clear();
            }
            return None;
        };
        let next = resend.next();
        if next.is_none() {
            self.resend = None;
            self.body_charge.clear();
        }
        next
    }

    /// Runs `pick` with this stream's subset hint and session, and counts the pick.
    fn route(
        &mut self,
        pick: impl FnOnce(
            &crate::router::Router,
            Option<&[SocketAddr]>,
            Option<&str>,
        ) -> Result<Routing, Error>,
    ) -> Result<Routing, Error> {
        let r = pick(
            &self.shared.router,
            self.subset.as_deref(),
            self.session.as_deref(),
        );
        if let Ok(r) = &r {
            self.picked = Some(r.primary);
            self.reservation = r.reservation;
            self.predicted_ttft_us = r.predicted.map(|p| p.ttft_us);
            metrics::counter!(t::PICKS, "endpoint" => r.primary.to_string()).increment(1);
        }
        r
    }

    pub(super) fn metadata(&self, r: &Routing) -> envoy_types::pb::google::protobuf::Struct {
        reply::routing_metadata(r, self.shared.router.scheduler().scorer_names())
    }
}
