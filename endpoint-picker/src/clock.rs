//! The sidecar's clock: the runtime's (pausable) monotonic time as the core's [`Timestamp`].

use kvpick_scheduler::Timestamp;
use tokio::time::Instant;

/// Converts runtime instants into [`Timestamp`]s measured from the clock's creation.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Now, as a timestamp.
    pub fn now(&self) -> Timestamp {
        self.at(Instant::now())
    }

    /// `instant` as a timestamp (the epoch if it is earlier).
    pub fn at(&self, instant: Instant) -> Timestamp {
        Timestamp::from_duration(instant.saturating_duration_since(self.epoch))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
