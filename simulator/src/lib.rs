//! `kvpick-sim`: replays request traces through kvpick's own scheduling code (`kvpick-scheduler`,
//! unchanged) against simulated vLLM engines.
//!
//! - [`trace`]: requests with arrival times and prompts, loaded (Mooncake, Azure, kvpick JSONL) or
//!   generated (shared-prefix groups, multi-turn chat).
//! - [`engine`]: one simulated vLLM engine, a pure state machine: continuous batching with chunked
//!   prefill, a paged KV cache with automatic prefix caching, preemption by recompute, KV events.
//! - [`policy`]: the routing policies under test, config-driven ones through `Scheduler::pick`.
//! - [`replicas`]: several picker replicas behind one gateway, each with its own view.
//! - [`des`]: the discrete-event loop that wires trace, policy and engines together in simulated time;
//!   [`admission`]: the picker's flow control (`featureGates: [flowControl]`) in that time.
//! - [`metrics`] and [`report`]: what a run measured, as a table, JSON and SVG plots.
//! - [`transfer`]: what moving a prompt's KV from a prefill to a decode engine costs (P/D).
//! - [`cache_hit`]: the single global prefix-cache analysis of a trace.
//! - [`calibrate`]: the engine profile and workload shape fitted to a live cluster's Prometheus.
//! - [`tune`]: search for the picker config's best weights on a workload, across seeds.
//!
//! Pure: no sockets, no async runtime. The live side (simulated vLLM servers driving these engines
//! in real time, the load generator, the demo, the Prometheus client) is the `kvpick-fleet` crate,
//! which also holds the `kvpick-sim` binary.
#![forbid(unsafe_code)]

pub mod admission;
pub mod cache_hit;
pub mod calibrate;
pub mod clock;
pub mod des;
pub mod engine;
pub mod error;
pub mod lru;
pub mod metrics;
pub mod policy;
pub mod replicas;
pub mod report;
pub mod trace;
pub mod transfer;
pub mod tune;

pub use clock::SimTime;
pub use error::SimError;
