//! Real processes for the fault tests: `kvpick-sim fleet` (simulated vLLM pods with HTTP,
//! `/metrics` and ZMQ KV events) and the `kvpick-epp` binary, each in its own process group and
//! killed when dropped; plus clients for what the tests ask of them.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use crate::common::free_port;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kvpick_epp::query::pb;
use tokio::time::Instant;

mod epp;

pub use epp::*;

pub const MODEL: &str = "m";

/// A child process killed (with its group) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { child, name, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crashed pod or an OOM kill would end it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory it ever had, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `kvpick-sim`, built next to this test (`cargo test --workspace` builds it).
fn sim_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("kvpick-sim"))
        .unwrap();
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build --bin kvpick-sim`; `cargo test --workspace` does)",
        bin.display()
    );
    bin
}

/// A `kvpick-sim fleet` process and the endpoints it wrote.
pub struct SimFleet {
    pub proc: Proc,
    /// Its endpoints file entries (address, metrics, kvEvents, kvReplay).
    pub entries: Vec<serde_json::Value>,
    pub addrs: Vec<SocketAddr>,
}

impl SimFleet {
    /// `pods` tiny simulated pods (blocks of 16 tokens), four times faster than real time.
    pub async fn start(dir: &Path, name: &str, pods: usize, extra: &[&str]) -> Self {
        let file = dir.join(format!("{name}.yaml"));
        let mut cmd = Command::new(sim_bin());
        cmd.args([
            "fleet",
            "--profile",
            "tiny",
            "--model",
            MODEL,
            "--speed",
            "4",
        ])
        .args(["--pods", &pods.to_string(), "--restart-downtime", "200ms"])
        .arg("--endpoints-file")
        .arg(&file)
        .args(extra);
        let proc = Proc::spawn(
            "kvpick-sim fleet",
            &mut cmd,
            dir.join(format!("{name}.log")),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&file) {
                break t;
            }
            assert!(Instant::now() < deadline, "fleet not up: {}", proc.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let entries = doc["endpoints"].as_array().unwrap().clone();
        let addrs = entries
            .iter()
            .map(|e| e["address"].as_str().unwrap().parse().unwrap())
            .collect();
        Self {
            proc,
            entries,
            addrs,
        }
    }
}

/// Writes an endpoints file listing `entries` (each a YAML mapping) for model `m`, blocks of 16.
pub fn write_endpoints(path: &Path, entries: &[serde_json::Value]) {
    let doc = serde_saphyr::to_string(&serde_json::json!({
        "model": MODEL, "blockSize": 16, "endpoints": entries,
    }))
    .unwrap();
    std::fs::write(path, doc).unwrap();
}

/// An endpoint address where nothing listens, and nothing needs to (the hostile tests route
/// there).
pub const POD: &str = "127.0.0.1:9";

/// A directory with an endpoints file listing `address` alone.
pub fn one_endpoint(address: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let endpoints = dir.path().join("endpoints.yaml");
    let entry = serde_saphyr::from_str(&format!("address: {address}")).unwrap();
    write_endpoints(&endpoints, &[entry]);
    (dir, endpoints)
}

pub fn fresh(eps: &[pb::EndpointInfo], address: SocketAddr) -> bool {
    eps.iter()
        .any(|e| e.address == address.to_string() && e.freshness == "fresh")
}

/// `n` tokens of a prompt named `id` (distinct ids share no block).
pub fn prompt(id: u32, n: u32) -> Vec<u32> {
    (0..n)
        .map(|i| 1 + (id * 100_003 + i * 7) % 50_000)
        .collect()
}

async fn http(req: hyper::Request<Full<Bytes>>) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(
        hyper::Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

pub async fn http_post(addr: SocketAddr, path: &str, body: &serde_json::Value) -> (u16, String) {
    http(
        hyper::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap(),
    )
    .await
}

/// Runs a completion of `tokens` on `pod` directly, so that the pod caches it and publishes
/// its KV events.
pub async fn complete(pod: SocketAddr, tokens: &[u32]) {
    let (status, body) = http_post(
        pod,
        "/v1/completions",
        &serde_json::json!({"model": MODEL, "prompt": tokens, "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A POST whose failure is an answer too: `Err` when the connection or the body broke.
pub async fn try_post(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, String), String> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The sum of the samples on a Prometheus text page whose line starts with `prefix` (a name, or
/// a name and the start of its labels): one series, or a family summed over its other labels.
pub fn sample_sum(page: &str, prefix: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits for `epp` to exit, up to `within` (a bound for a loaded machine, not a latency target).
pub async fn wait_exit(epp: &mut Epp, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = epp.proc.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "still running {within:?} after SIGTERM\n{}",
            epp.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
