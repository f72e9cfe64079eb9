//! The pure half of Kubernetes discovery: a pool's scope and its pods in, [`Discovered`] out.
//!
//! No API server, no clock: [`endpoints`] is a function of values, so every rule (readiness, one
//! endpoint per target port, KV-event ports per rank, annotation overrides) is tested directly.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use super::crd::InferencePoolSpec;
use crate::discovery::{Discovered, EndpointSpec};

/// Pod annotation naming the model the pod serves (overrides `--model`).
pub const MODEL_ANNOTATION: &str = "kvpick.io/model";
/// Pod annotation with the base port of the pod's KV-event publisher (`0`: none).
pub const KV_EVENTS_PORT_ANNOTATION: &str = "kvpick.io/kv-events-port";
/// Pod annotation with the base port of the pod's KV-event replay socket (`0`: none).
pub const KV_REPLAY_PORT_ANNOTATION: &str = "kvpick.io/kv-replay-port";

/// Target ports a pool may have (the v1 API's bound).
pub const MAX_TARGET_PORTS: usize = 8;

/// An equality label selector (`key=value` pairs, all must match), as in InferencePool v1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(BTreeMap<String, String>);

impl Selector {
    /// A selector from its pairs; empty is refused (it would select every pod in the namespace).
    pub fn new(pairs: BTreeMap<String, String>) -> Result<Self, String> {
        if pairs.is_empty() {
            return Err("the selector is empty; it would select every pod".into());
        }
        for (k, v) in &pairs {
            if k.is_empty() || k.contains([',', '=', '!', ' ']) || v.contains([',', '=', ' ']) {
                return Err(format!("invalid selector pair {k:?}={v:?}"));
            }
        }
        Ok(Self(pairs))
    }

    /// Parses `key=value,key2=value2` (`==` also accepted).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pairs = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once("==")
                .or_else(|| part.split_once('='))
                .ok_or_else(|| format!("{part:?} is not key=value (only equality selectors)"))?;
            if pairs
                .insert(k.trim().to_owned(), v.trim().to_owned())
                .is_some()
            {
                return Err(format!("label {:?} appears twice", k.trim()));
            }
        }
        Self::new(pairs)
    }

    /// Whether `labels` has every pair.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The API's label-selector query form, `k=v,k2=v2`.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Which pods belong to the pool and which of their ports are endpoints (rank N ↔ port N).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// The pods: those whose labels match.
    pub selector: Selector,
    /// The serving ports, in rank order; 1 to [`MAX_TARGET_PORTS`], unique.
    pub target_ports: Vec<u16>,
}

impl Scope {
    /// A scope, checked as the API server would check an InferencePool.
    pub fn new(selector: Selector, target_ports: Vec<u16>) -> Result<Self, String> {
        if target_ports.is_empty() || target_ports.len() > MAX_TARGET_PORTS {
            return Err(format!(
                "{} target ports; between 1 and {MAX_TARGET_PORTS} are allowed",
                target_ports.len()
            ));
        }
        let mut seen = HashSet::new();
        for &p in &target_ports {
            if p == 0 || !seen.insert(p) {
                return Err(format!("target port {p} is zero or repeated"));
            }
        }
        Ok(Self {
            selector,
            target_ports,
        })
    }

    /// The scope an InferencePool describes.
    pub fn from_pool(spec: &InferencePoolSpec) -> Result<Self, String> {
        if spec
            .target_ports
            .iter()
            .any(|p| !(1..=65535).contains(&p.number))
        {
            return Err("a target port is outside 1..=65535".into());
        }
        Self::new(
            Selector::new(spec.selector.match_labels.clone())?,
            spec.port_numbers(),
        )
    }
}

/// What every endpoint gets unless its pod's annotations say otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointDefaults {
    /// The model, when pods do not carry [`MODEL_ANNOTATION`].
    pub model: Option<Arc<str>>,
    /// Base port of the pods' KV-event publishers (rank N publishes on base + N); 0: none.
    pub kv_events_port: u16,
    /// Base port of the pods' replay sockets (rank N on base + N); 0: none.
    pub kv_replay_port: u16,
}

impl Default for EndpointDefaults {
    fn default() -> Self {
        Self {
            model: None,
            kv_events_port: 5557,
            kv_replay_port: 0,
        }
    }
}

/// A pod, reduced to what discovery needs (the watch keeps these, not whole pods).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// `metadata.name`.
    pub name: String,
    /// `status.podIP`, once assigned.
    pub ip: Option<IpAddr>,
    /// Ready condition true and not being deleted.
    pub ready: bool,
    /// All its labels (filters read them, e.g. `llm-d.ai/role`).
    pub labels: BTreeMap<String, String>,
    /// Its `kvpick.io/…` annotations only.
    pub annotations: BTreeMap<String, String>,
}

impl PodInfo {
    /// Reduces `pod`; `None` when it has no name (never the case for pods from the API server).
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let name = meta.name.clone()?;
        let status = pod.status.as_ref();
        let ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let ready_condition = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let annotations = meta
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("kvpick.io/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Some(Self {
            name,
            ip,
            ready: ready_condition && meta.deletion_timestamp.is_none(),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations,
        })
    }
}

/// The endpoints, and what was wrong with pods that were skipped or partly configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The endpoint set to reconcile.
    pub discovered: Discovered,
    /// One line per problem, naming the pod (logged when the list changes).
    pub problems: Vec<String>,
}

/// The pool's endpoints: for each ready pod with an IP whose labels match the scope (in name
/// order), one endpoint per target port.
pub fn endpoints<'a>(
    scope: &Scope,
    defaults: &EndpointDefaults,
    pods: impl IntoIterator<Item = &'a PodInfo>,
) -> Outcome {
    let mut pods: Vec<&PodInfo> = pods
        .into_iter()
        .filter(|p| p.ready && scope.selector.matches(&p.labels))
        .collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Outcome::default();
    let mut seen = HashSet::new();
    for pod in pods {
        let Some(ip) = pod.ip else { continue };
        let annotated = pod
            .annotations
            .get(MODEL_ANNOTATION)
            .filter(|m| !m.is_empty());
        let model = match (annotated, &defaults.model) {
            (Some(m), _) => Arc::from(m.as_str()),
            (None, Some(m)) => m.clone(),
            (None, None) => {
                out.problems.push(format!(
                    "pod {}: no model (set --model or the {MODEL_ANNOTATION} annotation); skipped",
                    pod.name
                ));
                continue;
            }
        };
        let events = port_of(
            pod,
            KV_EVENTS_PORT_ANNOTATION,
            defaults.kv_events_port,
            &mut out,
        );
        let replay = port_of(
            pod,
            KV_REPLAY_PORT_ANNOTATION,
            defaults.kv_replay_port,
            &mut out,
        );
        for (rank, &port) in scope.target_ports.iter().enumerate() {
            let address = SocketAddr::new(ip, port);
            if !seen.insert(address) {
                out.problems.push(format!(
                    "pod {}: {address} is already another pod's endpoint (hostNetwork?); skipped",
                    pod.name
                ));
                continue;
            }
            let ranked = |base: u16| -> Option<String> {
                let port = u16::try_from(usize::from(base) + rank).ok()?;
                (base != 0).then(|| format!("tcp://{}", SocketAddr::new(ip, port)))
            };
            out.discovered.endpoints.push(EndpointSpec {
                address,
                model: model.clone(),
                labels: pod.labels.clone(),
                metrics: format!("http://{address}/metrics"),
                kv_events: ranked(events),
                kv_replay: ranked(replay),
            });
        }
    }
    out
}

/// The pod's annotated base port, else the default; a bad annotation is reported and ignored.
fn port_of(pod: &PodInfo, annotation: &str, default: u16, out: &mut Outcome) -> u16 {
    match pod.annotations.get(annotation) {
        None => default,
        Some(text) => text.trim().parse().unwrap_or_else(|_| {
            out.problems.push(format!(
                "pod {}: {annotation}={text:?} is not a port; using {default}",
                pod.name
            ));
            default
        }),
    }
}

#[cfg(test)]
mod tests;
