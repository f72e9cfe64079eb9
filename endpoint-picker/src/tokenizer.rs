//! The request path's tokenizer: [`kvpick_tokenize`] behind the [`Tokenize`] seam, with its flags.
//!
//! Local tokenizers come from `--tokenizers-dir` and `--tokenizer MODEL=DIR|ADAPTER=@BASE|DIR`,
//! loaded once at startup (a bad directory fails startup); a bare `DIR` is the default tokenizer
//! of every model that has none of its own (a pool serving one model and its LoRA adapters). Work runs on the crate's bounded blocking pool
//! with a per-request deadline (`--tokenize-timeout`); a chat body is read there too, not on the
//! reactor. With `--remote-tokenize`, a model without local files is tokenized by a ready pod that
//! serves it (vLLM's `POST /tokenize`): the least loaded endpoint of that model whose signals are
//! fresh.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kvpick_tokenize::limits;
use kvpick_tokenize::{
    ChatRequest, HyperClient, ModelSource, RegistryConfig, RemoteTokenizer, TemplatePolicy,
    Tokenization, TokenizationOptions, TokenizeInput, TokenizeOutcome, TokenizerRegistry,
};

use crate::byte_count::parse_bytes;
use crate::clock::Clock;
use crate::error::Error;
use crate::pool::{Freshness, Pool};
use crate::prompt::{BoxFuture, Tokenize, TokenizeCall, Tokens};

/// The tokenization flags, flattened into the CLI.
#[derive(Clone, Debug, clap::Args)]
pub struct TokenizeArgs {
    /// Directory of tokenizers, one per model at DIR/<model>/tokenizer.json (the model name may
    /// hold one `/`, as in Qwen/Qwen2.5-7B-Instruct); read once at startup.
    #[arg(long, env = "KVPICK_TOKENIZERS_DIR")]
    pub tokenizers_dir: Option<PathBuf>,
    /// A model's tokenizer directory (MODEL=DIR, holding tokenizer.json and, for chat,
    /// tokenizer_config.json), a LoRA adapter on its base model's (ADAPTER=@BASE), or a bare DIR:
    /// the default for every model without its own. Repeatable; wins over --tokenizers-dir
    /// (environment: comma-separated).
    #[arg(long = "tokenizer", env = "KVPICK_TOKENIZER", value_delimiter = ',')]
    pub tokenizer: Vec<String>,
    /// Tokenize prompts of models without local tokenizer files on a ready pod serving them
    /// (vLLM's POST /tokenize).
    #[arg(long, env = "KVPICK_REMOTE_TOKENIZE", action = clap::ArgAction::SetTrue)]
    pub remote_tokenize: bool,
    /// Deadline of one request's tokenization (queueing, encoding, or the remote call); past it
    /// the request is routed approximately, by its text.
    #[arg(long, env = "KVPICK_TOKENIZE_TIMEOUT", default_value = "200ms", value_parser = kvpick_scheduler::duration::parse_flag)]
    pub tokenize_timeout: Duration,
    /// Budget of the token cache that makes a conversation's next turn cheap (e.g. 256Mi, 1Gi; 0
    /// disables it).
    #[arg(long, env = "KVPICK_TOKENIZE_CACHE_BYTES", default_value = "256Mi", value_parser = parse_bytes)]
    pub tokenize_cache_bytes: usize,
    /// Render a request's own `chat_template` source (as vLLM's flag of the same name). Off: such
    /// a request is routed without exact token ids (counted as
    /// kvpick_tokenize_total{outcome="untrusted_chat_template"}). Templates named by the model
    /// are always used.
    #[arg(long, env = "KVPICK_TRUST_REQUEST_CHAT_TEMPLATE", action = clap::ArgAction::SetTrue)]
    pub trust_request_chat_template: bool,
    /// minijinja fuel of one chat-template render (instructions, plus one unit per 64 bytes it
    /// creates): bounds the CPU and memory of every render, the model's templates included.
    #[arg(long, env = "KVPICK_TEMPLATE_FUEL", default_value_t = limits::DEFAULT_FUEL)]
    pub template_fuel: u64,
    /// Largest prompt one chat-template render may produce (e.g. 32Mi).
    #[arg(long, env = "KVPICK_TEMPLATE_MAX_OUTPUT", default_value = "32Mi", value_parser = parse_bytes)]
    pub template_max_output: usize,
}

impl TokenizeArgs {
    /// The settings these flags describe.
    pub fn settings(&self) -> Result<TokenizeSettings, Error> {
        let mut models = Vec::new();
        let mut default = None;
        for flag in &self.tokenizer {
            if flag.contains('=') {
                models.push(RegistryConfig::parse_entry(flag)?);
            } else if default.replace(PathBuf::from(flag)).is_some() {
                return Err(Error::Config(
                    "--tokenizer: more than one default tokenizer DIR (name the models: MODEL=DIR)"
                        .into(),
                ));
            }
        }
        // The default is registered under a name no request can match (model names are sent in
        // JSON strings, and a NUL is not a name any server accepts).
        if let Some(dir) = default {
            models.insert(0, (DEFAULT_MODEL.to_owned(), ModelSource::Dir(dir)));
        }
        Ok(TokenizeSettings {
            registry: RegistryConfig {
                dir: self.tokenizers_dir.clone(),
                models,
                templates: TemplatePolicy {
                    trust_request_template: self.trust_request_chat_template,
                    fuel: self.template_fuel,
                    max_output_bytes: self.template_max_output,
                },
            },
            remote: self.remote_tokenize,
            timeout: self.tokenize_timeout,
            cache_bytes: self.tokenize_cache_bytes,
        })
    }
}

/// The registry name of the default tokenizer (`--tokenizer DIR`).
const DEFAULT_MODEL: &str = "\0default";

/// Tokenization as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizeSettings {
    /// Local tokenizers.
    pub registry: RegistryConfig,
    /// Ask a pod for models without local tokenizers.
    pub remote: bool,
    /// Per-request deadline.
    pub timeout: Duration,
    /// Token cache budget in bytes.
    pub cache_bytes: usize,
}

impl Default for TokenizeSettings {
    fn default() -> Self {
        Self {
            registry: RegistryConfig::default(),
            remote: false,
            timeout: Duration::from_millis(200),
            cache_bytes: 256 << 20,
        }
    }
}

impl TokenizeSettings {
    /// Whether anything is configured at all.
    pub fn enabled(&self) -> bool {
        self.remote || self.registry.dir.is_some() || !self.registry.models.is_empty()
    }
}

/// [`Tokenization`] behind the picker's [`Tokenize`] seam.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    tokenization: Arc<Tokenization>,
    /// Whether `--tokenizer DIR` gave a default.
    has_default: bool,
    pool: Arc<Pool>,
    clock: Clock,
    staleness: Duration,
}

impl Tokenizer {
    /// Loads the tokenizers `settings` name (must run inside a tokio runtime: the remote client
    /// needs one). Remote calls go to fresh endpoints of `pool` (signals younger than
    /// `staleness`).
    pub fn new(
        settings: &TokenizeSettings,
        pool: Arc<Pool>,
        clock: Clock,
        staleness: Duration,
    ) -> Result<Self, Error> {
        let registry = Arc::new(TokenizerRegistry::load(&settings.registry)?);
        let has_default = registry.get(DEFAULT_MODEL).is_some();
        let mut models = registry.models();
        models.retain(|m| *m != DEFAULT_MODEL);
        tracing::info!(
            ?models,
            default = has_default,
            remote = settings.remote,
            "tokenizers loaded"
        );
        let remote = settings
            .remote
            .then(|| RemoteTokenizer::new(Arc::new(HyperClient::new()), settings.timeout));
        let options = TokenizationOptions {
            timeout: settings.timeout,
            cache_bytes: settings.cache_bytes,
            ..TokenizationOptions::default()
        };
        Ok(Self {
            tokenization: Arc::new(Tokenization::new(registry, remote, options)),
            has_default,
            pool,
            clock,
            staleness,
        })
    }

    /// The service (for shutdown and the cache gauge).
    pub fn tokenization(&self) -> &Arc<Tokenization> {
        &self.tokenization
    }

    /// `http://ip:port` of the least loaded fresh endpoint serving `model` (or running it as a
    /// LoRA adapter), for the remote fallback.
    fn remote_endpoint(&self, model: &str) -> Option<String> {
        let view = self.pool.view();
        let now = self.clock.now();
        view.members
            .iter()
            .filter(|m| m.freshness(now, self.staleness) == Freshness::Fresh)
            .filter_map(|m| Some((m, m.live.signals()?)))
            .filter(|(m, s)| &*m.endpoint.model == model || s.lora.has(model))
            .min_by_key(|(_, s)| (s.waiting, s.running))
            .map(|(m, _)| format!("http://{}", m.endpoint.address))
    }
}

impl Tokenize for Tokenizer {
    fn tokenize(&self, call: TokenizeCall) -> BoxFuture<'static, Tokens> {
        let this = self.clone();
        Box::pin(async move {
            let model = match &call {
                TokenizeCall::Completion { model, .. } | TokenizeCall::Chat { model, .. } => {
                    model.clone()
                }
            };
            let endpoint = this.remote_endpoint(&model);
            // A model without its own tokenizer uses the default, when there is one.
            let model = if this.has_default && this.tokenization.registry().get(&model).is_none() {
                DEFAULT_MODEL.to_owned()
            } else {
                model
            };
            let build = move || match call {
                TokenizeCall::Completion {
                    text,
                    add_special_tokens,
                    ..
                } => Ok(TokenizeInput::Prompt {
                    text,
                    add_special_tokens,
                }),
                TokenizeCall::Chat { body, api, .. } => {
                    let body: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_slice(&body).map_err(|e| {
                            kvpick_tokenize::Error::InvalidRequest(format!("body: {e}"))
                        })?;
                    Ok(TokenizeInput::Chat(ChatRequest::from_api_body(api, &body)?))
                }
            };
            let outcome = this
                .tokenization
                .tokenize_with(model, build, endpoint.as_deref())
                .await;
            let source = outcome.source().label();
            match outcome {
                TokenizeOutcome::Tokens { ids, .. } => Tokens::Ids { ids, source },
                TokenizeOutcome::Unavailable(why) => {
                    tracing::debug!(reason = why.label(), ?why, "no token ids");
                    Tokens::Unavailable {
                        reason: why.label(),
                    }
                }
            }
        })
    }
}
