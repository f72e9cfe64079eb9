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
use kvpick_scheduler::profile::online::CounterSample;
use kvpick_scheduler::{EndpointId, KvIndex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::calibration::OnlineCalibration;
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
/// gauges every second; with `calibration`, hands it every page's counters and asks it for a
/// refit every second.
pub async fn supervise(
    pool: Arc<Pool>,
    index: Arc<KvIndex>,
    clock: Clock,
    config: ScrapeConfig,
    calibration: Option<Arc<OnlineCalibration>>,
    stop: CancellationToken,
) {
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(kvpick_tokenize::remote::connector(config.timeout));
    let mut views = pool.subscribe();
    // Per endpoint: metrics URL, label, the loop's token.
    let mut loops: HashMap<EndpointId, (String, String, CancellationToken)> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sync = true;
    loop {
        if sync {
            let view = views.borrow_and_update().clone();
            loops.retain(|id, (url, label, token)| {
                let keep = view.by_id(*id).is_some_and(|m| &m.spec.metrics == url);
                if !keep {
                    token.cancel();
                    if let Some(c) = &calibration {
                        c.forget(label);
                    }
                }
                keep
            });
            for m in &view.members {
                if loops.contains_key(&m.endpoint.id) {
                    continue;
                }
                let token = stop.child_token();
                let label = m.endpoint.address.to_string();
                loops.insert(
                    m.endpoint.id,
                    (m.spec.metrics.clone(), label.clone(), token.clone()),
                );
                let job = Job {
                    client: client.clone(),
                    url: m.spec.metrics.clone(),
                    label,
                    model: m.spec.model.clone(),
                    calibration: calibration.clone(),
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
            _ = gauges.tick() => {
                refresh_gauges(&pool, &index, clock, config.staleness);
                if let Some(c) = &calibration {
                    c.refit(clock.now());
                }
            }
            Some(_) = tasks.join_next() => {}
        }
    }
    for (_, _, token) in loops.values() {
        token.cancel();
    }
    while tasks.join_next().await.is_some() {}
}

fn refresh_gauges(pool: &Pool, index: &KvIndex, clock: Clock, staleness: Duration) {
    let view = pool.view();
    let now = clock.now();
    metrics::gauge!(t::ENDPOINTS).set(view.members.len() as f64);
    let mut pool = PoolLoad::default();
    for m in &view.members {
        let fresh = m.freshness(now, staleness) == Freshness::Fresh;
        metrics::gauge!(t::STALE, "endpoint" => m.endpoint.address.to_string()).set(if fresh {
            0.0
        } else {
            1.0
        });
        if fresh && let Some(s) = m.live.signals() {
            pool.add(&s);
        }
    }
    metrics::gauge!(t::POOL_READY).set(f64::from(pool.ready));
    metrics::gauge!(t::POOL_WAITING).set(pool.waiting as f64);
    metrics::gauge!(t::POOL_RUNNING).set(pool.running as f64);
    metrics::gauge!(t::POOL_KV_USAGE).set(pool.mean_kv_usage());
    metrics::gauge!(t::POOL_AVG_QUEUE).set(pool.mean_waiting());
    let stats = index.stats();
    metrics::gauge!(t::INDEX_KEYS).set(stats.keys as f64);
    metrics::gauge!(t::INDEX_ENTRIES).set(stats.entries as f64);
}

/// The pool's load for autoscalers: sums over endpoints with fresh signals (a stale endpoint's
/// last numbers would hold a scaler at a load that may be long gone).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PoolLoad {
    /// Endpoints with fresh signals.
    pub ready: u32,
    /// Their waiting requests.
    pub waiting: u64,
    /// Their running requests.
    pub running: u64,
    kv_usage_sum: f64,
}

impl PoolLoad {
    /// Counts one fresh endpoint's signals.
    pub fn add(&mut self, s: &kvpick_scheduler::PodSignals) {
        self.ready += 1;
        self.waiting += u64::from(s.waiting);
        self.running += u64::from(s.running);
        self.kv_usage_sum += s.kv_usage.clamp(0.0, 1.0);
    }

    /// Mean waiting requests per fresh endpoint (0 with none).
    pub fn mean_waiting(&self) -> f64 {
        if self.ready == 0 {
            0.0
        } else {
            self.waiting as f64 / f64::from(self.ready)
        }
    }

    /// Mean KV-cache usage over the fresh endpoints (0 with none).
    pub fn mean_kv_usage(&self) -> f64 {
        if self.ready == 0 {
            0.0
        } else {
            self.kv_usage_sum / f64::from(self.ready)
        }
    }
}

struct Job {
    client: HttpClient,
    url: String,
    label: String,
    model: Arc<str>,
    calibration: Option<Arc<OnlineCalibration>>,
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
                Ok((signals, counters)) => {
                    if let Some(c) = &self.calibration {
                        c.observe(&self.model, &self.label, signals.scraped_at, &counters);
                    }
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

    async fn scrape(
        &self,
        uri: &hyper::Uri,
    ) -> Result<(kvpick_scheduler::PodSignals, CounterSample), &'static str> {
        let response = self.client.get(uri.clone()).await.map_err(|_| "connect")?;
        if !response.status().is_success() {
            return Err("status");
        }
        let body = Limited::new(response.into_body(), self.config.max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    "too_large"
                } else {
                    "body"
                }
            })?
            .to_bytes();
        let page = std::str::from_utf8(&body).map_err(|_| "utf8")?;
        let parsed = prometheus::parse(page);
        if !parsed.seen_queue {
            return Err("not_vllm");
        }
        let counters = parsed.counters;
        Ok((parsed.into_signals(self.clock.now()), counters))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvpick_scheduler::{PodSignals, Timestamp};

    #[test]
    fn pool_load_sums_and_averages() {
        let mut load = PoolLoad::default();
        assert_eq!((load.mean_kv_usage(), load.mean_waiting()), (0.0, 0.0));
        for (waiting, running, kv) in [(3, 1, 0.2), (5, 2, 0.6)] {
            let mut s = PodSignals::idle(Timestamp::ZERO);
            (s.waiting, s.running, s.kv_usage) = (waiting, running, kv);
            load.add(&s);
        }
        assert_eq!((load.ready, load.waiting, load.running), (2, 8, 3));
        assert_eq!(load.mean_waiting(), 4.0);
        assert!((load.mean_kv_usage() - 0.4).abs() < 1e-9);
    }
}
