//! What the suite runs against: a picker's addresses and the pool it picks from.

use std::net::SocketAddr;
use std::time::Duration;

use crate::Error;

/// A picker under test.
#[derive(Clone, Debug)]
pub struct Target {
    /// The picker's ext_proc gRPC address (plaintext HTTP/2).
    pub ext_proc: SocketAddr,
    /// The picker's gRPC health address (often a port of its own).
    pub health: SocketAddr,
    /// gRPC health services that must answer SERVING.
    pub health_services: Vec<String>,
    /// The pool's endpoints (at least three): the suite serves a stand-in model server on each,
    /// so the picker must be configured with exactly these addresses.
    pub pods: Vec<SocketAddr>,
    /// The model the stand-ins serve (the picker's pool model).
    pub model: String,
    /// A request header that makes a request sheddable (`name: value`), e.g. an
    /// `x-gateway-inference-objective` naming an objective of negative priority.
    pub sheddable_header: (String, String),
    /// The picker lists fallback endpoints after its pick: check the gateway can use them.
    pub fallbacks: bool,
    /// The picker runs with its Inference Extension test hooks on: check those conventions.
    pub test_hooks: bool,
    /// How long the picker may take to notice a change of the pods' metrics.
    pub settle: Duration,
}

impl Target {
    /// A target with the defaults of the EPP protocol's names.
    pub fn new(ext_proc: SocketAddr, health: SocketAddr, pods: Vec<SocketAddr>) -> Self {
        Self {
            ext_proc,
            health,
            health_services: [
                "liveness",
                "readiness",
                "envoy.service.ext_proc.v3.ExternalProcessor",
            ]
            .map(String::from)
            .to_vec(),
            pods,
            model: "conformance-model".into(),
            sheddable_header: (
                "x-gateway-inference-objective".into(),
                "conformance-sheddable".into(),
            ),
            fallbacks: false,
            test_hooks: false,
            settle: Duration::from_secs(30),
        }
    }

    /// Checks the target is one the suite can run against.
    pub fn validate(&self) -> Result<(), Error> {
        if self.pods.len() < 3 {
            return Err(Error::Target(format!(
                "the pool needs at least 3 endpoints, got {}",
                self.pods.len()
            )));
        }
        let mut sorted = self.pods.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.pods.len() {
            return Err(Error::Target("the pool's endpoints repeat".into()));
        }
        Ok(())
    }
}
