//! The async front: tokenization off the reactor, bounded, with a per-request deadline.
//!
//! Local tokenization runs on tokio's blocking pool behind a semaphore (at most `max_in_flight`
//! encodes at once, at most `max_queued` requests waiting for one). Each request has a deadline
//! (`--tokenize-timeout`) covering the wait and the work; past it the caller gets
//! [`TokenizeOutcome::Unavailable`] and routes approximately. A chat-template render whose caller gave
//! up (deadline, dropped future, shutdown) stops at once and frees its slot (see [`crate::limits`]);
//! an encode that overran still finishes in the background and fills the cache, so the
//! conversation's next turn is cheap.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::cache::TokenCache;
use crate::error::Error;
use crate::limits::{self, Cancel, CancelOnDrop};
use crate::model::TokenizeInput;
use crate::registry::TokenizerRegistry;
use crate::remote::RemoteTokenizer;

/// One request to tokenize.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizeRequest {
    /// The request's `model` (a base model or a LoRA adapter).
    pub model: String,
    /// The prompt or chat.
    pub input: TokenizeInput,
}

/// Where the ids came from, or that there are none; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizeSource {
    /// Encoded here (possibly in part from the cache).
    Local,
    /// Every segment came from the cache.
    Cache,
    /// The pod's `/tokenize`.
    Remote,
    /// No ids: route with the text (approximate).
    Unavailable,
}

impl TokenizeSource {
    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            TokenizeSource::Local => "local",
            TokenizeSource::Cache => "cache",
            TokenizeSource::Remote => "remote",
            TokenizeSource::Unavailable => "unavailable",
        }
    }
}

/// Why a request has no ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Unavailable {
    /// No local tokenizer, and remote tokenization is off or has no endpoint to ask.
    NoTokenizer,
    /// The deadline passed (waiting for a slot, encoding, or the remote call).
    Timeout,
    /// Too many requests already waiting for a slot.
    Overloaded,
    /// Shutting down.
    Closed,
    /// Tokenization failed (template error, remote error, or content only the pod can expand, such
    /// as images, with no remote tokenization to ask).
    Failed(Error),
}

impl Unavailable {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Unavailable::NoTokenizer => "no_tokenizer",
            Unavailable::Timeout => "timeout",
            Unavailable::Overloaded => "overloaded",
            Unavailable::Closed => "closed",
            Unavailable::Failed(e) => e.label(),
        }
    }
}

/// The result of [`Tokenization::tokenize`].
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizeOutcome {
    /// The ids vLLM will compute.
    Tokens {
        /// The ids.
        ids: Vec<u32>,
        /// Local, Cache or Remote.
        source: TokenizeSource,
        /// How many ids were spliced from the cache.
        cached_tokens: usize,
    },
    /// No ids; route with the text.
    Unavailable(Unavailable),
}

impl TokenizeOutcome {
    /// Where the ids came from.
    pub fn source(&self) -> TokenizeSource {
        match self {
            TokenizeOutcome::Tokens { source, .. } => *source,
            TokenizeOutcome::Unavailable(_) => TokenizeSource::Unavailable,
        }
    }

    /// The ids, if any.
    pub fn ids(&self) -> Option<&[u32]> {
        match self {
            TokenizeOutcome::Tokens { ids, .. } => Some(ids),
            TokenizeOutcome::Unavailable(_) => None,
        }
    }
}

/// Limits of a [`Tokenization`].
#[derive(Debug, Clone)]
pub struct TokenizationOptions {
    /// Deadline per request (`--tokenize-timeout`).
    pub timeout: Duration,
    /// Token cache budget in bytes (`--tokenize-cache-bytes`); 0 disables the cache.
    pub cache_bytes: usize,
    /// Encodes running at once (default: one less than the CPUs, at least one, so the reactor that
    /// answers the proxy keeps a core).
    pub max_in_flight: usize,
    /// Requests waiting for a slot before new ones are refused.
    pub max_queued: usize,
}

impl Default for TokenizationOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            timeout: Duration::from_millis(200),
            cache_bytes: 256 << 20,
            max_in_flight: cpus.saturating_sub(1).max(1),
            max_queued: 1024,
        }
    }
}

/// One request waiting for a slot, counted in `queued` until dropped.
struct Waiting<'a> {
    queued: &'a AtomicUsize,
    /// How many were waiting before this one.
    position: usize,
}

impl<'a> Waiting<'a> {
    fn enter(queued: &'a AtomicUsize) -> Self {
        let position = queued.fetch_add(1, Ordering::AcqRel);
        Self { queued, position }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tokenization for the request path: local tokenizers, the cache, the remote fallback.
#[derive(Debug)]
pub struct Tokenization {
    registry: Arc<TokenizerRegistry>,
    cache: Arc<TokenCache>,
    remote: Option<RemoteTokenizer>,
    permits: Arc<Semaphore>,
    queued: AtomicUsize,
    tasks: TaskTracker,
    /// Set at shutdown: stops every running render.
    stopping: Cancel,
    options: TokenizationOptions,
}

impl Tokenization {
    /// A service over `registry`; `remote` enables the pod fallback (`--remote-tokenize`).
    pub fn new(
        registry: Arc<TokenizerRegistry>,
        remote: Option<RemoteTokenizer>,
        options: TokenizationOptions,
    ) -> Self {
        Self {
            registry,
            cache: Arc::new(TokenCache::new(options.cache_bytes)),
            remote,
            permits: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            queued: AtomicUsize::new(0),
            tasks: TaskTracker::new(),
            stopping: Cancel::new(),
            options,
        }
    }

    /// The shared cache (for its size gauge).
    pub fn cache(&self) -> &Arc<TokenCache> {
        &self.cache
    }

    /// The tokenizers.
    pub fn registry(&self) -> &Arc<TokenizerRegistry> {
        &self.registry
    }

    /// Tokenizes `request` within the deadline. `endpoint` (`http://ip:port` of a pod serving the
    /// model) is where the remote fallback asks, when enabled.
    pub async fn tokenize(
        &self,
        request: TokenizeRequest,
        endpoint: Option<&str>,
    ) -> TokenizeOutcome {
        let input = request.input;
        self.tokenize_with(request.model, move || Ok(input), endpoint)
            .await
    }

    /// Like [`Self::tokenize`], with the input built by `build` on the blocking pool, inside the
    /// deadline and the in-flight bound: e.g. a chat request read from its JSON body, so that
    /// nothing request-sized runs on the caller's reactor. A `build` error is the outcome.
    pub async fn tokenize_with<F>(
        &self,
        model: String,
        build: F,
        endpoint: Option<&str>,
    ) -> TokenizeOutcome
    where
        F: FnOnce() -> Result<TokenizeInput, Error> + Send + 'static,
    {
        let deadline = Instant::now() + self.options.timeout;
        if self.tasks.is_closed() {
            return TokenizeOutcome::Unavailable(Unavailable::Closed);
        }
        let tokenizer = self.registry.get(&model).cloned();
        let remote = self.remote.is_some() && endpoint.is_some();
        if tokenizer.is_none() && !remote {
            return TokenizeOutcome::Unavailable(Unavailable::NoTokenizer);
        }
        // Counted while waiting; the guard also uncounts a caller that gives up (drops this future).
        let waiting = Waiting::enter(&self.queued);
        if waiting.position >= self.options.max_queued {
            return TokenizeOutcome::Unavailable(Unavailable::Overloaded);
        }
        let permit = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await;
        drop(waiting);
        let permit = match permit {
            Err(_) => return TokenizeOutcome::Unavailable(Unavailable::Timeout),
            Ok(Err(_)) => return TokenizeOutcome::Unavailable(Unavailable::Closed),
            Ok(Ok(p)) => p,
        };
        let cache = self.cache.clone();
        // Returning early (the deadline below) or being dropped stops this request's render.
        let cancel = Cancel::new();
        let _stop_render = CancelOnDrop(cancel.clone());
        let flags = [cancel, self.stopping.clone()];
        let handle = self.tasks.spawn_blocking(move || {
            let _permit = permit;
            limits::with_cancel(&flags, || {
                let input = build();
                let result = match (&input, &tokenizer) {
                    (Ok(input), Some(t)) => Some(t.tokenize(input, &cache)),
                    _ => None,
                };
                (input, result)
            })
        });
        let input = match tokio::time::timeout_at(deadline, handle).await {
            Err(_) => return TokenizeOutcome::Unavailable(Unavailable::Timeout),
            Ok(Err(join)) => {
                let e = Error::Encode(format!("tokenizer task failed: {join}"));
                return TokenizeOutcome::Unavailable(Unavailable::Failed(e));
            }
            Ok(Ok((Err(e), _))) => return TokenizeOutcome::Unavailable(Unavailable::Failed(e)),
            Ok(Ok((Ok(_), Some(Ok(encoded))))) => {
                let source = if encoded.fresh_tokens == 0 && encoded.cached_tokens > 0 {
                    TokenizeSource::Cache
                } else {
                    TokenizeSource::Local
                };
                return TokenizeOutcome::Tokens {
                    source,
                    cached_tokens: encoded.cached_tokens,
                    ids: encoded.ids,
                };
            }
            // Content only the pod can expand (e.g. images): ask it, when we may.
            Ok(Ok((Ok(input), Some(Err(Error::Unsupported(what)))))) => {
                if !remote {
                    return TokenizeOutcome::Unavailable(Unavailable::Failed(Error::Unsupported(
                        what,
                    )));
                }
                input
            }
            Ok(Ok((Ok(_), Some(Err(e))))) => {
                return TokenizeOutcome::Unavailable(Unavailable::Failed(e));
            }
            // No local tokenizer: the pod's.
            Ok(Ok((Ok(input), None))) => input,
        };
        self.tokenize_remote(TokenizeRequest { model, input }, endpoint, deadline)
            .await
    }

    async fn tokenize_remote(
        &self,
        request: TokenizeRequest,
        endpoint: Option<&str>,
        deadline: Instant,
    ) -> TokenizeOutcome {
        let (Some(remote), Some(endpoint)) = (&self.remote, endpoint) else {
            return TokenizeOutcome::Unavailable(Unavailable::NoTokenizer);
        };
        let call = remote.tokenize(endpoint, &request.model, &request.input);
        match tokio::time::timeout_at(deadline, call).await {
            Err(_) | Ok(Err(Error::RemoteTimeout)) => {
                TokenizeOutcome::Unavailable(Unavailable::Timeout)
            }
            Ok(Err(e)) => TokenizeOutcome::Unavailable(Unavailable::Failed(e)),
            Ok(Ok(ids)) => TokenizeOutcome::Tokens {
                ids,
                source: TokenizeSource::Remote,
                cached_tokens: 0,
            },
        }
    }

    /// Refuses new requests, stops running renders and waits for running encodes to finish.
    pub async fn shutdown(&self) {
        self.stopping.cancel();
        self.tasks.close();
        self.permits.close();
        self.tasks.wait().await;
    }
}
