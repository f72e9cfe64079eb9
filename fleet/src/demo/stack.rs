//! One demo stack: a fresh fleet, kvpick-epp reading its endpoints file, and Envoy in front
//! (the Gateway API Inference Extension's reference configuration) routing by kvpick-epp's choice.
//! Started in that order, each waited for; stopped in reverse by [`Stack::stop`] or on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::procs::{Child, free_port};
use super::tools::Tools;
use crate::FleetError;
use crate::load::client::{HttpClient, client};
use crate::servers::{Fleet, FleetConfig};

const ENVOY_TEMPLATE: &str = include_str!("envoy.yaml.tmpl");
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running stack.
#[derive(Debug)]
pub struct Stack {
    /// The simulated pods.
    pub fleet: Fleet,
    /// Where clients send requests (Envoy's listener).
    pub gateway: SocketAddr,
    /// kvpick-epp's Prometheus endpoint.
    pub epp_metrics: String,
    /// The stack's directory (configs, logs).
    pub dir: PathBuf,
    epp: Child,
    envoy: Child,
}

async fn get(http: &HttpClient, url: &str) -> Result<(u16, Bytes), String> {
    let req = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let call = async {
        let resp = http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Polls `url` until it answers 200, failing early if `child` exits or on `cancel`.
async fn wait_ok(
    http: &HttpClient,
    url: &str,
    child: &mut Child,
    what: &str,
    cancel: &CancellationToken,
) -> Result<(), FleetError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        child.check_alive()?;
        match get(http, url).await {
            Ok((200, _)) => return Ok(()),
            Ok((s, body)) => last = format!("HTTP {s}: {}", String::from_utf8_lossy(&body)),
            Err(e) => last = e,
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(FleetError::Process("interrupted".into())),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    Err(FleetError::Process(format!(
        "{what} not ready after {READY_TIMEOUT:?} ({url}: {last}); its log ends:\n{}",
        child.log_tail(30)
    )))
}

impl Stack {
    /// Starts a fleet of `fleet_cfg`, kvpick-epp (told about the KV-event publishers when
    /// `kv_events`) and Envoy; files go to `dir`.
    pub async fn start(
        fleet_cfg: FleetConfig,
        kv_events: bool,
        tools: &Tools,
        dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<Self, FleetError> {
        Self::start_with(fleet_cfg, kv_events, tools, &[], dir, cancel).await
    }

    /// [`Stack::start`], with `epp_args` added to kvpick-epp's command line (e.g. `--config`,
    /// `--engine-profile`).
    pub async fn start_with(
        fleet_cfg: FleetConfig,
        kv_events: bool,
        tools: &Tools,
        epp_args: &[String],
        dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<Self, FleetError> {
        std::fs::create_dir_all(dir).map_err(|e| FleetError::io(dir, e))?;
        let fleet = Fleet::start(fleet_cfg).await?;
        match Self::front(fleet, kv_events, tools, epp_args, dir, cancel).await {
            Ok(s) => Ok(s),
            Err((fleet, e)) => {
                fleet.shutdown().await;
                Err(e)
            }
        }
    }

    async fn front(
        fleet: Fleet,
        kv_events: bool,
        tools: &Tools,
        epp_args: &[String],
        dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<Self, (Fleet, FleetError)> {
        let started = async {
            let endpoints = dir.join("endpoints.yaml");
            fleet.write_endpoints_file(&endpoints, kv_events)?;
            let [grpc, health, metrics, listen, admin] = [
                free_port()?,
                free_port()?,
                free_port()?,
                free_port()?,
                free_port()?,
            ];
            let port = |p: u16| p.to_string();
            let mut epp = Child::spawn(
                "kvpick-epp",
                &tools.epp,
                [
                    "--listen-address".into(),
                    "127.0.0.1".into(),
                    "--grpc-port".into(),
                    port(grpc),
                    "--health-port".into(),
                    port(health),
                    "--metrics-port".into(),
                    port(metrics),
                    // The query API (loopback) is not used: any free port, so passes and
                    // concurrent demos never collide on the default.
                    "--query-port".into(),
                    "0".into(),
                    "--endpoints-file".into(),
                    endpoints.display().to_string(),
                ]
                .into_iter()
                .chain(epp_args.iter().cloned()),
                &[("RUST_LOG", "info")],
                &dir.join("kvpick-epp.log"),
            )?;
            let http = client(4);
            let epp_metrics = format!("http://127.0.0.1:{metrics}/metrics");
            wait_ok(&http, &epp_metrics, &mut epp, "kvpick-epp", cancel).await?;
            let config = ENVOY_TEMPLATE
                .replace("{LISTEN_PORT}", &port(listen))
                .replace("{ADMIN_PORT}", &port(admin))
                .replace("{EPP_PORT}", &port(grpc));
            let config_path = dir.join("envoy.yaml");
            std::fs::write(&config_path, config).map_err(|e| FleetError::io(&config_path, e))?;
            let log = dir.join("envoy.log");
            let mut envoy = Child::spawn(
                "envoy",
                &tools.envoy,
                [
                    "-c".into(),
                    config_path.display().to_string(),
                    "--disable-hot-restart".into(),
                    "--concurrency".into(),
                    "2".into(),
                    "--log-level".into(),
                    "warn".into(),
                    "--log-path".into(),
                    log.display().to_string(),
                ],
                &[],
                &dir.join("envoy.stdout.log"),
            )?;
            let ready = format!("http://127.0.0.1:{admin}/ready");
            wait_ok(&http, &ready, &mut envoy, "envoy", cancel).await?;
            // Routable end to end: Envoy asks kvpick-epp, which must know a ready pod.
            let models = format!("http://127.0.0.1:{listen}/v1/models");
            wait_ok(&http, &models, &mut epp, "routing through envoy", cancel).await?;
            Ok::<_, FleetError>((epp, envoy, listen, epp_metrics))
        };
        match started.await {
            Ok((epp, envoy, listen, epp_metrics)) => Ok(Self {
                fleet,
                gateway: SocketAddr::from(([127, 0, 0, 1], listen)),
                epp_metrics,
                dir: dir.to_owned(),
                epp,
                envoy,
            }),
            Err(e) => Err((fleet, e)),
        }
    }

    /// kvpick-epp's `/metrics` page now.
    pub async fn epp_metrics_text(&self) -> Result<String, FleetError> {
        match get(&client(1), &self.epp_metrics).await {
            Ok((200, body)) => Ok(String::from_utf8_lossy(&body).into_owned()),
            Ok((s, _)) => Err(FleetError::Network(format!(
                "{}: HTTP {s}",
                self.epp_metrics
            ))),
            Err(e) => Err(FleetError::Network(format!("{}: {e}", self.epp_metrics))),
        }
    }

    /// Checks that kvpick-epp and Envoy still run.
    pub fn check_alive(&mut self) -> Result<(), FleetError> {
        self.epp.check_alive()?;
        self.envoy.check_alive()
    }

    /// Stops Envoy, kvpick-epp, then the fleet.
    pub async fn stop(self) {
        self.envoy.stop();
        self.epp.stop();
        self.fleet.shutdown().await;
    }
}
