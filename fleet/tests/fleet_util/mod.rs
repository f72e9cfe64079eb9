//! Shared by the fleet tests: a small fleet on 127.0.0.1 and an HTTP client for it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kvpick_fleet::load::client::{HttpClient, client};
use kvpick_fleet::{Fleet, FleetConfig, KvLayout};
use kvpick_sim::SimTime;
use kvpick_sim::engine::Profile;
use kvpick_sim::trace::{PromptSpec, Segment, Trace, TraceRequest, tokens};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

pub mod calibration;

pub const MODEL: &str = "sim-model";

/// A config for `pods` pods of the tiny profile (256 blocks of 16, max_model_len 4096).
pub fn config(pods: usize) -> FleetConfig {
    let mut cfg = FleetConfig::new(Profile::named("tiny").unwrap(), MODEL);
    cfg.pods = pods;
    cfg.speed = 4.0;
    cfg
}

pub async fn start(pods: usize, layout: KvLayout, bytes_hashes: bool) -> Fleet {
    let mut cfg = config(pods);
    cfg.kv_encoding = layout.options(bytes_hashes);
    Fleet::start(cfg).await.unwrap()
}

pub fn http() -> HttpClient {
    client(8)
}

async fn call(req: hyper::Request<Full<Bytes>>) -> (u16, Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(30), http().request(req))
        .await
        .expect("no response within 30 s")
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let req = hyper::Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (s, b) = call(req).await;
    (s, String::from_utf8(b.to_vec()).unwrap())
}

pub async fn post_raw(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> (u16, Bytes) {
    let req = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap();
    call(req).await
}

pub async fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (s, b) = post_raw(addr, path, body.to_string()).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// The `data:` payloads of an SSE response, in order.
pub async fn post_stream(addr: SocketAddr, path: &str, body: &Value) -> (u16, Vec<String>) {
    let (s, b) = post_raw(addr, path, body.to_string()).await;
    let text = String::from_utf8(b.to_vec()).unwrap();
    let events = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("SSE data line").to_owned())
        .collect();
    (s, events)
}

/// `n` tokens of a synthetic prompt named `id`.
pub fn prompt(id: u64, n: u32) -> Vec<u32> {
    let mut v = Vec::new();
    kvpick_sim::trace::tokens::extend(id, n, &mut v);
    v
}

/// A program on PATH; panics naming the package when it is missing (tests must not skip).
pub fn tool(name: &str) -> std::path::PathBuf {
    kvpick_fleet::demo::tools::on_path(name).unwrap_or_else(|| {
        panic!("`{name}` is not on PATH: apt-get install -y prometheus (.ci/setup)")
    })
}

/// A real Prometheus on 127.0.0.1 scraping `targets` every second, storing under `dir`; returns
/// it and its base URL once every target is up.
pub async fn start_prometheus(
    targets: &[String],
    dir: &std::path::Path,
) -> (kvpick_fleet::demo::procs::Child, String) {
    let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
             scrape_configs:\n- job_name: sim\n  static_configs:\n  - targets: [{}]\n",
            quoted.join(", ")
        ),
    )
    .unwrap();
    let port = kvpick_fleet::demo::procs::free_port().unwrap();
    let mut prom = kvpick_fleet::demo::procs::Child::spawn(
        "prometheus",
        &tool("prometheus"),
        [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &[],
        &dir.join("prometheus.log"),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..150 {
        prom.check_alive().unwrap();
        let req = hyper::Request::get(format!("{base}/api/v1/targets"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(2), http().request(req)).await;
        if let Ok(Ok(resp)) = answer
            && let Ok(body) = resp.into_body().collect().await
        {
            let v: Value = serde_json::from_slice(&body.to_bytes()).unwrap_or(Value::Null);
            let active = v["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if active.len() == targets.len() && active.iter().all(|t| t["health"] == "up") {
                return (prom, base);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("Prometheus targets not all up: {}", prom.log_tail(20));
}

/// One load phase: (arrivals per second, prompt length range, output length range, seconds).
pub type Phase = (f64, (u32, u32), (u32, u32), f64);

/// A trace of Poisson arrivals per phase whose prompts start with a 64-token prefix shared by 4
/// groups (content ids `TAG/sys`), then a part of their own (`TAG/user`, keyed by `seed`).
pub fn phased_trace(name: &str, tag: &str, seed: u64, phases: &[Phase]) -> Trace {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (sys, user) = (format!("{tag}/sys"), format!("{tag}/user"));
    let mut requests = Vec::new();
    let mut start = 0.0;
    for &(rate, (p0, p1), (o0, o1), secs) in phases {
        let mut t = start;
        loop {
            t += -(1.0 - rng.random::<f64>()).ln() / rate;
            if t >= start + secs {
                break;
            }
            let len = rng.random_range(p0..=p1);
            let id = requests.len() as u64;
            requests.push(TraceRequest {
                arrival: SimTime::from_secs_f64(t),
                prompt: PromptSpec::Segments(vec![
                    Segment {
                        id: tokens::content_id(&sys, &[id % 4]),
                        len: 64,
                    },
                    Segment {
                        id: tokens::content_id(&user, &[seed, id]),
                        len: len - 64,
                    },
                ]),
                output_tokens: rng.random_range(o0..=o1),
                output_id: id,
                model: None,
                lora: None,
                session: None,
                objective: Default::default(),
            });
        }
        start += secs;
    }
    Trace {
        name: name.to_string(),
        requests,
        prefix_block_tokens: None,
    }
}
