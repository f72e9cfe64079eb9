//! File discovery: the endpoints file (DESIGN.md's format), re-read when it changes.
//!
//! [`parse`] is pure (text in, [`Discovered`] or an error naming the entry out); [`watch`] polls
//! the file's modification time and size every `interval` and reconciles the pool on change. A
//! file that stops validating is logged and ignored: the pool keeps the last good set.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kvpick_scheduler::BlockSize;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{Discovered, EndpointSpec};
use crate::error::Error;
use crate::pool::Pool;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileDoc {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    block_size: Option<u32>,
    #[serde(default)]
    endpoints: Vec<FileEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileEndpoint {
    address: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    metrics: Option<String>,
    #[serde(default)]
    kv_events: Option<String>,
    #[serde(default)]
    kv_replay: Option<String>,
}

/// Parses and validates an endpoints file's text; errors name the offending entry.
pub fn parse(path: &Path, text: &str) -> Result<Discovered, Error> {
    let fail = |message: String| Error::EndpointsFile {
        path: path.to_owned(),
        message,
    };
    let doc: FileDoc = if text.trim().is_empty() {
        FileDoc {
            model: None,
            block_size: None,
            endpoints: Vec::new(),
        }
    } else {
        serde_saphyr::from_str(text).map_err(|e| fail(e.to_string()))?
    };
    let block_size = match doc.block_size {
        None => None,
        Some(n) => Some(
            BlockSize::new(n).ok_or_else(|| fail("blockSize must be a positive integer".into()))?,
        ),
    };
    let default_model = doc.model.filter(|m| !m.is_empty());
    let mut seen = HashSet::new();
    let mut endpoints = Vec::with_capacity(doc.endpoints.len());
    for (i, e) in doc.endpoints.into_iter().enumerate() {
        let name = match &e.address {
            Some(a) => format!("endpoints[{i}] ({a})"),
            None => format!("endpoints[{i}]"),
        };
        let entry = |what: String| fail(format!("{name}: {what}"));
        let raw = e
            .address
            .ok_or_else(|| entry("address is required".into()))?;
        let address: SocketAddr = raw
            .parse()
            .map_err(|_| entry("address must be ip:port, e.g. 10.0.0.5:8000".into()))?;
        if !seen.insert(address) {
            return Err(entry("address appears twice".into()));
        }
        let model = e
            .model
            .filter(|m| !m.is_empty())
            .or_else(|| default_model.clone())
            .ok_or_else(|| entry("no model: set it here or at the top of the file".into()))?;
        let metrics = e
            .metrics
            .unwrap_or_else(|| format!("http://{address}/metrics"));
        if !metrics.starts_with("http://") {
            return Err(entry(format!(
                "metrics must be an http:// URL, got {metrics}"
            )));
        }
        for (field, url) in [("kvEvents", &e.kv_events), ("kvReplay", &e.kv_replay)] {
            if let Some(url) = url
                && !url.starts_with("tcp://")
            {
                return Err(entry(format!(
                    "{field} must be a tcp:// address, got {url}"
                )));
            }
        }
        endpoints.push(EndpointSpec {
            address,
            model: Arc::from(model),
            labels: e.labels,
            metrics,
            kv_events: e.kv_events,
            kv_replay: e.kv_replay,
        });
    }
    Ok(Discovered {
        block_size,
        endpoints,
    })
}

/// Reads and parses the endpoints file.
pub async fn load(path: &Path) -> Result<Discovered, Error> {
    let text =
        tokio::fs::read_to_string(path)
            .await
            .map_err(|source| Error::EndpointsFileRead {
                path: path.to_owned(),
                source,
            })?;
    parse(path, &text)
}

/// Polls `path` every `interval` and reconciles `pool` whenever its contents change, until `stop`.
///
/// The contents are compared, not the modification time: file timestamps move in kernel ticks, so
/// two writes of equal size within one tick would look identical. The file is small and read once
/// per interval.
pub async fn watch(path: PathBuf, pool: Arc<Pool>, interval: Duration, stop: CancellationToken) {
    let mut last: Option<Vec<u8>> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        pool.release_drained();
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                if last.is_some() {
                    tracing::error!(path = %path.display(), error = %e, "endpoints file unreadable; keeping the last good set");
                    last = None;
                }
                continue;
            }
        };
        if last.as_ref() == Some(&bytes) {
            continue;
        }
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|_| Error::EndpointsFile {
                path: path.clone(),
                message: "not UTF-8".into(),
            })
            .and_then(|text| parse(&path, text));
        last = Some(bytes);
        match parsed.and_then(|found| pool.reconcile(&found)) {
            Ok(change) if change.is_empty() => {}
            Ok(change) => tracing::info!(
                path = %path.display(),
                added = change.added.len(),
                removed = change.removed.len(),
                updated = change.updated.len(),
                "endpoints file reloaded"
            ),
            Err(e) => {
                tracing::error!(error = %e, "endpoints file rejected; keeping the last good set")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Discovered, Error> {
        parse(Path::new("eps.yaml"), text)
    }

    #[test]
    fn the_documented_format_parses() {
        let d = p(r#"
model: my-model
blockSize: 16
endpoints:
  - address: 10.0.0.5:8000
    model: other
    labels: {llm-d.ai/role: decode}
    metrics: http://10.0.0.5:8000/metrics
    kvEvents: tcp://10.0.0.5:5557
    kvReplay: tcp://10.0.0.5:5558
  - address: 10.0.0.6:8000
"#)
        .unwrap();
        assert_eq!(d.block_size, BlockSize::new(16));
        let [a, b] = &d.endpoints[..] else { panic!() };
        assert_eq!(&*a.model, "other");
        assert_eq!(a.labels["llm-d.ai/role"], "decode");
        assert_eq!(a.kv_events.as_deref(), Some("tcp://10.0.0.5:5557"));
        assert_eq!(&*b.model, "my-model");
        assert_eq!(b.metrics, "http://10.0.0.6:8000/metrics");
        assert_eq!(b.kv_replay, None);
    }

    #[test]
    fn errors_name_the_entry() {
        let cases = [
            (
                "endpoints:\n  - model: m\n",
                "endpoints[0]: address is required",
            ),
            (
                "model: m\nendpoints:\n  - address: nope\n",
                "endpoints[0] (nope): address must be ip:port",
            ),
            (
                "model: m\nendpoints:\n  - address: 1.2.3.4:1\n  - address: 1.2.3.4:1\n",
                "endpoints[1] (1.2.3.4:1): address appears twice",
            ),
            ("endpoints:\n  - address: 1.2.3.4:1\n", "no model"),
            (
                "model: m\nendpoints:\n  - address: 1.2.3.4:1\n    kvEvents: 1.2.3.4:5\n",
                "kvEvents must be a tcp:// address",
            ),
            (
                "model: m\nendpoints:\n  - address: 1.2.3.4:1\n    metrics: https://x\n",
                "metrics must be an http:// URL",
            ),
            ("blockSize: 0\n", "blockSize must be a positive integer"),
            (
                "endpoints:\n  - adress: 1.2.3.4:1\n",
                "unknown field `adress`",
            ),
        ];
        for (text, want) in cases {
            let err = p(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn an_empty_file_is_an_empty_pool() {
        assert_eq!(p("").unwrap(), Discovered::default());
        assert_eq!(p("endpoints: []\n").unwrap(), Discovered::default());
    }
}
