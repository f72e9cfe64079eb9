//! How the picker replicas of a run are set up: how many, how the gateway spreads requests over
//! them, and where their KV index comes from.

use std::str::FromStr;

use crate::error::SimError;

/// How the gateway spreads requests over the picker replicas (its load balancing to the EPP
/// Service: Envoy's cluster policy in front of the ext_proc replicas).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum ReplicaRouting {
    /// Each request to a uniformly random replica (seeded).
    Random,
    /// Replicas in turn.
    #[default]
    RoundRobin,
}

impl FromStr for ReplicaRouting {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, SimError> {
        match s {
            "random" => Ok(Self::Random),
            "round-robin" => Ok(Self::RoundRobin),
            _ => Err(SimError::InvalidConfig(format!(
                "replica routing {s:?}: random or round-robin"
            ))),
        }
    }
}

/// Where each replica's KV index comes from. Every replica subscribes to every pod's events, so
/// their indexes hold the same blocks; they differ only in when an event arrives.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum IndexView {
    /// One index every replica reads, fed `kv_event_latency` after each step: replicas whose
    /// subscriptions deliver at the same moment (and one copy in memory for the simulation).
    #[default]
    Shared,
    /// An index per replica; replica `r` receives each event `kv_event_latency + r·skew` after
    /// its step (subscriptions that lag each other).
    PerReplica {
        /// Extra delay per replica rank (µs).
        skew_us: u64,
    },
}

/// The replicas of one run. The default, one replica, is the simulation as it was before
/// replicas existed, to the last random draw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSetup {
    /// Picker replicas (at least 1).
    pub count: usize,
    /// How requests reach them.
    pub routing: ReplicaRouting,
    /// Their KV index.
    pub index: IndexView,
    /// Whether and how they share in-flight load.
    pub share: Option<super::ShareSetup>,
}

impl Default for ReplicaSetup {
    fn default() -> Self {
        Self {
            count: 1,
            routing: ReplicaRouting::default(),
            index: IndexView::default(),
            share: None,
        }
    }
}

impl ReplicaSetup {
    /// Refuses what cannot run.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.count == 0 {
            return Err(SimError::InvalidConfig(
                "--replicas must be at least 1".into(),
            ));
        }
        if self.count > u32::MAX as usize {
            return Err(SimError::InvalidConfig(format!(
                "--replicas {}: too many",
                self.count
            )));
        }
        self.share
            .as_ref()
            .map_or(Ok(()), super::ShareSetup::validate)
    }

    /// Index views that receive events: one when shared, else one per replica.
    pub fn index_views(&self) -> usize {
        match self.index {
            IndexView::Shared => 1,
            IndexView::PerReplica { .. } => self.count,
        }
    }

    /// Delay from a step to its events reaching index view `view` (µs).
    pub fn event_latency_us(&self, base_us: u64, view: usize) -> u64 {
        match self.index {
            IndexView::Shared => base_us,
            IndexView::PerReplica { skew_us } => {
                base_us.saturating_add(skew_us.saturating_mul(view as u64))
            }
        }
    }

    /// When replica `r` first scrapes: replicas run their own scrape loops, started at
    /// different moments, so their views refresh out of phase (`r·interval/count`).
    pub fn scrape_phase_us(&self, interval_us: u64, r: usize) -> u64 {
        interval_us.saturating_mul(r as u64) / self.count.max(1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_delays_and_refusals() {
        let s = ReplicaSetup {
            count: 4,
            index: IndexView::PerReplica { skew_us: 500 },
            ..ReplicaSetup::default()
        };
        assert_eq!(
            (0..4)
                .map(|r| s.scrape_phase_us(100, r))
                .collect::<Vec<_>>(),
            [0, 25, 50, 75]
        );
        assert_eq!(s.event_latency_us(1_000, 3), 2_500);
        assert_eq!(s.index_views(), 4);
        assert_eq!(ReplicaSetup::default().index_views(), 1);
        assert!(
            ReplicaSetup {
                count: 0,
                ..ReplicaSetup::default()
            }
            .validate()
            .is_err()
        );
        assert_eq!(
            "random".parse::<ReplicaRouting>().ok(),
            Some(ReplicaRouting::Random)
        );
        assert!("hash".parse::<ReplicaRouting>().is_err());
    }
}
