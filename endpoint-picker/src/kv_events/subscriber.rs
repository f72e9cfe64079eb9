//! Connect mode: one SUB per endpoint, connected to the pod's publisher.
//!
//! The connection is ours, not `zeromq`'s: each attempt dials the pod through the frame guard
//! (bounded by the connect timeout, cancellable), then a fresh SUB connects to the guard over
//! loopback. When the pod goes away the session ends and we redial with backoff (capped low, as
//! a restarting vLLM comes back in seconds; `zeromq`'s own reconnection backs off to 30 s and
//! its first connect gives up after 30 s). Every new session is announced to the worker, which
//! proves continuity with a replay or resynchronises.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kvpick_scheduler::events::parse_message;
use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketOptions, SocketRecv, SubSocket, ZmqMessage};

use super::batch::Batch;
use super::guard::{self, Link, RelayEnd, Violation};
use super::mailbox::{Item, Mailbox, Pushed};
use super::metrics::{EndpointMetrics, IngestMetrics};
use super::{DropReason, Shared};
use kvpick_scheduler::EventsState;

/// After the pod closed the connection, how long to keep reading what `zeromq` still holds.
pub(crate) const DRAIN: Duration = Duration::from_millis(50);

/// One endpoint's subscription.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub publisher: SocketAddr,
    pub mailbox: Arc<Mailbox>,
    pub metrics: Arc<EndpointMetrics>,
    pub shared: Arc<Shared>,
}

impl Subscriber {
    /// Runs sessions until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let config = &self.shared.config;
        let mut backoff = config.reconnect_min;
        while !cancel.is_cancelled() {
            let dialed = tokio::select! {
                () = cancel.cancelled() => return,
                dialed = guard::dial(self.publisher, self.shared.limits(), config.connect_timeout) => dialed,
            };
            match dialed {
                Ok(link) => {
                    if self.session(link, &cancel).await {
                        backoff = config.reconnect_min;
                    }
                }
                Err(e) => {
                    tracing::debug!(publisher = %self.publisher, error = %e, "KV-event publisher unreachable")
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(config.reconnect_max);
        }
    }

    /// One connection; returns whether it got as far as subscribing.
    async fn session(&self, mut link: Link, cancel: &CancellationToken) -> bool {
        let mut options = SocketOptions::default();
        options.connect_timeout(self.shared.config.connect_timeout);
        let mut sub = SubSocket::with_options(options);
        let ready = async {
            sub.subscribe("").await?;
            sub.connect(&link.endpoint).await
        };
        if let Err(e) = ready.await {
            tracing::debug!(publisher = %self.publisher, error = %e, "KV-event handshake failed");
            count_end(&self.shared.metrics, link.close().await);
            return false;
        }
        tracing::debug!(publisher = %self.publisher, "KV-event publisher connected");
        self.push(Item::Connected);
        let mut ended = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                end = link.ended() => {
                    ended = true;
                    count_end(&self.shared.metrics, end);
                    // Deliver what the pod sent before it closed.
                    while let Ok(Ok(message)) = tokio::time::timeout(DRAIN, sub.recv()).await {
                        self.deliver(message);
                    }
                    break;
                }
                received = sub.recv() => match received {
                    Ok(message) => self.deliver(message),
                    Err(_) => break,
                },
            }
        }
        self.push(Item::Disconnected);
        drop(sub);
        if !ended {
            count_end(&self.shared.metrics, link.close().await);
        } else {
            link.close().await;
        }
        true
    }

    fn deliver(&self, message: ZmqMessage) {
        let frames = message.into_vec();
        match parse_message(&frames) {
            Ok(parsed) => {
                let batch = Batch::new(parsed.seq, parsed.payload.clone());
                self.push(Item::Batch(batch));
            }
            Err(_) => self.shared.metrics.dropped(DropReason::Malformed),
        }
    }

    fn push(&self, item: Item) {
        push(&self.mailbox, item, &self.metrics, &self.shared);
    }
}

/// Queues an item for an endpoint. A refusal is counted and marks the endpoint stale at once:
/// its worker is behind, and will resynchronise it when it gets to the mailbox.
pub(crate) fn push(mailbox: &Arc<Mailbox>, item: Item, ep: &EndpointMetrics, shared: &Shared) {
    if mailbox.push(item) == Pushed::Overflow {
        ep.overflow();
        shared.metrics.dropped(DropReason::QueueFull);
        shared.states.set(mailbox.endpoint, EventsState::Stale);
    }
}

/// Counts a connection the guard cut.
pub(crate) fn count_end(metrics: &IngestMetrics, end: RelayEnd) {
    match end {
        RelayEnd::Closed => {}
        RelayEnd::Violation(Violation::Oversized) => metrics.dropped(DropReason::Oversized),
        RelayEnd::Violation(_) => metrics.dropped(DropReason::BadFraming),
        RelayEnd::TimedOut => metrics.dropped(DropReason::TimedOut),
    }
}
