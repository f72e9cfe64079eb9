//! One ext_proc stream (one HTTP request and its response) as a state machine: each message from
//! Envoy in, the messages to send back out. No socket I/O here; [`super::ExtProc`] drives it. It
//! awaits two things: tokenization of a text or chat prompt (off the reactor) and, with flow
//! control on, room in the pool. The stream reads Envoy's next message only after answering this
//! one, so the answers keep their order.
//!
//! Request path, by the body mode Envoy announces (`protocol_config`):
//! - `FULL_DUPLEX_STREAMED`: the headers answer is held until the body is complete, then the
//!   picker answers headers (decision, `content-length`, `envoy.lb` metadata) → the body, re-sent
//!   in chunks of at most [`reply::MAX_CHUNK`] bytes as the stream can take them ([`Resend`]) →
//!   trailers when Envoy sent any.
//! - `BUFFERED` / `BUFFERED_PARTIAL`: the headers get an empty answer at once and the decision
//!   rides on the answer to the (single) body message, whether or not it ends the stream
//!   (trailers follow it; `BUFFERED_PARTIAL` cuts a body at the gateway's buffer limit, and a cut
//!   body that does not parse is routed on the headers alone).
//! - `STREAMED` and `NONE`: Envoy routes on the headers answer before any body reaches kvpick, so
//!   the decision is made on the headers alone (load, subset hint, session) and body chunks are
//!   let through unchanged. Prefix-aware routing needs one of the modes above.
//! - Any other mode is refused at once (500 `unsupported_body_mode`).
//!
//! Headers-only requests are decided at once in every mode. Response path (`response`): every
//! body chunk is answered as it arrives, echoed in full-duplex mode, let through otherwise.
//!
//! Memory: each stream holds a slot under `--max-streams` (its own bytes are set aside per slot)
//! and charges its body to the budget's body bytes as it grows ([`crate::budget`]); a body that
//! does not fit gets a 503.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use kvpick_scheduler::{FlowId, ReservationId, Slo};
use pb::processing_request::Request as In;
use pb::processing_response::Response as Out;
use tokio::time::Instant;

use super::reply;
use crate::budget::{self, Charge};
use crate::error::Error;
use crate::prediction::Prediction;
use crate::prompt::Tokenized;
use crate::router::{AddressedRequest, Routing};
use crate::telemetry as t;
use crate::usage::UsageScanner;
use crate::{Shared, flow_control, request, shedding};

mod resend;
mod response;

use resend::Resend;

/// How Envoy sends a body, as far as the picker's answers go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `FULL_DUPLEX_STREAMED`: chunks; the picker answers with `streamed_response` chunks.
    Duplex,
    /// `BUFFERED` or `BUFFERED_PARTIAL`: one body message, answered without a body mutation.
    Buffered,
    /// `STREAMED` (chunks, each answered unchanged) or `NONE` (no body messages): the headers
    /// answer goes before the body.
    HeadersFirst,
    /// A mode this build does not know.
    Unknown(i32),
}

fn mode(raw: i32) -> (Mode, &'static str) {
    match BodySendMode::try_from(raw) {
        Ok(BodySendMode::FullDuplexStreamed) => (Mode::Duplex, "full_duplex_streamed"),
        Ok(BodySendMode::Buffered) => (Mode::Buffered, "buffered"),
        Ok(BodySendMode::BufferedPartial) => (Mode::Buffered, "buffered_partial"),
        Ok(BodySendMode::Streamed) => (Mode::HeadersFirst, "streamed"),
        Ok(BodySendMode::None) => (Mode::HeadersFirst, "none"),
        // GRPC (per-message gRPC bodies) or newer: not an inference request kvpick can route.
        Ok(BodySendMode::Grpc) => (Mode::Unknown(raw), "grpc"),
        Err(_) => (Mode::Unknown(raw), "unknown"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for request headers.
    Start,
    /// Collecting the request body.
    Body,
    /// Decision sent; passing the rest through.
    Decided,
    /// An immediate response was sent; Envoy sends nothing more that matters.
    Refused,
}

/// The state of one stream.
#[derive(Debug)]
pub struct Exchange {
    shared: Arc<Shared>,
    phase: Phase,
    request_mode: Mode,
    request_mode_name: &'static str,
    response_mode: Mode,
    started: Instant,
    session: Option<String>,
    subset: Option<Vec<SocketAddr>>,
    body: Vec<u8>,
    /// Why the stream is refused (no slot under `--max-streams`); its slot, which also holds
    /// its share of the budget's request bytes.
    refusal: Option<Error>,
    _slot: Charge,
    /// The budget held for `body`'s capacity.
    body_charge: Charge,
    /// The budget held for what echoing response bodies leaves in the gRPC encoder and HTTP/2
    /// send buffers ([`response`]).
    echo_charge: Charge,
    /// A full-duplex body being re-sent, chunk by chunk.
    resend: Option<Resend>,
    /// The picker's primary.
    picked: Option<SocketAddr>,
    outcome: &'static str,
    status: Option<u16>,
    first_byte: bool,
    usage: Option<UsageScanner>,
    prediction: Option<Prediction>,
    /// The endpoint the proxy says served the response, when it says.
    served: Option<SocketAddr>,
    /// From the request headers: its priority and fairness id, for flow control.
    priority: i32,
    flow: FlowId,
    /// From the request headers: latency objectives and the objective's name.
    slo: Slo,
    objective: Option<String>,
    /// The in-flight reservation on the primary, released at end of stream or drop.
    reservation: Option<ReservationId>,
    /// The primary's predicted time to first token, µs.
    predicted_ttft_us: Option<f64>,
}

impl Exchange {
    /// A fresh stream, holding a slot under `--max-streams` (one over it is refused on its
    /// headers).
    pub fn new(shared: Arc<Shared>) -> Self {
        let budget = &shared.budget;
        let (refusal, slot) = match budget.streams.try_charge(1) {
            None => (
                Some(Error::TooManyStreams {
                    max: budget.streams.limit(),
                }),
                Charge::none(),
            ),
            Some(slot) => (None, slot),
        };
        let body_charge = Charge::empty(&budget.requests);
        let echo_charge = Charge::empty(&budget.requests);
        Self {
            shared,
            phase: Phase::Start,
            request_mode: Mode::Duplex,
            request_mode_name: "full_duplex_streamed",
            response_mode: Mode::Duplex,
            started: Instant::now(),
            session: None,
            subset: None,
            body: Vec::new(),
            refusal,
            _slot: slot,
            body_charge,
            echo_charge,
            resend: None,
            picked: None,
            outcome: "incomplete",
            status: None,
            first_byte: false,
            usage: None,
            prediction: None,
            served: None,
            priority: 0,
            flow: FlowId::default(),
            slo: Slo::default(),
            objective: None,
            reservation: None,
            predicted_ttft_us: None,
        }
    }

    /// Handles one message from Envoy, pushing the answers to `out`.
    pub async fn on_message(
        &mut self,
        msg: pb::ProcessingRequest,
        out: &mut Vec<pb::ProcessingResponse>,
    ) -> Result<(), Error> {
        if let Some(pc) = &msg.protocol_config {
            (self.request_mode, self.request_mode_name) = mode(pc.request_body_mode);
            self.response_mode = mode(pc.response_body_mode).0;
        }
        let metadata = msg.metadata_context.as_ref();
        match msg.request {
            None => Ok(()),
            Some(In::RequestHeaders(h)) => self.request_headers(h, metadata, out).await,
            Some(In::RequestBody(b)) => self.request_body(b, out).await,
            Some(In::RequestTrailers(_)) => self.request_trailers(out).await,
            Some(In::ResponseHeaders(h)) => {
                self.response_headers(h.headers.as_ref(), metadata);
                out.push(reply::continue_response(Out::ResponseHeaders));
                Ok(())
            }
            Some(In::ResponseBody(b)) => self.response_body(b, out),
            Some(In::ResponseTrailers(_)) => {
                out.push(reply::trailers(false));
                Ok(())
            }
        }
    }

    async fn request_headers(
        &mut self,
        h: pb::HttpHeaders,
        metadata: Option<&Metadata>,
        out: &mut Vec<pb::ProcessingResponse>,
    ) -> Result<(), Error> {
        if self.phase != Phase::Start {
            return Err(Error::Protocol("request headers twice"));
        }
        self.started = Instant::now();
        let headers = h.headers.as_ref();
        self.session = reply::header(headers, "x-session-token")
            .or_else(|| reply::header(headers, "x-session-id"))
            .map(str::to_owned);
        self.subset = reply::subset_hint(metadata);
        self.priority = shedding::priority(&self.shared, headers);
        self.flow = flow_control::flow_id(&self.shared, headers);
        let trusted = self.shared.router.config().trusted_headers.slo;
        self.slo = crate::slo::from_headers(trusted, |n| reply::header(headers, n));
        self.objective = reply::header(headers, shedding::OBJECTIVE_HEADER).map(str::to_owned);
        let handling = match (self.request_mode, self.response_mode) {
            (Mode::Unknown(m), _) | (_, Mode::Unknown(m)) => Err(Error::UnsupportedBodyMode(m)),
            (Mode::HeadersFirst, _) => Ok("headers"),
            _ if h.end_of_stream => Ok("headers"),
            _ => Ok("body"),
        };
        let handling = handling.and_then(|h| self.refusal.take().map_or(Ok(h), Err));
        let label = handling.as_ref().map_or("refused", |h| h);
        metrics::counter!(t::BODY_MODES, "mode" => self.request_mode_name, "handling" => label)
            .increment(1);
        let handling = handling.and_then(|h| {
            shedding::admit(&self.shared, self.priority)?;
            Ok(h)
        });
        match handling {
            Err(e) => self.refuse(&e, out),
            // No body, or none kvpick will see before Envoy routes (STREAMED, NONE): decide on
            // load alone, as soon as there is room.
            Ok("headers") => {
                if let Err(e) = self.wait_for_room(0).await {
                    self.refuse(&e, out);
                    return Ok(());
                }
                self.outcome = if h.end_of_stream {
                    "headers_only"
                } else {
                    "routed_on_headers"
                };
                match self.route_on_headers() {
                    Ok(r) => {
                        out.push(reply::request_headers(
                            Some(reply::routing_mutation(&r, None)),
                            Some(self.metadata(&r)),
                        ));
                        self.phase = Phase::Decided;
                    }
                    Err(e) => self.refuse(&e, out),
                }
            }
            Ok(_) => {
                self.phase = Phase::Body;
                if self.request_mode == Mode::Buffered {
                    // Envoy's BUFFERED contract: an empty answer now, the mutation on the body
                    // answer.
                    out.push(reply::request_headers(None, None));
                }
            }
        }
        Ok(())
    }

    /// Routes without a prompt: load, subset hint and session only.
    fn route_on_headers(&mut self) -> Result<Routing, Error> {
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

    async fn request_body(
        &mut self,
        b: pb::HttpBody,
        out: &mut Vec<pb::ProcessingResponse>,
    ) -> Result<(), Error> {
        match self.phase {
            Phase::Body => {}
            Phase::Refused => return Ok(()),
            // STREAMED: the decision went with the headers; chunks pass unchanged.
            Phase::Decided if self.request_mode == Mode::HeadersFirst => {
                out.push(reply::request_body_buffered(None, None));
                return Ok(());
            }
            Phase::Start | Phase::Decided => {
                return Err(Error::Protocol("request body out of order"));
            }
        }
        if let Err(e) = self.keep(b.body) {
            self.drop_body();
            self.refuse(&e, out);
            return Ok(());
        }
        match self.request_mode {
            // One message is the whole body Envoy will send: without end of stream, trailers
            // follow or (BUFFERED_PARTIAL) the body was cut at the gateway's buffer limit.
            Mode::Buffered => self.decide(out, !b.end_of_stream).await,
            _ if b.end_of_stream => self.decide(out, false).await,
            _ => {}
        }
        Ok(())
    }

    /// Appends a chunk to the body, within `--max-body-bytes` and the memory budget (charged by
    /// the buffer's capacity, which grows by doubling up to the limit; a large body leaves the
    /// last 1/8 of the request part to ordinary ones).
    fn keep(&mut self, chunk: Vec<u8>) -> Result<(), Error> {
        let limit = self.shared.limits.max_body_bytes;
        let needed = self.body.len() + chunk.len();
        if needed > limit {
            return Err(Error::BodyTooLarge { limit });
        }
        let capacity = if self.body.is_empty() {
            chunk.capacity()
        } else {
            self.body.capacity()
        };
        let target = if needed <= capacity {
            capacity
        } else {
            needed.max(capacity.saturating_mul(2)).min(limit)
        };
        let more = target.saturating_sub(self.body_charge.held());
        let part = &self.shared.budget.requests;
        let ceiling = if target > budget::LARGE_BODY {
            part.limit() - part.limit() / 8
        } else {
            part.limit()
        };
        if !self.body_charge.grow_within(more, ceiling) {
            return Err(Error::MemoryBudget {
                part: self.shared.budget.requests.name(),
            });
        }
        if self.body.is_empty() {
            self.body = chunk;
        } else {
            self.body.reserve_exact(target - self.body.len());
            self.body.extend_from_slice(&chunk);
        }
        Ok(())
    }

    fn drop_body(&mut self) {
        self.body = Vec::new();
        self.body_charge.clear();
    }

    async fn request_trailers(
        &mut self,
        out: &mut Vec<pb::ProcessingResponse>,
    ) -> Result<(), Error> {
        match self.phase {
            // The trailers end the body: decide; headers and body go first, then the trailers
            // (queued behind the re-sent body).
            Phase::Body if self.request_mode == Mode::Duplex => self.decide(out, true).await,
            // BUFFERED trailers with no body message before them: the decision can only ride on
            // a body answer.
            Phase::Body => {
                self.drop_body();
                self.refuse(&Error::InvalidBody("trailers without a body".into()), out);
            }
            Phase::Refused => {}
            _ => out.push(reply::trailers(true)),
        }
        Ok(())
    }

    /// While the request body is still arriving: when it must be complete by (`--body-timeout`
    /// from the headers).
    /// Also while waiting for the headers, from the stream's start: a stream that sends
    /// nothing would otherwise hold its slot under `--max-streams` for good.
    pub fn body_deadline(&self) -> Option<Instant> {
        matches!(self.phase, Phase::Start | Phase::Body)
            .then(|| self.started + self.shared.limits.body_timeout)
    }

    /// The body missed its deadline: refuses the request with a 408.
    pub fn body_timed_out(&mut self, out: &mut Vec<pb::ProcessingResponse>) {
        self.drop_body();
        let limit = self.shared.limits.body_timeout;
        self.refuse(&Error::BodyTimeout { limit }, out);
    }

    /// With flow control on, waits until the pool has room for this request (or refuses it).
    async fn wait_for_room(&self, bytes: usize) -> Result<(), Error> {
        match &self.shared.flow {
            None => Ok(()),
            Some(flow) => {
                flow.admit(&self.shared, self.priority, &self.flow, bytes)
                    .await
            }
        }
    }

    /// Waits for room, parses the whole body, tokenizes a text prompt, picks, and answers.
    async fn decide(&mut self, out: &mut Vec<pb::ProcessingResponse>, trailers_follow: bool) {
        if let Err(e) = self.wait_for_room(self.body.len()).await {
            self.drop_body();
            return self.refuse(&e, out);
        }
        // Shared with a tokenization job that may outlive its deadline.
        let body = Bytes::from(std::mem::take(&mut self.body));
        let start = Instant::now();
        let tokenizer = self.shared.tokenizer.clone();
        let (slo, objective) = (self.slo, self.objective.clone());
        let routed = match request::parse(&body) {
            // BUFFERED_PARTIAL cut the body at the gateway's buffer limit (or trailers follow a
            // body that does not parse): route on what the headers say.
            Err(_) if self.request_mode == Mode::Buffered && trailers_follow => {
                self.outcome = "routed_on_headers";
                self.route_on_headers()
            }
            Err(e) => Err(e),
            Ok(req) => {
                let tokens = Tokenized::new(&*tokenizer, &req, &body).await;
                let prompt = tokens.prompt(&req.prompt);
                self.outcome = "routed";
                // No endpoint predicted to meet the objectives: with flow control, wait once
                // for a round with room and pick again (then the fastest, if still none).
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
                            may_queue = false;
                            let shared = self.shared.clone();
                            let turn =
                                flow.wait_for_turn(&shared, priority, &self.flow, body.len());
                            if let Err(e) = turn.await {
                                break Err(e);
                            }
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
        let resend = self.resend.as_mut()?;
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

    fn metadata(&self, r: &Routing) -> envoy_types::pb::google::protobuf::Struct {
        reply::routing_metadata(r, self.shared.router.scheduler().scorer_names())
    }

    /// Envoy broke the protocol: the request gets an immediate 500 saying so.
    pub fn protocol_error(&mut self, e: &Error, out: &mut Vec<pb::ProcessingResponse>) {
        self.drop_body();
        self.resend = None;
        if self.phase == Phase::Start {
            // Counted like every other request that got an answer.
            self.phase = Phase::Body;
        }
        self.refuse(e, out);
    }

    fn refuse(&mut self, e: &Error, out: &mut Vec<pb::ProcessingResponse>) {
        tracing::debug!(error = %e, "request refused");
        self.outcome = e.label();
        self.status = Some(e.http_status());
        self.phase = Phase::Refused;
        out.push(reply::immediate(e));
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish_usage();
        // Client gone or stream reset before the end: the reservation goes with it.
        self.release();
        if self.phase == Phase::Start {
            return;
        }
        let code = self
            .status
            .map_or_else(|| "none".to_owned(), |s| s.to_string());
        metrics::counter!(t::REQUESTS, "outcome" => self.outcome, "code" => code).increment(1);
    }
}
