//! How ingestion runs (modes, bounds, timings) and the command-line flags that set it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kvpick_scheduler::IndexConfig;

use crate::error::Error;

/// vLLM's default KV-event publisher port (`tcp://*:5557`); data-parallel rank N publishes on
/// this port + N.
pub const DEFAULT_PUBLISHER_PORT: u16 = 5557;

/// KV-event ingestion settings. [`Default`] is what the flags default to.
#[derive(Clone, Debug, PartialEq)]
pub struct KvEventsConfig {
    /// Bind mode: where kvpick's SUB listens for pods that connect to it. `None`: connect mode
    /// only (kvpick connects to every endpoint that has a publisher address).
    pub bind: Option<SocketAddr>,
    /// Bind mode: how many consecutive ports to listen on from `bind`'s port, one per
    /// data-parallel rank (vLLM offsets a rank's publisher address, connect or bind, by its rank).
    pub bind_ranks: u16,
    /// Connect mode: the publisher port of endpoints that name none (rank N at port + N).
    /// `None`: endpoints without a `kv_events` address have no events in connect mode.
    pub publisher_port: Option<u16>,
    /// The replay port of endpoints that name none (rank N at port + N). `None`: no replay.
    pub replay_port: Option<u16>,
    /// Tasks that decode and apply batches; endpoints are spread over them by id.
    pub workers: usize,
    /// Batches queued per endpoint before it is declared behind, marked stale and resynced.
    pub queue_capacity: usize,
    /// Payload bytes queued per endpoint, likewise.
    pub queue_bytes: usize,
    /// Payload bytes of batches queued, held for a replay and being replayed, over all
    /// endpoints: the memory budget's KV-event part (`--memory-budget`). A batch that does not
    /// fit overflows its endpoint's queue (which resynchronises it); a replay that does not fails.
    pub budget_bytes: usize,
    /// Largest ZMQ message (all frames) accepted from a peer; a peer announcing a bigger frame
    /// is disconnected before a byte of it is buffered.
    pub max_message_bytes: usize,
    /// Bound on one attempt to reach a publisher or replay endpoint.
    pub connect_timeout: Duration,
    /// First wait before reconnecting to a publisher; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
    /// Bound on one replay, from request to end marker.
    pub replay_timeout: Duration,
    /// After a failed replay, how long gaps of that endpoint are resolved by a reset instead.
    pub replay_cooldown: Duration,
    /// Most bytes of payload one replay may return (the pod's buffer is bounded too).
    pub max_replay_bytes: usize,
    /// Replays running at once over all endpoints (a restart asks every pod at once).
    pub max_replays_in_flight: usize,
    /// Bind mode: most peer connections at once, per rank port.
    pub max_bind_connections: usize,
    /// Bind mode: most connections at once from one IP, per rank port (a vLLM rank holds one;
    /// a reconnect may briefly overlap the old one).
    pub max_bind_connections_per_peer: usize,
    /// Bind mode: how long a peer may take to send its ZMTP greeting and READY after connecting.
    pub bind_handshake_timeout: Duration,
    /// Bind mode: longest silence from a connected peer before it is disconnected (zero: no
    /// limit). A publisher with nothing to say reconnects at once.
    pub bind_idle_timeout: Duration,
    /// How often index sizes and queue depths are exported.
    pub stats_interval: Duration,
}

impl Default for KvEventsConfig {
    fn default() -> Self {
        Self {
            bind: None,
            bind_ranks: 1,
            publisher_port: None,
            replay_port: None,
            workers: 2,
            queue_capacity: 4096,
            queue_bytes: 128 << 20,
            budget_bytes: crate::budget::BudgetConfig::default().kv_event_bytes(),
            max_message_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            replay_timeout: Duration::from_secs(5),
            replay_cooldown: Duration::from_secs(5),
            max_replay_bytes: 256 << 20,
            max_replays_in_flight: 16,
            max_bind_connections: 4096,
            max_bind_connections_per_peer: 4,
            bind_handshake_timeout: Duration::from_secs(10),
            bind_idle_timeout: Duration::from_secs(600),
            stats_interval: Duration::from_secs(1),
        }
    }
}

impl KvEventsConfig {
    /// Checks bounds that would otherwise fail later or silently misbehave.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |m: &str| Err(Error::Config(format!("kv events: {m}")));
        if self.workers == 0 || self.workers > 64 {
            return fail("workers must be in 1..=64");
        }
        if self.queue_capacity == 0 {
            return fail("queue capacity must be positive");
        }
        if self.max_message_bytes < 1024 {
            return fail("max message bytes must be at least 1024");
        }
        if self.queue_bytes < self.max_message_bytes
            || self.max_replay_bytes < self.max_message_bytes
            || self.budget_bytes < self.max_message_bytes
        {
            return fail(
                "queue, replay and memory budget byte bounds must hold at least one message",
            );
        }
        if self.bind_ranks == 0 || self.bind_ranks > 64 {
            return fail("bind ranks must be in 1..=64");
        }
        if self.max_replays_in_flight == 0
            || self.max_bind_connections == 0
            || self.max_bind_connections_per_peer == 0
        {
            return fail("replay and connection limits must be positive");
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return fail("reconnect backoff must satisfy 0 < min <= max");
        }
        Ok(())
    }
}

/// Reads `tcp://host:port`, `host:port`, with `*` for any address. Ports default to `default`.
pub fn parse_tcp_address(text: &str, default_port: Option<u16>) -> Result<SocketAddr, Error> {
    let bad = |why: &str| Error::Config(format!("{text:?} is not a tcp://ip:port address: {why}"));
    let rest = text.strip_prefix("tcp://").unwrap_or(text);
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(']') => {
            (host, port.parse::<u16>().map_err(|_| bad("bad port"))?)
        }
        _ => (rest, default_port.ok_or_else(|| bad("no port"))?),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match host {
        "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        _ => host
            .parse()
            .map_err(|_| bad("host must be an IP address"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// The ingestion flags, for the CLI to `#[command(flatten)]`. `--kv-events-bind`,
/// `--kv-events-port` and `--kv-replay-port` are the CLI's own, since discovery reads them too.
#[derive(Clone, Debug, clap::Args)]
pub struct KvEventsArgs {
    /// Bind mode: ports to listen on from the --kv-events-bind port, one per data-parallel rank.
    #[arg(long, env = "KVPICK_KV_EVENTS_BIND_RANKS", default_value_t = 1)]
    pub kv_events_bind_ranks: u16,
    /// Tasks decoding KV events and applying them to the index.
    #[arg(long, env = "KVPICK_KV_EVENTS_WORKERS", default_value_t = 2)]
    pub kv_events_workers: usize,
    /// KV-event batches queued per endpoint before it is marked stale and resynced.
    #[arg(long, env = "KVPICK_KV_EVENTS_QUEUE", default_value_t = 4096)]
    pub kv_events_queue: usize,
    /// KV-event payload bytes queued per endpoint before it is marked stale and resynced.
    #[arg(long, env = "KVPICK_KV_EVENTS_QUEUE_BYTES", default_value_t = 128 << 20)]
    pub kv_events_queue_bytes: usize,
    /// Largest KV-event message accepted from a pod, in bytes (a peer announcing a larger frame
    /// is disconnected before it is buffered).
    #[arg(long, env = "KVPICK_KV_EVENTS_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub kv_events_max_message_bytes: usize,
    /// Bind mode: most connections at once from one pod IP, per rank port.
    #[arg(long, env = "KVPICK_KV_EVENTS_BIND_MAX_PER_PEER", default_value_t = 4)]
    pub kv_events_bind_max_per_peer: usize,
    /// Bind mode: how long a connecting pod may take to finish its ZMTP handshake.
    #[arg(long, env = "KVPICK_KV_EVENTS_BIND_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = crate::config::duration)]
    pub kv_events_bind_handshake_timeout: Duration,
    /// Bind mode: longest silence from a connected pod before it is disconnected (it reconnects
    /// at once); 0s: no limit.
    #[arg(long, env = "KVPICK_KV_EVENTS_BIND_IDLE_TIMEOUT", default_value = "10m", value_parser = crate::config::duration)]
    pub kv_events_bind_idle_timeout: Duration,
    /// Bound on one replay request to a pod, from request to end marker.
    #[arg(long, env = "KVPICK_KV_REPLAY_TIMEOUT", default_value = "5s", value_parser = crate::config::duration)]
    pub kv_replay_timeout: Duration,
    /// Weight of a prefix hit per tier where the block lives, GPU,CPU,STORAGE (vLLM's `medium`),
    /// each in [0, 1]; overrides --config's index.tierWeights [default: 1.0,0.8,0.5].
    #[arg(long, env = "KVPICK_KV_TIER_WEIGHTS")]
    pub kv_tier_weights: Option<String>,
}

impl KvEventsArgs {
    /// The ingestion settings these flags describe (bind mode comes with the bind address,
    /// default publisher and replay ports with discovery).
    pub fn config(&self) -> Result<KvEventsConfig, Error> {
        let config = KvEventsConfig {
            bind_ranks: self.kv_events_bind_ranks,
            workers: self.kv_events_workers,
            queue_capacity: self.kv_events_queue,
            queue_bytes: self.kv_events_queue_bytes,
            max_message_bytes: self.kv_events_max_message_bytes,
            replay_timeout: self.kv_replay_timeout,
            max_bind_connections_per_peer: self.kv_events_bind_max_per_peer,
            bind_handshake_timeout: self.kv_events_bind_handshake_timeout,
            bind_idle_timeout: self.kv_events_bind_idle_timeout,
            ..KvEventsConfig::default()
        };
        config.validate()?;
        Ok(config)
    }

    /// Sets the index's per-tier hit weights from `--kv-tier-weights`, when given.
    pub fn apply_tier_weights(&self, index: &mut IndexConfig) -> Result<(), Error> {
        if let Some(text) = &self.kv_tier_weights {
            index.tier_weights = parse_tier_weights(text)?;
        }
        Ok(())
    }
}

/// Reads `GPU,CPU,STORAGE` weights, each finite and in [0, 1].
pub fn parse_tier_weights(text: &str) -> Result<[f32; 3], Error> {
    let bad = || {
        Error::Config(format!(
            "tier weights {text:?}: expected three numbers in [0, 1]"
        ))
    };
    let mut out = [0.0f32; 3];
    let mut parts = text.split(',');
    for w in &mut out {
        let v: f32 = parts
            .next()
            .ok_or_else(bad)?
            .trim()
            .parse()
            .map_err(|_| bad())?;
        if !(0.0..=1.0).contains(&v) {
            return Err(bad());
        }
        *w = v;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = |s: &str| parse_tcp_address(s, Some(5557)).ok();
        assert_eq!(
            a("tcp://0.0.0.0:6000"),
            Some("0.0.0.0:6000".parse().unwrap())
        );
        assert_eq!(a("tcp://*:5557"), Some("0.0.0.0:5557".parse().unwrap()));
        assert_eq!(a("10.0.0.5"), Some("10.0.0.5:5557".parse().unwrap()));
        assert_eq!(a("tcp://[::1]:7"), Some("[::1]:7".parse().unwrap()));
        assert_eq!(a("tcp://pod.local:7"), None);
        assert!(parse_tcp_address("1.2.3.4", None).is_err());
    }

    #[test]
    fn tier_weights() {
        assert_eq!(parse_tier_weights("1, 0.5,0").ok(), Some([1.0, 0.5, 0.0]));
        for bad in ["1,2,0", "1,0.5", "1,0.5,0,0", "a,b,c", "NaN,1,1"] {
            assert!(parse_tier_weights(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            kv: KvEventsArgs,
        }
        let args = [
            "kvpick-epp",
            "--kv-events-bind-ranks=2",
            "--kv-events-queue-bytes=100000000",
            "--kv-replay-timeout=1.5s",
            "--kv-tier-weights=1,0.5,0.25",
        ];
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
        let config = cli.kv.config().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.bind_ranks, 2);
        assert_eq!(config.queue_bytes, 100_000_000);
        assert_eq!(config.replay_timeout, Duration::from_millis(1500));
        let mut index = IndexConfig::default();
        assert!(cli.kv.apply_tier_weights(&mut index).is_ok());
        assert_eq!(index.tier_weights, [1.0, 0.5, 0.25]);
        let bad = Cli::try_parse_from(["kvpick-epp", "--kv-events-workers=0"]);
        assert!(bad.is_ok_and(|c| c.kv.config().is_err()));
    }

    #[test]
    fn defaults_validate() {
        assert!(KvEventsConfig::default().validate().is_ok());
        let zero = KvEventsConfig {
            workers: 0,
            ..KvEventsConfig::default()
        };
        assert!(zero.validate().is_err());
    }
}
