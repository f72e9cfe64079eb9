//! Binds every listener, builds the shared state, and runs all tasks until shutdown.
//!
//! [`Server::bind`] ([`bind`]) does everything that can fail at startup (ports, TLS material,
//! tokenizer files, the first read of the endpoints file, the KV-event bind socket) so that a
//! misconfiguration exits before serving; [`Server::run`] ([`run`]) then serves until the
//! shutdown future resolves, and [`shutdown`] takes it down in order: stop accepting, drain the
//! open streams, stop KV-event ingestion, join every task.

use std::net::SocketAddr;
use std::sync::Arc;

use kvpick_scheduler::KvIndex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::kv_events::{KvEvents, KvEventsHandle};
use crate::pool::Pool;
use crate::tokenizer::Tokenizer;
use crate::{Ingestion, Shared, discovery};

mod bind;
mod http2;
pub mod listener;
mod meter;
mod run;
mod settings;
mod shutdown;
pub mod tls;

pub use settings::Settings;

/// A bound, not yet serving, endpoint picker.
#[derive(Debug)]
pub struct Server {
    settings: Settings,
    grpc: TcpListener,
    query: Option<TcpListener>,
    health: TcpListener,
    metrics: Option<TcpListener>,
    tls: Option<tls::Tls>,
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    index: Arc<KvIndex>,
    kubernetes: Option<discovery::kubernetes::Discovery>,
    /// Ingestion, started in `bind` (its bind socket is a startup error) and stopped last; a
    /// server dropped without running aborts its tasks with it.
    kv_events: Option<KvEvents>,
    kv_events_stop: CancellationToken,
    tokenizer: Option<Tokenizer>,
    /// The shared in-flight state's status, when it is on.
    shared_inflight: Option<Arc<crate::shared_inflight::Status>>,
    /// Lets ingestion open its endpoints once the index bootstrap ran (`None`: no bootstrap;
    /// ingestion follows the pool from the start).
    opening: Option<crate::kv_events::Release>,
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

impl Server {
    /// Where the ext_proc service listens.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr().ok()
    }

    /// Where the kvpick.v1.Index query API listens.
    pub fn query_addr(&self) -> Option<SocketAddr> {
        self.query.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where gRPC health listens.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health.local_addr().ok()
    }

    /// Where `/metrics` listens.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Bind mode: where KV-event ingestion listens, one address per rank port.
    pub fn kv_events_bound(&self) -> &[SocketAddr] {
        self.kv_events.as_ref().map_or(&[], KvEvents::bound)
    }

    /// KV-event ingestion's state and counters.
    pub fn kv_events(&self) -> Option<KvEventsHandle> {
        self.kv_events.as_ref().map(KvEvents::handle)
    }

    /// The TLS certificate the gRPC port serves (DER, leaf first), when TLS is on.
    pub fn tls_certificate(&self) -> Option<Vec<Vec<u8>>> {
        let certs = self.tls.as_ref()?.certificate();
        Some(certs.iter().map(|c| c.as_ref().to_vec()).collect())
    }

    /// The shared state (picker, pool, index through the scheduler).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether the shared in-flight store answers and how many peers count (`None`: off).
    pub fn shared_inflight(&self) -> Option<Arc<crate::shared_inflight::Status>> {
        self.shared_inflight.clone()
    }

    /// The pool (embedders without an endpoints file reconcile it themselves).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The seam KV-event ingestion plugs into.
    pub fn ingestion(&self) -> Ingestion {
        Ingestion {
            views: self.pool.subscribe(),
            index: self.index.clone(),
            bind: self.settings.kv_events_bind.clone(),
            clock: self.shared.clock,
            anchors: self.shared.anchors.clone(),
        }
    }
}
