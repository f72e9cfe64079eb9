//! The simulator library's one error type.

use std::path::PathBuf;

/// Everything the simulator can refuse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A trace line that does not parse or does not follow its format.
    #[error("{file}:{line}: {message}")]
    BadTraceLine {
        /// The trace file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An option or profile value out of range or inconsistent; the message names it.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// What Prometheus answered is not what calibration needs (absent metrics, too few windows);
    /// the message names what is missing.
    #[error("prometheus: {0}")]
    Prometheus(String),
    /// The scheduling core refused (e.g. a picker config that does not validate).
    #[error(transparent)]
    Scheduler(#[from] kvpick_scheduler::Error),
}

impl SimError {
    /// A stable, low-cardinality label.
    pub fn label(&self) -> &'static str {
        match self {
            SimError::BadTraceLine { .. } => "bad_trace_line",
            SimError::Io { .. } => "io",
            SimError::InvalidConfig(_) => "invalid_config",
            SimError::Prometheus(_) => "prometheus",
            SimError::Scheduler(e) => e.label(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SimError::Io {
            path: path.into(),
            source,
        }
    }
}
