//! [`Settings`]: everything the server needs, independent of how it was configured (flags, or a
//! test building them by hand).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kvpick_scheduler::profile::online::OnlineConfig;
use kvpick_scheduler::{BlockSize, EndpointPickerConfig, EngineProfile};

use super::listener::ConnectionLimits;
use super::tls::TlsSource;
use crate::budget::BudgetConfig;
use crate::config::Cli;
use crate::error::Error;
use crate::kv_events::KvEventsConfig;
use crate::router::RouteConfig;
use crate::scrape::ScrapeConfig;
use crate::tokenizer::TokenizeSettings;
use crate::{Limits, discovery};

/// How long a new connection may stay silent before it is closed.
const FIRST_BYTES: Duration = Duration::from_secs(10);

/// Everything the server needs, independent of how it was configured.
#[derive(Clone, Debug)]
pub struct Settings {
    /// ext_proc listener.
    pub grpc: SocketAddr,
    /// kvpick.v1.Index listener (loopback unless configured); `None` serves no query API.
    pub query: Option<SocketAddr>,
    /// gRPC health listener.
    pub health: SocketAddr,
    /// Prometheus listener; `None` runs without exporting (metrics are still recorded).
    pub metrics: Option<SocketAddr>,
    /// TLS for the gRPC listener: PEM files (reloaded when they change) or a self-signed
    /// certificate made at start; `None` serves plaintext.
    pub tls: Option<TlsSource>,
    /// With `tls`: plaintext connections are served too, told apart by their first byte.
    pub plaintext_beside_tls: bool,
    /// The endpoints file; `None` leaves the pool to the embedder (tests, benchmarks).
    pub endpoints_file: Option<PathBuf>,
    /// How often the endpoints file is checked.
    pub endpoints_poll: Duration,
    /// Block size when neither the picker config nor discovery says.
    pub block_size: BlockSize,
    /// The scheduler's config (`--config`); `None` runs the default profile with `block_size`
    /// and the picker's staleness.
    pub scheduler: Option<EndpointPickerConfig>,
    /// `--engine-profile`: the predicted-latency scorer's engine profile, overriding the
    /// scheduler config's.
    pub engine_profile: Option<EngineProfile>,
    /// Online calibration of that profile (`--online-calibration`); `None` keeps it fixed.
    pub online_calibration: Option<OnlineConfig>,
    /// `--kv-tier-weights` (GPU, CPU, STORAGE), overriding the scheduler config's.
    pub tier_weights: Option<[f32; 3]>,
    /// Picker settings.
    pub route: RouteConfig,
    /// Request bounds.
    pub limits: Limits,
    /// The process's memory budget (`--memory-budget`, `--max-streams`, `--max-connections`).
    pub budget: BudgetConfig,
    /// ext_proc connection caps (`--max-connections`, `--max-connections-per-peer`).
    pub connections: ConnectionLimits,
    /// Scraping settings.
    pub scrape: ScrapeConfig,
    /// `--kv-events-bind`: where ingestion binds a SUB socket for pods that connect.
    pub kv_events_bind: Option<String>,
    /// KV-event ingestion (queues, workers, timeouts; the bind address comes from
    /// `kv_events_bind`).
    pub kv_events: KvEventsConfig,
    /// Tokenizers for text and chat prompts.
    pub tokenize: TokenizeSettings,
    /// Shared in-flight load with other replicas (`--shared-inflight-url`); `None`: off.
    pub shared_inflight: Option<crate::shared_inflight::SharedInflightConfig>,
    /// `--bootstrap-from`: load the index from a peer at start; `None`: start empty.
    pub bootstrap: Option<crate::bootstrap::BootstrapConfig>,
    /// `--index-secret-file`: the placement secret's key material; `None`: a random secret.
    pub index_secret_file: Option<std::path::PathBuf>,
    /// Kubernetes discovery (`--pool-name` or `--endpoint-selector`); ready only once synced.
    pub kubernetes: Option<discovery::kubernetes::KubeSettings>,
    /// How long open streams may finish after shutdown begins before they are cut.
    pub shutdown_grace: Duration,
}

impl Settings {
    /// Settings from parsed flags.
    pub fn from_cli(cli: &Cli) -> Result<Self, Error> {
        cli.validate()?;
        let at = |port| SocketAddr::new(cli.listen_address, port);
        let kubernetes = discovery::kubernetes::KubeSettings::from_cli(cli)?;
        let budget = cli.budget();
        let connections = ConnectionLimits {
            max: budget.max_connections,
            max_per_peer: cli
                .max_connections_per_peer
                .unwrap_or((budget.max_connections / 2).max(1)),
            first_bytes: FIRST_BYTES,
        };
        let mut kv_events = cli.kv_events.config()?;
        kv_events.budget_bytes = budget.kv_event_bytes();
        kv_events.validate()?;
        // Kubernetes discovery resolves each pod's ports itself (annotations, ranks); the
        // defaults apply to endpoints files, whose entries may omit `kvEvents`/`kvReplay`.
        if kubernetes.is_none() {
            kv_events.publisher_port = cli.kv_events_port.filter(|&p| p != 0);
            kv_events.replay_port = Some(cli.kv_replay_port).filter(|&p| p != 0);
        }
        let tier_weights = cli
            .kv_events
            .kv_tier_weights
            .as_deref()
            .map(crate::kv_events::parse_tier_weights)
            .transpose()?;
        Ok(Self {
            grpc: at(cli.grpc_port),
            query: Some(SocketAddr::new(cli.query_address, cli.query_port)),
            health: at(cli.health_port),
            metrics: Some(at(cli.metrics_port)),
            // llm-d's chart sets nothing and expects TLS; kvpick's own manifests expect
            // plaintext: unset serves both, unless certificate files ask for TLS.
            tls: (cli.secure_serving != Some(false)).then(|| TlsSource::from_cli(cli)),
            plaintext_beside_tls: cli.secure_serving.is_none() && cli.cert_path.is_none(),
            endpoints_file: cli.endpoints_file.clone(),
            endpoints_poll: cli.endpoints_poll_interval,
            block_size: BlockSize::new(cli.block_size)
                .ok_or_else(|| Error::Config("--block-size must be positive".into()))?,
            scheduler: scheduler_config(cli)?,
            engine_profile: cli
                .engine_profile
                .as_deref()
                .map(load_engine_profile)
                .transpose()?,
            online_calibration: cli.online_calibration.then(|| OnlineConfig {
                interval: cli.calibration_interval,
                window: cli.calibration_window,
                ..OnlineConfig::default()
            }),
            tier_weights,
            route: RouteConfig {
                fallbacks: cli.fallbacks,
                staleness: cli.metrics_staleness_threshold,
                emit_scores: cli.emit_scores,
                failure_cooldown: cli.failure_cooldown,
                trusted_headers: crate::shedding::TrustedHeaders {
                    priority: cli.trust_priority_header,
                    fairness: cli.trust_fairness_header,
                    slo: cli.trust_slo_headers,
                },
                conformance_test_hooks: cli.conformance_test_hooks,
            },
            limits: Limits {
                max_body_bytes: cli.max_body_bytes,
                body_timeout: cli.body_timeout,
            },
            budget,
            connections,
            scrape: ScrapeConfig {
                interval: cli.refresh_metrics_interval,
                timeout: cli.scrape_timeout,
                max_bytes: 8 << 20,
                staleness: cli.metrics_staleness_threshold,
            },
            kv_events_bind: cli.kv_events_bind.clone(),
            kv_events,
            tokenize: cli.tokenize.settings()?,
            shared_inflight: cli.shared_inflight.config(cli.pool_name.as_deref())?,
            bootstrap: cli.bootstrap.config()?,
            index_secret_file: cli.bootstrap.index_secret_file.clone(),
            kubernetes,
            shutdown_grace: cli.shutdown_grace,
        })
    }

    /// Settings for an in-process server on loopback ephemeral ports (tests, benchmarks).
    pub fn loopback() -> Self {
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            grpc: lo,
            query: Some(lo),
            health: lo,
            metrics: None,
            tls: None,
            plaintext_beside_tls: false,
            endpoints_file: None,
            endpoints_poll: Duration::from_secs(1),
            block_size: BlockSize::DEFAULT,
            scheduler: None,
            engine_profile: None,
            online_calibration: None,
            tier_weights: None,
            route: RouteConfig::default(),
            limits: Limits {
                max_body_bytes: 16 << 20,
                body_timeout: Duration::from_secs(60),
            },
            budget: BudgetConfig::default(),
            connections: ConnectionLimits {
                max: BudgetConfig::default().max_connections,
                max_per_peer: BudgetConfig::default().max_connections,
                first_bytes: FIRST_BYTES,
            },
            scrape: ScrapeConfig {
                interval: Duration::from_millis(50),
                timeout: Duration::from_secs(1),
                max_bytes: 8 << 20,
                staleness: Duration::from_secs(2),
            },
            kv_events_bind: None,
            kv_events: KvEventsConfig {
                connect_timeout: Duration::from_millis(500),
                reconnect_min: Duration::from_millis(20),
                reconnect_max: Duration::from_millis(200),
                ..KvEventsConfig::default()
            },
            tokenize: TokenizeSettings::default(),
            shared_inflight: None,
            bootstrap: None,
            index_secret_file: None,
            kubernetes: None,
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// Reads and validates a picker config file.
fn load_config(path: &std::path::Path) -> Result<EndpointPickerConfig, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("--config {}: {e}", path.display())))?;
    EndpointPickerConfig::parse(&text)
        .map_err(|e| Error::Config(format!("--config {}: {e}", path.display())))
}

/// The picker config from `--config` (a file) or `--config-text`.
fn scheduler_config(cli: &Cli) -> Result<Option<EndpointPickerConfig>, Error> {
    match cli.chart.config_text.as_deref() {
        Some(text) => EndpointPickerConfig::parse(text)
            .map(Some)
            .map_err(|e| Error::Config(format!("--config-text: {e}"))),
        None => cli.config.as_deref().map(load_config).transpose(),
    }
}

/// Reads and validates an engine profile file (`kvpick-sim calibrate`'s `profile.yaml`).
fn load_engine_profile(path: &std::path::Path) -> Result<EngineProfile, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("--engine-profile {}: {e}", path.display())))?;
    EngineProfile::parse(&text)
        .map_err(|e| Error::Config(format!("--engine-profile {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::parse_ignoring_environment;

    fn settings(profile: &std::path::Path) -> Result<Settings, Error> {
        let cli = parse_ignoring_environment([
            "kvpick-epp",
            "--engine-profile",
            &profile.display().to_string(),
        ])
        .unwrap();
        Settings::from_cli(&cli)
    }

    #[test]
    fn engine_profile_file_is_read_and_bad_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.yaml");
        // What `kvpick-sim calibrate` writes: a comment header, then the profile's fields.
        std::fs::write(
            &path,
            "# Calibrated from Prometheus: 2 engines\nname: calibrated\nkv_blocks: 2048\n\
             block_size: 16\nmax_num_batched_tokens: 512\nmax_num_seqs: 16\nmax_model_len: 4096\n\
             step_time:\n  overhead_us: 4100.5\n  per_prefill_token_us: 29.9\n  \
             per_decode_seq_us: 790.0\n  per_context_token_us: 0.0\n  per_attention_pair_us: 0.0\n",
        )
        .unwrap();
        let s = settings(&path).unwrap();
        let online = s.online_calibration.unwrap();
        assert_eq!(online.interval, Duration::from_secs(30), "on by default");
        let p = s.engine_profile.unwrap();
        assert_eq!(
            (p.kv_blocks, p.step_time.per_prefill_token_us),
            (2048, 29.9)
        );
        for (body, expected) in [
            ("name: x\n", "missing field"),
            ("name: x\nkv_blocks: lots\n", "kv_blocks"),
        ] {
            std::fs::write(&path, body).unwrap();
            let e = settings(&path).unwrap_err().to_string();
            assert!(
                e.contains("--engine-profile") && e.contains(expected),
                "{e}"
            );
        }
        let e = settings(&dir.path().join("absent.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent.yaml"), "{e}");
    }
}
