//! The endpoints file kvpick-epp reads (DESIGN.md's format), written for a running fleet.
//!
//! ```yaml
//! model: qwen3-32b
//! blockSize: 16
//! endpoints:
//! - address: 127.0.0.1:40001
//!   metrics: http://127.0.0.1:40001/metrics
//!   kvEvents: tcp://127.0.0.1:40002
//!   kvReplay: tcp://127.0.0.1:40003
//!   labels: {llm-d.ai/role: decode}     # P/D fleets only
//! ```
//!
//! Written to a temporary file then renamed, so a watcher never reads half a file.

use std::path::Path;

use serde::Serialize;

use super::Fleet;
use crate::FleetError;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Doc<'a> {
    model: &'a str,
    block_size: u32,
    endpoints: Vec<Entry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    address: String,
    metrics: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    kv_events: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kv_replay: Option<String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    labels: std::collections::BTreeMap<&'static str, &'static str>,
}

impl Fleet {
    /// The endpoints file's text; `kv_events: false` leaves the publishers out, so a picker
    /// reading it routes blind to cache contents (the demo's baseline).
    pub fn endpoints_yaml(&self, kv_events: bool) -> String {
        let doc = Doc {
            model: self.model(),
            block_size: self.block_size(),
            endpoints: (self.servers().iter())
                .map(|s| Entry {
                    address: s.address.to_string(),
                    metrics: format!("http://{}/metrics", s.address),
                    kv_events: kv_events.then(|| s.kv_events.clone()),
                    kv_replay: if kv_events { s.kv_replay.clone() } else { None },
                    labels: s
                        .role
                        .map(|r| (kvpick_scheduler::filters::ROLE_LABEL, r))
                        .into_iter()
                        .collect(),
                })
                .collect(),
        };
        let body = serde_saphyr::to_string(&doc).unwrap_or_default();
        format!(
            "# Written by kvpick-sim fleet: {} simulated vLLM server(s).\n{body}",
            self.servers().len()
        )
    }

    /// Writes [`Fleet::endpoints_yaml`] to `path` atomically.
    pub fn write_endpoints_file(&self, path: &Path, kv_events: bool) -> Result<(), FleetError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.endpoints_yaml(kv_events))
            .map_err(|e| FleetError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| FleetError::io(path, e))
    }
}
