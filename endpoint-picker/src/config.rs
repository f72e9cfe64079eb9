//! Command line and environment: every flag `--x-y` is also `KVPICK_X_Y`; a flag beats its variable.
//!
//! [`parse`] is a pure function of the arguments and an environment lookup, so tests never touch
//! the process environment; `main` passes `std::env::var_os`.

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::error::Error;

/// KV-cache-aware endpoint picker for vLLM pools behind an Envoy-based gateway.
///
/// The gateway calls kvpick-epp over Envoy's ext_proc protocol for every inference request;
/// kvpick-epp answers with the vLLM pod that already holds the longest prefix of the prompt in
/// its KV cache, unless that pod is overloaded. Every flag can also be set through the environment
/// variable shown with it; a flag on the command line wins.
#[derive(Debug, Parser)]
#[command(name = "kvpick-epp", version)]
pub struct Cli {
    /// Address the servers listen on.
    #[arg(long, env = "KVPICK_LISTEN_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub listen_address: IpAddr,
    /// Port of the ext_proc gRPC server the gateway calls.
    #[arg(long, env = "KVPICK_GRPC_PORT", default_value_t = 9002)]
    pub grpc_port: u16,
    /// Port of the kvpick.v1.Index query API (`kvpick-epp query`): it lists pods and their load
    /// and tells whether a prompt prefix is cached, so it is not on the ext_proc port.
    #[arg(long, env = "KVPICK_QUERY_PORT", default_value_t = 9004)]
    pub query_port: u16,
    /// Address the query API listens on: loopback by default (reach it with `kubectl
    /// port-forward` or `kubectl exec`); set 0.0.0.0 to expose it, behind a NetworkPolicy.
    #[arg(long, env = "KVPICK_QUERY_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub query_address: IpAddr,
    /// Port of the gRPC health service (liveness, readiness, ext_proc).
    #[arg(long, env = "KVPICK_HEALTH_PORT", default_value_t = 9003)]
    pub health_port: u16,
    /// Port of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "KVPICK_METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,
    /// TLS certificate (PEM) for the ext_proc port; with --key-path, serves TLS instead of
    /// plaintext. Both files are re-read when they change (cert-manager renewals), no restart.
    #[arg(long, env = "KVPICK_CERT_PATH", requires = "key_path")]
    pub cert_path: Option<PathBuf>,
    /// TLS private key (PEM) for the ext_proc port.
    #[arg(long, env = "KVPICK_KEY_PATH", requires = "cert_path")]
    pub key_path: Option<PathBuf>,
    /// Serve the ext_proc port over TLS with a self-signed certificate made at start, unless
    /// --cert-path/--key-path give one (gateways that connect over TLS without verifying, such
    /// as agentgateway, need nothing more).
    #[arg(long, env = "KVPICK_SECURE_SERVING", action = ArgAction::SetTrue)]
    pub secure_serving: bool,
    /// How often --cert-path and --key-path are checked for changes.
    #[arg(long, env = "KVPICK_CERT_RELOAD_INTERVAL", default_value = "10s", value_parser = duration)]
    pub cert_reload_interval: Duration,
    /// Picker configuration file (index, staleness, filters, scorers, weights, picker,
    /// saturation, priorities, flow control): llm-d's EndpointPickerConfig YAML; without it,
    /// kvpick's default profile (precise prefix 2, KV utilization 1, queue 1), flow control off.
    #[arg(long, env = "KVPICK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Endpoints file for file discovery (YAML; re-read when it changes; format in README.md).
    #[arg(long, env = "KVPICK_ENDPOINTS_FILE")]
    pub endpoints_file: Option<PathBuf>,
    /// How often the endpoints file is checked for changes.
    #[arg(long, env = "KVPICK_ENDPOINTS_POLL_INTERVAL", default_value = "1s", value_parser = duration)]
    pub endpoints_poll_interval: Duration,
    /// InferencePool name, for Kubernetes discovery.
    #[arg(long, env = "KVPICK_POOL_NAME")]
    pub pool_name: Option<String>,
    /// InferencePool namespace, for Kubernetes discovery.
    #[arg(long, env = "KVPICK_POOL_NAMESPACE")]
    pub pool_namespace: Option<String>,
    /// Bind mode: listen for KV events here (e.g. tcp://*:5557) from pods that connect to kvpick
    /// (vLLM `--kv-events-config` with `endpoint: tcp://<kvpick>:5557`, topic `kv@<pod-ip>@<model>`).
    #[arg(long, env = "KVPICK_KV_EVENTS_BIND")]
    pub kv_events_bind: Option<String>,
    /// Kubernetes discovery without a pool: pods matching these labels (`k=v,k2=v2`) in --pool-namespace.
    #[arg(long, env = "KVPICK_ENDPOINT_SELECTOR")]
    pub endpoint_selector: Option<String>,
    /// With --endpoint-selector: the pods' serving ports (`8000,8001`); rank N is the Nth port.
    #[arg(long, env = "KVPICK_ENDPOINT_TARGET_PORTS", value_delimiter = ',')]
    pub endpoint_target_ports: Vec<u16>,
    /// Model of discovered pods without a `kvpick.io/model` annotation (Kubernetes discovery).
    #[arg(long, env = "KVPICK_MODEL")]
    pub model: Option<String>,
    /// Base port of the pods' KV-event publishers, rank N on base+N (connect mode). Kubernetes:
    /// the annotation `kvpick.io/kv-events-port` overrides; default 5557, or 0 with
    /// --kv-events-bind. Endpoints file: for entries without `kvEvents`; default none. 0: none.
    #[arg(long, env = "KVPICK_KV_EVENTS_PORT")]
    pub kv_events_port: Option<u16>,
    /// Base port of the pods' KV-event replay sockets, rank N on base+N (Kubernetes: the
    /// annotation `kvpick.io/kv-replay-port` overrides; endpoints file: for entries without
    /// `kvReplay`); 0: none.
    #[arg(long, env = "KVPICK_KV_REPLAY_PORT", default_value_t = 0)]
    pub kv_replay_port: u16,
    /// KV-event ingestion.
    #[command(flatten)]
    pub kv_events: crate::kv_events::KvEventsArgs,
    /// Tokenization of text and chat prompts.
    #[command(flatten)]
    pub tokenize: crate::tokenizer::TokenizeArgs,
    /// KV block size in tokens, when neither --config nor the endpoints file gives one.
    #[arg(long, env = "KVPICK_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: u32,
    /// Fallback endpoints listed after the primary (`ip:port,ip:port`); needs Envoy's override_host policy.
    #[arg(long, env = "KVPICK_FALLBACKS", default_value_t = 0)]
    pub fallbacks: usize,
    /// Believe the x-kvpick-priority header. Only when the gateway sets it (or strips it from
    /// clients): otherwise a client can put itself ahead of others. Off: ignored and counted in
    /// kvpick_untrusted_headers_ignored_total.
    #[arg(long, env = "KVPICK_TRUST_PRIORITY_HEADER", action = ArgAction::SetTrue)]
    pub trust_priority_header: bool,
    /// Believe the x-gateway-inference-fairness-id header (flow control). Only when the gateway
    /// sets it (e.g. from the authenticated tenant) and strips what clients send.
    #[arg(long, env = "KVPICK_TRUST_FAIRNESS_HEADER", action = ArgAction::SetTrue)]
    pub trust_fairness_header: bool,
    /// Put each candidate's scores in the `kvpick.scores` dynamic metadata (debugging).
    #[arg(long, env = "KVPICK_EMIT_SCORES", action = ArgAction::SetTrue)]
    pub emit_scores: bool,
    /// Largest request body accepted, in bytes; larger bodies get a 400.
    #[arg(long, env = "KVPICK_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Longest a request body may take to arrive after its headers; slower ones get a 408.
    #[arg(long, env = "KVPICK_BODY_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub body_timeout: Duration,
    /// How often each endpoint's /metrics is scraped (e.g. 50ms, 1s).
    #[arg(long, env = "KVPICK_REFRESH_METRICS_INTERVAL", default_value = "50ms", value_parser = duration)]
    pub refresh_metrics_interval: Duration,
    /// Timeout of one /metrics scrape.
    #[arg(long, env = "KVPICK_SCRAPE_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub scrape_timeout: Duration,
    /// Signals older than this mark an endpoint stale; stale endpoints are avoided while others are fresh (--config's staleness.maxSignalAge wins).
    #[arg(long, env = "KVPICK_METRICS_STALENESS_THRESHOLD", default_value = "2s", value_parser = duration)]
    pub metrics_staleness_threshold: Duration,
    /// Passive health: an endpoint that answers a request with a 5xx is avoided for this long
    /// while others are eligible (0s turns it off).
    #[arg(long, env = "KVPICK_FAILURE_COOLDOWN", default_value = "2s", value_parser = duration)]
    pub failure_cooldown: Duration,
    /// How long open streams may finish after SIGTERM before they are cut (readiness goes false
    /// first, then the listeners stop accepting).
    #[arg(long, visible_alias = "drain-timeout", env = "KVPICK_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,
    /// Log format: text or json (filter with RUST_LOG, default info).
    #[arg(long, env = "KVPICK_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Query a running kvpick-epp instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask a running kvpick-epp (its kvpick.v1.Index API) without routing anything.
    Query {
        /// The server's query API URL (its --query-port).
        #[arg(
            long,
            env = "KVPICK_QUERY_SERVER",
            default_value = "http://127.0.0.1:9004"
        )]
        server: String,
        /// What to ask.
        #[command(subcommand)]
        what: Query,
    },
}

/// Queries.
#[derive(Debug, Subcommand)]
pub enum Query {
    /// Each endpoint's matched blocks and scores for a prompt.
    Score {
        /// The model (or LoRA adapter) the prompt is for.
        #[arg(long)]
        model: String,
        /// The prompt as comma-separated token ids.
        #[arg(long, value_delimiter = ',', conflicts_with = "text")]
        tokens: Vec<u32>,
        /// The prompt as text.
        #[arg(long)]
        text: Option<String>,
        /// vLLM cache_salt.
        #[arg(long)]
        cache_salt: Option<String>,
        /// Only these endpoints (ip:port, comma-separated).
        #[arg(long, value_delimiter = ',')]
        candidates: Vec<String>,
    },
    /// Every endpoint with its signals, staleness and blocks held.
    Endpoints,
}

/// Parses `"50ms"`, `"2s"`, `"1m"` or `"1.5s"`.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s or m)"))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a number with a unit"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses `args` (program name first) with `env` standing in for the process environment.
pub fn parse<I, T>(args: I, env: impl Fn(&OsStr) -> Option<OsString>) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = Cli::command();
    // Resolve variables here rather than in clap (which reads the process environment): a
    // variable becomes `--flag=value` unless the flag is already on the command line.
    let given: Vec<String> = args
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .map(|a| a.split('=').next().unwrap_or(a).to_owned())
        .collect();
    let sub = args.iter().position(|a| a == "query");
    let top = injected_flags(cmd.get_arguments(), &given, &env);
    let query = match (sub, cmd.find_subcommand("query")) {
        (Some(_), Some(q)) => injected_flags(q.get_arguments(), &given, &env),
        _ => Vec::new(),
    };
    // Top-level flags go before the subcommand, the subcommand's right after its name.
    if let Some(at) = sub {
        args.splice(at + 1..at + 1, query);
    }
    let at = sub.unwrap_or(args.len()).max(1);
    args.splice(at..at, top);
    cmd = cmd.mut_args(env_in_help_only);
    cmd = cmd.mut_subcommands(|s| s.mut_args(env_in_help_only));
    let matches = cmd.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// Drops clap's own environment lookup but keeps the variable's name in `--help`.
fn env_in_help_only(arg: clap::Arg) -> clap::Arg {
    let Some(var) = arg.get_env().map(|v| v.to_string_lossy().into_owned()) else {
        return arg;
    };
    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
    arg.env(None::<&str>).help(format!("{help} [env: {var}]"))
}

fn injected_flags<'a>(
    args: impl Iterator<Item = &'a clap::Arg>,
    given: &[String],
    env: &impl Fn(&OsStr) -> Option<OsString>,
) -> Vec<OsString> {
    let mut injected = Vec::new();
    for arg in args {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let flag = format!("--{long}");
        if given.contains(&flag) {
            continue;
        }
        let Some(value) = env(var) else { continue };
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            let v = value.to_string_lossy().to_ascii_lowercase();
            if matches!(v.as_str(), "1" | "true" | "yes" | "on") {
                injected.push(OsString::from(flag));
            }
        } else {
            let mut f = OsString::from(format!("{flag}="));
            f.push(&value);
            injected.push(f);
        }
    }
    injected
}

impl Cli {
    /// Checks what clap cannot: combinations and bounds.
    pub fn validate(&self) -> Result<(), Error> {
        crate::discovery::kubernetes::KubeSettings::from_cli(self)?;
        if self.block_size == 0 {
            return Err(Error::Config("--block-size must be positive".into()));
        }
        if self.refresh_metrics_interval.is_zero()
            || self.endpoints_poll_interval.is_zero()
            || self.cert_reload_interval.is_zero()
        {
            return Err(Error::Config("intervals must be positive".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cli(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, clap::Error> {
        let env: HashMap<OsString, OsString> =
            env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        parse(
            std::iter::once("kvpick-epp").chain(args.iter().copied()),
            |k| env.get(k).cloned(),
        )
    }

    #[test]
    fn defaults() {
        let c = cli(&[], &[]).unwrap();
        assert_eq!(
            (c.grpc_port, c.health_port, c.metrics_port),
            (9002, 9003, 9090)
        );
        // The query API is on its own port, loopback only unless exposed.
        assert_eq!(
            (c.query_port, c.query_address),
            (9004, IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert!(!c.tokenize.trust_request_chat_template);
        assert!(!c.trust_priority_header && !c.trust_fairness_header);
        assert_eq!(c.refresh_metrics_interval, Duration::from_millis(50));
        assert_eq!(c.max_body_bytes, 16 << 20);
        assert_eq!(c.body_timeout, Duration::from_secs(60));
        assert!(!c.emit_scores && c.command.is_none());
        c.validate().unwrap();
    }

    #[test]
    fn env_fills_in_and_flags_win() {
        let c = cli(
            &["--grpc-port", "7000"],
            &[
                ("KVPICK_GRPC_PORT", "1"),
                ("KVPICK_HEALTH_PORT", "7001"),
                ("KVPICK_EMIT_SCORES", "true"),
                ("KVPICK_METRICS_STALENESS_THRESHOLD", "250ms"),
                ("KVPICK_ENDPOINTS_FILE", "/tmp/e.yaml"),
            ],
        )
        .unwrap();
        assert_eq!((c.grpc_port, c.health_port), (7000, 7001));
        assert!(c.emit_scores);
        assert_eq!(c.metrics_staleness_threshold, Duration::from_millis(250));
        assert_eq!(c.endpoints_file, Some(PathBuf::from("/tmp/e.yaml")));
    }

    #[test]
    fn kv_events_and_tokenizer_flags_reach_the_settings() {
        use crate::server::Settings;
        use kvpick_tokenize::ModelSource;
        // Defaults: connect mode from the endpoints file only, no tokenizer.
        let s = Settings::from_cli(&cli(&[], &[]).unwrap()).unwrap();
        assert_eq!(
            (s.kv_events_bind.as_deref(), s.kv_events.publisher_port),
            (None, None)
        );
        assert!(!s.tokenize.enabled());
        assert_eq!(s.tokenize.timeout, Duration::from_millis(200));
        let c = cli(
            &["--tokenizer", "lora-a=@base", "--kv-events-queue", "99"],
            &[
                ("KVPICK_KV_EVENTS_BIND", "tcp://*:6000"),
                ("KVPICK_KV_EVENTS_BIND_RANKS", "2"),
                ("KVPICK_KV_EVENTS_PORT", "6100"),
                ("KVPICK_KV_REPLAY_PORT", "6200"),
                ("KVPICK_KV_EVENTS_QUEUE", "1"),
                ("KVPICK_KV_EVENTS_WORKERS", "3"),
                ("KVPICK_KV_TIER_WEIGHTS", "1,0.5,0.25"),
                ("KVPICK_TOKENIZER", "/tok/default,base=/tok/base"),
                ("KVPICK_TOKENIZERS_DIR", "/models"),
                ("KVPICK_TOKENIZE_TIMEOUT", "1.5s"),
                ("KVPICK_TOKENIZE_CACHE_BYTES", "64Mi"),
            ],
        )
        .unwrap();
        let s = Settings::from_cli(&c).unwrap();
        assert_eq!(s.kv_events_bind.as_deref(), Some("tcp://*:6000"));
        let kv = &s.kv_events;
        assert_eq!((kv.bind_ranks, kv.workers, kv.queue_capacity), (2, 3, 99));
        assert_eq!(
            (kv.publisher_port, kv.replay_port),
            (Some(6100), Some(6200))
        );
        assert_eq!(s.tier_weights, Some([1.0, 0.5, 0.25]));
        // Flags replace the environment's list; the flag's entry alone remains.
        let t = &s.tokenize;
        assert_eq!(t.registry.dir, Some(PathBuf::from("/models")));
        assert_eq!(
            t.registry.models,
            vec![("lora-a".to_owned(), ModelSource::Alias("base".into()))]
        );
        assert_eq!(
            (t.timeout, t.cache_bytes),
            (Duration::from_millis(1500), 64 << 20)
        );
        // From the environment alone: a default directory plus a named model.
        let c = cli(&[], &[("KVPICK_TOKENIZER", "/tok/default,base=/tok/base")]).unwrap();
        let t = Settings::from_cli(&c).unwrap().tokenize;
        assert_eq!(t.registry.models.len(), 2);
        assert_eq!(
            t.registry.models[0].1,
            ModelSource::Dir("/tok/default".into())
        );
        assert_eq!(
            t.registry.models[1],
            ("base".to_owned(), ModelSource::Dir("/tok/base".into()))
        );
        let two_defaults = cli(&["--tokenizer", "/a", "--tokenizer", "/b"], &[]).unwrap();
        assert!(Settings::from_cli(&two_defaults).is_err());
        assert!(Settings::from_cli(&cli(&["--kv-tier-weights", "2,1,1"], &[]).unwrap()).is_err());
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(cli(&[], &[("KVPICK_GRPC_PORT", "x")]).is_err());
        assert!(cli(&["--refresh-metrics-interval", "50"], &[]).is_err());
        assert!(cli(&["--cert-path", "c.pem"], &[]).is_err(), "key required");
        let c = cli(&["--pool-name", "p", "--endpoints-file", "e.yaml"], &[]).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("exclude"));
    }

    #[test]
    fn query_subcommand() {
        let c = cli(
            &[
                "query",
                "--server",
                "http://h:1",
                "score",
                "--model",
                "m",
                "--tokens",
                "1,2,3",
            ],
            &[
                ("KVPICK_GRPC_PORT", "7000"),
                ("KVPICK_QUERY_SERVER", "http://ignored:2"),
            ],
        )
        .unwrap();
        let Some(Command::Query {
            server,
            what: Query::Score { tokens, model, .. },
        }) = c.command
        else {
            panic!("{c:?}")
        };
        assert_eq!(
            (server.as_str(), model.as_str(), tokens),
            ("http://h:1", "m", vec![1, 2, 3])
        );
        assert_eq!(c.grpc_port, 7000);
        let c = cli(
            &["query", "endpoints"],
            &[("KVPICK_QUERY_SERVER", "http://e:3")],
        )
        .unwrap();
        let Some(Command::Query {
            server,
            what: Query::Endpoints,
        }) = c.command
        else {
            panic!()
        };
        assert_eq!(server, "http://e:3");
        let c = cli(&["query", "endpoints"], &[]).unwrap();
        let Some(Command::Query { server, .. }) = c.command else {
            panic!()
        };
        assert_eq!(server, "http://127.0.0.1:9004", "the query port's default");
    }

    #[test]
    fn durations() {
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert!(duration("5h").is_err() && duration("ms").is_err());
    }
}
