//! The fleet library's one error type.

use std::path::PathBuf;

use kvpick_sim::SimError;

/// Everything the live side can refuse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An option value out of range or inconsistent; the message names it.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A socket, server or peer failed (bind, ZMQ, HTTP); the message names it.
    #[error("network: {0}")]
    Network(String),
    /// An external program (kvpick-epp, Envoy) is missing or failed; the message says what to do.
    #[error("{0}")]
    Process(String),
    /// Prometheus answered, but not with what calibration needs (bad JSON, an error status); the
    /// message names the query.
    #[error("prometheus: {0}")]
    Prometheus(String),
    /// The simulation refused (a profile, a trace, a calibration).
    #[error(transparent)]
    Sim(#[from] SimError),
}

impl FleetError {
    /// A stable, low-cardinality label.
    pub fn label(&self) -> &'static str {
        match self {
            FleetError::Io { .. } => "io",
            FleetError::InvalidConfig(_) => "invalid_config",
            FleetError::Network(_) => "network",
            FleetError::Process(_) => "process",
            FleetError::Prometheus(_) => "prometheus",
            FleetError::Sim(e) => e.label(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FleetError::Io {
            path: path.into(),
            source,
        }
    }
}
