//! The `kvpick-epp` binary as a child process, and the clients the tests ask it through.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use kvpick_epp::query::pb;
use kvpick_epp::query::pb::index_client::IndexClient;
use tokio::time::Instant;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::{MODEL, Proc, free_port, http_get};
use crate::common::{Stream, duplex, mutation, request_body, request_headers, set_header};

/// A `kvpick-epp` process.
pub struct Epp {
    pub proc: Proc,
    pub grpc: SocketAddr,
    /// The kvpick.v1.Index query API (loopback).
    pub query: SocketAddr,
    pub health: SocketAddr,
    pub metrics: SocketAddr,
}

/// The memory budget of the hostile tests, MiB: a quarter of it (64 MiB) is for requests, 16 MiB
/// of which is set aside for `--max-streams 256` and a share per `--max-connections`.
pub const BUDGET_MIB: u64 = 256;

/// Scrape every 100 ms, stale after 300 ms (unless `extra` says), a scrape times out after 200 ms.
pub const REFRESH: Duration = Duration::from_millis(100);
pub const STALENESS: Duration = Duration::from_millis(300);

/// Where a `kvpick-epp` learns its pods.
#[derive(Copy, Clone, Debug)]
pub enum Source<'a> {
    /// `--endpoints-file`, polled every 100 ms.
    File(&'a Path),
    /// `--pool-name` (model [`MODEL`]), from the API server `kubeconfig` points at.
    Pool { kubeconfig: &'a Path, name: &'a str },
}

impl Epp {
    pub async fn start(dir: &Path, name: &'static str, endpoints: &Path, extra: &[&str]) -> Self {
        Self::start_from(dir, name, Source::File(endpoints), extra).await
    }

    /// [`Epp::start`] with its pods from `source`. Returns once its query API answers, which
    /// may be before it is ready ([`Epp::wait_serving`]).
    pub async fn start_from(
        dir: &Path,
        name: &'static str,
        source: Source<'_>,
        extra: &[&str],
    ) -> Self {
        let (grpc, health, metrics) = (free_port(), free_port(), free_port());
        let query = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvpick-epp"));
        cmd.args(["--listen-address", "127.0.0.1"])
            .args(["--grpc-port", &grpc.to_string()])
            .args(["--query-port", &query.to_string()])
            .args(["--health-port", &health.to_string()])
            .args(["--metrics-port", &metrics.to_string()]);
        match source {
            Source::File(endpoints) => {
                cmd.arg("--endpoints-file")
                    .arg(endpoints)
                    .args(["--endpoints-poll-interval", "100ms"]);
            }
            Source::Pool { kubeconfig, name } => {
                cmd.env("KUBECONFIG", kubeconfig)
                    .env_remove("KUBERNETES_SERVICE_HOST")
                    .args(["--pool-name", name, "--model", MODEL]);
            }
        }
        cmd.args(["--scrape-timeout", "200ms"])
            .args(extra)
            .env("RUST_LOG", "info");
        if !extra.contains(&"--refresh-metrics-interval") {
            cmd.args(["--refresh-metrics-interval", "100ms"]);
        }
        if !extra.contains(&"--metrics-staleness-threshold") {
            cmd.args(["--metrics-staleness-threshold", "300ms"]);
        }
        let proc = Proc::spawn(name, &mut cmd, dir.join(format!("{name}.log")));
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let epp = Self {
            proc,
            grpc: at(grpc),
            query: at(query),
            health: at(health),
            metrics: at(metrics),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while IndexClient::connect(format!("http://{}", epp.query))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "kvpick-epp not up: {}",
                epp.proc.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        epp
    }

    /// A `kvpick-epp` under the hostile tests' limits: a [`BUDGET_MIB`] budget, bodies up to
    /// 16 MiB, 256 streams and `max_connections` connections; then `extra`.
    pub async fn start_hostile(
        dir: &Path,
        endpoints: &Path,
        max_connections: u32,
        extra: &[&str],
    ) -> Self {
        let budget = format!("{BUDGET_MIB}Mi");
        let connections = max_connections.to_string();
        let mut flags = vec![
            "--memory-budget",
            &budget,
            "--max-body-bytes",
            "16Mi",
            "--max-streams",
            "256",
            "--max-connections",
            &connections,
        ];
        flags.extend_from_slice(extra);
        Self::start(dir, "epp", endpoints, &flags).await
    }

    /// What gRPC health says of `service` (`None`: no answer).
    pub async fn health_status(&self, service: &str) -> Option<ServingStatus> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.health))
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut client = HealthClient::new(channel);
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let status = client.check(request).await.ok()?.into_inner().status;
        ServingStatus::try_from(status).ok()
    }

    /// Waits until gRPC health says `service` is SERVING (`readiness`: what a probe or the
    /// gateway's health check waits for).
    pub async fn wait_serving(&self, service: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.health_status(service).await != Some(ServingStatus::Serving) {
            assert!(
                Instant::now() < deadline,
                "{service} never SERVING: {}",
                self.proc.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn index(&self) -> IndexClient<tonic::transport::Channel> {
        IndexClient::connect(format!("http://{}", self.query))
            .await
            .unwrap()
    }

    pub async fn endpoints(&self) -> Vec<pb::EndpointInfo> {
        self.index()
            .await
            .list_endpoints(pb::ListEndpointsRequest {})
            .await
            .unwrap()
            .into_inner()
            .endpoints
    }

    /// Blocks of `tokens` each endpoint holds, by address, as the index says.
    pub async fn matched(&self, tokens: &[u32]) -> HashMap<String, u32> {
        let r = self
            .index()
            .await
            .score(pb::ScoreRequest {
                model: MODEL.into(),
                prompt: Some(pb::score_request::Prompt::Tokens(pb::TokenIds {
                    ids: tokens.to_vec(),
                })),
                cache_salt: None,
                candidates: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        r.endpoints
            .into_iter()
            .map(|e| (e.address, e.matched_blocks))
            .collect()
    }

    /// Where the picker sends a completion of `tokens`, as Envoy would ask it over ext_proc.
    pub async fn pick(&self, tokens: &[u32]) -> String {
        let client = ExternalProcessorClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap();
        let mut s = Stream::open(client).await;
        s.send(request_headers(duplex(), "POST", &[], false, None))
            .await;
        let body = serde_json::json!({"model": MODEL, "prompt": tokens, "max_tokens": 1});
        s.send(request_body(body.to_string().as_bytes(), true))
            .await;
        let answer = s.recv().await;
        set_header(mutation(&answer), "x-gateway-destination-endpoint")
            .unwrap()
            .to_owned()
    }

    /// kvpick's own `/metrics` page.
    pub async fn metrics_page(&self) -> String {
        http_get(self.metrics, "/metrics").await.1
    }

    /// Waits until `done` holds for every endpoint list, up to `within`.
    pub async fn wait_endpoints(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[pb::EndpointInfo]) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let eps = self.endpoints().await;
            if done(&eps) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}: {eps:#?}\n{}",
                self.proc.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `address` holds `blocks` blocks of `tokens` in the index.
    pub async fn wait_matched(&self, tokens: &[u32], address: SocketAddr, blocks: u32) {
        // Generous: a bound for a loaded CI machine, not a latency target (returns at once when
        // the blocks are there).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let m = self.matched(tokens).await;
            if m.get(&address.to_string()) == Some(&blocks) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{address} never held {blocks} blocks: {m:?}\n{}",
                self.proc.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
