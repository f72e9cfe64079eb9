//! The pool's InferenceModelRewrites on the request path: a complete request body whose `model`
//! meets a rule is rewritten to the rule's next target model before it is parsed and scheduled,
//! so the pick, the tokenizer and the KV index all see the model that will serve it; the new body
//! goes upstream with its `content-length` set to its new length (full duplex: re-sent in chunks;
//! buffered: a body mutation). Requests routed on their headers alone (`STREAMED`, `NONE`) have no
//! body kvpick sees before Envoy routes them, and pass as sent (counted in
//! [`t::MODEL_REWRITES_SKIPPED`]).

use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;

use crate::cluster_policy::{ClusterPolicy, body};
use crate::telemetry as t;

/// A rewrite decided for one body, not yet made: its size is known first, so the caller can
/// charge it to the memory budget before the new body exists.
#[derive(Debug)]
pub struct Plan {
    model: body::Model,
    to: Arc<str>,
    to_json: String,
    source: Arc<str>,
    size: usize,
}

impl Plan {
    /// The rewritten body's length.
    pub fn size(&self) -> usize {
        self.size
    }

    /// `body` (the one planned on) rewritten, counted in [`t::MODEL_REWRITES`].
    pub fn apply(self, body: &[u8]) -> Bytes {
        metrics::counter!(t::MODEL_REWRITES, "rewrite" => self.source.to_string(), "model" => self.to.to_string())
            .increment(1);
        tracing::debug!(from = %self.model.name, to = %self.to, rewrite = %self.source, "model rewritten");
        Bytes::from(self.model.rewrite(body, &self.to_json))
    }
}

/// The rewrite the rule `body`'s model meets asks for, if any (the rule's next target is taken).
pub fn plan(policy: &ClusterPolicy, body: &[u8]) -> Option<Plan> {
    let set = policy.get();
    if set.rewrites.is_empty() {
        return None;
    }
    let model = body::model(body)?;
    let rule = set.rewrites.rule(&model.name)?;
    let to = rule.pick().clone();
    if *to == *model.name {
        return None;
    }
    let to_json = serde_json::to_string(&*to).ok()?;
    Some(Plan {
        size: model.rewritten_len(body.len(), &to_json),
        model,
        to,
        to_json,
        source: rule.source.clone(),
    })
}

/// Counts (and logs once) a request whose body kvpick could not rewrite, for `reason`, while the
/// pool has rewrites.
pub fn skipped(policy: &ClusterPolicy, reason: &'static str) {
    if policy.get().rewrites.is_empty() {
        return;
    }
    metrics::counter!(t::MODEL_REWRITES_SKIPPED, "reason" => reason).increment(1);
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::warn!(
            reason,
            "the pool has InferenceModelRewrites but a request body was not rewritten: they need \
             FULL_DUPLEX_STREAMED or BUFFERED request bodies (counted in {})",
            t::MODEL_REWRITES_SKIPPED
        );
    });
}

/// A buffered body answer carrying `body` in place of the client's (full-duplex answers re-send
/// the body in chunks instead).
pub fn with_body(mut answer: pb::ProcessingResponse, body: Bytes) -> pb::ProcessingResponse {
    use pb::processing_response::Response;
    if let Some(Response::RequestBody(b)) = &mut answer.response {
        let common = b.response.get_or_insert_with(Default::default);
        common.body_mutation = Some(pb::BodyMutation {
            mutation: Some(pb::body_mutation::Mutation::Body(Vec::from(body))),
        });
    }
    answer
}
