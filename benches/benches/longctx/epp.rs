//! The kvpick-epp process under test: started on free ports beside the fleet, measured from
//! `/proc/PID` (CPU ticks, resident memory) and its own `/metrics` page.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use kvpick_fleet::demo::procs::{Child, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running kvpick-epp.
pub struct Epp {
    /// The process.
    pub child: Child,
    /// Its PID.
    pub pid: u32,
    /// `http://127.0.0.1:PORT` of its ext_proc service.
    pub grpc_url: String,
    metrics_port: u16,
}

impl Epp {
    /// Starts `program` on `endpoints` (a fleet's endpoints file), tokenizing `model` with the
    /// fixture at `tokenizer`; `extra` flags follow. Logs go to `log`.
    pub fn spawn(
        program: &Path,
        endpoints: &Path,
        model: &str,
        tokenizer: &Path,
        extra: &[String],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let [grpc, health, metrics] = [free_port()?, free_port()?, free_port()?];
        let mut args: Vec<String> = [
            "--listen-address",
            "127.0.0.1",
            "--grpc-port",
            &grpc.to_string(),
            "--health-port",
            &health.to_string(),
            "--metrics-port",
            &metrics.to_string(),
            "--query-port",
            "0",
            "--endpoints-file",
            &endpoints.display().to_string(),
            "--tokenizer",
            &format!("{model}={}", tokenizer.display()),
        ]
        .map(String::from)
        .to_vec();
        args.extend_from_slice(extra);
        let child = Child::spawn("kvpick-epp", program, &args, &[("RUST_LOG", "warn")], log)?;
        let pid = child.pid();
        Ok(Self {
            child,
            pid,
            grpc_url: format!("http://127.0.0.1:{grpc}"),
            metrics_port: metrics,
        })
    }

    /// Its `/metrics` page.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: epp\r\n\r\n")
            .await?;
        let mut page = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut page))
            .await
            .context("/metrics timed out")??;
        anyhow::ensure!(page.starts_with("HTTP/1.1 200") || page.starts_with("HTTP/1.0 200"));
        Ok(page)
    }

    /// CPU seconds the process has used (user + system, from `/proc/PID/stat`).
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let close = stat.rfind(')').context("/proc/PID/stat without a name")?;
        // After the name: state is field 3; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let tick = |i: usize| -> anyhow::Result<u64> {
            Ok(fields.get(i).context("short /proc/PID/stat")?.parse()?)
        };
        Ok((tick(11)? + tick(12)?) as f64 / 100.0)
    }

    /// Resident memory now and at its peak (`VmRSS`, `VmHWM`), bytes.
    pub fn rss(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = (status.lines().find(|l| l.starts_with(name)))
                .with_context(|| format!("no {name} in /proc/PID/status"))?;
            let kb: u64 = (line.split_whitespace().nth(1))
                .context("empty field")?
                .parse()?;
            Ok(kb * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

/// Cumulative counts of a Prometheus histogram (`le` bound, count), summed over its series.
pub fn histogram(page: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in page.lines().filter(|l| l.starts_with(&prefix)) {
        let Some(le) = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        let count: f64 = (line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => buckets.push((le, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// Sum of a counter's series whose labels contain `labels`.
pub fn counter(page: &str, name: &str, labels: &str) -> f64 {
    (page.lines())
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Subtracts an earlier reading of the same histogram (counts over a window).
pub fn delta(after: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, c)| {
            let b = before.iter().find(|(l, _)| *l == le).map_or(0.0, |x| x.1);
            (le, c - b)
        })
        .collect()
}

/// The smallest bucket bound holding at least fraction `p` of the samples.
pub fn bucket_quantile(buckets: &[(f64, f64)], p: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    (buckets.iter())
        .find(|(_, c)| total > 0.0 && *c >= p * total)
        .map_or(f64::NAN, |b| b.0)
}
