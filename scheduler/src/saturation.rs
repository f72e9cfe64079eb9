//! Pool saturation: whether any endpoint can still take work, from the scraped signals alone.
//!
//! The Gateway API Inference Extension's legacy rule: an endpoint has room while its waiting queue
//! and its KV-cache usage are both at or under their thresholds and its signals are fresh; the
//! pool is saturated when no endpoint has room. Stale signals count as saturated for that endpoint:
//! an endpoint that stopped reporting is not evidence of spare capacity. Requests with a negative
//! priority ("sheddable") are refused while the pool is saturated; the rest are scheduled as usual,
//! or, with flow control on, wait in [`crate::flow`]'s queue until the pool has room again.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::pods::PodSignals;
use crate::time::Timestamp;

/// When an endpoint counts as saturated (the `saturation` section of the picker config).
#[derive(Clone, Debug, PartialEq)]
pub struct SaturationConfig {
    /// Most waiting requests an endpoint may have and still have room (`queueDepthThreshold`).
    pub queue_depth: u32,
    /// Highest KV-cache usage, in [0, 1], an endpoint may have and still have room
    /// (`kvCacheUtilThreshold`).
    pub kv_usage: f64,
    /// Signals older than this count as saturated (`staleness.maxSignalAge`).
    pub max_signal_age: Duration,
    /// Priority of each InferenceObjective by name (`objectives`), for requests that name one in
    /// `x-gateway-inference-objective`.
    pub objectives: BTreeMap<String, i32>,
}

impl Default for SaturationConfig {
    /// The Inference Extension's defaults: 5 waiting requests, 80% KV-cache usage, and kvpick's
    /// default staleness (2 s).
    fn default() -> Self {
        Self {
            queue_depth: 5,
            kv_usage: 0.8,
            max_signal_age: Duration::from_secs(2),
            objectives: BTreeMap::new(),
        }
    }
}

/// How many endpoints of a pool are saturated, and how much room the others have, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolSaturation {
    /// Endpoints without room (over a threshold, stale, or never scraped).
    pub saturated: usize,
    /// Endpoints considered.
    pub total: usize,
    /// Requests the endpoints with room can still take before they count as saturated: per
    /// endpoint, `queue_depth + 1 - waiting`. What flow control may dispatch.
    pub slots: usize,
    /// The oldest scrape among the endpoints with room: requests sent after it are not in
    /// `slots` yet.
    pub slots_as_of: Timestamp,
}

impl PoolSaturation {
    /// No endpoint has room. An empty pool is not saturated: it has no endpoint at all, which
    /// is a different answer (503, not 429).
    pub fn is_saturated(&self) -> bool {
        self.total > 0 && self.saturated == self.total
    }

    /// Saturated endpoints as a fraction of the pool (0 for an empty pool).
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.saturated as f64 / self.total as f64
        }
    }
}

impl SaturationConfig {
    /// Whether an endpoint with these signals (`None`: never scraped) has no room at `now`.
    pub fn endpoint_saturated(&self, signals: Option<&PodSignals>, now: Timestamp) -> bool {
        match signals {
            None => true,
            Some(s) => {
                s.age(now) > self.max_signal_age
                    || s.waiting > self.queue_depth
                    || s.kv_usage > self.kv_usage
            }
        }
    }

    /// The pool's saturation over its endpoints' signals at `now`.
    pub fn pool<'a>(
        &self,
        signals: impl IntoIterator<Item = Option<&'a PodSignals>>,
        now: Timestamp,
    ) -> PoolSaturation {
        let mut p = PoolSaturation {
            slots_as_of: now,
            ..PoolSaturation::default()
        };
        for s in signals {
            p.total += 1;
            match s {
                Some(s) if !self.endpoint_saturated(Some(s), now) => {
                    p.slots += (self.queue_depth - s.waiting) as usize + 1;
                    p.slots_as_of = p.slots_as_of.min(s.scraped_at);
                }
                _ => p.saturated += 1,
            }
        }
        p
    }

    /// A request's priority: its objective's, when it names a configured one, else `header`
    /// (a priority header's value) when it parses, else 0.
    pub fn priority(&self, objective: Option<&str>, header: Option<&str>) -> i32 {
        objective
            .and_then(|o| self.objectives.get(o).copied())
            .or_else(|| header.and_then(|h| h.trim().parse().ok()))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::ZERO + Duration::from_secs(secs)
    }

    fn signals(waiting: u32, kv_usage: f64, scraped: u64) -> PodSignals {
        PodSignals {
            waiting,
            kv_usage,
            ..PodSignals::idle(at(scraped))
        }
    }

    #[test]
    fn an_endpoint_has_room_only_under_both_thresholds_and_fresh() {
        let c = SaturationConfig::default();
        let now = at(10);
        assert!(!c.endpoint_saturated(Some(&signals(5, 0.8, 10)), now));
        assert!(c.endpoint_saturated(Some(&signals(6, 0.1, 10)), now));
        assert!(c.endpoint_saturated(Some(&signals(0, 0.81, 10)), now));
        // Two seconds old is still fresh; three is stale, whatever it said.
        assert!(!c.endpoint_saturated(Some(&signals(0, 0.0, 8)), now));
        assert!(c.endpoint_saturated(Some(&signals(0, 0.0, 7)), now));
        assert!(c.endpoint_saturated(None, now));
    }

    #[test]
    fn the_pool_is_saturated_when_no_endpoint_has_room() {
        let c = SaturationConfig::default();
        let now = at(10);
        let busy = signals(9, 0.9, 10);
        let idle = signals(0, 0.0, 10);
        let stale_idle = signals(0, 0.0, 1);
        let p = c.pool([Some(&busy), Some(&idle), Some(&signals(3, 0.5, 9))], now);
        assert_eq!(
            p,
            PoolSaturation {
                saturated: 1,
                total: 3,
                // 6 for the idle endpoint, 3 for the one with 3 of 5 waiting.
                slots: 9,
                slots_as_of: at(9),
            }
        );
        assert!(!p.is_saturated());
        assert_eq!(p.fraction(), 1.0 / 3.0);
        let p = c.pool([Some(&busy), Some(&stale_idle), None], now);
        assert!(p.is_saturated());
        assert_eq!(p.slots, 0);
        assert_eq!(p.fraction(), 1.0);
        let empty = c.pool([], now);
        assert!(!empty.is_saturated());
        assert_eq!(empty.fraction(), 0.0);
    }

    #[test]
    fn priority_from_objective_then_header_then_zero() {
        let c = SaturationConfig {
            objectives: BTreeMap::from([("batch".to_owned(), -1), ("chat".to_owned(), 10)]),
            ..SaturationConfig::default()
        };
        assert_eq!(c.priority(Some("batch"), Some("5")), -1);
        assert_eq!(c.priority(Some("chat"), None), 10);
        assert_eq!(c.priority(Some("unknown"), Some(" -3 ")), -3);
        assert_eq!(c.priority(None, Some("high")), 0);
        assert_eq!(c.priority(None, None), 0);
    }
}
