//! A thin client of Prometheus' HTTP API (`/api/v1/query_range`, `/api/v1/query`): URL in, series
//! out. Parsing the JSON answer is pure ([`parse_matrix`], [`parse_vector`]); the adapter adds only
//! the HTTP GET, a per-request timeout and a bound on the body. [`observe`] asks it everything
//! calibration (`kvpick_sim::calibrate`, pure) needs.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use kvpick_sim::calibrate::windows::{COUNTERS, Series};
use kvpick_sim::calibrate::{CalibrateOptions, Observed, bucket_increases};
use serde_json::Value;

use crate::FleetError;
use crate::load::client::{HttpClient, client};

/// Largest answer accepted (a range query over many pods and buckets stays far below).
pub const MAX_BODY: usize = 32 << 20;

/// A Prometheus server.
#[derive(Clone, Debug)]
pub struct Prometheus {
    base: String,
    http: HttpClient,
    timeout: Duration,
}

impl Prometheus {
    /// A client of the server at `url` (`http://host:port[/prefix]`), each request bounded by
    /// `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, FleetError> {
        let base = url.trim_end_matches('/').to_owned();
        let uri: hyper::Uri = base
            .parse()
            .map_err(|e| FleetError::InvalidConfig(format!("--prometheus {url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(FleetError::InvalidConfig(format!(
                "--prometheus {url:?}: expected http://host:port (TLS is not supported; \
                 port-forward instead)"
            )));
        }
        Ok(Self {
            base,
            http: client(2),
            timeout,
        })
    }

    /// `expr` evaluated every `step_s` seconds from `start` to `end` (unix seconds).
    pub async fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step_s: f64,
    ) -> Result<Vec<Series>, FleetError> {
        let path = format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step_s}",
            encode(expr)
        );
        parse_matrix(expr, &self.get(&path, expr).await?)
    }

    /// `expr` evaluated at `time` (unix seconds): one value per series.
    pub async fn query(&self, expr: &str, time: f64) -> Result<Vec<Series>, FleetError> {
        let path = format!("/api/v1/query?query={}&time={time:.3}", encode(expr));
        parse_vector(expr, &self.get(&path, expr).await?)
    }

    async fn get(&self, path: &str, expr: &str) -> Result<Bytes, FleetError> {
        let url = format!("{}{path}", self.base);
        let req = hyper::Request::get(&url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| FleetError::InvalidConfig(format!("{url}: {e}")))?;
        let call = async {
            let resp = self.http.request(req).await.map_err(|e| {
                FleetError::Network(format!("Prometheus at {} unreachable: {e}", self.base))
            })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    FleetError::Network(format!(
                        "Prometheus at {}: reading the answer to {expr:?}: {e} (limit {MAX_BODY} bytes)",
                        self.base
                    ))
                })?
                .to_bytes();
            if !status.is_success() && !body.starts_with(b"{") {
                return Err(FleetError::Prometheus(format!(
                    "{expr:?}: HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                )));
            }
            Ok(body)
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| {
                FleetError::Network(format!(
                    "Prometheus at {} did not answer {expr:?} within {:?}",
                    self.base, self.timeout
                ))
            })?
    }
}

/// The length histograms calibration reads: prompt, output.
const BUCKETS: [&str; 2] = [
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket",
];
/// The cache config calibration reads.
const CACHE_CONFIG: &str = "vllm:cache_config_info";

/// Every series calibration may read, older vLLM names included (the fleet must expose those
/// vLLM does: `endpoint-picker/tests/real_vllm/conformance.rs`).
pub fn calibrate_reads() -> Vec<&'static str> {
    let mut names: Vec<&str> = COUNTERS.iter().flat_map(|c| c.names()).copied().collect();
    names.extend(BUCKETS);
    names.push(CACHE_CONFIG);
    names
}

/// Queries everything calibration needs.
pub async fn observe(prom: &Prometheus, opts: &CalibrateOptions) -> Result<Observed, FleetError> {
    let (start, points) = opts.grid()?;
    let sel = opts.selector.trim();
    let step = opts.resolution_s;
    let mut obs = Observed {
        start,
        points,
        ..Default::default()
    };
    for c in COUNTERS {
        let mut found = Vec::new();
        for name in c.names() {
            found = prom
                .query_range(&format!("{name}{sel}"), start, opts.end, step)
                .await?;
            if !found.is_empty() {
                break;
            }
        }
        if found.is_empty() && c.required() {
            return Err(FleetError::Prometheus(format!(
                "no series of {} matching {:?} between {start:.0} and {:.0}: is Prometheus scraping \
                 vLLM's /metrics, and did the pods serve traffic in the window?",
                c.names().join(" or "),
                sel,
                opts.end
            )));
        }
        obs.counters.insert(c, found);
    }
    let [prompt, output] = BUCKETS;
    for (name, out) in [
        (prompt, &mut obs.prompt_buckets),
        (output, &mut obs.output_buckets),
    ] {
        let series = prom
            .query_range(&format!("{name}{sel}"), start, opts.end, step)
            .await?;
        *out = bucket_increases(&series);
    }
    let info = prom
        .query(&format!("{CACHE_CONFIG}{sel}"), opts.end)
        .await?;
    obs.cache_config = info.iter().find_map(|s| {
        Some((
            s.labels.get("block_size")?.parse().ok()?,
            s.labels.get("num_gpu_blocks")?.parse().ok()?,
        ))
    });
    Ok(obs)
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters stay).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The `data.result` of a successful answer of `result_type`.
fn result<'a>(expr: &str, v: &'a Value, result_type: &str) -> Result<&'a [Value], FleetError> {
    if v["status"] != "success" {
        return Err(FleetError::Prometheus(format!(
            "{expr:?}: {} {}",
            v["errorType"].as_str().unwrap_or("error"),
            v["error"].as_str().unwrap_or("(no message)")
        )));
    }
    if v["data"]["resultType"] != result_type {
        return Err(FleetError::Prometheus(format!(
            "{expr:?}: expected a {result_type}, got {}",
            v["data"]["resultType"]
        )));
    }
    v["data"]["result"]
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| FleetError::Prometheus(format!("{expr:?}: no data.result")))
}

fn labels(expr: &str, s: &Value) -> Result<BTreeMap<String, String>, FleetError> {
    let m = s["metric"]
        .as_object()
        .ok_or_else(|| FleetError::Prometheus(format!("{expr:?}: a series without labels")))?;
    Ok(m.iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect())
}

/// `[unix seconds, "value"]`.
fn point(expr: &str, p: &Value) -> Result<(f64, f64), FleetError> {
    let bad = || FleetError::Prometheus(format!("{expr:?}: malformed sample {p}"));
    let t = p[0].as_f64().ok_or_else(bad)?;
    let v = match p[1].as_str().ok_or_else(bad)? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        s => s.parse().map_err(|_| bad())?,
    };
    Ok((t, v))
}

fn json(expr: &str, body: &[u8]) -> Result<Value, FleetError> {
    serde_json::from_slice(body).map_err(|e| {
        FleetError::Prometheus(format!(
            "{expr:?}: not Prometheus' JSON ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    })
}

/// The series of a `query_range` answer.
pub fn parse_matrix(expr: &str, body: &[u8]) -> Result<Vec<Series>, FleetError> {
    let v = json(expr, body)?;
    result(expr, &v, "matrix")?
        .iter()
        .map(|s| {
            let points = s["values"]
                .as_array()
                .ok_or_else(|| {
                    FleetError::Prometheus(format!("{expr:?}: a series without values"))
                })?
                .iter()
                .map(|p| point(expr, p))
                .collect::<Result<_, _>>()?;
            Ok(Series {
                labels: labels(expr, s)?,
                points,
            })
        })
        .collect()
}

/// The samples of a `query` answer, each as a one-point series.
pub fn parse_vector(expr: &str, body: &[u8]) -> Result<Vec<Series>, FleetError> {
    let v = json(expr, body)?;
    result(expr, &v, "vector")?
        .iter()
        .map(|s| {
            Ok(Series {
                labels: labels(expr, s)?,
                points: vec![point(expr, &s["value"])?],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers_and_errors() {
        let m = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"__name__":"x","pod":"a"},"values":[[10,"1"],[11.5,"+Inf"]]}]}}"#;
        let s = parse_matrix("x", m).unwrap();
        assert_eq!(s[0].labels.len(), 1);
        assert_eq!(s[0].points, vec![(10.0, 1.0), (11.5, f64::INFINITY)]);
        let v = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"block_size":"16"},"value":[10,"2.5"]}]}}"#;
        assert_eq!(parse_vector("y", v).unwrap()[0].points, vec![(10.0, 2.5)]);
        let e = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        let err = parse_matrix("x{", e).unwrap_err().to_string();
        assert!(err.contains("bad_data") && err.contains("char 3"), "{err}");
        assert!(parse_matrix("x", b"<html>").is_err());
        assert!(
            parse_vector("x", m)
                .unwrap_err()
                .to_string()
                .contains("vector")
        );
    }

    #[tokio::test]
    async fn unreachable_server_is_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p =
            Prometheus::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5)).unwrap();
        let e = p.query("up", 0.0).await.unwrap_err();
        assert!(matches!(e, FleetError::Network(_)), "{e}");
        assert!(e.to_string().contains("unreachable"), "{e}");
    }

    #[test]
    fn encodes_queries() {
        assert_eq!(
            encode("rate(a{b=\"c\"}[5m])"),
            "rate%28a%7Bb%3D%22c%22%7D%5B5m%5D%29"
        );
        assert!(Prometheus::new("https://x:9090", Duration::from_secs(1)).is_err());
        assert!(Prometheus::new("http://127.0.0.1:9090/", Duration::from_secs(1)).is_ok());
    }
}
