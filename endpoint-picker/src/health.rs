//! gRPC health (`grpc.health.v1.Health`) for the gateway and Kubernetes probes.
//!
//! Services `liveness`, `readiness` and `envoy.service.ext_proc.v3.ExternalProcessor` (and the
//! server as a whole, `""`). Liveness serves from the start; the other two once discovery has
//! synced; all go to NOT_SERVING when shutdown begins, so the gateway drains before the port closes.

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The ext_proc service's health name.
pub const EXT_PROC: &str = "envoy.service.ext_proc.v3.ExternalProcessor";
/// Kubernetes liveness.
pub const LIVENESS: &str = "liveness";
/// Kubernetes readiness.
pub const READINESS: &str = "readiness";

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
        for name in [READINESS, EXT_PROC, ""] {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        Self { reporter }
    }

    /// Discovery has synced: ready for traffic.
    pub async fn ready(&self) {
        for name in [READINESS, EXT_PROC, ""] {
            self.reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
    }

    /// Shutdown has begun: nothing serves any more.
    pub async fn shutting_down(&self) {
        for name in [LIVENESS, READINESS, EXT_PROC, ""] {
            self.reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    }
}
