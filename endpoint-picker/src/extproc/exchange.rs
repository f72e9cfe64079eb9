//! One ext_proc stream (one HTTP request and its response) as a state machine: each message from
//! Envoy in, the messages to send back out. No socket I/O here; [`super::ExtProc`] drives it. It
//! awaits two things: tokenization of a text or chat prompt (off the reactor) and, with flow
//! control on, room in the pool. The stream reads Envoy's next message only after answering this
//! one, so the answers keep their order.
//!
//! Request path. Full-duplex: the headers answer is held until the body is complete, then the
//! picker answers headers (decision, `content-length`, `envoy.lb` metadata) → the body, re-sent in
//! chunks of at most [`MAX_CHUNK`] bytes → trailers when Envoy sent any. Buffered: the headers get
//! an empty answer at once and the decision rides on the body answer. Headers-only requests are
//! decided at once in both modes. Response path (`response`): every body chunk is answered as it
//! arrives.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use kvpick_scheduler::FlowId;
use pb::processing_request::Request as In;
use pb::processing_response::Response as Out;
use tokio::time::Instant;

use super::reply::{self, MAX_CHUNK};
use crate::error::Error;
use crate::picker::{RouteRequest, Routing};
use crate::prediction::Prediction;
use crate::prompt::Tokenized;
use crate::telemetry as t;
use crate::usage::UsageScanner;
use crate::{Shared, flow_control, request, shedding};

mod response;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Duplex,
    Buffered,
}

fn mode(raw: i32) -> Mode {
    match BodySendMode::try_from(raw) {
        Ok(BodySendMode::Buffered | BodySendMode::BufferedPartial) => Mode::Buffered,
        _ => Mode::Duplex,
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
    response_mode: Mode,
    started: Instant,
    session: Option<String>,
    subset: Option<Vec<SocketAddr>>,
    body: Vec<u8>,
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
}

impl Exchange {
    /// A fresh stream.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            phase: Phase::Start,
            request_mode: Mode::Duplex,
            response_mode: Mode::Duplex,
            started: Instant::now(),
            session: None,
            subset: None,
            body: Vec::new(),
            picked: None,
            outcome: "incomplete",
            status: None,
            first_byte: false,
            usage: None,
            prediction: None,
            served: None,
            priority: 0,
            flow: FlowId::default(),
        }
    }

    /// Handles one message from Envoy, pushing the answers to `out`.
    pub async fn on_message(
        &mut self,
        msg: pb::ProcessingRequest,
        out: &mut Vec<pb::ProcessingResponse>,
    ) -> Result<(), Error> {
        if let Some(pc) = &msg.protocol_config {
            self.request_mode = mode(pc.request_body_mode);
            self.response_mode = mode(pc.response_body_mode);
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
            Some(In::ResponseBody(b)) => {
                self.response_body(b, out);
                Ok(())
            }
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
        if let Err(e) = shedding::admit(&self.shared, self.priority) {
            self.refuse(&e, out);
            return Ok(());
        }
        if h.end_of_stream {
            // No body (e.g. GET /v1/models): decide on load alone, as soon as there is room.
            if let Err(e) = self.wait_for_room(0).await {
                self.refuse(&e, out);
                return Ok(());
            }
            let start = Instant::now();
            let routing = self.route(|picker, subset, session| {
                picker.route(&RouteRequest {
                    model: "",
                    cache_salt: None,
                    prompt: kvpick_scheduler::Prompt::Empty,
                    session,
                    subset,
                })
            });
            metrics::histogram!(t::SCHEDULING).record(start.elapsed().as_secs_f64());
            match routing {
                Ok(r) => {
                    self.outcome = "headers_only";
                    out.push(reply::request_headers(
                        Some(reply::routing_mutation(&r, None)),
                        Some(self.metadata(&r)),
                    ));
                    self.phase = Phase::Decided;
                }
                Err(e) => self.refuse(&e, out),
            }
            return Ok(());
        }
        self.phase = Phase::Body;
        if self.request_mode == Mode::Buffered {
            // Envoy's BUFFERED contract: an empty answer now, the mutation on the body answer.
            out.push(reply::request_headers(None, None));
        }
        Ok(())
    }

    async fn request_body(
        &mut self,
        b: pb::HttpBody,
        out: &mut Vec<pb::ProcessingResponse>,
    ) -> Result<(), Error> {
        match self.phase {
            Phase::Body => {}
            Phase::Refused => return Ok(()),
            Phase::Start | Phase::Decided => {
                return Err(Error::Protocol("request body out of order"));
            }
        }
        let limit = self.shared.limits.max_body_bytes;
        if self.body.len() + b.body.len() > limit {
            self.body = Vec::new();
            self.refuse(&Error::BodyTooLarge { limit }, out);
            return Ok(());
        }
        if self.body.is_empty() {
            self.body = b.body;
        } else {
            self.body.extend_from_slice(&b.body);
        }
        if b.end_of_stream {
            self.decide(out, false).await;
        }
        Ok(())
    }

    async fn request_trailers(
        &mut self,
        out: &mut Vec<pb::ProcessingResponse>,
    ) -> Result<(), Error> {
        match self.phase {
            Phase::Body if self.request_mode == Mode::Duplex => {
                // The trailers end the body: decide, send headers and body, then the trailers.
                self.decide(out, true).await;
                if self.phase == Phase::Decided {
                    out.push(reply::trailers(true));
                }
            }
            Phase::Refused => {}
            _ => out.push(reply::trailers(true)),
        }
        Ok(())
    }

    /// While the request body is still arriving: when it must be complete by (`--body-timeout`
    /// from the headers).
    pub fn body_deadline(&self) -> Option<Instant> {
        (self.phase == Phase::Body).then(|| self.started + self.shared.limits.body_timeout)
    }

    /// The body missed its deadline: refuses the request with a 408.
    pub fn body_timed_out(&mut self, out: &mut Vec<pb::ProcessingResponse>) {
        self.body = Vec::new();
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
            self.body = Vec::new();
            return self.refuse(&e, out);
        }
        // Shared with a tokenization job that may outlive its deadline; unique again after.
        let body = Bytes::from(std::mem::take(&mut self.body));
        let start = Instant::now();
        let tokenizer = self.shared.tokenizer.clone();
        let routed = match request::parse(&body) {
            Err(e) => Err(e),
            Ok(req) => {
                let tokens = Tokenized::new(&*tokenizer, &req, &body).await;
                let prompt = tokens.prompt(&req.prompt);
                self.route(|picker, subset, session| {
                    picker.route(&RouteRequest {
                        model: &req.model,
                        cache_salt: req.cache_salt.as_deref(),
                        prompt,
                        session,
                        subset,
                    })
                })
            }
        };
        metrics::histogram!(t::SCHEDULING).record(start.elapsed().as_secs_f64());
        let body = Vec::from(body);
        let r = match routed {
            Ok(r) => r,
            Err(e) => return self.refuse(&e, out),
        };
        if r.total_blocks > 0 {
            metrics::histogram!(t::PREFIX_MATCH)
                .record(f64::from(r.matched_blocks) / f64::from(r.total_blocks));
        }
        self.prediction = Some(Prediction::new(&self.shared, &r));
        self.outcome = "routed";
        let metadata = self.metadata(&r);
        match self.request_mode {
            Mode::Buffered => out.push(reply::request_body_buffered(
                Some(reply::routing_mutation(&r, None)),
                Some(metadata),
            )),
            Mode::Duplex => {
                out.push(reply::request_headers(
                    Some(reply::routing_mutation(&r, Some(body.len()))),
                    Some(metadata),
                ));
                let n = body.len().div_ceil(MAX_CHUNK).max(1);
                if n == 1 {
                    out.push(reply::request_body_chunk(body, !trailers_follow));
                } else {
                    for (i, chunk) in body.chunks(MAX_CHUNK).enumerate() {
                        out.push(reply::request_body_chunk(
                            chunk.to_vec(),
                            i + 1 == n && !trailers_follow,
                        ));
                    }
                }
            }
        }
        self.phase = Phase::Decided;
    }

    /// Runs `pick` with this stream's subset hint and session, and counts the pick.
    fn route(
        &mut self,
        pick: impl FnOnce(
            &crate::picker::Picker,
            Option<&[SocketAddr]>,
            Option<&str>,
        ) -> Result<Routing, Error>,
    ) -> Result<Routing, Error> {
        let r = pick(
            &self.shared.picker,
            self.subset.as_deref(),
            self.session.as_deref(),
        );
        if let Ok(r) = &r {
            self.picked = Some(r.primary);
            metrics::counter!(t::PICKS, "endpoint" => r.primary.to_string()).increment(1);
        }
        r
    }

    fn metadata(&self, r: &Routing) -> envoy_types::pb::google::protobuf::Struct {
        reply::routing_metadata(r, self.shared.picker.scheduler().scorer_names())
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
        if self.phase == Phase::Start {
            return;
        }
        let code = self
            .status
            .map_or_else(|| "none".to_owned(), |s| s.to_string());
        metrics::counter!(t::REQUESTS, "outcome" => self.outcome, "code" => code).increment(1);
    }
}
