//! [`Server::bind`]: everything that can fail at startup, before anything serves.

use std::sync::Arc;

use kvpick_scheduler::EndpointPickerConfig;
use kvpick_scheduler::index::IndexSecret;
use kvpick_scheduler::{KvIndex, Scheduler};
use tokio_util::sync::CancellationToken;

use super::{Server, Settings, listen, tls};
use crate::clock::Clock;
use crate::error::Error;
use crate::flow_control::FlowControl;
use crate::kv_events::KvEvents;
use crate::pool::Pool;
use crate::prompt::{NoTokenizer, Tokenize};
use crate::router::Router;
use crate::tokenizer::Tokenizer;
use crate::{Shared, discovery};

impl Server {
    /// Binds the listeners, loads TLS material, tokenizers and the endpoints file, builds the
    /// state and starts KV-event ingestion (which binds its socket in bind mode; held until
    /// `run`'s index bootstrap when `--bootstrap-from` is set).
    pub async fn bind(settings: Settings) -> Result<Self, Error> {
        let found = match &settings.endpoints_file {
            Some(path) => Some(discovery::file::load(path).await?),
            None => None,
        };
        let mut config = scheduler_config(&settings, found.as_ref().and_then(|f| f.block_size))?;
        let fits = settings.budget.index_capacity();
        if config.index.capacity > fits {
            tracing::info!(
                configured = config.index.capacity,
                capacity = fits,
                budget = settings.budget.total,
                "index capacity capped to fit half the memory budget"
            );
            config.index.capacity = fits;
        }
        config.index.secret = match &settings.index_secret_file {
            Some(path) => crate::bootstrap::secret_from_file(path)?,
            None => index_secret(),
        };
        let mut route = settings.route.clone();
        route.staleness = config.staleness.max_signal_age;
        let tls = settings
            .tls
            .clone()
            .map(|source| {
                tls::Tls::new(source).map(|t| t.with_plaintext(settings.plaintext_beside_tls))
            })
            .transpose()?;
        let clock = Clock::new();
        let index = Arc::new(KvIndex::new(config.index.clone()));
        let pool = Arc::new(Pool::new(index.clone(), clock));
        if let Some(found) = &found {
            pool.reconcile(found)?;
        }
        let tokenizer = if settings.tokenize.enabled() {
            Some(Tokenizer::new(
                &settings.tokenize,
                pool.clone(),
                clock,
                route.staleness,
            )?)
        } else {
            None
        };
        let seam: Arc<dyn Tokenize> = match &tokenizer {
            Some(t) => Arc::new(t.clone()),
            None => Arc::new(NoTokenizer),
        };
        let flow = config
            .flow
            .enabled
            .then(|| Arc::new(FlowControl::new(config.flow.clone())));
        let scheduler = Arc::new(Scheduler::with_config(config, index.clone())?);
        if let Some(shared) = &settings.shared_inflight {
            scheduler.inflight().set_peer_limits(shared.peer_limits());
        }
        let shared = Arc::new(Shared {
            router: Router::new(scheduler, pool.clone(), clock, route),
            tokenizer: seam,
            limits: settings.limits,
            clock,
            flow,
            budget: crate::budget::Budget::new(&settings.budget),
            policy: Arc::default(),
            anchors: Arc::default(),
        });
        let kubernetes = match &settings.kubernetes {
            Some(k) => Some(discovery::kubernetes::Discovery::new(
                discovery::kubernetes::client().await?,
                k.clone(),
            )),
            None => None,
        };
        let metrics = match settings.metrics {
            Some(addr) => Some(listen(addr).await?),
            None => None,
        };
        let grpc = listen(settings.grpc).await?;
        let query = match settings.query {
            Some(addr) => Some(listen(addr).await?),
            None => None,
        };
        let health = listen(settings.health).await?;
        let kv_events_stop = CancellationToken::new();
        let mut server = Self {
            grpc,
            query,
            health,
            metrics,
            tls,
            shared,
            pool,
            index,
            kubernetes,
            kv_events: None,
            kv_events_stop,
            tokenizer,
            shared_inflight: settings.shared_inflight.as_ref().map(|_| Arc::default()),
            opening: None,
            settings,
        };
        // The recorder goes in before ingestion registers its per-endpoint series, or they would
        // be bound to the no-op recorder and never exported.
        if server.metrics.is_some() {
            crate::telemetry::install();
            crate::kv_events::describe_metrics();
            crate::shared_inflight::describe_metrics();
            crate::bootstrap::describe_metrics();
            server.shared.budget.export();
        }
        // With a bootstrap, ingestion opens no endpoint before the bootstrap (in `run`, once the
        // endpoint set is known) has left its anchors: each endpoint's first connection then
        // replays from the batch the peer had applied last.
        let hold = if server.settings.bootstrap.is_some() {
            let (hold, release) = crate::kv_events::hold();
            server.opening = Some(release);
            Some(hold)
        } else {
            None
        };
        let kv = KvEvents::start_for(
            server.ingestion(),
            server.settings.kv_events.clone(),
            server.kv_events_stop.clone(),
            hold,
        )
        .await?;
        if let Some(bound) = kv.bound().first() {
            tracing::info!(%bound, ranks = kv.bound().len(), "KV events: listening for pods (bind mode)");
        }
        server.kv_events = Some(kv);
        Ok(server)
    }
}

/// The scheduler's config: `--config`'s (checked against the endpoints file's block size), or
/// the default profile with the flags' block size and staleness; `--kv-tier-weights` on top.
fn scheduler_config(
    settings: &Settings,
    file_block_size: Option<kvpick_scheduler::BlockSize>,
) -> Result<EndpointPickerConfig, Error> {
    let mut config = match settings.scheduler.clone() {
        Some(config) => {
            if let Some(b) = file_block_size.filter(|&b| b != config.index.block_size) {
                return Err(Error::Config(format!(
                    "the endpoints file's blockSize {b} differs from --config index.blockSize {}",
                    config.index.block_size
                )));
            }
            config
        }
        None => {
            let mut config = EndpointPickerConfig::default();
            config.index.block_size = file_block_size.unwrap_or(settings.block_size);
            config.staleness.max_signal_age = settings.route.staleness;
            config
        }
    };
    if let Some(weights) = settings.tier_weights {
        config.index.tier_weights = weights;
    }
    if let Some(profile) = &settings.engine_profile {
        config
            .set_engine_profile(profile)
            .map_err(|e| Error::Config(format!("--engine-profile: {e}")))?;
    }
    Ok(config)
}

/// The index's placement secret, from OS randomness (`RandomState`'s keys are drawn from the
/// OS generator): block keys and engine hashes that collide under it cannot be computed from
/// outside the process.
fn index_secret() -> IndexSecret {
    use std::hash::BuildHasher;
    let state = std::hash::RandomState::new();
    IndexSecret::new(state.hash_one(0u8), state.hash_one(1u8))
}
