//! gRPC health (`grpc.health.v1.Health`) for the gateway and Kubernetes probes.
//!
//! Services `liveness`, `readiness`, `envoy.service.ext_proc.v3.ExternalProcessor` and
//! `inference-extension` (and the server as a whole, `""`): the names the endpoint picker charts'
//! probes and Envoy health checks ask (the charts probe `inference-extension` for both liveness and
//! readiness with one replica, `liveness`/`readiness` with more). Liveness serves from the start;
//! the others once discovery has synced, as llm-d's do; all go to NOT_SERVING when shutdown
//! begins, so the gateway drains before the port closes.

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The ext_proc service's health name.
pub const EXT_PROC: &str = "envoy.service.ext_proc.v3.ExternalProcessor";
/// Kubernetes liveness.
pub const LIVENESS: &str = "liveness";
/// Kubernetes readiness.
pub const READINESS: &str = "readiness";
/// The charts' one-replica probe name (liveness and readiness alike).
pub const INFERENCE_EXTENSION: &str = "inference-extension";
/// The services that serve once discovery has synced.
const READY: [&str; 4] = [READINESS, EXT_PROC, INFERENCE_EXTENSION, ""];

/// Sets the services' statuses as the picker moves through its life.
#[derive(Clone, Debug)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// Wraps `reporter`, marking the process alive but not ready.
    pub async fn new(reporter: HealthReporter) -> Self {
        reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        for name in READY {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        Self { reporter }
    }

    /// Discovery has synced: ready for traffic.
    pub async fn ready(&self) {
        for name in READY {
            self.reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
    }

    /// A component whose state readiness does not depend on (the shared in-flight store):
    /// reported under its own service name, so probes and operators see it.
    pub async fn component(&self, service: &str, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(service, status).await;
    }

    /// Shutdown has begun: nothing serves any more.
    pub async fn shutting_down(&self) {
        for name in std::iter::once(LIVENESS).chain(READY) {
            self.reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    }
}
