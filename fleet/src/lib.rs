//! `kvpick-fleet`: the live side of kvpick's simulator. The engines of `kvpick-sim` (pure, in
//! simulated time) run here in real time behind real sockets.
//!
//! - [`servers`]: a simulated vLLM fleet (real HTTP with vLLM's API and `/metrics`, ZMQ KV events
//!   in vLLM's msgpack layouts, an endpoints file for kvpick-epp).
//! - [`load`]: an open-loop load generator for any OpenAI-compatible endpoint.
//! - [`demo`]: the one-command demo: fleet, kvpick-epp and Envoy, cache-blind vs kvpick.
//! - [`prometheus`]: a client of Prometheus' HTTP API, which asks what calibration
//!   (`kvpick_sim::calibrate`) fits.
//!
//! The `kvpick-sim` binary (every simulator command, pure and live) is built from this crate.
#![forbid(unsafe_code)]

pub mod demo;
pub mod error;
pub mod load;
pub mod prometheus;
pub mod servers;

pub use error::FleetError;
/// What a simulated server's engine is (its batch limits, KV blocks and step-time model).
pub use kvpick_sim::engine::Profile;
pub use servers::{Fleet, FleetConfig, KvLayout};
