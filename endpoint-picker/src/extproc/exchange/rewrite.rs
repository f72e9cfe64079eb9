//! The request body's model renamed by the pool's InferenceModelRewrites
//! ([`super::super::model_rewrite`]) before it is parsed and scheduled, within the memory budget:
//! the new body is charged before it exists, in place of the client's.

use bytes::Bytes;

use super::super::model_rewrite;
use super::{Exchange, Mode, body_ceiling};
use crate::budget::Charge;
use crate::error::Error;

impl Exchange {
    /// `body` with its model rewritten when a rule applies (`true`), else as sent (`false`).
    pub(super) fn rewrite_model(
        &mut self,
        body: Bytes,
        trailers_follow: bool,
    ) -> Result<(Bytes, bool), Error> {
        let policy = &self.shared.policy;
        if self.request_mode == (Mode::Buffered { partial: true }) && trailers_follow {
            // Possibly cut at the gateway's buffer limit, the rest streaming past kvpick: a new
            // first part would be spliced onto the client's rest.
            model_rewrite::skipped(policy, "partial_body");
            return Ok((body, false));
        }
        let Some(plan) = model_rewrite::plan(policy, &body) else {
            return Ok((body, false));
        };
        let part = &self.shared.budget.requests;
        let mut charge = Charge::empty(part);
        if !charge.grow_within(plan.size(), body_ceiling(part, plan.size())) {
            return Err(Error::MemoryBudget { part: part.name() });
        }
        let rewritten = plan.apply(&body);
        // The client's body goes with its charge; the new one's is held until it is sent.
        self.body_charge = charge;
        Ok((rewritten, true))
    }
}
