//! Admission in simulated time: the endpoint picker's decisions ([`FlowGate`], the pool's
//! saturation, [`kvpick_scheduler::SloVerdict::action`]; the same code), driven by the event loop
//! instead of tasks, so that a picker config behaves here as it does in front of real pods.
//!
//! A sheddable request (trace priority < 0) is refused at once while the pool is saturated, with
//! or without flow control, as the picker's legacy rule says. With `featureGates: [flowControl]`
//! the others wait while the pool is saturated; a critical request that no engine is predicted to
//! serve within its objectives waits for one (each round with room lets it out for another pick)
//! until `queueTTL`, then goes best-effort.
//!
//! What the simulation leaves out: traces carry no tenants, so every request is in one flow
//! (first come, first served within a priority), and there are no request bodies, so
//! `maxBytes` never binds.

use std::collections::HashMap;

use kvpick_scheduler::flow::{Arrival, Leaving, Wait};
use kvpick_scheduler::{
    EndpointPickerConfig, FlowConfig, FlowGate, FlowId, PodSignals, SaturationConfig, Timestamp,
};

use crate::clock::SimTime;

/// How often the loop lets requests out while some wait (the picker's dispatch tick).
pub const DISPATCH_TICK_US: u64 = 5_000;

/// The picker's drop reason for a sheddable request refused while the pool is saturated.
pub const POOL_SATURATED: &str = "pool-saturated";

/// What happens to an arriving request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing waits for room and the pool has room (or flow control is off): route it now.
    Route,
    /// It waits; [`Admission::release`] lets it out.
    Queued,
    /// The queue is full: refused (429 in the picker).
    Rejected,
    /// Sheddable while the pool is saturated: refused (429 `pool-saturated` in the picker).
    Shed,
}

/// Requests released or refused by one round of [`Admission::release`], by trace index.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// To route now, in order: those that waited for room, and those that waited for their
    /// objectives and are picked again ([`Admission::may_wait_for_objective`] says whether they
    /// may wait more).
    pub route: Vec<usize>,
    /// Waited for room past `queueTTL`, or displaced: refused.
    pub expired: Vec<usize>,
}

/// The admission state of one run.
#[derive(Debug)]
pub struct Admission {
    /// The flow-control queue, when its feature gate is on.
    gate: Option<FlowGate<usize>>,
    flow: FlowConfig,
    saturation: SaturationConfig,
    /// When each request waiting for its objectives first queued for them.
    objective_since: HashMap<usize, Timestamp>,
}

impl Admission {
    /// Admission as `config` sets it.
    pub fn new(config: &EndpointPickerConfig) -> Self {
        Self {
            gate: config
                .flow
                .enabled
                .then(|| FlowGate::new(config.flow.clone())),
            flow: config.flow.clone(),
            saturation: config.saturation.clone(),
            objective_since: HashMap::new(),
        }
    }

    /// Whether requests wait.
    pub fn is_empty(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| g.queue().is_empty())
    }

    /// Request `index` of `priority` arrives at `now`, the pool as last scraped showing
    /// `signals`.
    pub fn arrive(
        &mut self,
        index: usize,
        priority: i32,
        signals: &[PodSignals],
        now: SimTime,
    ) -> Verdict {
        let ts = now.timestamp();
        let pool = self.saturation.pool(signals.iter().map(Some), ts);
        if priority < 0 && pool.is_saturated() {
            return Verdict::Shed;
        }
        let Some(gate) = &mut self.gate else {
            return Verdict::Route;
        };
        match gate.arrive(&pool, priority, FlowId::default(), 0, index, ts) {
            Arrival::Go(_) => Verdict::Route,
            Arrival::Queued(q) => {
                // Only the sheddable are displaced, and they wait for room only.
                debug_assert!(q.displaced.best_effort.is_empty());
                Verdict::Queued
            }
            Arrival::Refused(_) => Verdict::Rejected,
        }
    }

    /// Whether request `index`, which no engine is predicted to serve within its objectives,
    /// may wait (more) for one at `now`.
    pub fn may_wait_for_objective(&self, index: usize, now: SimTime) -> bool {
        let since = self.objective_since.get(&index).copied();
        self.flow.may_wait_for_objective(since, now.timestamp())
    }

    /// Queues request `index` of `priority` to wait for an engine predicted to meet its
    /// objectives (first at `now`, or again after a look). False when the queue has no place
    /// for it: it goes best-effort now.
    pub fn wait_for_objective(&mut self, index: usize, priority: i32, now: SimTime) -> bool {
        let Some(gate) = &mut self.gate else {
            return false;
        };
        let since = *self
            .objective_since
            .entry(index)
            .or_insert_with(|| now.timestamp());
        match gate.wait_for_objective(priority, FlowId::default(), 0, index, since) {
            Arrival::Queued(_) | Arrival::Go(_) => true,
            Arrival::Refused(_) => false,
        }
    }

    /// Request `index` left for good (routed or shed): forgets its wait.
    pub fn done(&mut self, index: usize) {
        self.objective_since.remove(&index);
    }

    /// One dispatch round at `now`: expires what waited `queueTTL`, then lets out as many as
    /// the pool has room for.
    pub fn release(&mut self, signals: &[PodSignals], now: SimTime) -> Released {
        let Some(gate) = &mut self.gate else {
            return Released::default();
        };
        let ts = now.timestamp();
        let pool = self.saturation.pool(signals.iter().map(Some), ts);
        let mut route = Vec::new();
        let Leaving {
            refused,
            best_effort,
        } = gate.release(&pool, ts, |d| {
            debug_assert!(d.wait == Wait::Room || self.objective_since.contains_key(&d.value));
            route.push(d.value);
            true
        });
        // Past their TTL, objective waiters are picked again with no more patience: the
        // caller's `may_wait_for_objective` says so, and routes them best-effort.
        route.extend(best_effort);
        Released {
            route,
            expired: refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(flow: &str) -> EndpointPickerConfig {
        EndpointPickerConfig::parse(&format!(
            "{}featureGates: [flowControl]\nflowControl: {{{flow}}}\n",
            EndpointPickerConfig::DEFAULT_YAML
        ))
        .unwrap()
    }

    fn at(ms: u64) -> SimTime {
        SimTime::from_millis(ms)
    }

    fn signals(waiting: u32, scraped_ms: u64) -> PodSignals {
        PodSignals {
            waiting,
            ..PodSignals::idle(at(scraped_ms).timestamp())
        }
    }

    #[test]
    fn without_the_feature_gate_only_the_sheddable_are_refused_when_saturated() {
        let mut a = Admission::new(&EndpointPickerConfig::default());
        let busy = [signals(9, 0)];
        assert_eq!(a.arrive(0, 0, &busy, at(1)), Verdict::Route);
        assert_eq!(a.arrive(1, -1, &busy, at(1)), Verdict::Shed);
        assert_eq!(a.arrive(2, -1, &[signals(0, 0)], at(1)), Verdict::Route);
        assert!(!a.may_wait_for_objective(0, at(1)));
        assert!(!a.wait_for_objective(0, 0, at(1)));
        assert!(a.is_empty());
    }

    #[test]
    fn requests_wait_while_saturated_and_leave_as_scrapes_show_room() {
        let mut a = Admission::new(&config("maxRequests: 2, queueTTL: 1s"));
        let busy = [signals(9, 0)];
        assert_eq!(a.arrive(0, 0, &[signals(0, 0)], at(1)), Verdict::Route);
        assert_eq!(a.arrive(1, 0, &busy, at(2)), Verdict::Queued);
        assert_eq!(a.arrive(2, 0, &busy, at(3)), Verdict::Queued);
        assert_eq!(a.arrive(3, 0, &busy, at(4)), Verdict::Rejected);
        assert_eq!(a.release(&busy, at(5)), Released::default());
        // A scrape showing 4 of 5 waiting: room for two, oldest first.
        let room = [signals(4, 10)];
        let out = a.release(&room, at(11));
        assert_eq!(out.route, [1, 2]);
        assert!(a.is_empty());
        // Nothing waits, but the same scrape's room is spent: a newcomer still routes at once
        // (the pool is not saturated), as in the picker.
        assert_eq!(a.arrive(4, 0, &room, at(12)), Verdict::Route);
        assert_eq!(a.arrive(5, 0, &busy, at(13)), Verdict::Queued);
        let out = a.release(&busy, at(1013));
        assert_eq!(out.expired, [5]);
    }

    #[test]
    fn objective_waiters_are_picked_again_until_their_ttl_then_go_best_effort() {
        let mut a = Admission::new(&config("queueTTL: 1s"));
        let room = [signals(0, 0)];
        assert!(a.may_wait_for_objective(7, at(0)));
        assert!(a.wait_for_objective(7, 0, at(0)));
        // Not waiting for room: newcomers are not held behind it.
        assert_eq!(a.arrive(8, 0, &room, at(1)), Verdict::Route);
        assert_eq!(a.release(&room, at(5)).route, [7]);
        // Still missing: queued again; its TTL runs from its first wait.
        assert!(a.may_wait_for_objective(7, at(5)));
        assert!(a.wait_for_objective(7, 0, at(5)));
        let saturated = [signals(9, 900)];
        let out = a.release(&saturated, at(1000));
        assert_eq!((out.route, out.expired), (vec![7], vec![]));
        assert!(!a.may_wait_for_objective(7, at(1000)));
        a.done(7);
        assert!(a.is_empty());
    }
}
