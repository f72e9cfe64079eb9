//! The EPP protocol v1.0 musts, through the gateway.

use std::net::SocketAddr;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::{Ctx, routed};
use crate::gateway::Listener;
use crate::report::Report;

/// Requests per routing check: enough for a picker that spreads load to use several pods.
const REQUESTS: usize = 6;

pub(super) async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    report.record("grpc_health_serving", health(ctx).await);
    report.record(
        "picks_from_the_pool_header_equals_metadata",
        picks_within(ctx, Listener::Pool, &ctx.target.pods).await,
    );
    let pods = &ctx.target.pods;
    report.record(
        "subset_hint_of_one_is_obeyed",
        picks_within(ctx, Listener::SubsetOne, &[pods[1]]).await,
    );
    report.record(
        "subset_hint_of_two_is_obeyed",
        picks_within(ctx, Listener::SubsetTwo, &[pods[0], pods[2]]).await,
    );
    report.record(
        "empty_subset_hint_is_503",
        status_is(ctx, Listener::SubsetEmpty, &[], 503).await,
    );
    report.record(
        "subset_hint_outside_the_pool_is_503",
        status_is(ctx, Listener::SubsetForeign, &[], 503).await,
    );
    if ctx.target.fallbacks {
        report.record("fallbacks_carry_the_request", fallbacks(ctx).await);
    } else {
        report.skip(
            "fallbacks_carry_the_request",
            "the target lists no fallback endpoints",
        );
    }
    report.record(
        "sheddable_request_is_429_when_saturated",
        shedding(ctx).await,
    );
}

async fn health(ctx: &Ctx<'_>) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", ctx.target.health))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connecting to {}: {e}", ctx.target.health))?;
    let mut client = HealthClient::new(channel);
    for service in &ctx.target.health_services {
        let status = client
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .map_err(|e| format!("{service:?}: {e}"))?
            .into_inner()
            .status;
        if status != ServingStatus::Serving as i32 {
            return Err(format!("{service:?} is {status}, not SERVING"));
        }
    }
    Ok(())
}

/// Every answer through `listener` is routed to one of `allowed`, as the protocol says.
async fn picks_within(
    ctx: &Ctx<'_>,
    listener: Listener,
    allowed: &[SocketAddr],
) -> Result<(), String> {
    for i in 0..REQUESTS {
        let answer = ctx.post(listener, &format!("pick {i}"), &[]).await?;
        routed(&answer, allowed)?;
    }
    Ok(())
}

/// Every answer through `listener` is an immediate `status` from the picker (no pod served it).
async fn status_is(
    ctx: &Ctx<'_>,
    listener: Listener,
    headers: &[(&str, &str)],
    status: u16,
) -> Result<(), String> {
    for i in 0..3 {
        let answer = ctx.post(listener, &format!("refused {i}"), headers).await?;
        if answer.status != status || answer.served().is_some() {
            return Err(format!(
                "want {status} from the picker, got {}",
                answer.describe()
            ));
        }
    }
    Ok(())
}

/// The first pod fails every inference request but looks idlest: once the picker puts it first,
/// the gateway's retry goes down the picker's list and the next endpoint serves. With the test
/// hooks on, the picker's echo names the pod that served, not its own first choice.
async fn fallbacks(ctx: &Ctx<'_>) -> Result<(), String> {
    let pods = &ctx.target.pods;
    let failing = pods[0];
    for &p in &pods[1..] {
        ctx.pods.set_load(p, 3, 3, 0.5);
    }
    ctx.pods.set_failing(failing, true);
    let answer = ctx
        .until(Listener::Pool, &[], |a| {
            a.destination()
                .first()
                .is_some_and(|d| d.parse() == Ok(failing))
                || a.status != 200
        })
        .await;
    ctx.pods.reset();
    let answer = answer?;
    let listed = answer.destination();
    if answer.status != 200 {
        return Err(format!(
            "the primary failed and no fallback served: {}",
            answer.describe()
        ));
    }
    if listed.len() < 2 {
        return Err(format!(
            "no fallback listed after the failing primary: {listed:?}"
        ));
    }
    let served = answer.served().unwrap_or_default();
    if served != listed[1] {
        return Err(format!(
            "the first fallback is {}, but {served} served",
            listed[1]
        ));
    }
    if answer.lb_metadata() != listed {
        return Err(format!(
            "header {listed:?} and envoy.lb metadata {:?} differ",
            answer.lb_metadata()
        ));
    }
    if ctx.target.test_hooks {
        let echoed = answer.header(super::conventions::SERVED_ECHO);
        if echoed != Some(served) {
            return Err(format!(
                "served by {served} (a fallback), the picker echoed {echoed:?}"
            ));
        }
    }
    Ok(())
}

/// With every pod saturated, a sheddable request is refused with 429 while others are served;
/// once the pods recover, sheddable requests are served again.
async fn shedding(ctx: &Ctx<'_>) -> Result<(), String> {
    let (name, value) = &ctx.target.sheddable_header;
    let sheddable = [(name.as_str(), value.as_str())];
    for &p in &ctx.target.pods {
        ctx.pods.set_load(p, 200, 64, 0.99);
    }
    let shed = ctx
        .until(Listener::Pool, &sheddable, |a| a.status != 200)
        .await;
    let critical = ctx
        .post(Listener::Pool, "critical while saturated", &[])
        .await;
    ctx.pods.reset();
    let shed = shed?;
    if shed.status != 429 || shed.served().is_some() {
        return Err(format!(
            "a shed request must get 429 from the picker: {}",
            shed.describe()
        ));
    }
    routed(&critical?, &ctx.target.pods).map_err(|e| format!("a non-sheddable request: {e}"))?;
    ctx.until(Listener::Pool, &sheddable, |a| a.status == 200)
        .await
        .map(|_| ())
        .map_err(|e| format!("sheddable requests not served again after the pods recovered: {e}"))
}
