//! Bind mode: pods connect to kvpick. One guarded listener per data-parallel rank port (vLLM's
//! rank N connects to the configured port + N), and one SUB per accepted connection: the topic
//! `kv@<ip[:port]>@<model>` says which pod a batch is about, the connection who sent it, and the
//! two must agree.
//!
//! Who may send: a connection is accepted only from the IP of a known endpoint (else dropped and
//! counted as `unknown_peer`), at most `max_bind_connections` at once and
//! `max_bind_connections_per_peer` from one IP; the peer must finish its ZMTP handshake within
//! `bind_handshake_timeout` and may stay silent at most `bind_idle_timeout`. A batch whose topic
//! names another IP than its connection's is dropped and counted (`sender_mismatch`): a pod can
//! speak only for itself. `zeromq`'s SUB does not say which peer a message came from, so each
//! connection gets its own SUB, reached over a one-shot loopback relay (the frame guard's, which
//! also bounds what the peer can make us buffer); the handshake stays `zeromq`'s.
//!
//! Endpoint resolution, for topic host `ip`, optional port `P`, and rank `r` (the batch's
//! `data_parallel_rank`, else the rank of the port it arrived on):
//! 1. the endpoint at `ip:(P + r)` whose rank is `r` (vLLM's port convention);
//! 2. else the one endpoint at `ip` whose rank is `r`;
//! 3. else the endpoint at `ip:(P + r)` (discovery that does not know ranks).
//!
//! A topic naming no known endpoint is dropped and counted: strangers cannot fill the index.
//! The SUB subscribes to `kv@` only, so publishers filter out other topics themselves (vLLM's
//! default topic is empty: bind mode needs the convention, since the topic is the identity).
//! The payload is decoded here only when the pod's IP has several endpoints (its ranks); the
//! worker then reuses the decoded batch.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use kvpick_scheduler::events::{Topic, parse_message};
use parking_lot::RwLock;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketOptions, SocketRecv, SubSocket, ZmqMessage};

use super::batch::Batch;
use super::guard::{self, Deadlines, RelayEnd};
use super::mailbox::{Item, Mailbox};
use super::metrics::EndpointMetrics;
use super::subscriber::{DRAIN, count_end, push};
use super::{DropReason, Shared};
use crate::error::Error;

/// An endpoint as bind mode can reach it.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub address: SocketAddr,
    pub rank: u32,
    pub mailbox: Arc<Mailbox>,
    pub metrics: Arc<EndpointMetrics>,
    /// kvpick also subscribes to it in connect mode; two paths would break its ordering.
    pub connect_mode: bool,
}

/// Every endpoint by IP, swapped whole when the endpoint set changes.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    by_ip: HashMap<IpAddr, Vec<Route>>,
}

impl Routes {
    pub fn new(routes: impl IntoIterator<Item = Route>) -> Self {
        let mut by_ip: HashMap<IpAddr, Vec<Route>> = HashMap::new();
        for route in routes {
            by_ip
                .entry(route.address.ip().to_canonical())
                .or_default()
                .push(route);
        }
        Self { by_ip }
    }

    fn pod(&self, ip: IpAddr) -> Option<&[Route]> {
        self.by_ip.get(&ip).map(Vec::as_slice)
    }
}

fn resolve(pod: &[Route], port: Option<u16>, rank: u32) -> Option<&Route> {
    let convention = port.and_then(|p| u16::try_from(u32::from(p) + rank).ok());
    let at_port = |r: &&Route| Some(r.address.port()) == convention;
    if let Some(route) = pod.iter().filter(at_port).find(|r| r.rank == rank) {
        return Some(route);
    }
    let mut ranked = pod.iter().filter(|r| r.rank == rank);
    match (ranked.next(), ranked.next()) {
        (Some(route), None) => Some(route),
        _ => pod.iter().find(at_port),
    }
}

/// The routes the receivers read, replaced by the manager.
pub(crate) type SharedRoutes = Arc<RwLock<Arc<Routes>>>;

/// Binds one listener per rank port and starts their accept loops.
/// Returns the addresses bound (ports resolved).
pub(crate) async fn start(
    shared: &Arc<Shared>,
    routes: &SharedRoutes,
    tasks: &mut JoinSet<()>,
    cancel: &CancellationToken,
) -> Result<Vec<SocketAddr>, Error> {
    let Some(base) = shared.config.bind else {
        return Ok(Vec::new());
    };
    let mut bound = Vec::new();
    for rank in 0..u32::from(shared.config.bind_ranks) {
        let port = match base.port() {
            0 => 0,
            p => u16::try_from(u32::from(p) + rank)
                .map_err(|_| Error::Config(format!("bind port {p} + rank {rank} overflows")))?,
        };
        let addr = SocketAddr::new(base.ip(), port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let public = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        tasks.spawn(accept(
            listener,
            rank,
            Arc::clone(routes),
            Arc::clone(shared),
            cancel.clone(),
        ));
        bound.push(public);
    }
    Ok(bound)
}

/// Live connections per peer IP, shared by a listener's connections.
type PeerCounts = Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>;

/// One connection's place in its peer's count; given back when dropped.
struct PeerSlot {
    counts: PeerCounts,
    ip: IpAddr,
}

impl PeerSlot {
    fn take(counts: &PeerCounts, ip: IpAddr, max: usize) -> Option<Self> {
        let mut map = counts.lock();
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: Arc::clone(counts),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Accepts pods: each known peer, within the connection caps, gets its own guarded SUB.
async fn accept(
    listener: TcpListener,
    rank: u32,
    routes: SharedRoutes,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_bind_connections));
    let per_peer: PeerCounts = Arc::default();
    let mut peers: JoinSet<RelayEnd> = JoinSet::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(end) = peers.join_next(), if !peers.is_empty() => {
                count_end(&shared.metrics, end.unwrap_or(RelayEnd::Closed));
            }
            accepted = listener.accept() => {
                let Ok((stream, from)) = accepted else {
                    // Out of descriptors, typically: let connections finish rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                };
                let ip = from.ip().to_canonical();
                if routes.read().pod(ip).is_none() {
                    shared.metrics.dropped(DropReason::UnknownPeer);
                    continue;
                }
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    shared.metrics.dropped(DropReason::TooManyConnections);
                    continue;
                };
                let max = shared.config.max_bind_connections_per_peer;
                let Some(peer_slot) = PeerSlot::take(&per_peer, ip, max) else {
                    shared.metrics.dropped(DropReason::TooManyConnections);
                    continue;
                };
                let peer = Peer {
                    ip,
                    rank,
                    routes: Arc::clone(&routes),
                    shared: Arc::clone(&shared),
                };
                peers.spawn(peer.serve(stream, (slot, peer_slot), cancel.clone()));
            }
        }
    }
    peers.shutdown().await;
}

/// One accepted connection: who it is, and where its batches go.
struct Peer {
    ip: IpAddr,
    rank: u32,
    routes: SharedRoutes,
    shared: Arc<Shared>,
}

impl Peer {
    /// Relays the peer to its own SUB and routes what it publishes, until either side closes.
    async fn serve(
        self,
        stream: TcpStream,
        _slots: (OwnedSemaphorePermit, PeerSlot),
        cancel: CancellationToken,
    ) -> RelayEnd {
        let _ = guard::tune(&stream);
        let config = &self.shared.config;
        let deadlines = Deadlines {
            handshake: Some(config.bind_handshake_timeout),
            idle: Some(config.bind_idle_timeout).filter(|d| !d.is_zero()),
        };
        let link = guard::link(
            stream,
            self.shared.limits(),
            deadlines,
            config.connect_timeout,
        );
        let Ok(mut link) = link.await else {
            return RelayEnd::Closed;
        };
        let mut options = SocketOptions::default();
        options.connect_timeout(config.connect_timeout);
        let mut sub = SubSocket::with_options(options);
        let endpoint = link.endpoint.clone();
        let ready = async {
            sub.subscribe(Topic::PREFIX).await?;
            sub.connect(&endpoint).await
        };
        // The handshake waits on the peer too: its deadline ends the relay, and so this.
        let ready = tokio::select! {
            () = cancel.cancelled() => false,
            end = link.ended() => return end,
            ready = ready => ready.is_ok(),
        };
        if ready {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    end = link.ended() => {
                        // Deliver what the pod sent before it closed.
                        while let Ok(Ok(message)) = tokio::time::timeout(DRAIN, sub.recv()).await {
                            self.route(message);
                        }
                        return end;
                    }
                    received = sub.recv() => match received {
                        Ok(message) => self.route(message),
                        Err(e) => {
                            tracing::debug!(error = %e, peer = %self.ip, "KV-event bind socket: peer error");
                            break;
                        }
                    },
                }
            }
        }
        drop(sub);
        link.close().await
    }

    fn route(&self, message: ZmqMessage) {
        let metrics = &self.shared.metrics;
        let frames = message.into_vec();
        let Ok(parsed) = parse_message(&frames) else {
            return metrics.dropped(DropReason::Malformed);
        };
        let Ok(topic) = Topic::parse(parsed.topic) else {
            return metrics.dropped(DropReason::BadTopic);
        };
        let Some(ip) = topic.ip().map(|ip| ip.to_canonical()) else {
            return metrics.dropped(DropReason::UnknownTopic);
        };
        if ip != self.ip {
            // Another pod's topic: a pod speaks only for itself.
            return metrics.dropped(DropReason::SenderMismatch);
        }
        let routes = Arc::clone(&self.routes.read());
        let Some(pod) = routes.pod(ip) else {
            return metrics.dropped(DropReason::UnknownTopic);
        };
        let mut batch = Batch::new(parsed.seq, parsed.payload.clone());
        let mut rank = self.rank;
        if pod.len() > 1 {
            // Several endpoints behind this IP: the batch's own rank picks one.
            match batch.events() {
                Ok(events) => rank = events.data_parallel_rank.unwrap_or(rank),
                Err(_) => return metrics.dropped(DropReason::Malformed),
            }
        }
        let Some(route) = resolve(pod, topic.port(), rank) else {
            return metrics.dropped(DropReason::UnknownTopic);
        };
        if route.connect_mode {
            return metrics.dropped(DropReason::DuplicateSource);
        }
        push(
            &route.mailbox,
            Item::Batch(batch),
            &route.metrics,
            &self.shared,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_events::mailbox::RunQueue;

    fn route(addr: &str, rank: u32) -> Route {
        let endpoint = kvpick_scheduler::EndpointId::new(0).unwrap();
        Route {
            address: addr.parse().unwrap(),
            rank,
            mailbox: Mailbox::new(endpoint, 1, 1, Arc::new(RunQueue::default())),
            metrics: Arc::new(EndpointMetrics::for_tests()),
            connect_mode: false,
        }
    }

    #[test]
    fn resolution_follows_the_documented_rules() {
        let pod = [
            route("10.0.0.1:8000", 0),
            route("10.0.0.1:8001", 1),
            route("10.0.0.1:9000", 0),
        ];
        let port = |r: Option<&Route>| r.map(|r| r.address.port());
        assert_eq!(port(resolve(&pod, Some(8000), 1)), Some(8001));
        assert_eq!(port(resolve(&pod, Some(9000), 0)), Some(9000));
        // Two rank-0 endpoints and no port: ambiguous.
        assert_eq!(port(resolve(&pod, None, 0)), None);
        assert_eq!(port(resolve(&pod, None, 1)), Some(8001));
        assert_eq!(port(resolve(&pod, Some(7000), 5)), None);
        // Ranks unknown to discovery (all 0): the port convention decides.
        let flat = [route("10.0.0.2:8000", 0), route("10.0.0.2:8001", 0)];
        assert_eq!(port(resolve(&flat, Some(8000), 1)), Some(8001));
    }
}
