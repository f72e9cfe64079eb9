//! Simulated time: whole microseconds since the start of the trace.
//!
//! A plain integer keeps the event heap small and ordering exact; the scheduling core gets it as its
//! own [`Timestamp`] at the boundary.

use std::fmt;
use std::time::Duration;

use kvpick_scheduler::Timestamp;

/// A point in simulated time, in microseconds since the trace's epoch.
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct SimTime(pub u64);

impl SimTime {
    /// The epoch.
    pub const ZERO: SimTime = SimTime(0);

    /// `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        SimTime(ms.saturating_mul(1000))
    }

    /// `s` seconds after the epoch, rounded to the microsecond; negative or NaN gives the epoch.
    pub fn from_secs_f64(s: f64) -> Self {
        SimTime((s * 1e6).round().max(0.0) as u64)
    }

    /// Microseconds since the epoch.
    pub const fn micros(self) -> u64 {
        self.0
    }

    /// Seconds since the epoch.
    pub fn secs(self) -> f64 {
        self.0 as f64 / 1e6
    }

    /// `us` microseconds later.
    pub const fn plus_micros(self, us: u64) -> Self {
        SimTime(self.0.saturating_add(us))
    }

    /// Seconds from `earlier` to `self` (zero if `earlier` is later).
    pub fn secs_since(self, earlier: SimTime) -> f64 {
        self.0.saturating_sub(earlier.0) as f64 / 1e6
    }

    /// The same instant as the scheduling core's time value.
    pub fn timestamp(self) -> Timestamp {
        Timestamp::from_duration(Duration::from_micros(self.0))
    }
}

impl fmt::Debug for SimTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6}s", self.secs())
    }
}
