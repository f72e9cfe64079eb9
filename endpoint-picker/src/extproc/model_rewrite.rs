//! The pool's InferenceModelRewrites on the request path: a complete request body whose `model`
//! meets a rule is rewritten to the rule's next target model before it is parsed and scheduled,
//! so the pick, the tokenizer and the KV index all see the model that will serve it; the new body
//! goes upstream with its `content-length` set to its new length (full duplex: re-sent in chunks;
//! buffered: a body mutation). Requests routed on their headers alone (`STREAMED`, `NONE`, a
//! headers-only request) have no body kvpick can rewrite and pass as sent.

use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;

use crate::cluster_policy::{ClusterPolicy, body};
use crate::telemetry as t;

/// A body rewritten to another model.
#[derive(Debug)]
pub struct Rewritten {
    /// The new body, sent upstream in place of the client's.
    pub body: Bytes,
    /// The model the client asked for.
    pub from: String,
    /// The model it now names.
    pub to: Arc<str>,
}

/// `body` rewritten by the rule its model meets, if any (counted in [`t::MODEL_REWRITES`]).
pub fn apply(policy: &ClusterPolicy, body: &[u8]) -> Option<Rewritten> {
    let set = policy.get();
    if set.rewrites.is_empty() {
        return None;
    }
    let from = body::model(body)?;
    let rule = set.rewrites.rule(&from)?;
    let to = rule.pick().clone();
    if *to == *from {
        return None;
    }
    let new = body::with_model(body, &to)?;
    metrics::counter!(t::MODEL_REWRITES, "rewrite" => rule.source.to_string(), "model" => to.to_string())
        .increment(1);
    tracing::debug!(%from, to = %to, rewrite = %rule.source, "model rewritten");
    Some(Rewritten {
        body: Bytes::from(new),
        from,
        to,
    })
}

/// A buffered body answer carrying `body` in place of the client's (full-duplex answers re-send
/// the body in chunks instead).
pub fn with_body(mut answer: pb::ProcessingResponse, body: &Bytes) -> pb::ProcessingResponse {
    use pb::processing_response::Response;
    if let Some(Response::RequestBody(b)) = &mut answer.response {
        let common = b.response.get_or_insert_with(Default::default);
        common.body_mutation = Some(pb::BodyMutation {
            mutation: Some(pb::body_mutation::Mutation::Body(body.to_vec())),
        });
    }
    answer
}
