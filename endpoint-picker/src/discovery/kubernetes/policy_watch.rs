//! The InferenceObjective and InferenceModelRewrite watches: both kinds in both groups
//! (`llm-d.ai/v1alpha2` and `inference.networking.x-k8s.io/v1alpha2`), in the pool's namespace,
//! folded into [`crate::cluster_policy::ClusterPolicy`] after every change.
//!
//! Each is a kube-runtime `watcher` behind the same backoff as the pool's; a relist replaces its
//! store only once complete, and errors keep the last known objects. A group whose CRD is not
//! installed answers 404: it is retried at the backoff's pace and stays empty, so a cluster with
//! either group (or none) works. Objects are kept in their compact form only, at most
//! [`MAX_STORED`] per watch and each truncated past the compile bounds, so a namespace full of
//! objects cannot grow kvpick's memory without bound.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::Retry;
use super::watch::{WATCH_ERRORS, backoff_stream, watch_config};
use crate::cluster_policy::resources::{self, ObjectiveSpec, RewriteSpec};
use crate::cluster_policy::{self, ClusterPolicy, MAX_OBJECTIVES, MAX_RULES, Object};

/// Most objects kept per watch: room for every object compile may apply, plus some that name
/// other pools.
pub const MAX_STORED: usize = 4 * MAX_OBJECTIVES;

type Events =
    Pin<Box<dyn Stream<Item = (usize, Result<Event<DynamicObject>, watcher::Error>)> + Send>>;

/// One watched resource: kind (objective or rewrite) and group.
#[derive(Clone, Copy, Debug)]
struct Source {
    rewrite: bool,
    group: &'static str,
}

impl Source {
    fn all() -> Vec<Self> {
        resources::GROUPS
            .iter()
            .flat_map(|&group| [false, true].map(|rewrite| Self { rewrite, group }))
            .collect()
    }

    fn api_resource(self) -> ApiResource {
        let (kind, plural) = if self.rewrite {
            resources::REWRITE
        } else {
            resources::OBJECTIVE
        };
        ApiResource {
            group: self.group.to_owned(),
            version: resources::VERSION.to_owned(),
            api_version: format!("{}/{}", self.group, resources::VERSION),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
        }
    }

    fn label(self) -> &'static str {
        match (self.rewrite, self.group) {
            (false, "llm-d.ai") => "inferenceobjective",
            (true, "llm-d.ai") => "inferencemodelrewrite",
            (false, _) => "inferenceobjective.x-k8s",
            (true, _) => "inferencemodelrewrite.x-k8s",
        }
    }
}

/// An object as kept: compact and bounded.
#[derive(Clone, Debug)]
enum Kept {
    Objective(Object<ObjectiveSpec>),
    Rewrite(Object<RewriteSpec>),
}

fn compact<S: DeserializeOwned>(o: &DynamicObject) -> Option<Object<S>> {
    let spec = serde_json::from_value(o.data.get("spec")?.clone()).ok()?;
    let created = o
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    let annotations = o
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("kvpick.io/slo-"))
        .map(|(k, v)| (k.clone(), v.chars().take(32).collect()))
        .collect();
    Some(Object {
        name: o.metadata.name.clone()?,
        created,
        annotations,
        spec,
    })
}

fn keep(source: Source, o: &DynamicObject) -> Option<Kept> {
    if source.rewrite {
        let mut r: Object<RewriteSpec> = compact(o)?;
        // One past each bound, so compile still sees (and reports) the excess.
        r.spec.rules.truncate(MAX_RULES + 1);
        for rule in &mut r.spec.rules {
            rule.matches.truncate(cluster_policy::MAX_MATCHES + 1);
            rule.targets.truncate(cluster_policy::MAX_TARGETS + 1);
        }
        Some(Kept::Rewrite(r))
    } else {
        compact(o).map(Kept::Objective)
    }
}

/// One watch's objects, by name, and a relist in progress.
#[derive(Default)]
struct Store {
    objects: BTreeMap<String, Kept>,
    listing: Option<BTreeMap<String, Kept>>,
    missing_reported: bool,
}

impl Store {
    /// Applies one event; true when the objects changed.
    fn apply(
        &mut self,
        source: Source,
        event: Result<Event<DynamicObject>, watcher::Error>,
    ) -> bool {
        let insert = |into: &mut BTreeMap<String, Kept>, o: &DynamicObject| {
            let name = o.metadata.name.clone().unwrap_or_default();
            if into.len() >= MAX_STORED && !into.contains_key(&name) {
                tracing::warn!(resource = source.label(), %name, "more than {MAX_STORED} objects; ignored");
                return false;
            }
            match keep(source, o) {
                Some(k) => {
                    into.insert(name, k);
                    true
                }
                None => {
                    tracing::warn!(resource = source.label(), %name, "unreadable spec; ignored");
                    into.remove(&name).is_some()
                }
            }
        };
        match event {
            Err(e) => {
                let missing = matches!(&e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404);
                if missing && !self.missing_reported {
                    tracing::info!(
                        resource = source.label(),
                        "not served (CRD not installed); watching for it"
                    );
                    self.missing_reported = true;
                } else if !missing {
                    metrics::counter!(WATCH_ERRORS, "resource" => source.label()).increment(1);
                    tracing::warn!(resource = source.label(), error = %e, "watch failed; retrying, policies unchanged");
                }
                false
            }
            Ok(Event::Init) => {
                self.listing = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(o)) => {
                if let Some(listing) = &mut self.listing {
                    insert(listing, &o);
                }
                false
            }
            Ok(Event::InitDone) => {
                self.missing_reported = false;
                match self.listing.take() {
                    Some(listing) => {
                        self.objects = listing;
                        true
                    }
                    None => false,
                }
            }
            Ok(Event::Apply(o)) => insert(&mut self.objects, &o),
            Ok(Event::Delete(o)) => o
                .metadata
                .name
                .is_some_and(|n| self.objects.remove(&n).is_some()),
        }
    }
}

/// The watches of one pool's policies, bound to a client.
#[derive(Clone)]
pub struct PolicyWatch {
    client: Client,
    namespace: String,
    pool: String,
    retry: Retry,
    policy: Arc<ClusterPolicy>,
}

impl std::fmt::Debug for PolicyWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyWatch")
            .field("namespace", &self.namespace)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl PolicyWatch {
    /// Watches for pool `pool` in `namespace`, publishing into `policy`.
    pub fn new(
        client: Client,
        namespace: String,
        pool: String,
        retry: Retry,
        policy: Arc<ClusterPolicy>,
    ) -> Self {
        Self {
            client,
            namespace,
            pool,
            retry,
            policy,
        }
    }

    /// Keeps the policy current until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let sources = Source::all();
        let watches: Vec<Events> = sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let api = Api::<DynamicObject>::namespaced_with(
                    self.client.clone(),
                    &self.namespace,
                    &s.api_resource(),
                );
                let events = backoff_stream(watcher::watcher(api, watch_config()), self.retry);
                Box::pin(events.map(move |e| (i, e))) as Events
            })
            .collect();
        let mut events = futures::stream::select_all(watches);
        let mut stores: Vec<Store> = sources.iter().map(|_| Store::default()).collect();
        let mut problems = Vec::new();
        loop {
            let (i, event) = tokio::select! {
                _ = stop.cancelled() => return,
                Some(e) = events.next() => e,
                else => return,
            };
            if stores[i].apply(sources[i], event) {
                self.publish(&stores, &mut problems);
            }
        }
    }

    fn publish(&self, stores: &[Store], problems: &mut Vec<String>) {
        let (mut objectives, mut rewrites) = (Vec::new(), Vec::new());
        // Sources are newest group first: its objects come first among equals.
        for store in stores {
            for kept in store.objects.values() {
                match kept {
                    Kept::Objective(o) => objectives.push(o.clone()),
                    Kept::Rewrite(r) => rewrites.push(r.clone()),
                }
            }
        }
        let (set, found) = cluster_policy::compile(&self.pool, &objectives, &rewrites);
        if found != *problems {
            for p in &found {
                tracing::warn!("{p}");
            }
            *problems = found;
        }
        tracing::info!(
            objectives = set.objectives.len(),
            rewrites = !set.rewrites.is_empty(),
            "InferenceObjectives and InferenceModelRewrites applied"
        );
        self.policy.set(set);
    }
}
