//! Index bootstrap (`--bootstrap-from`): a starting replica loads a peer's index over the
//! peer's `kvpick.v1.Index/Dump`, then follows each pod's KV events from the batch the peer had
//! applied last, so it knows prefixes the pods cached long before it started (a pod never
//! re-sends them, and its replay buffer holds only recent batches).
//!
//! Placements in the index are keyed by the index secret, so every replica of a pool reads the
//! same key material (`--index-secret-file`, e.g. a mounted Kubernetes Secret); the dump's
//! header carries a check value of it and a mismatch is refused.
//!
//! The load runs once the endpoint set is first known (the endpoints file at start; with
//! Kubernetes discovery, the first sync of the pool and its pods), for those endpoints, within
//! `--bootstrap-timeout`; KV-event ingestion opens no endpoint before it ends
//! ([`crate::kv_events::Hold`]), and the replica reports ready only after. Pods that join
//! later start from their replay buffer, as without the flag. Whatever goes wrong (peer down,
//! another secret, a malformed or oversized dump) is logged and counted, what was loaded is
//! dropped, and the replica starts empty as it would without the flag: bootstrap never keeps a
//! replica from serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use kvpick_scheduler::KvIndex;
use kvpick_scheduler::index::IndexSecret;

use crate::error::Error;
use crate::health::Health;
use crate::kv_events::{Anchors, Release};
use crate::pool::Pool;
use crate::query::pb;
use crate::query::pb::index_client::IndexClient;

mod load;

pub use load::{Loaded, Loader};

/// The health service name that reports whether the bootstrap succeeded (SERVING) or the
/// replica started empty (NOT_SERVING); readiness waits for the bootstrap to end, not for it
/// to succeed.
pub const HEALTH_SERVICE: &str = "kvpick.bootstrap";
/// Counter: bootstraps by outcome (`ok`, `failed`).
pub const RUNS: &str = "kvpick_bootstrap_total";
/// Gauge: endpoints and entries the last bootstrap loaded.
pub const ENDPOINTS: &str = "kvpick_bootstrap_endpoints";
/// Gauge: entries the last bootstrap loaded.
pub const ENTRIES: &str = "kvpick_bootstrap_entries";
/// Largest dump message accepted (the server sends about 160 KiB).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Registers the metrics' help texts.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(RUNS, "Index bootstraps from a peer, by outcome");
    describe_gauge!(ENDPOINTS, "Endpoints the index bootstrap loaded");
    describe_gauge!(ENTRIES, "Index entries the index bootstrap loaded");
}

/// Flags of the index bootstrap.
#[derive(Clone, Debug, Args)]
pub struct BootstrapArgs {
    /// At start, load the KV index from a peer replica's query API at this URL (e.g.
    /// `http://kvpick-epp-query:9004`; the peers must expose it, see README "Security"), then
    /// follow the pods' events from where the peer was. Needs `--index-secret-file`. On any
    /// failure the replica starts empty.
    #[arg(long, env = "KVPICK_BOOTSTRAP_FROM")]
    pub bootstrap_from: Option<String>,
    /// How long the bootstrap may take, connection included.
    #[arg(long, env = "KVPICK_BOOTSTRAP_TIMEOUT", default_value = "30s", value_parser = crate::config::duration)]
    pub bootstrap_timeout: Duration,
    /// Key material (at least 16 bytes) for the index's placement secret, the same for every
    /// replica of a pool so that one can load another's index. Unset: a random secret.
    #[arg(long, env = "KVPICK_INDEX_SECRET_FILE")]
    pub index_secret_file: Option<PathBuf>,
}

/// The bootstrap's settings.
#[derive(Clone, Debug)]
pub struct BootstrapConfig {
    /// The peer's query API.
    pub url: String,
    /// The whole load's limit.
    pub timeout: Duration,
}

impl BootstrapArgs {
    /// The settings the flags ask for; `None` without `--bootstrap-from`.
    pub fn config(&self) -> Result<Option<BootstrapConfig>, Error> {
        let Some(url) = &self.bootstrap_from else {
            return Ok(None);
        };
        if self.index_secret_file.is_none() {
            return Err(Error::Config(
                "--bootstrap-from needs --index-secret-file (the same on every replica)".into(),
            ));
        }
        if self.bootstrap_timeout.is_zero() {
            return Err(Error::Config("--bootstrap-timeout must be positive".into()));
        }
        Ok(Some(BootstrapConfig {
            url: url.clone(),
            timeout: self.bootstrap_timeout,
        }))
    }
}

/// The placement secret from shared key material at `path`.
pub fn secret_from_file(path: &std::path::Path) -> Result<IndexSecret, Error> {
    let material = std::fs::read(path)
        .map_err(|e| Error::Config(format!("--index-secret-file {}: {e}", path.display())))?;
    if material.len() < 16 {
        return Err(Error::Config(format!(
            "--index-secret-file {}: at least 16 bytes of key material",
            path.display()
        )));
    }
    Ok(IndexSecret::from_material(&material))
}

/// A bootstrap waiting for the endpoint set to be known, with what it needs.
#[derive(Debug)]
pub(crate) struct Pending {
    pub config: BootstrapConfig,
    pub index: Arc<KvIndex>,
    pub pool: Arc<Pool>,
    pub anchors: Arc<Anchors>,
    /// Ingestion's hold, released once the load ends.
    pub release: Release,
}

impl Pending {
    /// Loads the peer's dump for the endpoints the pool has now, reports how it went (log,
    /// metrics, the [`HEALTH_SERVICE`] health service), then lets ingestion open the endpoints
    /// from the anchors it left, and returns once they are open. Never fails: a failed load
    /// leaves the index empty.
    pub async fn run(self, health: &Health) {
        let config = &self.config;
        let outcome = load(config, &self.index, &self.pool, &self.anchors).await;
        match &outcome {
            Ok(loaded) => tracing::info!(
                peer = %config.url,
                endpoints = loaded.endpoints,
                entries = loaded.entries,
                unknown = loaded.unknown,
                "index bootstrapped from a peer"
            ),
            Err(e) => {
                tracing::warn!(peer = %config.url, error = %e, "index bootstrap failed; starting empty")
            }
        }
        health.component(HEALTH_SERVICE, outcome.is_ok()).await;
        self.release.open().await;
        // An endpoint that left the pool before ingestion opened it keeps no start anchor: its
        // id, reused later, starts afresh.
        self.anchors.clear_starts();
    }
}

/// Loads `config.url`'s dump into `index` for the endpoints `pool` has, leaving their anchors in
/// `anchors`. On failure, clears what it loaded and says why; the caller starts empty.
async fn load(
    config: &BootstrapConfig,
    index: &KvIndex,
    pool: &Pool,
    anchors: &Anchors,
) -> Result<Loaded, Error> {
    let view = pool.view();
    let mut loader = Loader::new(index, &view, anchors);
    let read = async {
        let channel = tonic::transport::Endpoint::from_shared(config.url.clone())
            .map_err(|e| Error::Bootstrap(format!("{}: {e}", config.url)))?
            .connect_timeout(config.timeout)
            .connect()
            .await
            .map_err(|e| Error::Bootstrap(format!("cannot reach {}: {e}", config.url)))?;
        let mut client = IndexClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let call = |e: tonic::Status| Error::Bootstrap(format!("Dump: {}", e.message()));
        let mut stream = client
            .dump(pb::DumpRequest {})
            .await
            .map_err(call)?
            .into_inner();
        while let Some(item) = stream.message().await.map_err(call)? {
            loader.item(item)?;
        }
        Ok::<_, Error>(())
    };
    let outcome = match tokio::time::timeout(config.timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(Error::Bootstrap(format!(
            "not done within {:?}",
            config.timeout
        ))),
    };
    let result = loader.conclude(outcome);
    record(&result);
    result
}

fn record(result: &Result<Loaded, Error>) {
    match result {
        Ok(loaded) => {
            metrics::counter!(RUNS, "outcome" => "ok").increment(1);
            metrics::gauge!(ENDPOINTS).set(loaded.endpoints as f64);
            metrics::gauge!(ENTRIES).set(loaded.entries as f64);
        }
        Err(_) => {
            metrics::counter!(RUNS, "outcome" => "failed").increment(1);
            metrics::gauge!(ENDPOINTS).set(0.0);
            metrics::gauge!(ENTRIES).set(0.0);
        }
    }
}
