//! Binds every listener, builds the shared state, and runs all tasks until shutdown.
//!
//! [`Server::bind`] does everything that can fail at startup (ports, TLS files, the first read of
//! the endpoints file) so that a misconfiguration exits before serving; [`Server::run`] then
//! serves until the shutdown future resolves, marks health NOT_SERVING, cancels every task and
//! joins them all.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kvpick_scheduler::config::PickerConfig as SchedulerConfig;
use kvpick_scheduler::{BlockSize, KvIndex, Scheduler};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::clock::Clock;
use crate::config::Cli;
use crate::error::Error;
use crate::extproc::ExtProc;
use crate::health::Health;
use crate::picker::{Picker, RouteConfig};
use crate::pool::Pool;
use crate::prompt::NoTokenizer;
use crate::query::IndexApi;
use crate::scrape::ScrapeConfig;
use crate::{Ingestion, Limits, Shared, discovery, scrape, telemetry};

/// Everything the server needs, independent of how it was configured.
#[derive(Clone, Debug)]
pub struct Settings {
    /// ext_proc + kvpick.v1 listener.
    pub grpc: SocketAddr,
    /// gRPC health listener.
    pub health: SocketAddr,
    /// Prometheus listener; `None` runs without exporting (metrics are still recorded).
    pub metrics: Option<SocketAddr>,
    /// TLS certificate and key (PEM) for the gRPC listener.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The endpoints file; `None` leaves the pool to the embedder (tests, benchmarks).
    pub endpoints_file: Option<PathBuf>,
    /// How often the endpoints file is checked.
    pub endpoints_poll: Duration,
    /// Block size when neither the picker config nor discovery says.
    pub block_size: BlockSize,
    /// The scheduler's config (`--config`); `None` runs the default profile with `block_size`
    /// and the picker's staleness.
    pub scheduler: Option<SchedulerConfig>,
    /// Picker settings.
    pub picker: RouteConfig,
    /// Request bounds.
    pub limits: Limits,
    /// Scraping settings.
    pub scrape: ScrapeConfig,
    /// `--kv-events-bind`, passed through to ingestion.
    pub kv_events_bind: Option<String>,
    /// Kubernetes discovery (`--pool-name` or `--endpoint-selector`); ready only once synced.
    pub kubernetes: Option<discovery::kubernetes::KubeSettings>,
    /// How long open streams may finish after shutdown begins before they are cut.
    pub shutdown_grace: Duration,
}

impl Settings {
    /// Settings from parsed flags.
    pub fn from_cli(cli: &Cli) -> Result<Self, Error> {
        cli.validate()?;
        let at = |port| SocketAddr::new(cli.listen_address, port);
        Ok(Self {
            grpc: at(cli.grpc_port),
            health: at(cli.health_port),
            metrics: Some(at(cli.metrics_port)),
            tls: cli.cert_path.clone().zip(cli.key_path.clone()),
            endpoints_file: cli.endpoints_file.clone(),
            endpoints_poll: cli.endpoints_poll_interval,
            block_size: BlockSize::new(cli.block_size)
                .ok_or_else(|| Error::Config("--block-size must be positive".into()))?,
            scheduler: cli.config.as_deref().map(load_config).transpose()?,
            picker: RouteConfig {
                fallbacks: cli.fallbacks,
                staleness: cli.metrics_staleness_threshold,
                emit_scores: cli.emit_scores,
            },
            limits: Limits {
                max_body_bytes: cli.max_body_bytes,
            },
            scrape: ScrapeConfig {
                interval: cli.refresh_metrics_interval,
                timeout: cli.scrape_timeout,
                max_bytes: 8 << 20,
                staleness: cli.metrics_staleness_threshold,
            },
            kv_events_bind: cli.kv_events_bind.clone(),
            kubernetes: discovery::kubernetes::KubeSettings::from_cli(cli)?,
            shutdown_grace: cli.shutdown_grace,
        })
    }

    /// Settings for an in-process server on loopback ephemeral ports (tests, benchmarks).
    pub fn loopback() -> Self {
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            grpc: lo,
            health: lo,
            metrics: None,
            tls: None,
            endpoints_file: None,
            endpoints_poll: Duration::from_secs(1),
            block_size: BlockSize::DEFAULT,
            scheduler: None,
            picker: RouteConfig::default(),
            limits: Limits {
                max_body_bytes: 16 << 20,
            },
            scrape: ScrapeConfig {
                interval: Duration::from_millis(50),
                timeout: Duration::from_secs(1),
                max_bytes: 8 << 20,
                staleness: Duration::from_secs(2),
            },
            kv_events_bind: None,
            kubernetes: None,
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// A bound, not yet serving, endpoint picker.
#[derive(Debug)]
pub struct Server {
    settings: Settings,
    grpc: TcpListener,
    health: TcpListener,
    metrics: Option<TcpListener>,
    tls: Option<ServerTlsConfig>,
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    index: Arc<KvIndex>,
    kubernetes: Option<discovery::kubernetes::Discovery>,
}

/// Reads and validates a picker config file.
fn load_config(path: &std::path::Path) -> Result<SchedulerConfig, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("--config {}: {e}", path.display())))?;
    SchedulerConfig::parse(&text)
        .map_err(|e| Error::Config(format!("--config {}: {e}", path.display())))
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

impl Server {
    /// Binds the listeners, loads TLS material and the endpoints file, and builds the state.
    pub async fn bind(settings: Settings) -> Result<Self, Error> {
        let found = match &settings.endpoints_file {
            Some(path) => Some(discovery::file::load(path).await?),
            None => None,
        };
        let file_block_size = found.as_ref().and_then(|f| f.block_size);
        let config = match settings.scheduler.clone() {
            Some(config) => {
                if let Some(b) = file_block_size.filter(|&b| b != config.index.block_size) {
                    return Err(Error::Config(format!(
                        "the endpoints file's blockSize {b} differs from --config index.blockSize {}",
                        config.index.block_size
                    )));
                }
                config
            }
            None => {
                let mut config = SchedulerConfig::default();
                config.index.block_size = file_block_size.unwrap_or(settings.block_size);
                config.staleness.max_signal_age = settings.picker.staleness;
                config
            }
        };
        let mut route = settings.picker.clone();
        route.staleness = config.staleness.max_signal_age;
        let tls = match &settings.tls {
            None => None,
            Some((cert, key)) => {
                let read = |p: &PathBuf| {
                    std::fs::read(p).map_err(|e| Error::Tls(format!("{}: {e}", p.display())))
                };
                Some(ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?)))
            }
        };
        let clock = Clock::new();
        let index = Arc::new(KvIndex::new(config.index.clone()));
        let pool = Arc::new(Pool::new(index.clone(), clock));
        if let Some(found) = &found {
            pool.reconcile(found)?;
        }
        let scheduler = Arc::new(Scheduler::with_config(config, index.clone())?);
        let shared = Arc::new(Shared {
            picker: Picker::new(scheduler, pool.clone(), clock, route),
            tokenizer: Arc::new(NoTokenizer),
            limits: settings.limits,
            clock,
        });
        let kubernetes = match &settings.kubernetes {
            Some(k) => Some(discovery::kubernetes::Discovery::new(
                discovery::kubernetes::client().await?,
                k.clone(),
            )),
            None => None,
        };
        let metrics = match settings.metrics {
            Some(addr) => Some(listen(addr).await?),
            None => None,
        };
        Ok(Self {
            grpc: listen(settings.grpc).await?,
            health: listen(settings.health).await?,
            metrics,
            tls,
            shared,
            pool,
            index,
            kubernetes,
            settings,
        })
    }

    /// Where the ext_proc and kvpick.v1 services listen.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr().ok()
    }

    /// Where gRPC health listens.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health.local_addr().ok()
    }

    /// Where `/metrics` listens.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state (picker, pool, index through the scheduler).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The pool (embedders without an endpoints file reconcile it themselves).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The seam KV-event ingestion plugs into.
    pub fn ingestion(&self) -> Ingestion {
        Ingestion {
            views: self.pool.subscribe(),
            index: self.index.clone(),
            bind: self.settings.kv_events_bind.clone(),
            clock: self.shared.clock,
        }
    }

    /// Serves until `shutdown` resolves or a server fails; then drains and joins every task.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let ingestion = self.ingestion();
        let stop = CancellationToken::new();
        let mut tasks: JoinSet<Result<(), Error>> = JoinSet::new();

        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = Health::new(reporter).await;
        let s = stop.clone();
        let incoming = TcpListenerStream::new(self.health);
        tasks.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(incoming, s.cancelled_owned())
                .await
                .map_err(Error::from)
        });

        // Request bodies arrive whole before the picker answers, so flow-control windows must hold
        // many bodies in flight: HTTP/2's 64 KiB default would throttle every stream to a trickle
        // (Envoy's own defaults are 256 MiB).
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .initial_stream_window_size(Some(16 << 20))
            .initial_connection_window_size(Some(64 << 20))
            .tcp_nodelay(true);
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls)?;
        }
        let router = builder
            .add_service(ExtProc::new(self.shared.clone()).into_server())
            .add_service(IndexApi::new(self.shared.clone()).into_server());
        let s = stop.clone();
        let incoming = TcpListenerStream::new(self.grpc);
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, s.cancelled_owned())
                .await
                .map_err(Error::from)
        });

        if let Some(listener) = self.metrics {
            let handle = telemetry::install();
            tasks.spawn(ok(telemetry::serve(listener, handle, stop.clone())));
        }
        if let Some(path) = self.settings.endpoints_file.clone() {
            let watch = discovery::file::watch(
                path,
                self.pool.clone(),
                self.settings.endpoints_poll,
                stop.clone(),
            );
            tasks.spawn(ok(watch));
        }
        let supervise = scrape::supervise(
            self.pool.clone(),
            self.index.clone(),
            self.shared.clock,
            ScrapeConfig {
                staleness: self.shared.picker.config().staleness,
                ..self.settings.scrape.clone()
            },
            stop.clone(),
        );
        tasks.spawn(ok(supervise));
        // KV-event ingestion: connect mode for every endpoint with a publisher address, bind mode
        // at --kv-events-bind; it stops with `stop`.
        let kv = crate::kv_events::KvEvents::start_for(
            ingestion,
            crate::kv_events::KvEventsConfig::default(),
            stop.clone(),
        )
        .await?;
        tasks.spawn(async move {
            kv.join().await;
            Ok(())
        });

        if let Some(kube) = self.kubernetes {
            // Ready once the pool and its pods have been listed (and until shutdown).
            let (synced, mut is_synced) = tokio::sync::watch::channel(false);
            tasks.spawn(ok(kube.run(self.pool.clone(), synced, stop.clone())));
            let (health, stop) = (health.clone(), stop.clone());
            tasks.spawn(ok(async move {
                let synced = tokio::select! {
                    _ = stop.cancelled() => false,
                    r = is_synced.wait_for(|s| *s) => r.is_ok(),
                };
                if synced {
                    health.ready().await;
                }
                stop.cancelled().await
            }));
        } else {
            // Discovery synced in `bind`: ready.
            health.ready().await;
        }
        tracing::info!(grpc = ?self.settings.grpc, "kvpick-epp serving");

        let mut result = Ok(());
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down"),
            Some(done) = tasks.join_next() => {
                result = flatten(done);
                tracing::error!(?result, "a server task ended early; shutting down");
            }
        }
        health.shutting_down().await;
        stop.cancel();
        let mut errors = Vec::new();
        let drained = tokio::time::timeout(self.settings.shutdown_grace, async {
            while let Some(done) = tasks.join_next().await {
                if let Err(e) = flatten(done) {
                    errors.push(e);
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = ?self.settings.shutdown_grace, "streams still open after the grace period; cutting them");
            tasks.shutdown().await;
        }
        match errors.into_iter().next() {
            Some(e) if result.is_ok() => Err(e),
            _ => result,
        }
    }
}

fn flatten(done: Result<Result<(), Error>, tokio::task::JoinError>) -> Result<(), Error> {
    match done {
        Ok(r) => r,
        Err(e) => Err(Error::Task(e.to_string())),
    }
}

async fn ok(task: impl Future<Output = ()>) -> Result<(), Error> {
    task.await;
    Ok(())
}
