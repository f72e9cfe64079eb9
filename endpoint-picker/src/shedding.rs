//! Legacy shedding: a request's priority, and a 429 at once for sheddable requests (priority < 0)
//! while the pool is saturated. Every other request is scheduled as usual.
//!
//! The decision is [`kvpick_scheduler::SaturationConfig`]'s over the pool's live signals; this
//! module only reads the headers, takes the snapshot and exports the result. Shedding happens on
//! the request headers, before the body is read: a shed request costs one pass over the pool.

use kvpick_scheduler::PoolSaturation;

use crate::error::Error;
use crate::telemetry as t;
use crate::{Shared, extproc::reply};
use envoy_types::pb::envoy::config::core::v3::HeaderMap;

/// Names the request's InferenceObjective (the Inference Extension's name for the header), whose
/// priority the pool's InferenceObjectives or the picker config's `objectives` give.
pub const OBJECTIVE_HEADER: &str = "x-gateway-inference-objective";
/// llm-d's name for [`OBJECTIVE_HEADER`], read first.
pub const LLM_D_OBJECTIVE_HEADER: &str = "x-llm-d-inference-objective";
/// A priority as an integer, for requests without a configured objective. Trusting it means
/// trusting the client, so it is ignored unless `--trust-priority-header` says the gateway sets
/// or strips it (the shipped Envoy and agentgateway examples strip it).
pub const PRIORITY_HEADER: &str = "x-kvpick-priority";
/// Request headers every shipped gateway config removes from clients before kvpick sees them:
/// the destination Envoy routes on (kvpick sets it), and the scheduling headers kvpick believes
/// when an operator trusts them (`--trust-priority-header`, `--trust-fairness-header`), and
/// llm-d's routing-sidecar headers (`x-prefiller-host-port` and the rest of
/// [`kvpick_scheduler::disagg::SIDECAR_HEADERS`]: a client naming a prefill pod would steer a
/// decode pod's sidecar; kvpick sets the prefill pod itself, after this strip). The
/// latency objectives (`x-slo-*`) and the objective name are the client's own by design and pass.
/// `manifests/check.py` reads this list (keep it literal) and checks every Envoy config and
/// HTTPRoute in the repository removes each one.
pub const GATEWAY_STRIPS: [&str; 7] = [
    "x-gateway-destination-endpoint",
    "x-kvpick-priority",
    "x-gateway-inference-fairness-id",
    "x-prefiller-host-port",
    "x-prefiller-url",
    "x-encoder-hosts-ports",
    "x-data-parallel-host-port",
];

/// Set on every immediate response kvpick sends: why the request was dropped (`pool-saturated`
/// for shedding, else the error label such as `no_endpoint` or `invalid_body`).
pub const DROP_REASON_HEADER: &str = "x-kvpick-drop-reason";
/// The drop reason of a request shed because no endpoint has room.
pub const POOL_SATURATED: &str = "pool-saturated";

/// Which client-settable scheduling headers are believed (`--trust-priority-header`,
/// `--trust-fairness-header`, `--trust-slo-headers`). Priority and fairness are off by default:
/// a client could otherwise put itself ahead of others in the flow-control queue or spread over
/// many fairness ids. The latency objectives ([`crate::slo`]) are on, as in llm-d: they only
/// shape the pick of the request that carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedHeaders {
    /// Believe [`PRIORITY_HEADER`].
    pub priority: bool,
    /// Believe [`crate::flow_control::FAIRNESS_HEADER`].
    pub fairness: bool,
    /// Believe the `x-slo-*` and `x-llm-d-slo-*` headers.
    pub slo: bool,
}

impl Default for TrustedHeaders {
    fn default() -> Self {
        Self {
            priority: false,
            fairness: false,
            slo: true,
        }
    }
}

impl TrustedHeaders {
    /// Every header believed (a gateway that sets them itself).
    pub const ALL: Self = Self {
        priority: true,
        fairness: true,
        slo: true,
    };
}

/// `name`'s value when `trusted`; an untrusted header that is present is ignored and counted in
/// [`t::UNTRUSTED_HEADERS`].
pub fn trusted_header<'a>(
    headers: Option<&'a HeaderMap>,
    name: &'static str,
    trusted: bool,
) -> Option<&'a str> {
    let value = reply::header(headers, name)?;
    if trusted {
        return Some(value);
    }
    metrics::counter!(t::UNTRUSTED_HEADERS, "header" => name).increment(1);
    None
}

/// The InferenceObjective the request names, by llm-d's header or the Inference Extension's.
pub fn objective(headers: Option<&HeaderMap>) -> Option<&str> {
    reply::header(headers, LLM_D_OBJECTIVE_HEADER)
        .or_else(|| reply::header(headers, OBJECTIVE_HEADER))
}

/// The request's priority from its headers: its objective's (the pool's InferenceObjective, else
/// the picker config's `objectives`), then the priority header when trusted, else 0.
pub fn priority(shared: &Shared, headers: Option<&HeaderMap>) -> i32 {
    let named = objective(headers);
    if let Some(o) = named.and_then(|n| shared.policy.get().objectives.get(n).copied()) {
        return o.priority;
    }
    let trusted = shared.router.config().trusted_headers.priority;
    shared
        .router
        .scheduler()
        .config()
        .saturation
        .priority(named, trusted_header(headers, PRIORITY_HEADER, trusted))
}

/// The latency objectives the request's InferenceObjective gives (its `kvpick.io/slo-*-ms`
/// annotations), for those its own headers leave unset.
pub fn objective_slo(shared: &Shared, objective: Option<&str>) -> kvpick_scheduler::Slo {
    objective
        .and_then(|n| shared.policy.get().objectives.get(n).map(|o| o.slo))
        .unwrap_or_default()
}

/// The pool's saturation now, also exported as [`t::POOL_SATURATION`] and [`t::POOL_SATURATED`].
pub fn pool_saturation(shared: &Shared) -> PoolSaturation {
    let config = &shared.router.scheduler().config().saturation;
    let view = shared.router.pool().view();
    let signals: Vec<_> = view.members.iter().map(|m| m.live.signals()).collect();
    let p = config.pool(signals.iter().map(|s| s.as_deref()), shared.clock.now());
    metrics::gauge!(t::POOL_SATURATION).set(p.fraction());
    metrics::gauge!(t::POOL_SATURATED).set(if p.is_saturated() { 1.0 } else { 0.0 });
    p
}

/// Admits a request of `priority`, or refuses it with [`Error::Shed`] when it is sheddable and
/// the pool is saturated.
pub fn admit(shared: &Shared, priority: i32) -> Result<(), Error> {
    let saturated = pool_saturation(shared).is_saturated();
    if priority < 0 && saturated {
        return Err(Error::Shed(POOL_SATURATED));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_strips_every_header_kvpick_may_trust_or_route_on() {
        for header in [
            reply::DESTINATION,
            PRIORITY_HEADER,
            crate::flow_control::FAIRNESS_HEADER,
        ]
        .into_iter()
        .chain(kvpick_scheduler::disagg::SIDECAR_HEADERS)
        {
            assert!(GATEWAY_STRIPS.contains(&header), "{header}");
        }
    }
}
