//! The Envoy ext_proc gRPC service (`envoy.service.ext_proc.v3.ExternalProcessor`).
//!
//! Each `Process` stream is one HTTP exchange (refused at once when `--max-streams` or the
//! memory budget is spent). The service spawns nothing: the response stream
//! reads Envoy's next message only when tonic asks for the next answer (and after the previous
//! message is fully answered, tokenization included), so backpressure is tonic's own, answers keep
//! Envoy's order, and a stream's state lives exactly as long as the stream. A request body must
//! arrive whole within `--body-timeout` of its headers, else the request gets a 408.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use futures::Stream;
use pb::external_processor_server::{ExternalProcessor, ExternalProcessorServer};
use tonic::{Request, Response, Status, Streaming};

use crate::Shared;
use exchange::Exchange;

pub mod exchange;
mod model_rewrite;
pub mod reply;
mod test_hooks;

/// The ext_proc service over the shared picker state.
#[derive(Debug, Clone)]
pub struct ExtProc {
    shared: Arc<Shared>,
}

impl ExtProc {
    /// A service for `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The tonic server wrapper, ready for `add_service`.
    /// The largest message it decodes is a body of `--max-body-bytes` plus room for headers
    /// and metadata: tonic buffers a whole message before kvpick sees it, so this bounds what
    /// one stream holds outside the budget's accounting.
    pub fn into_server(self) -> ExternalProcessorServer<Self> {
        let max = self.shared.limits.max_body_bytes.saturating_add(1 << 20);
        ExternalProcessorServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(64 << 20)
    }
}

/// The answers to one stream, produced lazily as Envoy's messages arrive.
pub type ProcessStream = Pin<Box<dyn Stream<Item = Result<pb::ProcessingResponse, Status>> + Send>>;

struct StreamState {
    inbound: Streaming<pb::ProcessingRequest>,
    exchange: Exchange,
    pending: VecDeque<pb::ProcessingResponse>,
    scratch: Vec<pb::ProcessingResponse>,
    done: bool,
}

#[tonic::async_trait]
impl ExternalProcessor for ExtProc {
    type ProcessStream = ProcessStream;

    async fn process(
        &self,
        request: Request<Streaming<pb::ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let state = StreamState {
            inbound: request.into_inner(),
            exchange: Exchange::new(self.shared.clone()),
            pending: VecDeque::new(),
            scratch: Vec::new(),
            done: false,
        };
        let stream = futures::stream::unfold(state, |mut s| async move {
            loop {
                if let Some(next) = s.pending.pop_front() {
                    return Some((Ok(next), s));
                }
                if let Some(next) = s.exchange.next_owed() {
                    return Some((Ok(next), s));
                }
                if s.done {
                    return None;
                }
                let next = s.inbound.message();
                let next = match s.exchange.body_deadline() {
                    None => next.await,
                    Some(deadline) => match tokio::time::timeout_at(deadline, next).await {
                        Ok(next) => next,
                        Err(_) => {
                            s.exchange.body_timed_out(&mut s.scratch);
                            s.pending.extend(s.scratch.drain(..));
                            s.done = true;
                            continue;
                        }
                    },
                };
                match next {
                    Ok(Some(msg)) => {
                        if let Err(e) = s.exchange.on_message(msg, &mut s.scratch).await {
                            // The request gets the reason; the stream ends.
                            tracing::warn!(error = %e, "ext_proc stream aborted");
                            s.done = true;
                            s.scratch.clear();
                            s.exchange.protocol_error(&e, &mut s.scratch);
                        }
                        s.pending.extend(s.scratch.drain(..));
                    }
                    Ok(None) => s.done = true,
                    Err(status) => {
                        tracing::debug!(%status, "ext_proc stream ended by the proxy");
                        s.done = true;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
