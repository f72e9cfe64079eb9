//! kvpick's own query API, `kvpick.v1.Index` (`proto/kvpick/v1/index.proto`): what the router
//! knows and how it would rank, for other routers, tools and `kvpick-epp query`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use kvpick_scheduler::EventsState;
use kvpick_scheduler::keys::block_keys;
use kvpick_scheduler::{EndpointSet, Partition, PrefixMatches, Prompt};
use tonic::{Request, Response, Status};

use crate::Shared;
use crate::pool::Freshness;
use crate::prompt::{TokenizeCall, Tokenized, Tokens};
use crate::request::PromptInput;
use crate::router::AddressedRequest;

pub mod client;
pub mod dump;

/// Generated messages and service code for `kvpick.v1`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("kvpick.v1");
}

use pb::index_server::{Index, IndexServer};

/// The `kvpick.v1.Index` service.
#[derive(Debug, Clone)]
pub struct IndexApi {
    shared: Arc<Shared>,
}

impl IndexApi {
    /// A service over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The tonic server wrapper.
    pub fn into_server(self) -> IndexServer<Self> {
        IndexServer::new(self)
    }
}

#[tonic::async_trait]
impl Index for IndexApi {
    type DumpStream = dump::DumpStream;

    async fn dump(
        &self,
        _request: Request<pb::DumpRequest>,
    ) -> Result<Response<Self::DumpStream>, Status> {
        Ok(Response::new(dump::stream(self.shared.clone())))
    }

    async fn score(
        &self,
        request: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        let req = request.into_inner();
        if req.model.is_empty() {
            return Err(Status::invalid_argument("model is required"));
        }
        let subset: Vec<SocketAddr> = req
            .candidates
            .iter()
            .map(|c| {
                c.parse().map_err(|_| {
                    Status::invalid_argument(format!("candidate {c:?} is not ip:port"))
                })
            })
            .collect::<Result<_, _>>()?;
        let input = match req.prompt {
            Some(pb::score_request::Prompt::Tokens(t)) => PromptInput::Tokens(t.ids),
            Some(pb::score_request::Prompt::Text(t)) => PromptInput::Text(Cow::Owned(t)),
            None => PromptInput::None,
        };
        let router = &self.shared.router;
        let tokenizer = &self.shared.tokenizer;
        let tokenized = match &input {
            PromptInput::Text(text) if tokenizer.enabled() => {
                let call = TokenizeCall::Completion {
                    model: req.model.clone(),
                    text: text.to_string(),
                    add_special_tokens: true,
                };
                match tokenizer.tokenize(call).await {
                    Tokens::Ids { ids, .. } => Tokenized::from_ids(Some(ids)),
                    Tokens::Unavailable { .. } => Tokenized::default(),
                }
            }
            _ => Tokenized::default(),
        };
        let prompt = tokenized.prompt(&input);
        let route = AddressedRequest {
            cache_salt: req.cache_salt.as_deref(),
            subset: (!subset.is_empty()).then_some(&subset[..]),
            ..AddressedRequest::new(&req.model, prompt)
        };
        let (decision, addresses) = router
            .rank(&route)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let index = router.scheduler().index();
        let mut matches = PrefixMatches::default();
        if let Prompt::Tokens(tokens) = prompt {
            let partition = Partition {
                model: &req.model,
                cache_salt: req.cache_salt.as_deref(),
            };
            let keys: Vec<_> = block_keys(partition.root(), tokens, index.block_size()).collect();
            let set: EndpointSet = decision.ranked.iter().map(|r| r.endpoint).collect();
            index.lookup(&keys, &set, &mut matches);
        }
        let endpoints = decision
            .ranked
            .iter()
            .zip(&addresses)
            .enumerate()
            .map(|(rank, (r, address))| {
                let m = matches.get(r.endpoint);
                pb::EndpointScore {
                    address: address.to_string(),
                    matched_blocks: m.map_or(0, |m| m.blocks),
                    weighted_blocks: m.map_or(0.0, |m| m.weighted),
                    score: r.score,
                    scorer_scores: r.scores.clone(),
                    rank: rank as u32,
                }
            })
            .collect();
        Ok(Response::new(pb::ScoreResponse {
            total_blocks: decision.total_blocks,
            block_size: index.block_size().get(),
            scorers: router
                .scheduler()
                .scorer_names()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            endpoints,
        }))
    }

    async fn list_endpoints(
        &self,
        _request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let router = &self.shared.router;
        let view = router.pool().view();
        let now = self.shared.clock.now();
        let index = router.scheduler().index();
        let endpoints = view
            .members
            .iter()
            .map(|m| {
                let signals = m.live.signals();
                pb::EndpointInfo {
                    address: m.endpoint.address.to_string(),
                    id: m.endpoint.id.get(),
                    model: m.endpoint.model.to_string(),
                    labels: m.endpoint.labels.clone().into_iter().collect(),
                    age_seconds: signals.as_ref().map(|s| s.age(now).as_secs_f64()),
                    signals: signals.map(|s| pb::Signals {
                        waiting: s.waiting,
                        running: s.running,
                        kv_usage: s.kv_usage,
                        block_size: s.block_size.map(|b| b.get()),
                        num_gpu_blocks: s.num_gpu_blocks,
                        max_loras: s.lora.max_loras,
                        running_loras: s.lora.running.clone(),
                        waiting_loras: s.lora.waiting.clone(),
                    }),
                    freshness: match m.freshness(now, router.config().staleness) {
                        Freshness::Fresh => "fresh",
                        Freshness::Stale => "stale",
                        Freshness::Unknown => "unknown",
                    }
                    .into(),
                    blocks_held: index.endpoint_entries(m.endpoint.id) as u64,
                    events: match m.live.events() {
                        EventsState::Live => "live",
                        EventsState::Stale => "stale",
                        EventsState::Absent => "absent",
                    }
                    .into(),
                    kv_events: m.spec.kv_events.clone().unwrap_or_default(),
                    kv_replay: m.spec.kv_replay.clone().unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(pb::ListEndpointsResponse { endpoints }))
    }
}
