//! A black-box conformance suite for endpoint pickers (EPPs) of the Gateway API Inference
//! Extension: any picker that speaks Envoy's ext_proc, run behind a real Envoy, in front of
//! stand-in model servers the suite serves itself.
//!
//! The suite checks what the EPP protocol (v1.0) says a picker MUST do, as a client and the model
//! servers see it through the gateway: pick only from the gateway's subset hint, answer 503 when
//! nothing in it can serve, put the same endpoint(s) in the `x-gateway-destination-endpoint`
//! header and in the `envoy.lb` dynamic metadata, list fallbacks comma-separated (and the gateway
//! uses them), answer 429 when it sheds a sheddable request, serve gRPC health. It also checks
//! what a real gateway does to a picker: request bodies that arrive in many chunks, responses
//! that stream as server-sent events. With the picker's test hooks on, it checks the Inference
//! Extension conformance suite's conventions: `test-epp-endpoint-selection` filters candidates,
//! and `x-conformance-test-served-endpoint` echoes the `envoy.lb`
//! `x-gateway-destination-endpoint-served` metadata the gateway reports on the response.
//!
//! - [`target`]: what the suite runs against (the picker's addresses, the pool, its options).
//! - [`pods`]: the stand-in model servers (`/metrics` in vLLM's names, completions, SSE).
//! - [`gateway`]: the Envoy configuration and process.
//! - [`client`]: requests through the gateway, as a client sends them.
//! - [`checks`]: the checks, and [`checks::run`] to run them all into a [`report::Report`].
//!
//! kvpick's own CI runs it against `kvpick-epp` (`endpoint-picker/tests/conformance.rs`); the
//! `kvpick-conformance` binary runs it against any other picker (README, "Conformance").
#![forbid(unsafe_code)]

pub mod checks;
pub mod client;
pub mod gateway;
pub mod pods;
pub mod report;
pub mod target;

pub use report::Report;
pub use target::Target;

/// What keeps the suite from running at all (a failed check is a [`Report`] entry instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stand-in model server could not listen on its address.
    #[error("cannot serve stand-in pod on {address}: {source}")]
    Bind {
        /// The pool endpoint's address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Envoy is missing, failed to start or never became ready.
    #[error("envoy: {0}")]
    Envoy(String),
    /// The target is not one the suite can run against.
    #[error("invalid target: {0}")]
    Target(String),
}
