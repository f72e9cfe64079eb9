//! Kubernetes discovery: the endpoints of an `InferencePool` (or of a label selector without a
//! pool), kept current by watching the API server.
//!
//! Structured like kube-rs's controller-rs: [`endpoints`] is the pure part (scope + pods →
//! [`crate::discovery::Discovered`], tested without an API server) and [`watch`] the loop, which
//! takes an injected [`kube::Client`] (tests point one at a scripted API server). [`crd`] is the
//! `InferencePool` type, whose CRD `kvpick-epp crd` prints. With a pool, [`PolicyWatch`] also
//! follows its InferenceObjectives and InferenceModelRewrites ([`crate::cluster_policy`]).
//!
//! Per pod, from most to least specific:
//! - model: the pod's `kvpick.io/model` annotation, else `--model`; a pod with neither is skipped
//!   (and logged). Annotations, not labels, because model names such as `org/model` are not
//!   valid label values.
//! - KV events (connect mode): `tcp://podIP:BASE+N` for rank N (target port N), where BASE is the
//!   pod's `kvpick.io/kv-events-port` annotation, else `--kv-events-port` (default 5557, or none
//!   with `--kv-events-bind`); 0 means the pod publishes none.
//! - replay: likewise `kvpick.io/kv-replay-port`, else `--kv-replay-port` (default 0: none).
//! - metrics: `http://podIP:port/metrics`; labels: all the pod's labels (e.g. `llm-d.ai/role`).

use std::sync::Arc;
use std::time::Duration;

use crate::config::Cli;
use crate::error::Error;

pub mod crd;
mod endpoints;
mod policy_watch;
mod watch;

pub use endpoints::{EndpointDefaults, Scope, Selector};
pub use policy_watch::PolicyWatch;
pub use watch::{Discovery, Retry};

/// What discovery watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The named InferencePool (its selector and target ports, followed as they change).
    Pool(String),
    /// Pods matching a fixed scope, without a pool (`--endpoint-selector`).
    Pods(Scope),
}

/// Kubernetes discovery, as configured by flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeSettings {
    /// Where the pool and its pods live; `None`: the client's default namespace.
    pub namespace: Option<String>,
    /// The pool, or a pool-less scope.
    pub target: Target,
    /// Per-endpoint defaults pods may override.
    pub defaults: EndpointDefaults,
    /// Backoff after API errors.
    pub retry: Retry,
}

impl KubeSettings {
    /// The Kubernetes discovery the flags ask for, if any.
    pub fn from_cli(cli: &Cli) -> Result<Option<Self>, Error> {
        let bad = |m: String| Error::Config(m);
        let target = match (&cli.pool_name, &cli.endpoint_selector) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "--pool-name and --endpoint-selector exclude each other".into(),
                ));
            }
            (Some(name), None) => {
                if !cli.endpoint_target_ports.is_empty() {
                    return Err(bad(
                        "--endpoint-target-ports goes with --endpoint-selector; a pool has its own targetPorts".into(),
                    ));
                }
                Target::Pool(name.clone())
            }
            (None, Some(selector)) => {
                let selector = Selector::parse(selector)
                    .map_err(|e| bad(format!("--endpoint-selector: {e}")))?;
                let scope = Scope::new(selector, cli.endpoint_target_ports.clone())
                    .map_err(|e| bad(format!("--endpoint-target-ports: {e}")))?;
                Target::Pods(scope)
            }
            (None, None) => {
                if cli.pool_namespace.is_some() || !cli.endpoint_target_ports.is_empty() {
                    return Err(bad(
                        "--pool-namespace/--endpoint-target-ports need --pool-name or --endpoint-selector".into(),
                    ));
                }
                return Ok(None);
            }
        };
        if cli.endpoints_file.is_some() {
            return Err(bad(
                "--endpoints-file and Kubernetes discovery exclude each other".into(),
            ));
        }
        let kv_events_port = cli
            .kv_events_port
            .unwrap_or(if cli.kv_events_bind.is_some() {
                0
            } else {
                5557
            });
        Ok(Some(Self {
            namespace: cli.pool_namespace.clone(),
            target,
            defaults: EndpointDefaults {
                model: cli
                    .model
                    .as_deref()
                    .filter(|m| !m.is_empty())
                    .map(Arc::from),
                kv_events_port,
                kv_replay_port: cli.kv_replay_port,
            },
            retry: Retry {
                min: Duration::from_millis(500),
                max: Duration::from_secs(30),
            },
        }))
    }
}

/// A client from the environment: in a pod its service account, else `$KUBECONFIG` or
/// `~/.kube/config`.
pub async fn client() -> Result<kube::Client, Error> {
    kube::Client::try_default().await.map_err(|e| {
        Error::Kubernetes(format!(
            "Kubernetes discovery needs a cluster: no service account or KUBECONFIG ({e})"
        ))
    })
}
