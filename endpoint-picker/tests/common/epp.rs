//! The real `kvpick-epp` binary as a child process in its own process group (killed with it when
//! dropped), and reads of its Prometheus page.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http_body_util::BodyExt;

use super::envoy;
use super::free_port;

pub struct Epp {
    child: Child,
    pub grpc: SocketAddr,
    metrics: String,
    log: PathBuf,
}

impl Epp {
    /// Starts kvpick-epp on loopback with `endpoints` (file discovery) and `tokenizer` (a bare
    /// directory: the default tokenizer of every model); its log goes to `dir`.
    pub fn start(endpoints: &Path, dir: &Path, tokenizer: &Path) -> Self {
        Self::start_with_env(endpoints, dir, tokenizer, &[])
    }

    /// [`Epp::start`] with more settings as environment variables (`KVPICK_CONFIG`, ...).
    pub fn start_with_env(
        endpoints: &Path,
        dir: &Path,
        tokenizer: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let (grpc, health, metrics) = (free_port(), free_port(), free_port());
        let log = dir.join("kvpick-epp.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kvpick-epp"))
            .args(["--listen-address", "127.0.0.1", "--endpoints-file"])
            .arg(endpoints)
            .args(["--refresh-metrics-interval", "50ms"])
            .env("KVPICK_GRPC_PORT", grpc.to_string())
            .env("KVPICK_HEALTH_PORT", health.to_string())
            .env("KVPICK_METRICS_PORT", metrics.to_string())
            .env("KVPICK_QUERY_PORT", "0")
            .env("KVPICK_TOKENIZER", tokenizer)
            // Generous: a debug build on a shared machine.
            .env("KVPICK_TOKENIZE_TIMEOUT", "10s")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap();
        Self {
            child,
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            metrics: format!("http://127.0.0.1:{metrics}/metrics"),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus page, once the exporter answers.
    pub async fn page(&mut self) -> String {
        for _ in 0..600 {
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("kvpick-epp exited ({s}):\n{}", self.log_text());
            }
            if let Ok(resp) = envoy::client().get(self.metrics.parse().unwrap()).await
                && resp.status() == 200
            {
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                return String::from_utf8_lossy(&body).into_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("kvpick-epp's metrics never answered:\n{}", self.log_text());
    }

    /// A series' value on the page (0 when absent).
    pub async fn value(&mut self, series: &str) -> f64 {
        let page = self.page().await;
        series_value(&page, series)
    }

    /// Waits until every one of `pods` is ready (scraped) and its KV-event stream connected: the
    /// state an end-to-end test starts its traffic in.
    pub async fn wait_live(&mut self, pods: &[std::net::SocketAddr]) {
        self.wait_for("kvpick_pool_ready_endpoints", pods.len() as f64)
            .await;
        for pod in pods {
            let series = format!("kvpick_kv_events_connects_total{{endpoint=\"{pod}\"}}");
            self.wait_for(&series, 1.0).await;
        }
    }

    /// Waits until `series` reaches `at_least`.
    pub async fn wait_for(&mut self, series: &str, at_least: f64) {
        for _ in 0..300 {
            if self.value(series).await >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{series} never reached {at_least}:\n{}\n{}",
            self.page().await,
            self.log_text()
        );
    }
}

/// The value of the sample `series` (name and labels exactly as written) on a Prometheus page;
/// 0 when absent.
pub fn series_value(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| {
            v.split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap()
        })
}

impl Drop for Epp {
    fn drop(&mut self) {
        envoy::kill_group(&mut self.child);
    }
}
