//! What a request waits for in the queue, and what becomes of it when it leaves undispatched.

use super::Waiting;

/// What a request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Room in the pool: past `ttl` or displaced it is refused (429).
    Room,
    /// An endpoint predicted to meet its objectives: past `ttl` or displaced it is routed
    /// best-effort (to the best endpoint, whatever the prediction).
    Objective,
}

/// Requests leaving the queue without being dispatched (expired or displaced).
#[derive(Debug, PartialEq)]
pub struct Leaving<T> {
    /// They waited for room: refused.
    pub refused: Vec<T>,
    /// They waited for their objectives: routed best-effort.
    pub best_effort: Vec<T>,
}

impl<T> Default for Leaving<T> {
    fn default() -> Self {
        Self {
            refused: Vec::new(),
            best_effort: Vec::new(),
        }
    }
}

impl<T> Leaving<T> {
    /// Whether nobody leaves.
    pub fn is_empty(&self) -> bool {
        self.refused.is_empty() && self.best_effort.is_empty()
    }

    pub(super) fn push(&mut self, w: Waiting<T>) {
        match w.wait {
            Wait::Room => self.refused.push(w.value),
            Wait::Objective => self.best_effort.push(w.value),
        }
    }
}
