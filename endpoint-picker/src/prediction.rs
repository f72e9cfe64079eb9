//! Index accuracy, live: the prefix kvpick predicted the primary holds, against the cached tokens
//! the pod then reports (`usage.prompt_tokens_details.cached_tokens`).
//!
//! A positive gap means the index promised blocks the pod no longer had (missed or late removal
//! events, eviction under pressure); a negative gap means the pod had more than the index knew
//! (missed store events, or blocks kvpick cannot see, such as a partial last block). Exported as
//! a histogram so operators see drift, not just a mean.

use std::net::SocketAddr;

use crate::Shared;
use crate::router::Routing;

/// What was predicted for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prediction {
    /// The endpoint the prediction is about.
    pub primary: SocketAddr,
    /// Tokens of the prompt's prefix the index said the primary holds.
    pub tokens: u64,
}

impl Prediction {
    /// The prediction behind `routing`: its matched blocks in tokens of the index's block size.
    pub fn new(shared: &Shared, routing: &Routing) -> Self {
        let block = u64::from(shared.router.scheduler().index().block_size().get());
        Self {
            primary: routing.primary,
            tokens: u64::from(routing.matched_blocks) * block,
        }
    }

    /// Predicted minus reported cached tokens, when the request was served by the endpoint the
    /// prediction is about (`served`; a fallback's cache says nothing about the primary's).
    pub fn error(&self, served: Option<SocketAddr>, cached: u64) -> Option<f64> {
        if served.is_some_and(|s| s != self.primary) {
            return None;
        }
        Some(self.tokens as f64 - cached as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_is_predicted_minus_cached_for_the_primary_only() {
        let a: SocketAddr = "10.0.0.1:8000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:8000".parse().unwrap();
        let p = Prediction {
            primary: a,
            tokens: 64,
        };
        assert_eq!(p.error(Some(a), 48), Some(16.0));
        assert_eq!(p.error(None, 96), Some(-32.0));
        assert_eq!(p.error(Some(b), 0), None);
    }
}
