//! Real vLLM (the CPU build, from the venv `.ci/setup` installs) serving kvpick's tiny test model
//! (`tests/vllm/make_tiny_model.py`, built once and cached). Each server is a child process in
//! its own process group, killed with it when dropped; it publishes KV events over ZMQ and keeps a
//! replay buffer, as a pod with `--kv-events-config` does.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::envoy;
use super::free_port;

/// The model name the servers serve.
pub const MODEL: &str = "tiny";
/// vLLM's block size on CPU must be a multiple of 32.
pub const BLOCK: usize = 32;

/// The venv holding vLLM: `KVPICK_VLLM_VENV`, else `~/.cache/kvpick-vllm-venv`.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("KVPICK_VLLM_VENV").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/kvpick-vllm-venv"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no vLLM venv at {}: run .ci/setup (it installs vLLM CPU there)",
        venv.display()
    );
    python
}

/// The tiny model's directory, built on first use (`KVPICK_VLLM_MODEL_DIR`, else
/// `~/.cache/kvpick-vllm-tiny-model`); the script skips the work when its inputs are unchanged.
pub fn tiny_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("KVPICK_VLLM_MODEL_DIR").map_or_else(
            || {
                PathBuf::from(std::env::var_os("HOME").unwrap())
                    .join(".cache/kvpick-vllm-tiny-model")
            },
            PathBuf::from,
        );
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vllm/make_tiny_model.py");
        let out = Command::new(venv_python())
            .arg(&script)
            .arg("--out")
            .arg(&dir)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// One vLLM server.
pub struct Vllm {
    /// `ip:port` of its OpenAI server (also what kvpick routes to).
    pub addr: SocketAddr,
    /// Its KV-event publisher and replay endpoints.
    pub events: u16,
    pub replay: u16,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

impl Vllm {
    /// Spawns a server (not yet healthy: see [`Vllm::wait_healthy`]); its log goes to `dir`.
    pub fn spawn(dir: &Path) -> Self {
        let port = free_port();
        let mut me = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            events: free_port(),
            replay: free_port(),
            child: None,
            log: dir.join(format!("vllm-{port}.log")),
            starts: 0,
        };
        me.launch();
        me
    }

    fn launch(&mut self) {
        self.starts += 1;
        let kv_events = serde_json::json!({
            "enable_kv_cache_events": true,
            "publisher": "zmq",
            // vLLM binds its publisher only to a wildcard address (`*`); a host address makes it
            // connect instead (kvpick's bind mode). Its replay endpoint always binds.
            "endpoint": format!("tcp://*:{}", self.events),
            "replay_endpoint": format!("tcp://127.0.0.1:{}", self.replay),
            "topic": format!("kv@{}@{MODEL}", self.addr),
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(venv_python())
            .args(["-m", "vllm.entrypoints.openai.api_server", "--model"])
            .arg(tiny_model())
            .args([
                "--served-model-name",
                MODEL,
                "--host",
                "127.0.0.1",
                "--port",
            ])
            .arg(self.addr.port().to_string())
            .args([
                "--block-size",
                &BLOCK.to_string(),
                "--dtype",
                "float32",
                "--enforce-eager",
            ])
            .args(["--num-gpu-blocks-override", "1024", "--max-num-seqs", "8"])
            .args(["--enable-prefix-caching", "--enable-prompt-tokens-details"])
            .arg("--kv-events-config")
            .arg(kv_events.to_string())
            .env("VLLM_CPU_KVCACHE_SPACE", "1")
            .env("VLLM_CPU_OMP_THREADS_BIND", "nobind")
            // One OpenMP thread: with torch's default (one per core) two servers spin against
            // each other and every other process on a shared machine, and a step of the tiny
            // model took 250 ms instead of 5 (measured here, load average 16 on 2 cores).
            .env("OMP_NUM_THREADS", "1")
            .env("HF_HUB_OFFLINE", "1")
            .env("VLLM_SERVER_DEV_MODE", "1")
            .env("VLLM_NO_USAGE_STATS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until `/health` answers 200 (vLLM takes 25–90 s on a quiet 2-core machine, up to
    /// 5 minutes on a busy one).
    pub async fn wait_healthy(&mut self) {
        let uri: hyper::Uri = format!("http://{}/health", self.addr).parse().unwrap();
        for _ in 0..2400 {
            if let Some(Ok(Some(s))) = self.child.as_mut().map(Child::try_wait) {
                panic!("vLLM on {} exited ({s}):\n{}", self.addr, self.log_tail());
            }
            if let Ok(r) = envoy::client().get(uri.clone()).await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "vLLM on {} not healthy after 600 s:\n{}",
            self.addr,
            self.log_tail()
        );
    }

    /// Kills the server and starts it again on the same ports: a pod restart, its KV-event
    /// sequence back at 0 and its cache empty.
    pub async fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            envoy::kill_group(&mut c);
        }
        self.launch();
        self.wait_healthy().await;
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The server's own Prometheus page.
    pub async fn metrics(&self) -> String {
        envoy::get_text(&format!("http://{}/metrics", self.addr)).await
    }

    /// The sum of every sample named `name` on the server's page.
    pub async fn counter(&self, name: &str) -> f64 {
        sum_samples(&self.metrics().await, name)
    }
}

/// The sum of all samples of `name` (any labels) on a Prometheus text page.
pub fn sum_samples(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else {
                rest
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

impl Drop for Vllm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            envoy::kill_group(&mut c);
        }
    }
}
