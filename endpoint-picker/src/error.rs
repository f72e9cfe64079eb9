//! The crate's one error type. Variant names double as metric labels (see [`Error::label`]).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything the endpoint picker library can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A flag or environment variable that does not parse or validate.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The endpoints file could not be read.
    #[error("cannot read endpoints file {path}: {source}")]
    EndpointsFileRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoints file does not validate; the message names the entry.
    #[error("invalid endpoints file {path}: {message}")]
    EndpointsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        message: String,
    },
    /// More endpoints than the scheduler can track at once.
    #[error("too many endpoints: at most {max} are supported")]
    TooManyEndpoints {
        /// The limit.
        max: usize,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// A gRPC server failed while serving.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Loading the index from a peer failed (`--bootstrap-from`); the replica starts empty.
    #[error("index bootstrap: {0}")]
    Bootstrap(String),
    /// The scheduling core refused.
    #[error(transparent)]
    Scheduler(#[from] kvpick_scheduler::Error),
    /// A request body larger than `--max-body-bytes`.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A request body that did not arrive whole within `--body-timeout`.
    #[error("request body not complete within {limit:?}")]
    BodyTimeout {
        /// The limit.
        limit: std::time::Duration,
    },
    /// A request body that is not the JSON of an OpenAI-style request; the message says where.
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    /// A request without a `model`.
    #[error("the request has no \"model\" field")]
    MissingModel,
    /// No endpoint can take the request (none discovered, none in the subset hint, none eligible).
    #[error("no endpoint available: {0}")]
    NoEndpoint(String),
    /// A sheddable request (priority < 0) refused because the pool has no room; the reason goes
    /// to the client in [`crate::shedding::DROP_REASON_HEADER`].
    #[error("request shed: {0}")]
    Shed(&'static str),
    /// `--conformance-test-hooks`: the request's `test-epp-endpoint-selection` names no
    /// endpoint it may go to (429, as the Inference Extension's conformance suite expects).
    #[error("{0}")]
    TestSelection(String),
    /// No endpoint is predicted to meet the request's latency objectives and it may wait for
    /// room in flow control ([`kvpick_scheduler::SloAction::Queue`]); the exchange waits and
    /// picks again. Should it reach a client, it is a 429 naming the miss.
    #[error("no endpoint is predicted to meet the request's objectives: {}", .0.reason())]
    SloUnattainable(kvpick_scheduler::SloMiss),
    /// A part of the memory budget (`--memory-budget`) is spent; the request is refused rather
    /// than buffered.
    #[error("kvpick's memory budget for {part} is spent; retry later")]
    MemoryBudget {
        /// The part (a metric label of `kvpick_memory_budget_refused_total`).
        part: &'static str,
    },
    /// More ext_proc streams open at once than `--max-streams`.
    #[error("more than {max} requests in kvpick at once; retry later")]
    TooManyStreams {
        /// The limit.
        max: usize,
    },
    /// Envoy announced a body mode kvpick does not know (a newer Envoy); the filter's
    /// `processing_mode` must use one of NONE, STREAMED, BUFFERED, BUFFERED_PARTIAL or
    /// FULL_DUPLEX_STREAMED.
    #[error("ext_proc body mode {0} is not supported")]
    UnsupportedBodyMode(i32),
    /// kvpick is shutting down and will not schedule a request that was still waiting.
    #[error("kvpick is shutting down")]
    ShuttingDown,
    /// The gateway broke the ext_proc protocol (e.g. a body before headers).
    #[error("ext_proc protocol: {0}")]
    Protocol(&'static str),
    /// A `kvpick-epp query` call failed.
    #[error("query failed: {0}")]
    Query(#[from] Box<tonic::Status>),
    /// A server task panicked.
    #[error("task failed: {0}")]
    Task(String),
    /// Kubernetes discovery could not start (no client configuration).
    #[error("{0}")]
    Kubernetes(String),
    /// Tokenizer files or flags that do not load.
    #[error(transparent)]
    Tokenizer(#[from] kvpick_tokenize::Error),
    /// The shared in-flight store (Valkey/Redis) failed or answered something unexpected; the
    /// replica routes on its own view meanwhile.
    #[error("shared in-flight store: {0}")]
    SharedState(String),
    /// A feature that is accepted on the command line but not built yet.
    #[error("{0} is not built yet")]
    NotBuilt(&'static str),
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Query(Box::new(s))
    }
}

impl Error {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::EndpointsFileRead { .. } => "endpoints_file_read",
            Error::EndpointsFile { .. } => "endpoints_file",
            Error::TooManyEndpoints { .. } => "too_many_endpoints",
            Error::Bind { .. } => "bind",
            Error::Tls(_) => "tls",
            Error::Serve(_) => "serve",
            Error::Bootstrap(_) => "bootstrap",
            Error::Scheduler(e) => e.label(),
            Error::NotBuilt(_) => "not_built",
            Error::Tokenizer(e) => e.label(),
            Error::Kubernetes(_) => "kubernetes",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::BodyTimeout { .. } => "body_timeout",
            Error::InvalidBody(_) => "invalid_body",
            Error::MissingModel => "missing_model",
            Error::NoEndpoint(_) => "no_endpoint",
            Error::Shed(_) => "shed",
            Error::TestSelection(_) => "test_selection",
            Error::SloUnattainable(_) => "slo_unattainable",
            Error::ShuttingDown => "shutting_down",
            Error::MemoryBudget { .. } => "memory_budget",
            Error::TooManyStreams { .. } => "too_many_streams",
            Error::UnsupportedBodyMode(_) => "unsupported_body_mode",
            Error::Protocol(_) => "protocol",
            Error::Query(_) => "query",
            Error::Task(_) => "task",
            Error::SharedState(_) => "shared_state",
        }
    }

    /// The HTTP status the client gets when a request fails with this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::BodyTooLarge { .. } | Error::InvalidBody(_) | Error::MissingModel => 400,
            Error::NoEndpoint(_)
            | Error::ShuttingDown
            | Error::MemoryBudget { .. }
            | Error::TooManyStreams { .. } => 503,
            Error::BodyTimeout { .. } => 408,
            Error::Shed(_) | Error::SloUnattainable(_) | Error::TestSelection(_) => 429,
            Error::Scheduler(kvpick_scheduler::Error::NoEndpoint(_)) => 503,
            _ => 500,
        }
    }

    /// Why the request was dropped, for the client's [`crate::shedding::DROP_REASON_HEADER`]:
    /// the shedding reason, else the label.
    pub fn drop_reason(&self) -> &'static str {
        match self {
            Error::Shed(reason) => reason,
            Error::SloUnattainable(miss) => miss.reason(),
            other => other.label(),
        }
    }

    /// The OpenAI-style error `type` field for this error.
    pub fn openai_type(&self) -> &'static str {
        match self.http_status() {
            400 | 408 => "invalid_request_error",
            429 => "rate_limit_exceeded",
            503 => "service_unavailable",
            _ => "internal_error",
        }
    }
}
