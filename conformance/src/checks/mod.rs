//! The checks, and [`run`] to run them all against a target.
//!
//! - [`protocol`]: the EPP protocol v1.0 musts (pool and subset hint, 503, header = metadata,
//!   fallbacks, 429, gRPC health).
//! - [`streaming`]: bodies in many chunks, server-sent events.
//! - [`conventions`]: the Inference Extension conformance suite's test hooks.

use std::net::SocketAddr;
use std::time::Duration;

use crate::Error;
use crate::client::{Answer, Client};
use crate::gateway::{Gateway, Listener};
use crate::pods::Pods;
use crate::report::Report;
use crate::target::Target;

mod conventions;
mod protocol;
mod streaming;

/// The path requests go to (vLLM's completions).
pub const PATH: &str = "/v1/completions";

/// What every check works with.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The picker under test.
    pub target: &'a Target,
    /// The stand-in pods.
    pub pods: &'a Pods,
    /// The gateway.
    pub gateway: &'a Gateway,
    /// A client.
    pub client: Client,
}

impl Ctx<'_> {
    /// A completions body for the target's model.
    pub fn completion(&self, prompt: &str) -> Vec<u8> {
        serde_json::json!({"model": self.target.model, "prompt": prompt, "max_tokens": 1})
            .to_string()
            .into_bytes()
    }

    /// POSTs a completion through `listener`.
    pub async fn post(
        &self,
        listener: Listener,
        prompt: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let body = self.completion(prompt);
        self.client
            .post(self.gateway.address(listener), PATH, &body, headers)
            .await
    }

    /// Sends up to `tries` requests (one per `pause`) until `done` says an answer is the one
    /// wanted; its answer, or the last one's description.
    pub async fn until(
        &self,
        listener: Listener,
        headers: &[(&str, &str)],
        mut done: impl FnMut(&Answer) -> bool,
    ) -> Result<Answer, String> {
        let pause = Duration::from_millis(200);
        let tries = (self.target.settle.as_millis() / pause.as_millis()).max(1);
        let mut last = String::from("no answer");
        for i in 0..tries {
            match self.post(listener, &format!("settle {i}"), headers).await {
                Ok(a) if done(&a) => return Ok(a),
                Ok(a) => last = a.describe(),
                Err(e) => last = e,
            }
            tokio::time::sleep(pause).await;
        }
        Err(format!("not within {:?}; last: {last}", self.target.settle))
    }
}

/// An answer routed as the protocol says, to one of `allowed`: a 200 from a pod; the destination
/// header it received lists distinct endpoints of `allowed`, the first being the pod that served;
/// and the picker's `envoy.lb` metadata lists the same. The serving pod.
pub fn routed(answer: &Answer, allowed: &[SocketAddr]) -> Result<SocketAddr, String> {
    if answer.status != 200 {
        return Err(format!("status {}: {}", answer.status, answer.describe()));
    }
    let served: SocketAddr = answer
        .served()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no pod served it: {}", answer.describe()))?;
    let destination = answer.destination();
    let listed: Vec<SocketAddr> = destination.iter().filter_map(|d| d.parse().ok()).collect();
    if listed.is_empty() || listed.len() != destination.len() {
        return Err(format!(
            "the destination header is not a list of ip:port: {destination:?}"
        ));
    }
    if let Some(bad) = listed.iter().find(|d| !allowed.contains(d)) {
        return Err(format!(
            "the picker listed {bad}, not one of {allowed:?} (destination {destination:?})"
        ));
    }
    let mut distinct = listed.clone();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != listed.len() {
        return Err(format!(
            "the destination repeats an endpoint: {destination:?}"
        ));
    }
    if answer.lb_metadata() != destination {
        return Err(format!(
            "header {destination:?} and envoy.lb metadata {:?} differ",
            answer.lb_metadata()
        ));
    }
    if listed[0] != served {
        return Err(format!(
            "served by {served}, but the picker's first choice was {}",
            listed[0]
        ));
    }
    Ok(served)
}

/// Runs every check against `target`: serves the stand-in pods on its pool's addresses, starts
/// the gateway, waits until the picker routes, then checks. Pods are left idle between checks.
pub async fn run(target: &Target) -> Result<Report, Error> {
    target.validate()?;
    let pods = Pods::serve(&target.pods, &target.model).await?;
    let gateway = match Gateway::start(target).await {
        Ok(g) => g,
        Err(e) => {
            pods.stop().await;
            return Err(e);
        }
    };
    let ctx = Ctx {
        target,
        pods: &pods,
        gateway: &gateway,
        client: Client::new(),
    };
    let mut report = Report::default();
    let ready = ctx.until(Listener::Pool, &[], |a| a.status == 200).await;
    let ready_ok = ready.is_ok();
    report.record("picker_routes_through_the_gateway", ready.map(|_| ()));
    if ready_ok {
        protocol::run(&ctx, &mut report).await;
        streaming::run(&ctx, &mut report).await;
        conventions::run(&ctx, &mut report).await;
    }
    if !report.passed() {
        eprintln!("envoy's log:\n{}", gateway.log_text());
    }
    drop(gateway);
    pods.stop().await;
    Ok(report)
}
