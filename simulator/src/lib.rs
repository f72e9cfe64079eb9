//! `kvpick-sim`: replays request traces through kvpick's own scheduling code (`kvpick-scheduler`,
//! unchanged) against simulated vLLM engines.
//!
//! - [`trace`]: requests with arrival times and prompts, loaded (Mooncake, Azure, kvpick JSONL) or
//!   generated (shared-prefix groups, multi-turn chat).
//! - [`engine`]: one simulated vLLM engine, a pure state machine: continuous batching with chunked
//!   prefill, a paged KV cache with automatic prefix caching, preemption by recompute, KV events.
//! - [`policy`]: the routing policies under test, config-driven ones through `Scheduler::pick`.
//! - [`des`]: the discrete-event loop that wires trace, policy and engines together in simulated time;
//!   [`admission`]: the picker's flow control (`featureGates: [flowControl]`) in that time.
//! - [`metrics`] and [`report`]: what a run measured, as a table, JSON and SVG plots.
//! - [`cache_hit`]: the single global prefix-cache analysis of a trace.
//! - [`calibrate`]: the engine profile and workload shape fitted to a live cluster's Prometheus.
//! - [`tune`]: search for the picker config's best weights on a workload, across seeds.
//! - [`fleet`]: a live simulated vLLM fleet (real HTTP, `/metrics`, ZMQ KV events) driving the
//!   same engines in real time.
//! - [`load`]: an open-loop load generator for any OpenAI-compatible endpoint.
//! - [`demo`]: the one-command demo: fleet, kvpick-epp and Envoy, cache-blind vs kvpick.
#![forbid(unsafe_code)]

pub mod admission;
pub mod cache_hit;
pub mod calibrate;
pub mod clock;
pub mod demo;
pub mod des;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod load;
pub mod lru;
pub mod metrics;
pub mod policy;
pub mod prehashed;
pub mod report;
pub mod trace;
pub mod tune;

pub use clock::SimTime;
pub use error::SimError;
