//! The Gateway API Inference Extension conformance suite's test hooks, on only with
//! `--conformance-test-hooks` (never in production: any client could steer its own request to a
//! pod of its choice and read which pod served it).
//!
//! - [`SELECTION`] (`ip[:port],...`; an IP alone names every endpoint on it) narrows the
//!   candidates to the endpoints it names, within the proxy's subset hint when there is one;
//!   naming none of them refuses the request with 429, as that suite expects.
//! - [`SERVED_ECHO`] on the response echoes the endpoint the proxy reports in the `envoy.lb`
//!   `x-gateway-destination-endpoint-served` metadata (the one that served, which a retry down the
//!   fallback list may have changed), never the picker's own choice.

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::service::ext_proc::v3 as pb;

use super::reply;
use crate::error::Error;
use crate::pool::PoolView;

/// The request header naming the endpoints to pick from.
pub const SELECTION: &str = "test-epp-endpoint-selection";
/// The response header echoing the endpoint that served.
pub const SERVED_ECHO: &str = "x-conformance-test-served-endpoint";

/// The candidates `selection` names among `pool`'s endpoints, within `subset` when the proxy
/// sent one; `Ok(subset)` unchanged without a selection.
pub fn select(
    selection: Option<&str>,
    pool: &PoolView,
    subset: Option<Vec<SocketAddr>>,
) -> Result<Option<Vec<SocketAddr>>, Error> {
    let Some(selection) = selection.filter(|s| !s.trim().is_empty()) else {
        return Ok(subset);
    };
    let mut picked: Vec<SocketAddr> = Vec::new();
    for item in selection
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let named = |a: &SocketAddr| match item.parse::<SocketAddr>() {
            Ok(exact) => *a == exact,
            Err(_) => item
                .trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .is_ok_and(|ip| a.ip() == ip),
        };
        for m in &pool.members {
            let a = m.endpoint.address;
            if named(&a) && !picked.contains(&a) {
                picked.push(a);
            }
        }
    }
    if let Some(subset) = &subset {
        picked.retain(|a| subset.contains(a));
    }
    if picked.is_empty() {
        return Err(Error::TestSelection(format!(
            "{SELECTION}: {selection:?} names no endpoint of the pool"
        )));
    }
    Ok(Some(picked))
}

/// The answer to response headers: echo the served endpoint when the proxy reported one.
pub fn echo_served(served: Option<SocketAddr>) -> pb::ProcessingResponse {
    let mutation = served.map(|s| pb::HeaderMutation {
        set_headers: vec![reply::set_header(SERVED_ECHO, &s.to_string())],
        remove_headers: Vec::new(),
    });
    reply::response_headers(mutation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Discovered;
    use crate::pool::Pool;

    fn pool(addresses: &[&str]) -> std::sync::Arc<PoolView> {
        let index = std::sync::Arc::new(kvpick_scheduler::KvIndex::new(
            kvpick_scheduler::IndexConfig::default(),
        ));
        let pool = Pool::new(index, crate::clock::Clock::new());
        pool.reconcile(&Discovered::serving(addrs(addresses), "m"))
            .unwrap();
        pool.view()
    }

    fn addrs(a: &[&str]) -> Vec<SocketAddr> {
        a.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn the_selection_names_endpoints_by_address_or_ip() {
        let view = pool(&["10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.2:8000"]);
        assert_eq!(select(None, &view, None).unwrap(), None);
        assert_eq!(
            select(Some("10.0.0.2:8000"), &view, None).unwrap(),
            Some(addrs(&["10.0.0.2:8000"]))
        );
        assert_eq!(
            select(Some(" 10.0.0.1 ,10.0.0.1:8001"), &view, None).unwrap(),
            Some(addrs(&["10.0.0.1:8000", "10.0.0.1:8001"]))
        );
        let hint = Some(addrs(&["10.0.0.1:8001", "10.0.0.2:8000"]));
        assert_eq!(
            select(Some("10.0.0.1"), &view, hint).unwrap(),
            Some(addrs(&["10.0.0.1:8001"]))
        );
        for none in ["256.256.256.256", "10.0.0.9:1", "x,y"] {
            let e = select(Some(none), &view, None).unwrap_err();
            assert_eq!(e.http_status(), 429, "{none}");
        }
    }

    #[test]
    fn the_echo_names_the_served_endpoint_only() {
        let with = echo_served(Some("10.0.0.1:8000".parse().unwrap()));
        assert!(format!("{with:?}").contains(SERVED_ECHO));
        assert!(!format!("{:?}", echo_served(None)).contains(SERVED_ECHO));
    }
}
