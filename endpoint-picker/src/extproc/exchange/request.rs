//! The request half of an exchange: headers (the stream's session, subset hint, priority and
//! objectives, and how the body will come), the body collected within its limits and budget,
//! trailers, and the deadline the body must meet.

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use tokio::time::Instant;

use super::super::{model_rewrite, reply, test_hooks};
use super::{Exchange, Mode, Phase};
use crate::budget;
use crate::error::Error;
use crate::telemetry as t;
use crate::{flow_control, shedding};

impl Exchange {
    /// Reads what the headers say about the request, then decides at once (no body to wait
    /// for, or none kvpick will see) or starts collecting the body.
    pub(super) async fn request_headers(
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
        self.api =
            crate::request::Api::from_path(reply::header(headers, ":path").unwrap_or_default());
        let selected = if self.shared.router.config().conformance_test_hooks {
            let view = self.shared.router.pool().view();
            let selection = reply::header(headers, test_hooks::SELECTION);
            test_hooks::select(selection, &view, self.subset.take()).map(|s| self.subset = s)
        } else {
            Ok(())
        };
        self.priority = shedding::priority(&self.shared, headers);
        self.flow = flow_control::flow_id(&self.shared, headers);
        self.objective = shedding::objective(headers).map(str::to_owned);
        let trusted = self.shared.router.config().trusted_headers.slo;
        // The pool's InferenceObjective fills in the objectives the headers leave unset.
        self.slo = crate::slo::from_headers(trusted, |n| reply::header(headers, n)).or(
            shedding::objective_slo(&self.shared, self.objective.as_deref()),
        );
        let handling = match (self.request_mode, self.response_mode) {
            (Mode::Unknown(m), _) | (_, Mode::Unknown(m)) => Err(Error::UnsupportedBodyMode(m)),
            (Mode::HeadersFirst, _) => Ok("headers"),
            _ if h.end_of_stream => Ok("headers"),
            _ => Ok("body"),
        };
        let handling = handling.and_then(|h| self.refusal.take().map_or(Ok(h), Err));
        let handling = handling.and_then(|h| selected.map(|()| h));
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
                if self.request_mode == Mode::HeadersFirst && !h.end_of_stream {
                    model_rewrite::skipped(&self.shared.policy, "body_mode");
                }
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
                if matches!(self.request_mode, Mode::Buffered { .. }) {
                    // Envoy's BUFFERED contract: an empty answer now, the mutation on the body
                    // answer.
                    out.push(reply::request_headers(None, None));
                }
            }
        }
        Ok(())
    }

    /// Collects a body chunk; decides when the body is complete.
    pub(super) async fn request_body(
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
            Mode::Buffered { .. } => self.decide(out, !b.end_of_stream).await,
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
        let ceiling = body_ceiling(&self.shared.budget.requests, target);
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

    /// Lets go of the body and its budget.
    pub(super) fn drop_body(&mut self) {
        self.body = Vec::new();
        self.body_charge.clear();
    }

    /// Trailers end a full-duplex body: decide. Otherwise they pass.
    pub(super) async fn request_trailers(
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
}

/// How far a body of `size` bytes may fill the request part: a large body leaves the last 1/8 to
/// ordinary ones.
pub(super) fn body_ceiling(part: &budget::Part, size: usize) -> usize {
    if size > budget::LARGE_BODY {
        part.limit() - part.limit() / 8
    } else {
        part.limit()
    }
}
