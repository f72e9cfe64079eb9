//! Endpoint discovery: where the pool's endpoints come from.
//!
//! A discovery source produces a [`Discovered`] set ([`file`] or [`kubernetes`]) and
//! hands it to [`crate::pool::Pool::reconcile`], which gives endpoints their ids and publishes the
//! resulting [`crate::pool::PoolView`] on a `watch` channel. That channel is the seam for the
//! KV-event subscriber manager: each view carries every endpoint's id, model and KV-event
//! addresses, so subscribers open and close by diffing views.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use kvpick_scheduler::BlockSize;

pub mod file;
pub mod kubernetes;

/// One endpoint as discovery describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// `ip:port` the gateway sends requests to.
    pub address: SocketAddr,
    /// The base model it serves.
    pub model: Arc<str>,
    /// Labels, for filters (e.g. `llm-d.ai/role`).
    pub labels: BTreeMap<String, String>,
    /// Its Prometheus metrics URL (`http://…/metrics`).
    pub metrics: String,
    /// Its KV-event publisher (`tcp://ip:port`), when the pod binds one (connect mode).
    pub kv_events: Option<String>,
    /// Its KV-event replay endpoint (`tcp://ip:port`).
    pub kv_replay: Option<String>,
}

impl EndpointSpec {
    /// An endpoint at `address` serving `model`, scraped at its own `/metrics`, with no labels
    /// and no KV-event sockets (the pool's defaults apply).
    pub fn serving(address: SocketAddr, model: &str) -> Self {
        Self {
            address,
            model: model.into(),
            labels: BTreeMap::new(),
            metrics: format!("http://{address}/metrics"),
            kv_events: None,
            kv_replay: None,
        }
    }
}

/// A full set of endpoints from one discovery source at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    /// The pool's KV block size, when the source knows it.
    pub block_size: Option<BlockSize>,
    /// The endpoints, addresses unique.
    pub endpoints: Vec<EndpointSpec>,
}

impl Discovered {
    /// Endpoints at `addresses`, all serving `model` (see [`EndpointSpec::serving`]).
    pub fn serving(addresses: impl IntoIterator<Item = SocketAddr>, model: &str) -> Self {
        Self {
            block_size: None,
            endpoints: addresses
                .into_iter()
                .map(|a| EndpointSpec::serving(a, model))
                .collect(),
        }
    }
}
