//! The task that keeps this replica's view of its peers' load: connect, then one round per
//! interval (publish ours, fold theirs), and on any failure drop the peers, say so, back off and
//! reconnect. It stops when told to, after a best-effort goodbye (its field deleted).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kvpick_scheduler::inflight::{InFlight, PeerFold, PeerReport, ReplicaId};
use kvpick_scheduler::{EndpointId, Scheduler, Timestamp};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::codec::{self, Malformed};
use super::store::{Round, Store};
use super::{CONNECTED, HEALTH_SERVICE, PEERS, REJECTED, ROUNDS, SharedInflightConfig};
use crate::clock::Clock;
use crate::health::Health;
use crate::pool::{Pool, PoolView};

/// Whether the store answers and how many peers count, for tests and embedders.
#[derive(Debug, Default)]
pub struct Status {
    connected: AtomicBool,
    peers: AtomicUsize,
}

impl Status {
    /// Whether the last round with the store succeeded.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Peers whose reports the last round counted.
    pub fn peers(&self) -> usize {
        self.peers.load(Ordering::Relaxed)
    }
}

/// What the task works on.
pub struct PeerSync {
    /// Its settings.
    pub config: SharedInflightConfig,
    /// Whose in-flight accounting it publishes from and folds into.
    pub scheduler: Arc<Scheduler>,
    /// Addresses by endpoint id and back.
    pub pool: Arc<Pool>,
    /// The picker's clock.
    pub clock: Clock,
    /// Where the readiness detail goes.
    pub health: Health,
    /// Shared with [`crate::Server`] for reads.
    pub status: Arc<Status>,
}

impl std::fmt::Debug for PeerSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSync")
            .field("config", &self.config)
            .field("peers", &self.status.peers())
            .finish_non_exhaustive()
    }
}

/// Runs until `stop`.
pub async fn run(sync: PeerSync, stop: CancellationToken) {
    let mut backoff = sync.config.backoff_min;
    let mut counted = BTreeSet::new();
    sync.set_connected(false, &mut counted).await;
    loop {
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            c = tokio::time::timeout(sync.config.store.timeout, Store::connect(sync.config.store.clone())) => c,
        };
        let mut store = match connected {
            Ok(Ok(store)) => store,
            failed => {
                let why = failed.map_or_else(
                    |_| "timed out".to_owned(),
                    |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
                );
                tracing::warn!(error = %why, retry_in = ?backoff, "shared in-flight store unreachable; routing on this replica's view");
                metrics::counter!(ROUNDS, "outcome" => "connect_error").increment(1);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(sync.config.backoff_max);
                continue;
            }
        };
        tracing::info!(key = %sync.config.store.key, replica = %sync.config.replica, "shared in-flight store connected");
        let mut tick = tokio::time::interval(sync.config.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let bye = store.goodbye(sync.config.replica.as_str());
                    if tokio::time::timeout(sync.config.store.timeout, bye).await.is_err() {
                        tracing::debug!("shared in-flight goodbye timed out");
                    }
                    return;
                }
                _ = tick.tick() => {}
            }
            let payload = sync.payload();
            let round = store.round(sync.config.replica.as_str(), &payload);
            match tokio::time::timeout(sync.config.store.timeout, round).await {
                Ok(Ok(round)) => {
                    metrics::counter!(ROUNDS, "outcome" => "ok").increment(1);
                    if !sync.status.connected() {
                        sync.set_connected(true, &mut counted).await;
                    }
                    backoff = sync.config.backoff_min;
                    sync.fold(round, &mut counted);
                }
                failed => {
                    let why = failed.map_or_else(
                        |_| "timed out".to_owned(),
                        |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
                    );
                    tracing::warn!(error = %why, "shared in-flight round failed; routing on this replica's view");
                    metrics::counter!(ROUNDS, "outcome" => "error").increment(1);
                    sync.set_connected(false, &mut counted).await;
                    break;
                }
            }
        }
    }
}

impl PeerSync {
    fn inflight(&self) -> &InFlight {
        self.scheduler.inflight()
    }

    /// This replica's totals, by address.
    fn payload(&self) -> String {
        let report = self.inflight().report(self.clock.now());
        let view = self.pool.view();
        let endpoints = report
            .endpoints
            .into_iter()
            .filter_map(|(id, t)| view.by_id(id).map(|m| (m.endpoint.address, t)))
            .collect();
        codec::encode(report.pick_rate, endpoints, self.config.max_endpoints)
    }

    /// Folds a round's values in; peers counted before and absent now are dropped. Scrapes not
    /// yet folded in go first, so that what they show of the peers' requests is told apart from
    /// the peers' picks since (the core counts a scrape's load beyond the peers' reports held
    /// when it folds it in).
    fn fold(&self, round: Round, counted: &mut BTreeSet<ReplicaId>) {
        let now = self.clock.now();
        let view = self.pool.view();
        for m in &view.members {
            if let Some(signals) = m.live.signals() {
                self.scheduler.reconcile(m.endpoint.id, &signals);
            }
        }
        let mut seen = BTreeSet::new();
        for (field, value) in round.fields {
            let Some(replica) = std::str::from_utf8(&field).ok().and_then(ReplicaId::new) else {
                rejected("replica_name");
                continue;
            };
            if replica == self.config.replica {
                continue;
            }
            let report = match decode(&value, round.now_ms, &view, now, &self.config) {
                Ok(report) => report,
                Err(Malformed(reason)) => {
                    rejected(reason);
                    continue;
                }
            };
            match self.inflight().fold_peer(&replica, report, now) {
                // Superseded: the same value read again, a little earlier on our clock.
                PeerFold::Counted | PeerFold::Superseded => {
                    seen.insert(replica);
                }
                PeerFold::Stale => rejected("stale"),
                PeerFold::Full => rejected("too_many_replicas"),
            }
        }
        for gone in counted.difference(&seen) {
            self.inflight().drop_peer(gone);
        }
        *counted = seen;
        self.status.peers.store(counted.len(), Ordering::Relaxed);
        metrics::gauge!(PEERS).set(counted.len() as f64);
    }

    async fn set_connected(&self, up: bool, counted: &mut BTreeSet<ReplicaId>) {
        if !up {
            for peer in std::mem::take(counted) {
                self.inflight().drop_peer(&peer);
            }
            self.status.peers.store(0, Ordering::Relaxed);
            metrics::gauge!(PEERS).set(0.0);
        }
        self.status.connected.store(up, Ordering::Relaxed);
        metrics::gauge!(CONNECTED).set(if up { 1.0 } else { 0.0 });
        self.health.component(HEALTH_SERVICE, up).await;
    }
}

/// A peer's value as a report in this replica's ids and time: endpoints this replica does not
/// know are left out (discovery may lag), ages beyond the staleness bound refused.
fn decode(
    value: &[u8],
    store_now_ms: u64,
    view: &PoolView,
    now: Timestamp,
    config: &SharedInflightConfig,
) -> Result<PeerReport, Malformed> {
    let decoded = codec::decode(value, store_now_ms, config.max_endpoints)?;
    if decoded.age > config.staleness {
        return Err(Malformed("stale"));
    }
    let endpoints: Vec<(EndpointId, _)> = decoded
        .endpoints
        .into_iter()
        .filter_map(|(address, t)| view.by_address(&address).map(|m| (m.endpoint.id, t)))
        .collect();
    Ok(PeerReport {
        as_of: Timestamp::from_duration(now.since_epoch().saturating_sub(decoded.age)),
        pick_rate: decoded.pick_rate,
        endpoints,
    })
}

fn rejected(reason: &'static str) {
    metrics::counter!(REJECTED, "reason" => reason).increment(1);
}
