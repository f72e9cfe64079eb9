//! The Gateway API Inference Extension conformance suite's conventions for pickers, which only
//! a picker's test mode should honour (any client could otherwise steer its own request):
//!
//! - `test-epp-endpoint-selection: ip[:port][,ip[:port]...]` restricts the candidates to the
//!   listed endpoints (an IP alone names every endpoint on it); when it names none of the pool, the
//!   request is refused with 429, as that suite expects;
//! - `x-conformance-test-served-endpoint` on the response echoes the `envoy.lb`
//!   `x-gateway-destination-endpoint-served` metadata the gateway reports (the endpoint that
//!   served), not the picker's own choice.

use std::net::SocketAddr;

use super::{Ctx, routed};
use crate::client::Answer;
use crate::gateway::Listener;
use crate::report::Report;

/// The request header naming the endpoints to pick from.
pub const SELECTION: &str = "test-epp-endpoint-selection";
/// The response header echoing the endpoint that served.
pub const SERVED_ECHO: &str = "x-conformance-test-served-endpoint";

pub(super) async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    const NAMES: [&str; 4] = [
        "test_selection_of_one_is_obeyed",
        "test_selection_list_and_bare_ip_are_obeyed",
        "test_selection_outside_the_pool_is_429",
        "served_endpoint_is_echoed",
    ];
    if !ctx.target.test_hooks {
        for name in NAMES {
            report.skip(name, "the target runs without its test hooks");
        }
        return;
    }
    let pods = &ctx.target.pods;
    let one = pods[2].to_string();
    report.record(NAMES[0], selected(ctx, &one, &[pods[2]]).await);
    let two = format!("{},{}", pods[0], pods[1]);
    let mut result = selected(ctx, &two, &[pods[0], pods[1]]).await;
    if result.is_ok() {
        let ip = pods[1].ip();
        let on_ip: Vec<SocketAddr> = pods.iter().copied().filter(|p| p.ip() == ip).collect();
        result = selected(ctx, &ip.to_string(), &on_ip).await;
    }
    report.record(NAMES[1], result);
    report.record(NAMES[2], outside(ctx).await);
    report.record(NAMES[3], echoed_everywhere(ctx).await);
}

/// The echo must name the pod that served.
fn echo(answer: &Answer, served: SocketAddr) -> Result<(), String> {
    let echoed = answer.header(SERVED_ECHO);
    if echoed != Some(served.to_string().as_str()) {
        return Err(format!("{served} served, the picker echoed {echoed:?}"));
    }
    Ok(())
}

/// Requests selecting `selection` are all routed within `allowed` (and echoed).
async fn selected(ctx: &Ctx<'_>, selection: &str, allowed: &[SocketAddr]) -> Result<(), String> {
    for i in 0..4 {
        let answer = ctx
            .post(
                Listener::Pool,
                &format!("selected {i}"),
                &[(SELECTION, selection)],
            )
            .await?;
        let served =
            routed(&answer, allowed).map_err(|e| format!("{SELECTION}: {selection}: {e}"))?;
        echo(&answer, served)?;
    }
    Ok(())
}

async fn outside(ctx: &Ctx<'_>) -> Result<(), String> {
    let answer = ctx
        .post(Listener::Pool, "nowhere", &[(SELECTION, "256.256.256.256")])
        .await?;
    if answer.status != 429 || answer.served().is_some() {
        return Err(format!(
            "want 429 from the picker, got {}",
            answer.describe()
        ));
    }
    Ok(())
}

/// Plain requests, and requests under a subset hint, carry the echo of the pod that served.
async fn echoed_everywhere(ctx: &Ctx<'_>) -> Result<(), String> {
    for (listener, allowed) in [
        (Listener::Pool, ctx.target.pods.clone()),
        (Listener::SubsetOne, vec![ctx.target.pods[1]]),
    ] {
        let answer = ctx.post(listener, "echo", &[]).await?;
        let served = routed(&answer, &allowed)?;
        echo(&answer, served)?;
    }
    Ok(())
}
