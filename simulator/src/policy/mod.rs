//! Routing policies under test.
//!
//! Two baselines are not scorer pipelines and live here: `random` and `round-robin`. Every other
//! policy is kvpick's own `Scheduler`, unchanged, built from an `EndpointPickerConfig` YAML exactly
//! as the endpoint picker builds it: `least-loaded` (queue scorer), `approx-prefix` (the
//! routing-history `prefix-cache-scorer`, KV utilization and queue, as llm-d's default profile),
//! `precise-prefix` (kvpick's
//! previous default profile: `precise-prefix-cache-scorer` over a [`KvIndex`](kvpick_scheduler::KvIndex) fed only by the engines' KV
//! events through `KvIndex::apply`, KV utilization and queue), `predicted-latency` (kvpick's
//! default profile, the `predicted-latency-scorer`, priced with the engines' own profile), and `config:FILE` (any
//! picker config file). `--seed` reseeds each config's picker so that runs differ by seed only.
//!
//! Config-driven policies run the core's in-flight accounting as the endpoint picker does: each
//! pick reserves its cost on the chosen engine, released at the request's first token (prefill)
//! and completion (decode), and every scrape is reconciled with it.

mod router;
mod spec;

pub use router::{Ask, Picked, PoolShape, Routed, Router};
pub use spec::{
    APPROX_PREFIX_YAML, BUILTIN, LEAST_LOADED_YAML, PREDICTED_LATENCY_YAML, PolicySpec,
};
