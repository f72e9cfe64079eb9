//! The response half of an exchange: status and usage read as the response streams past, each
//! body chunk answered as it arrives.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;

use super::super::reply;
use super::{Exchange, Mode};
use crate::error::Error;

/// Echo bytes covered by the stream's share of the budget ([`crate::budget::STREAM_BYTES`]).
const ECHO_FREE: usize = 16 << 10;
use crate::telemetry as t;
use crate::usage::{self, UsageScanner};

impl Exchange {
    pub(super) fn response_headers(
        &mut self,
        headers: Option<&HeaderMap>,
        metadata: Option<&Metadata>,
    ) {
        self.status = reply::header(headers, ":status").and_then(|s| s.parse().ok());
        self.served = reply::served(metadata);
        if self.status.is_some_and(|s| (500..600).contains(&s))
            && let Some(failed) = self.served.or(self.picked)
        {
            self.shared.router.report_failure(failed);
        }
        if let (Some(served), Some(picked)) = (self.served, self.picked)
            && served != picked
        {
            metrics::counter!(t::SERVED_DIFFERS).increment(1);
        }
        self.usage = Some(UsageScanner::new(
            reply::header(headers, "content-type"),
            usage::DEFAULT_CAP,
        ));
    }

    pub(super) fn response_body(
        &mut self,
        b: pb::HttpBody,
        out: &mut Vec<pb::ProcessingResponse>,
    ) -> Result<(), Error> {
        if !self.first_byte && !b.body.is_empty() {
            self.first_byte = true;
            let ttfb = self.started.elapsed().as_secs_f64();
            metrics::histogram!(t::TTFT).record(ttfb);
            if let Some(id) = self.reservation {
                self.shared.router.first_token(id);
            }
            if let Some(p) = self.predicted_ttft_us {
                metrics::histogram!(t::TTFT_PREDICTION_ERROR).record((p / 1e6 - ttfb).abs());
            }
        }
        if let Some(scanner) = &mut self.usage {
            scanner.feed(&b.body);
        }
        match self.response_mode {
            Mode::Duplex => {
                self.charge_echo(b.body.len())?;
                out.push(reply::response_body_chunk(b.body, b.end_of_stream));
            }
            // STREAMED, BUFFERED, BUFFERED_PARTIAL: the body passes unchanged.
            _ => out.push(reply::response_body_continue()),
        }
        if b.end_of_stream {
            self.finish_usage();
            self.release();
        }
        Ok(())
    }

    /// An echoed chunk is copied into the gRPC encoder's buffer, which keeps its largest size for
    /// the stream's life, and waits in HTTP/2's send buffer while the peer does not read: the
    /// largest echo past [`ECHO_FREE`] (covered by the stream's share) is charged, large-body
    /// rules, until the stream ends.
    fn charge_echo(&mut self, len: usize) -> Result<(), Error> {
        let target = len.saturating_sub(ECHO_FREE);
        let more = target.saturating_sub(self.echo_charge.held());
        let part = &self.shared.budget.requests;
        if more > 0
            && !self
                .echo_charge
                .grow_within(more, part.limit() - part.limit() / 8)
        {
            return Err(Error::MemoryBudget { part: part.name() });
        }
        Ok(())
    }

    /// Gives the in-flight reservation back, once.
    pub(super) fn release(&mut self) {
        if let (Some(id), Some(picked)) = (self.reservation.take(), self.picked) {
            self.shared.router.release(id, picked);
        }
    }

    pub(super) fn finish_usage(&mut self) {
        if let Some(u) = self.usage.take().and_then(UsageScanner::finish) {
            metrics::counter!(t::TOKENS, "kind" => "input").increment(u.prompt_tokens);
            metrics::counter!(t::TOKENS, "kind" => "output").increment(u.completion_tokens);
            if let Some(cached) = u.cached_tokens {
                metrics::counter!(t::TOKENS, "kind" => "cached").increment(cached);
                if let Some(gap) = self.prediction.and_then(|p| p.error(self.served, cached)) {
                    metrics::histogram!(t::PREFIX_PREDICTION_ERROR).record(gap);
                }
            }
        }
    }
}
