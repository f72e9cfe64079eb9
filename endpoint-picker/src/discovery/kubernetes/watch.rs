//! The watch half of Kubernetes discovery: an `InferencePool` watch and a pod watch scoped by the
//! pool's selector, folded into a pod store that [`super::endpoints`] turns into the pool's
//! endpoints after every change.
//!
//! Both watches are kube-runtime `watcher`s (list, then watch from the list's resourceVersion;
//! relist on 410 Gone; resume after a dropped connection) behind a [`StreamBackoff`]. A relist
//! is buffered and replaces the store only once complete, and an error never touches the store:
//! transient API failures keep the last known endpoint set. A pool whose selector changes gets
//! a new pod watch at once; pods that no longer match leave the set immediately, pods that newly
//! match join when the new watch has listed them.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::utils::{Backoff, StreamBackoff};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::crd::InferencePool;
use super::endpoints::{self, EndpointDefaults, PodInfo, Scope};
use super::{KubeSettings, Target};
use crate::pool::Pool;

/// Watch errors, by `resource` (`inferencepool`, `pod`); each one is retried after a backoff.
pub const WATCH_ERRORS: &str = "kvpick_discovery_watch_errors_total";

type Watch<K> = Pin<Box<dyn Stream<Item = Result<Event<K>, watcher::Error>> + Send>>;

/// The API server ends each watch after this long and the watcher resumes from its last
/// resource version (cheap); a connection that stalls without closing is given up after it plus
/// kube's 5 s margin, instead of kube's default 290 s.
pub const WATCH_TIMEOUT_SECS: u32 = 60;

/// Every watch's settings: bookmarks on (kube's default), the stall bound above.
pub(super) fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

/// Exponential retry delays from `min` to `max`, reset by any successful event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// First delay after an error.
    pub min: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

struct RetryBackoff {
    retry: Retry,
    next: Duration,
}

impl Iterator for RetryBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(self.retry.max);
        Some(now)
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.next = self.retry.min;
    }
}

/// Kubernetes discovery bound to a client: watches until stopped.
#[derive(Clone)]
pub struct Discovery {
    client: Client,
    namespace: String,
    settings: KubeSettings,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("namespace", &self.namespace)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Discovery through `client`; without a namespace in `settings`, the client's default (in
    /// a pod: its own namespace).
    pub fn new(client: Client, settings: KubeSettings) -> Self {
        let namespace = settings
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        Self {
            client,
            namespace,
            settings,
        }
    }

    /// The namespace watched.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Keeps `pool` equal to the pods' endpoints until `stop`. `synced` turns true once the
    /// first complete picture (pool and its pods listed) is published, and false while the pool
    /// does not exist.
    pub async fn run(self, pool: Arc<Pool>, synced: watch::Sender<bool>, stop: CancellationToken) {
        let mut state = State {
            discovery: &self,
            scope: None,
            pool_listing: None,
            pods_watch: None,
            pods: BTreeMap::new(),
            pods_listing: None,
            pods_synced: false,
            pool_known: false,
            problems: Vec::new(),
        };
        let mut pools: Watch<InferencePool> = match &self.settings.target {
            Target::Pool(name) => {
                let api = Api::<InferencePool>::namespaced(self.client.clone(), &self.namespace);
                let config = watch_config().fields(&format!("metadata.name={name}"));
                self.backoff(watcher::watcher(api, config))
            }
            Target::Pods(scope) => {
                state.pool_known = true;
                state.rescope(Some(scope.clone()));
                Box::pin(futures::stream::pending())
            }
        };
        let mut drain = tokio::time::interval(Duration::from_secs(1));
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changed = tokio::select! {
                _ = stop.cancelled() => return,
                _ = drain.tick() => {
                    pool.release_drained();
                    false
                }
                Some(event) = pools.next() => state.on_pool(event),
                Some(event) = next(&mut state.pods_watch) => state.on_pod(event),
            };
            if changed {
                state.publish(&pool, &synced);
            }
        }
    }

    fn backoff<K: Send + 'static>(
        &self,
        stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    ) -> Watch<K> {
        backoff_stream(stream, self.settings.retry)
    }

    /// The watches of the pool's InferenceObjectives and InferenceModelRewrites, publishing
    /// into `policy`; `None` without a pool (their `poolRef` could name nothing).
    pub fn policy_watch(
        &self,
        policy: Arc<crate::cluster_policy::ClusterPolicy>,
    ) -> Option<super::PolicyWatch> {
        let Target::Pool(pool) = &self.settings.target else {
            return None;
        };
        Some(super::PolicyWatch::new(
            self.client.clone(),
            self.namespace.clone(),
            pool.clone(),
            self.settings.retry,
            policy,
        ))
    }
}

/// `stream` retried after errors with `retry`'s backoff.
pub(super) fn backoff_stream<K: Send + 'static>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    retry: Retry,
) -> Watch<K> {
    Box::pin(StreamBackoff::new(
        stream,
        RetryBackoff {
            retry,
            next: retry.min,
        },
    ))
}

async fn next<K>(watch: &mut Option<Watch<K>>) -> Option<Result<Event<K>, watcher::Error>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

struct State<'a> {
    discovery: &'a Discovery,
    /// The pool's scope; `None` while the pool is unknown or absent.
    scope: Option<Scope>,
    /// A pool relist in progress (`Some(None)`: nothing listed yet).
    pool_listing: Option<Option<InferencePool>>,
    pods_watch: Option<Watch<Pod>>,
    pods: BTreeMap<String, PodInfo>,
    pods_listing: Option<BTreeMap<String, PodInfo>>,
    /// The pods of the current pool have been listed at least once.
    pods_synced: bool,
    /// The pool watch has listed at least once (always true without a pool).
    pool_known: bool,
    problems: Vec<String>,
}

impl State<'_> {
    /// Applies one pool event; true when the endpoint set may have changed.
    fn on_pool(&mut self, event: Result<Event<InferencePool>, watcher::Error>) -> bool {
        match event {
            Err(e) => {
                metrics::counter!(WATCH_ERRORS, "resource" => "inferencepool").increment(1);
                tracing::warn!(error = %e, "InferencePool watch failed; retrying, endpoints unchanged");
                false
            }
            Ok(Event::Init) => {
                self.pool_listing = Some(None);
                false
            }
            Ok(Event::InitApply(p)) => {
                self.pool_listing = Some(Some(p));
                false
            }
            Ok(Event::InitDone) => {
                self.pool_known = true;
                let listed = self.pool_listing.take().flatten();
                self.set_pool(listed)
            }
            Ok(Event::Apply(p)) => self.set_pool(Some(p)),
            Ok(Event::Delete(_)) => self.set_pool(None),
        }
    }

    fn set_pool(&mut self, pool: Option<InferencePool>) -> bool {
        let Some(pool) = pool else {
            if self.scope.is_some() || !self.pods.is_empty() {
                tracing::warn!(namespace = %self.discovery.namespace, "the InferencePool is gone; no endpoints until it returns");
            } else {
                tracing::warn!(namespace = %self.discovery.namespace, target = ?self.discovery.settings.target, "the InferencePool does not exist (yet); waiting for it");
            }
            self.rescope(None);
            return true;
        };
        match Scope::from_pool(&pool.spec) {
            Ok(scope) => {
                if self.scope.as_ref() != Some(&scope) {
                    tracing::info!(selector = %scope.selector, ports = ?scope.target_ports, "InferencePool scope");
                }
                self.rescope(Some(scope));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "invalid InferencePool; keeping the previous scope");
                false
            }
        }
    }

    /// Moves to `scope`: a new selector gets a new pod watch and drops pods it does not match.
    fn rescope(&mut self, scope: Option<Scope>) {
        let same_selector = match (&self.scope, &scope) {
            (Some(a), Some(b)) => a.selector == b.selector,
            _ => false,
        };
        if !same_selector {
            self.pods_listing = None;
            self.pods_watch = scope.as_ref().map(|s| {
                let api = Api::<Pod>::namespaced(
                    self.discovery.client.clone(),
                    &self.discovery.namespace,
                );
                let config = watch_config().labels(&s.selector.to_string());
                self.discovery.backoff(watcher::watcher(api, config))
            });
            match &scope {
                Some(s) => self.pods.retain(|_, p| s.selector.matches(&p.labels)),
                None => {
                    self.pods.clear();
                    self.pods_synced = false;
                }
            }
        }
        self.scope = scope;
    }

    /// Applies one pod event; true when the endpoint set may have changed.
    fn on_pod(&mut self, event: Result<Event<Pod>, watcher::Error>) -> bool {
        match event {
            Err(e) => {
                metrics::counter!(WATCH_ERRORS, "resource" => "pod").increment(1);
                tracing::warn!(error = %e, "pod watch failed; retrying, endpoints unchanged");
                false
            }
            Ok(Event::Init) => {
                self.pods_listing = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(p)) => {
                if let (Some(listing), Some(info)) = (&mut self.pods_listing, PodInfo::from_pod(&p))
                {
                    listing.insert(info.name.clone(), info);
                }
                false
            }
            Ok(Event::InitDone) => {
                if let Some(listing) = self.pods_listing.take() {
                    self.pods = listing;
                }
                self.pods_synced = true;
                true
            }
            Ok(Event::Apply(p)) => match PodInfo::from_pod(&p) {
                Some(info) => self.pods.insert(info.name.clone(), info.clone()) != Some(info),
                None => false,
            },
            Ok(Event::Delete(p)) => p
                .metadata
                .name
                .is_some_and(|n| self.pods.remove(&n).is_some()),
        }
    }

    /// Reconciles the pool with the current picture, once there is a complete one.
    fn publish(&mut self, pool: &Pool, synced: &watch::Sender<bool>) {
        if !self.pool_known {
            return;
        }
        let outcome = match &self.scope {
            None => endpoints::Outcome::default(),
            Some(_) if !self.pods_synced => return,
            Some(scope) => endpoints::endpoints(scope, self.defaults(), self.pods.values()),
        };
        if outcome.problems != self.problems {
            for p in &outcome.problems {
                tracing::warn!("{p}");
            }
            self.problems = outcome.problems;
        }
        match pool.reconcile(&outcome.discovered) {
            Ok(change) if change.is_empty() => {}
            Ok(change) => tracing::info!(
                endpoints = outcome.discovered.endpoints.len(),
                added = change.added.len(),
                removed = change.removed.len(),
                updated = change.updated.len(),
                "pool endpoints changed"
            ),
            Err(e) => tracing::error!(error = %e, "endpoints rejected; keeping the last set"),
        }
        synced.send_if_modified(|s| {
            let now = self.scope.is_some();
            std::mem::replace(s, now) != now
        });
    }

    fn defaults(&self) -> &EndpointDefaults {
        &self.discovery.settings.defaults
    }
}
