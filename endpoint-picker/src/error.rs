//! The crate's one error type. Variant names double as metric labels (see [`Error::label`]).

use std::net::SocketAddr;

/// Everything the endpoint picker library can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A flag or environment variable that does not parse or validate.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl Error {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Bind { .. } => "bind",
        }
    }
}
