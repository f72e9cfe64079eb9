//! Shared in-flight load, as kvpick-epp shares it through Valkey (`--shared-inflight-url`): every
//! `interval` a replica writes its own totals per endpoint ([`InFlight::report`]) to the store and
//! reads back the others' latest, which its picker counts as reservations until they are
//! `staleness` old ([`InFlight::fold_peer`]). One round trip per interval, as live; the store
//! itself answers instantly here.
//!
//! [`InFlight::report`]: kvpick_scheduler::InFlight::report
//! [`InFlight::fold_peer`]: kvpick_scheduler::InFlight::fold_peer

use std::time::Duration;

use kvpick_scheduler::inflight::{PeerLimits, PeerReport, ReplicaId};

use super::Replica;
use crate::clock::SimTime;
use crate::error::SimError;

/// How the replicas share their in-flight load; `None` in [`super::ReplicaSetup`]: not at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareSetup {
    /// Each replica's round period (µs); kvpick-epp's `--shared-inflight-interval`, 20 ms.
    pub interval_us: u64,
    /// A peer's report older than this no longer counts (µs); `--shared-inflight-staleness`, 1 s.
    pub staleness_us: u64,
}

impl Default for ShareSetup {
    fn default() -> Self {
        Self {
            interval_us: 20_000,
            staleness_us: 1_000_000,
        }
    }
}

impl ShareSetup {
    /// Refuses what cannot run.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.interval_us == 0 {
            return Err(SimError::InvalidConfig(
                "--share-inflight interval must be positive".into(),
            ));
        }
        Ok(())
    }

    /// When replica `r` of `count` first shares: out of phase, as their scrapes are.
    pub fn phase_us(&self, r: usize, count: usize) -> u64 {
        self.interval_us.saturating_mul(r as u64) / count.max(1) as u64
    }
}

/// The store: each replica's latest report, under its name.
#[derive(Debug)]
pub(super) struct Store {
    names: Vec<ReplicaId>,
    latest: Vec<Option<PeerReport>>,
}

impl Store {
    /// A store for `replicas`, whose pickers now hold peers' reports for `setup.staleness_us`.
    pub(super) fn new(setup: &ShareSetup, replicas: &[Replica]) -> Result<Self, SimError> {
        let limits = PeerLimits {
            staleness: Duration::from_micros(setup.staleness_us),
            max_peers: replicas.len(),
        };
        let mut names = Vec::with_capacity(replicas.len());
        for (r, replica) in replicas.iter().enumerate() {
            if let Some(inflight) = replica.router.inflight() {
                inflight.set_peer_limits(limits);
            }
            let name = ReplicaId::new(&format!("replica-{r}"))
                .ok_or_else(|| SimError::InvalidConfig(format!("replica name {r}")))?;
            names.push(name);
        }
        Ok(Self {
            latest: vec![None; replicas.len()],
            names,
        })
    }

    /// Replica `r`'s round at `now`: publish its totals, fold in every other replica's latest.
    pub(super) fn round(&mut self, r: usize, replicas: &[Replica], now: SimTime) {
        let Some(inflight) = replicas[r].router.inflight() else {
            return;
        };
        let at = now.timestamp();
        self.latest[r] = Some(inflight.report(at));
        for (q, report) in self.latest.iter().enumerate() {
            if let (true, Some(report)) = (q != r, report) {
                inflight.fold_peer(&self.names[q], report.clone(), at);
            }
        }
    }
}
