//! The crate's one error type. Variant names double as metric labels (see [`Error::label`]).

/// Everything tokenization can refuse or fail at.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A tokenizer directory or file that cannot be read or parsed; the message names the file.
    #[error("cannot load tokenizer: {0}")]
    Load(String),
    /// Configuration that does not validate (a bad `MODEL=DIR` flag, a duplicate model, ...).
    #[error("invalid tokenizer config: {0}")]
    Config(String),
    /// No local tokenizer for this model.
    #[error("no tokenizer for model {0:?}")]
    UnknownModel(String),
    /// The model has no chat template, or the request names one it does not have.
    #[error("no chat template: {0}")]
    NoChatTemplate(String),
    /// A chat request that vLLM would reject before rendering (bad message shape, bad tools).
    #[error("invalid chat request: {0}")]
    InvalidRequest(String),
    /// The chat template failed to compile or raised (e.g. `raise_exception` on role alternation).
    #[error("chat template error: {0}")]
    Template(String),
    /// The request carries its own `chat_template` source and request templates are not trusted
    /// (`--trust-request-chat-template` off, as in vLLM by default).
    #[error("request-supplied chat template refused (not trusted)")]
    UntrustedTemplate,
    /// A render ran out of fuel, passed the output cap, or was stopped by its caller.
    #[error("chat template limit: {0}")]
    TemplateLimit(String),
    /// The request uses something that cannot be tokenized exactly here (e.g. images).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The HuggingFace tokenizer failed on the input.
    #[error("tokenizer failed: {0}")]
    Encode(String),
    /// The remote `/tokenize` call failed (connect, status, body).
    #[error("remote tokenize failed: {0}")]
    Remote(String),
    /// The remote `/tokenize` call did not answer in time.
    #[error("remote tokenize timed out")]
    RemoteTimeout,
}

impl Error {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Load(_) => "load",
            Error::Config(_) => "config",
            Error::UnknownModel(_) => "unknown_model",
            Error::NoChatTemplate(_) => "no_chat_template",
            Error::InvalidRequest(_) => "invalid_request",
            Error::Template(_) => "template",
            Error::UntrustedTemplate => "untrusted_chat_template",
            Error::TemplateLimit(_) => "template_limit",
            Error::Unsupported(_) => "unsupported",
            Error::Encode(_) => "encode",
            Error::Remote(_) => "remote",
            Error::RemoteTimeout => "remote_timeout",
        }
    }
}

impl From<minijinja::Error> for Error {
    fn from(e: minijinja::Error) -> Self {
        // `{:#}` keeps the template name and line, which is what an operator needs.
        match e.kind() {
            minijinja::ErrorKind::OutOfFuel | minijinja::ErrorKind::WriteFailure => {
                // The output's own reason (cap, cancel) is the write error's source.
                let mut message = format!("{e:#}");
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    message.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                Error::TemplateLimit(message)
            }
            _ => Error::Template(format!("{e:#}")),
        }
    }
}
