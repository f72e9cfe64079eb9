//! kvpick's endpoint picker: an Envoy ext_proc server that sends each inference request to the
//! vLLM endpoint that will serve it fastest.
//!
//! Request path, in the order a request meets it:
//! - [`extproc`]: the ext_proc gRPC service; [`extproc::exchange`] is one stream's state machine,
//!   [`extproc::reply`] builds Envoy's messages, with [`envoy_headers`] (also the headers clients
//!   playing Envoy send).
//! - [`request`]: pure parser of OpenAI-style bodies; [`prompt`]: the tokenizer seam, served by
//!   [`tokenizer`] (`kvpick-tokenize`, off the reactor, with a deadline).
//! - [`router`]: candidates from the pool, then `kvpick_scheduler::Scheduler::pick`; it reserves
//!   each request's cost on its primary, released as the response ends; [`slo`]: the latency
//!   objectives of the `x-slo-*` headers.
//! - [`cluster_policy`]: the InferenceObjectives and InferenceModelRewrites that apply to the
//!   pool (priorities, latency defaults, model renames before scheduling).
//! - [`shedding`]: request priority and the saturated pool's 429 for sheddable requests;
//!   [`flow_control`]: with the `flowControl` gate, the queue where the rest wait for room.
//! - [`usage`]: token usage read from responses as they stream past; [`prediction`] compares the
//!   prefix the index predicted with the cached tokens the pod reports.
//!
//! What the picker knows, and where it comes from:
//! - [`pool`]: endpoints, their ids and live signals; its `watch` of views feeds KV-event
//!   ingestion ([`Ingestion`], served by [`kv_events`], started by the [`server`]).
//! - [`discovery`]: where endpoints come from ([`discovery::file`], [`discovery::kubernetes`]).
//! - [`scrape`]: per-endpoint `/metrics` loops; [`scrape::prometheus`] is the pure page scanner.
//! - [`shared_inflight`]: optionally, the other replicas' in-flight load through Valkey/Redis.
//!
//! Around it: [`query`] (kvpick's own `kvpick.v1.Index` API), [`health`] (gRPC health),
//! [`telemetry`] (kvpick's Prometheus metrics), [`config`] (flags and environment), [`server`]
//! (binds and runs it all, with a shutdown path), [`budget`] (the process's memory budget),
//! [`clock`] and [`error`].
#![forbid(unsafe_code)]

use std::sync::Arc;

use kvpick_scheduler::KvIndex;
use tokio::sync::watch;

pub mod bootstrap;
pub mod budget;
mod byte_count;
pub mod calibration;
pub mod clock;
pub mod cluster_policy;
pub mod config;
pub mod discovery;
mod endpoint_series;
pub mod envoy_headers;
mod error;
mod extproc;
mod flow_control;
mod health;
pub mod kv_events;
pub mod pool;
mod prediction;
mod prompt;
pub mod query;
pub mod request;
pub mod router;
pub mod scrape;
pub mod server;
pub mod shared_inflight;
pub mod shedding;
mod slo;
pub mod telemetry;
mod tokenizer;
pub mod usage;

pub use error::Error;
pub use server::{Server, Settings};

/// Bounds on what one request may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request body may take to arrive, from its headers (a slow or endless body
    /// would otherwise hold its stream, and its buffer, for as long as the client likes).
    pub body_timeout: std::time::Duration,
}

/// State shared by every stream and every query: the picker and what it needs.
#[derive(Debug)]
pub struct Shared {
    /// Decides where requests go.
    pub router: router::Router,
    /// Tokenizes text prompts (declines until one is configured).
    pub tokenizer: Arc<dyn prompt::Tokenize>,
    /// Per-request bounds.
    pub limits: Limits,
    /// The clock signals and decisions are timed with.
    pub clock: clock::Clock,
    /// Where requests wait while the pool is saturated (`featureGates: [flowControl]`).
    pub flow: Option<Arc<flow_control::FlowControl>>,
    /// The memory budget's parts that streams and KV events charge.
    pub budget: budget::Budget,
    /// The pool's InferenceObjectives and InferenceModelRewrites (empty without a pool).
    pub policy: Arc<cluster_policy::ClusterPolicy>,
    /// Each endpoint's last KV-event batch applied (what an index dump is anchored at).
    pub anchors: Arc<kv_events::Anchors>,
}

/// What KV-event ingestion ([`kv_events`]) receives from the picker: the pool's
/// views (each member's id, model, `kvEvents` and `kvReplay` addresses, and its
/// [`pool::Live`] cell to report [`kvpick_scheduler::EventsState`] in), the index to
/// apply events to, and the `--kv-events-bind` address. A subscriber must stop writing for an
/// endpoint within [`pool::DRAIN_GRACE`] of it leaving a view.
#[derive(Debug, Clone)]
pub struct Ingestion {
    /// Pool views as they change.
    pub views: watch::Receiver<Arc<pool::PoolView>>,
    /// The index events are applied to.
    pub index: Arc<KvIndex>,
    /// Where to bind a SUB socket for pods that connect (`--kv-events-bind`).
    pub bind: Option<String>,
    /// The picker's clock.
    pub clock: clock::Clock,
    /// Last batches applied per endpoint, and where a bootstrap left them.
    pub anchors: Arc<kv_events::Anchors>,
}
