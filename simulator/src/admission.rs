//! Flow control in simulated time: the endpoint picker's decisions ([`FlowGate`], the same code),
//! driven by the event loop instead of tasks, so that a picker config with
//! `featureGates: [flowControl]` behaves here as it does in front of real pods.
//!
//! What the simulation leaves out: traces carry no priorities or tenants, so every request is
//! priority 0 in one flow (first come, first served), and there are no request bodies, so
//! `maxBytes` never binds. Queueing, pacing by the scraped signals, `maxRequests` and `queueTTL`
//! are the picker's own.

use kvpick_scheduler::flow::Arrival;
use kvpick_scheduler::{EndpointPickerConfig, FlowGate, FlowId, PodSignals, SaturationConfig};

use crate::clock::SimTime;

/// How often the loop lets requests out while some wait (the picker's dispatch tick).
pub const DISPATCH_TICK_US: u64 = 5_000;

/// What happens to an arriving request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing waits and the pool has room: route it now.
    Route,
    /// It waits; [`Admission::release`] lets it out.
    Queued,
    /// The queue is full: refused (429 in the picker).
    Rejected,
}

/// Requests released or refused by one round of [`Admission::release`], by trace index.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// To route now, in order.
    pub route: Vec<usize>,
    /// Past `queueTTL`: refused.
    pub expired: Vec<usize>,
}

/// The flow-control queue of one run.
#[derive(Debug)]
pub struct Admission {
    gate: FlowGate<usize>,
    saturation: SaturationConfig,
}

impl Admission {
    /// Flow control as `config` sets it; `None` when its feature gate is off.
    pub fn new(config: &EndpointPickerConfig) -> Option<Self> {
        config.flow.enabled.then(|| Self {
            gate: FlowGate::new(config.flow.clone()),
            saturation: config.saturation.clone(),
        })
    }

    /// Whether requests wait.
    pub fn is_empty(&self) -> bool {
        self.gate.queue().is_empty()
    }

    /// Request `index` arrives at `now`, the pool as last scraped showing `signals`.
    pub fn arrive(&mut self, index: usize, signals: &[PodSignals], now: SimTime) -> Verdict {
        let ts = now.timestamp();
        let pool = self.saturation.pool(signals.iter().map(Some), ts);
        match self.gate.arrive(&pool, 0, FlowId::default(), 0, index, ts) {
            Arrival::Go(_) => Verdict::Route,
            Arrival::Queued(_) => Verdict::Queued,
            Arrival::Refused(_) => Verdict::Rejected,
        }
    }

    /// One dispatch round at `now`: expires what waited `queueTTL`, then lets out as many as
    /// the pool has room for.
    pub fn release(&mut self, signals: &[PodSignals], now: SimTime) -> Released {
        let ts = now.timestamp();
        let pool = self.saturation.pool(signals.iter().map(Some), ts);
        let mut route = Vec::new();
        let expired = self.gate.release(&pool, ts, |d| {
            route.push(d.value);
            true
        });
        Released { route, expired }
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
    fn off_without_the_feature_gate() {
        assert!(Admission::new(&EndpointPickerConfig::default()).is_none());
    }

    #[test]
    fn requests_wait_while_saturated_and_leave_as_scrapes_show_room() {
        let mut a = Admission::new(&config("maxRequests: 2, queueTTL: 1s")).unwrap();
        let busy = [signals(9, 0)];
        assert_eq!(a.arrive(0, &[signals(0, 0)], at(1)), Verdict::Route);
        assert_eq!(a.arrive(1, &busy, at(2)), Verdict::Queued);
        assert_eq!(a.arrive(2, &busy, at(3)), Verdict::Queued);
        assert_eq!(a.arrive(3, &busy, at(4)), Verdict::Rejected);
        assert_eq!(a.release(&busy, at(5)), Released::default());
        // A scrape showing 4 of 5 waiting: room for two, oldest first.
        let room = [signals(4, 10)];
        let out = a.release(&room, at(11));
        assert_eq!(out.route, [1, 2]);
        assert!(a.is_empty());
        // Nothing waits, but the same scrape's room is spent: a newcomer still routes at once
        // (the pool is not saturated), as in the picker.
        assert_eq!(a.arrive(4, &room, at(12)), Verdict::Route);
        assert_eq!(a.arrive(5, &busy, at(13)), Verdict::Queued);
        let out = a.release(&busy, at(1013));
        assert_eq!(out.expired, [5]);
    }
}
