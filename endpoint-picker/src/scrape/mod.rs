//! Pod metrics: one scrape loop per endpoint, kept in step with the pool by a supervisor.
//!
//! Each loop GETs its endpoint's `/metrics` every interval, with a timeout and a body cap, parses
//! it ([`prometheus::parse`]) and stores the signals in the member's [`crate::pool::Live`] cell.
//! A failed scrape stores nothing, so the endpoint's signals age until they turn stale. Loops of
//! endpoints that leave are cancelled and joined; on shutdown all are.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kvpick_scheduler::{EndpointId, KvIndex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::pool::{Freshness, Live, Pool};
use crate::telemetry as t;

pub mod prometheus;

/// How endpoints are scraped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrapeConfig {
    /// Time between scrapes of one endpoint.
    pub interval: Duration,
    /// Timeout of one scrape.
    pub timeout: Duration,
    /// Largest metrics page read.
    pub max_bytes: usize,
    /// Age past which signals are stale (for the staleness gauge).
    pub staleness: Duration,
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Keeps one scrape loop per endpoint of `pool` until `stop`, and refreshes the pool and index
/// gauges every second.
pub async fn supervise(
    pool: Arc<Pool>,
    index: Arc<KvIndex>,
    clock: Clock,
    config: ScrapeConfig,
    stop: CancellationToken,
) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.timeout));
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let mut views = pool.subscribe();
    let mut loops: HashMap<EndpointId, (String, CancellationToken)> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sync = true;
    loop {
        if sync {
            let view = views.borrow_and_update().clone();
            loops.retain(|id, (url, token)| {
                let keep = view.by_id(*id).is_some_and(|m| &m.spec.metrics == url);
                if !keep {
                    token.cancel();
                }
                keep
            });
            for m in &view.members {
                if loops.contains_key(&m.endpoint.id) {
                    continue;
                }
                let token = stop.child_token();
                loops.insert(m.endpoint.id, (m.spec.metrics.clone(), token.clone()));
                let job = Job {
                    client: client.clone(),
                    url: m.spec.metrics.clone(),
                    label: m.endpoint.address.to_string(),
                    live: m.live.clone(),
                    clock,
                    config: config.clone(),
                };
                tasks.spawn(job.run(token));
            }
            sync = false;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = views.changed() => match changed {
                Ok(()) => sync = true,
                Err(_) => break,
            },
            _ = gauges.tick() => refresh_gauges(&pool, &index, clock, config.staleness),
            Some(_) = tasks.join_next() => {}
        }
    }
    for (_, token) in loops.values() {
        token.cancel();
    }
    while tasks.join_next().await.is_some() {}
}

fn refresh_gauges(pool: &Pool, index: &KvIndex, clock: Clock, staleness: Duration) {
    let view = pool.view();
    let now = clock.now();
    metrics::gauge!(t::ENDPOINTS).set(view.members.len() as f64);
    for m in &view.members {
        let stale = m.freshness(now, staleness) != Freshness::Fresh;
        metrics::gauge!(t::STALE, "endpoint" => m.endpoint.address.to_string()).set(if stale {
            1.0
        } else {
            0.0
        });
    }
    let stats = index.stats();
    metrics::gauge!(t::INDEX_KEYS).set(stats.keys as f64);
    metrics::gauge!(t::INDEX_ENTRIES).set(stats.entries as f64);
}

struct Job {
    client: HttpClient,
    url: String,
    label: String,
    live: Arc<Live>,
    clock: Clock,
    config: ScrapeConfig,
}

impl Job {
    async fn run(self, stop: CancellationToken) {
        let uri: hyper::Uri = match self.url.parse() {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(url = %self.url, error = %e, "bad metrics URL; not scraping");
                return;
            }
        };
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(self.config.timeout, self.scrape(&uri)) => r.unwrap_or(Err("timeout")),
            };
            match result {
                Ok(signals) => {
                    metrics::gauge!(t::WAITING, "endpoint" => self.label.clone())
                        .set(f64::from(signals.waiting));
                    metrics::gauge!(t::RUNNING, "endpoint" => self.label.clone())
                        .set(f64::from(signals.running));
                    metrics::gauge!(t::KV_USAGE, "endpoint" => self.label.clone())
                        .set(signals.kv_usage);
                    self.live.set_signals(signals);
                }
                Err(reason) => {
                    tracing::debug!(endpoint = %self.label, reason, "scrape failed");
                    metrics::counter!(t::SCRAPE_ERRORS, "endpoint" => self.label.clone(), "reason" => reason).increment(1);
                }
            }
        }
    }

    async fn scrape(&self, uri: &hyper::Uri) -> Result<kvpick_scheduler::PodSignals, &'static str> {
        let response = self.client.get(uri.clone()).await.map_err(|_| "connect")?;
        if !response.status().is_success() {
            return Err("status");
        }
        let body = Limited::new(response.into_body(), self.config.max_bytes)
            .collect()
            .await
            .map_err(|_| "body")?
            .to_bytes();
        let page = std::str::from_utf8(&body).map_err(|_| "utf8")?;
        let parsed = prometheus::parse(page);
        if !parsed.seen_queue {
            return Err("not_vllm");
        }
        Ok(parsed.into_signals(self.clock.now()))
    }
}
