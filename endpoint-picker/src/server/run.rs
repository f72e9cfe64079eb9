//! [`Server::run`]: starts every task and serves until shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use super::Server;
use super::http2;
use super::listener::{ConnectionLimits, Gate};
use super::shutdown::{Running, Tasks, flatten, ok};
use crate::calibration::OnlineCalibration;
use crate::error::Error;
use crate::extproc::ExtProc;
use crate::health::Health;
use crate::query::IndexApi;
use crate::scrape::ScrapeConfig;
use crate::{discovery, scrape, shared_inflight, telemetry};

impl Server {
    /// The index bootstrap `--bootstrap-from` asks for, with ingestion's hold from `bind`.
    fn pending_bootstrap(&mut self) -> Option<crate::bootstrap::Pending> {
        Some(crate::bootstrap::Pending {
            config: self.settings.bootstrap.clone()?,
            index: self.index.clone(),
            pool: self.pool.clone(),
            anchors: self.shared.anchors.clone(),
            release: self.opening.take()?,
        })
    }

    /// Serves until `shutdown` resolves or a server fails; then shuts down in order (see
    /// [`super::shutdown`]) and joins every task.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        // The ext_proc server stops first and drains; everything else stops after ingestion.
        let serving = CancellationToken::new();
        let background = CancellationToken::new();
        let mut servers: Tasks = JoinSet::new();
        let mut tasks: Tasks = JoinSet::new();

        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = Health::new(reporter).await;
        let mut bootstrap = self.pending_bootstrap();
        if self.kubernetes.is_none() && bootstrap.is_none() {
            // Discovery synced in `bind` and the ext_proc port is bound: ready from the first
            // probe (marked before the health port serves, so no probe sees a stale NOT_SERVING).
            health.ready().await;
        }
        // Every listener admits a bounded number of connections ([`listener`]) and serves HTTP/2
        // with limits the memory budget accounts for ([`http2`]).
        let meter = self.shared.budget.requests.clone();
        let side = ConnectionLimits {
            max: http2::SIDE_CONNECTIONS,
            max_per_peer: http2::SIDE_CONNECTIONS,
            first_bytes: self.settings.connections.first_bytes,
        };
        let incoming = Gate::new("health", side).incoming(self.health);
        tasks.spawn(ok(http2::serve(
            incoming,
            Routes::new(health_service.clone()),
            http2::SIDE,
            meter.clone(),
            background.clone(),
        )));

        if self.kubernetes.is_none()
            && let Some(bootstrap) = bootstrap.take()
        {
            // The endpoints file's pods are known: load the peer's index for them before serving
            // (probes see readiness NOT_SERVING meanwhile), then ready.
            bootstrap.run(&health).await;
            health.ready().await;
        }

        if let (Some(config), Some(status)) = (
            self.settings.shared_inflight.clone(),
            self.shared_inflight.clone(),
        ) {
            let sync = shared_inflight::sync::PeerSync {
                config,
                scheduler: self.shared.router.scheduler().clone(),
                pool: self.pool.clone(),
                clock: self.shared.clock,
                health: health.clone(),
                status,
            };
            tasks.spawn(ok(shared_inflight::sync::run(sync, background.clone())));
        }
        // gRPC health on the ext_proc port too: the charts' Envoy health-checks the ext_proc
        // cluster itself (service envoy.service.ext_proc.v3.ExternalProcessor).
        let routes = Routes::new(ExtProc::new(self.shared.clone()).into_server())
            .add_service(health_service);
        if let Some(listener) = self.query.take() {
            // Its own listener (loopback by default): the query API reveals pods, their load and
            // whether a prefix is cached, so whoever reaches the ext_proc port must not reach it.
            let incoming = Gate::new("query", side).incoming(listener);
            let api = IndexApi::new(self.shared.clone()).into_server();
            tasks.spawn(ok(http2::serve(
                incoming,
                Routes::new(api),
                http2::SIDE,
                meter.clone(),
                background.clone(),
            )));
        }
        let gate = Gate::new("ext_proc", self.settings.connections);
        let s = serving.clone();
        match self.tls.take() {
            None => {
                let incoming = gate.incoming(self.grpc);
                servers.spawn(ok(http2::serve(
                    incoming,
                    routes,
                    http2::EXT_PROC,
                    meter,
                    s,
                )));
            }
            Some(tls) => {
                // Handshakes (and certificate reloads) in their own task, feeding the server.
                let (tx, rx) = tokio::sync::mpsc::channel(super::tls::ACCEPTED_QUEUE);
                servers.spawn(ok(tls.serve(self.grpc, gate, tx, s.clone())));
                let incoming = ReceiverStream::new(rx);
                servers.spawn(ok(http2::serve(
                    incoming,
                    routes,
                    http2::EXT_PROC,
                    meter,
                    s,
                )));
            }
        }

        if let Some(listener) = self.metrics.take() {
            // Installed in `bind`; this only fetches the handle.
            let handle = telemetry::install();
            let pool = self.pool.clone();
            let live: telemetry::LiveEndpoints = Arc::new(move || {
                let view = pool.view();
                view.members
                    .iter()
                    .map(|m| m.endpoint.address.to_string())
                    .collect()
            });
            let incoming = Gate::new("metrics", side).incoming(listener);
            tasks.spawn(ok(telemetry::serve(
                incoming,
                handle,
                live,
                background.clone(),
            )));
        }
        if let Some(path) = self.settings.endpoints_file.clone() {
            let watch = discovery::file::watch(
                path,
                self.pool.clone(),
                self.settings.endpoints_poll,
                background.clone(),
            );
            tasks.spawn(ok(watch));
        }
        let calibration = self.settings.online_calibration.clone().and_then(|c| {
            OnlineCalibration::new(c, self.shared.router.scheduler().clone()).map(Arc::new)
        });
        let supervise = scrape::supervise(
            self.pool.clone(),
            self.index.clone(),
            self.shared.clock,
            ScrapeConfig {
                staleness: self.shared.router.config().staleness,
                ..self.settings.scrape.clone()
            },
            calibration,
            background.clone(),
        );
        tasks.spawn(ok(supervise));
        if let Some(flow) = self.shared.flow.clone() {
            // Stops with the ext_proc server, answering what still waits with a 503 at once, so
            // the streams drain instead of waiting out the grace period (the gateway retries
            // them on another replica).
            servers.spawn(ok(flow.run(self.shared.clone(), serving.clone())));
        }

        if let Some(kube) = self.kubernetes.take() {
            if let Some(policies) = kube.policy_watch(self.shared.policy.clone()) {
                tasks.spawn(ok(policies.run(background.clone())));
            }
            // Ready once the pool and its pods have been listed and, with a bootstrap, the
            // peer's index loaded for those pods (and until shutdown).
            let (synced, mut is_synced) = tokio::sync::watch::channel(false);
            tasks.spawn(ok(kube.run(self.pool.clone(), synced, background.clone())));
            let (health, stop) = (health.clone(), background.clone());
            tasks.spawn(ok(async move {
                let start = async {
                    is_synced.wait_for(|s| *s).await.ok()?;
                    if let Some(bootstrap) = bootstrap {
                        bootstrap.run(&health).await;
                    }
                    Some(())
                };
                let started = tokio::select! {
                    _ = stop.cancelled() => None,
                    started = start => started,
                };
                if started.is_some() {
                    health.ready().await;
                }
                stop.cancelled().await
            }));
        }
        tracing::info!(grpc = ?self.settings.grpc, "kvpick-epp serving");

        let mut result = Ok(());
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down"),
            Some(done) = servers.join_next() => {
                result = flatten(done);
                tracing::error!(?result, "the ext_proc server ended early; shutting down");
            }
            Some(done) = tasks.join_next() => {
                result = flatten(done);
                tracing::error!(?result, "a server task ended early; shutting down");
            }
        }
        let running = Running {
            health,
            serving,
            servers,
            kv_events: self.kv_events.take(),
            kv_events_stop: self.kv_events_stop.clone(),
            tokenizer: self.tokenizer.take(),
            background,
            tasks,
            grace: self.settings.shutdown_grace,
        };
        let errors = running.stop().await;
        match errors.into_iter().next() {
            Some(e) if result.is_ok() => Err(e),
            _ => result,
        }
    }
}
