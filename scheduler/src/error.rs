//! The core's one error type. Variant names double as metric labels (see [`Error::label`]).

/// Everything the scheduling core can refuse.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A KV-event message or batch that does not follow vLLM's wire format.
    #[error("malformed KV event batch: {0}")]
    MalformedEvent(String),
    /// A KV-event batch holding an event type this version does not know (a newer vLLM).
    #[error("unsupported KV event: {0}")]
    UnsupportedEvent(String),
    /// A ZMQ message whose frames or topic do not follow vLLM's KV-event transport.
    #[error("malformed KV event message: {0}")]
    MalformedMessage(String),
    /// A picker configuration that does not validate; the message names the field.
    #[error("invalid picker config: {0}")]
    InvalidConfig(String),
    /// An engine profile could not be fitted to the metrics (too few or too uniform windows).
    #[error("calibration: {0}")]
    Calibration(String),
    /// An index dump that cannot be restored (malformed, over the limits, another secret).
    #[error("index dump: {0}")]
    Dump(String),
    /// No candidate endpoint is eligible for the request.
    #[error("no eligible endpoint: {0}")]
    NoEndpoint(&'static str),
}

impl Error {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::MalformedEvent(_) => "malformed_event",
            Error::UnsupportedEvent(_) => "unsupported_event",
            Error::MalformedMessage(_) => "malformed_message",
            Error::InvalidConfig(_) => "invalid_config",
            Error::NoEndpoint(_) => "no_endpoint",
            Error::Calibration(_) => "calibration",
            Error::Dump(_) => "dump",
        }
    }
}
