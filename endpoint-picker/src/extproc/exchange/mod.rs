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
//!   body that does not parse is routed on the headers alone). A body whose model the pool's
//!   rewrites rename ([`rewrite`]) goes back as a body mutation with that answer, its
//!   `content-length` set (`BUFFERED`; `BUFFERED_PARTIAL` has none).
//! - `STREAMED` and `NONE`: Envoy routes on the headers answer before any body reaches kvpick, so
//!   the decision is made on the headers alone (load, subset hint, session) and body chunks are
//!   let through unchanged. Prefix-aware routing and model rewrites need one of the modes above.
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

use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use kvpick_scheduler::{FlowId, ReservationId, Slo};
use pb::processing_request::Request as In;
use pb::processing_response::Response as Out;
use tokio::time::Instant;

use super::reply;
use crate::Shared;
use crate::budget::Charge;
use crate::error::Error;
use crate::prediction::Prediction;
use crate::telemetry as t;
use crate::usage::UsageScanner;

mod decision;
mod mode;
mod request;
mod resend;
mod response;
mod rewrite;

use mode::Mode;
use request::body_ceiling;
use resend::Resend;

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
    /// The API the request's path names: how its body is read.
    api: crate::request::Api,
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
            api: crate::request::Api::Other,
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
            (self.request_mode, self.request_mode_name) = Mode::from_wire(pc.request_body_mode);
            self.response_mode = Mode::from_wire(pc.response_body_mode).0;
        }
        let metadata = msg.metadata_context.as_ref();
        match msg.request {
            None => Ok(()),
            Some(In::RequestHeaders(h)) => self.request_headers(h, metadata, out).await,
            Some(In::RequestBody(b)) => self.request_body(b, out).await,
            Some(In::RequestTrailers(_)) => self.request_trailers(out).await,
            Some(In::ResponseHeaders(h)) => {
                self.response_headers(h.headers.as_ref(), metadata);
                out.push(if self.shared.router.config().conformance_test_hooks {
                    super::test_hooks::echo_served(self.served)
                } else {
                    reply::continue_response(Out::ResponseHeaders)
                });
                Ok(())
            }
            Some(In::ResponseBody(b)) => self.response_body(b, out),
            Some(In::ResponseTrailers(_)) => {
                out.push(reply::trailers(false));
                Ok(())
            }
        }
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
