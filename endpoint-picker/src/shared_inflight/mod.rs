//! Shared in-flight load: replicas of the picker tell each other, through Valkey or Redis, what
//! they have just sent, so that N replicas behind one gateway spread a burst as one would.
//!
//! Off by default (`--shared-inflight-url`); one replica needs nothing. When on, one task per
//! replica ([`sync::run`]) does, every `--shared-inflight-interval`, one round trip to the store
//! ([`store`]): it publishes this replica's in-flight totals per endpoint (a single compact value,
//! [`codec`]; reservations and releases since the last round are batched into it) and reads the
//! other replicas' values, which the core folds in beside its own reservations
//! ([`kvpick_scheduler::InFlight::fold_peer`]) until they are older than
//! `--shared-inflight-staleness` on the store's clock.
//!
//! The request path never waits on the store: it reads what the last round folded in. When the
//! store is unreachable (or answers garbage) the replica drops every peer's report and routes on
//! its own view, sets `kvpick_shared_inflight_connected` to 0 and the health service
//! [`HEALTH_SERVICE`] to NOT_SERVING (readiness itself stays SERVING: requests are never failed
//! for it), and reconnects with exponential backoff. Memory is bounded by
//! `--shared-inflight-max-replicas` × `--shared-inflight-max-endpoints`, in the store's reply and
//! in the core, whatever the store holds.

use std::time::Duration;

use clap::Args;
use kvpick_scheduler::inflight::{PeerLimits, ReplicaId};

use crate::error::Error;

pub mod codec;
pub mod store;
pub mod sync;

pub use store::StoreConfig;
pub use sync::Status;

/// The gRPC health service that reports whether the store is reachable (readiness detail).
pub const HEALTH_SERVICE: &str = "kvpick.v1.SharedInflight";
/// Gauge: 1 while the store answers, 0 while this replica routes on its own view.
pub const CONNECTED: &str = "kvpick_shared_inflight_connected";
/// Gauge: other replicas whose reports count.
pub const PEERS: &str = "kvpick_shared_inflight_peers";
/// Counter: rounds with the store, by outcome (`ok`, `error`, `connect_error`).
pub const ROUNDS: &str = "kvpick_shared_inflight_rounds_total";
/// Counter: peer values not counted, by reason.
pub const REJECTED: &str = "kvpick_shared_inflight_rejected_total";

/// Registers the metrics' help texts.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        CONNECTED,
        "1 while the shared in-flight store answers; 0 while this replica routes on its own view"
    );
    describe_gauge!(PEERS, "Other replicas whose in-flight reports count now");
    describe_counter!(
        ROUNDS,
        "Round trips to the shared in-flight store, by outcome"
    );
    describe_counter!(
        REJECTED,
        "Other replicas' in-flight values not counted, by reason (malformed, stale, too many)"
    );
}

/// The flags' defaults, which [`SharedInflightConfig::new`] uses too.
const DEFAULT_INTERVAL: &str = "2ms";
const DEFAULT_STALENESS: &str = "1s";
const DEFAULT_TIMEOUT: &str = "250ms";
const DEFAULT_MAX_REPLICAS: usize = 64;
const DEFAULT_MAX_ENDPOINTS: usize = 4096;

/// Flags of the shared in-flight state.
#[derive(Clone, Debug, Args)]
pub struct SharedInflightArgs {
    /// Share in-flight load with the other replicas through Valkey or Redis at this URL
    /// (`redis://host:6379/0`; `rediss://` for TLS, verified against the system's roots). Off
    /// when unset: each replica then sees only its own picks until the pods' scrapes show the
    /// others'.
    #[arg(long, env = "KVPICK_SHARED_INFLIGHT_URL")]
    pub shared_inflight_url: Option<String>,
    /// ACL user for the store (over the URL's).
    #[arg(long, env = "KVPICK_SHARED_INFLIGHT_USERNAME")]
    pub shared_inflight_username: Option<String>,
    /// Password for the store (over the URL's). Set it through the environment, from a Secret:
    /// a flag shows in the process list.
    #[arg(long, env = "KVPICK_SHARED_INFLIGHT_PASSWORD", hide_env_values = true)]
    pub shared_inflight_password: Option<String>,
    /// Replicas sharing this name share their load (the store key is
    /// `kvpick:inflight:<name>`); default: --pool-name, else `default`.
    #[arg(long, env = "KVPICK_SHARED_INFLIGHT_POOL")]
    pub shared_inflight_pool: Option<String>,
    /// This replica's name among its peers (letters, digits, `.-_:`, ≤ 64 bytes); default:
    /// $HOSTNAME (the pod name), else a random one.
    #[arg(long, env = "KVPICK_SHARED_INFLIGHT_REPLICA")]
    pub shared_inflight_replica: Option<String>,
    /// How often this replica publishes its totals and reads the others' (one round trip). Picks
    /// made within one interval of each other on two replicas cannot see each other: 2 ms keeps
    /// eight replicas' TTFT p90 within 10% of one's (20 ms: up to 33% worse); raise it when many
    /// replicas share many busy pods (each round carries ~60 bytes per replica and busy pod).
    #[arg(long, env = "KVPICK_SHARED_INFLIGHT_INTERVAL", default_value = DEFAULT_INTERVAL, value_parser = crate::config::duration)]
    pub shared_inflight_interval: Duration,
    /// A peer's report older than this (on the store's clock) no longer counts.
    #[arg(long, env = "KVPICK_SHARED_INFLIGHT_STALENESS", default_value = DEFAULT_STALENESS, value_parser = crate::config::duration)]
    pub shared_inflight_staleness: Duration,
    /// Longest a connect or round trip may take before the store counts as unreachable.
    #[arg(long, env = "KVPICK_SHARED_INFLIGHT_TIMEOUT", default_value = DEFAULT_TIMEOUT, value_parser = crate::config::duration)]
    pub shared_inflight_timeout: Duration,
    /// Other replicas counted at most (the rest of a crowded store is ignored and counted).
    #[arg(
        long,
        env = "KVPICK_SHARED_INFLIGHT_MAX_REPLICAS",
        default_value_t = DEFAULT_MAX_REPLICAS
    )]
    pub shared_inflight_max_replicas: usize,
    /// Endpoints per replica's value at most (a replica publishes its busiest when it holds
    /// reservations on more).
    #[arg(
        long,
        env = "KVPICK_SHARED_INFLIGHT_MAX_ENDPOINTS",
        default_value_t = DEFAULT_MAX_ENDPOINTS
    )]
    pub shared_inflight_max_endpoints: usize,
}

/// The shared in-flight state's settings.
#[derive(Clone, Debug)]
pub struct SharedInflightConfig {
    /// The store.
    pub store: StoreConfig,
    /// This replica's name.
    pub replica: ReplicaId,
    /// Round period.
    pub interval: Duration,
    /// Peers' reports count this long.
    pub staleness: Duration,
    /// Peers counted at most.
    pub max_replicas: usize,
    /// Endpoints per value at most.
    pub max_endpoints: usize,
    /// First reconnect delay (doubling up to `backoff_max`).
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

/// What the flags tune.
struct Tuning {
    interval: Duration,
    staleness: Duration,
    timeout: Duration,
    max_replicas: usize,
    max_endpoints: usize,
}

impl SharedInflightConfig {
    /// The defaults around `url`, for `replica` in `pool` (tests, embedders).
    pub fn new(url: &str, pool: &str, replica: ReplicaId) -> Self {
        // Constants, parsed as the flags parse them (a unit test checks they do).
        let d = |s: &str| crate::config::duration(s).unwrap_or_default();
        Self::tuned(
            url,
            pool,
            replica,
            Tuning {
                interval: d(DEFAULT_INTERVAL),
                staleness: d(DEFAULT_STALENESS),
                timeout: d(DEFAULT_TIMEOUT),
                max_replicas: DEFAULT_MAX_REPLICAS,
                max_endpoints: DEFAULT_MAX_ENDPOINTS,
            },
        )
    }

    /// The settings around `url` with `t`, and what follows from it: the store forgets a
    /// replica's field ten stalenesses (at least a minute) after its last write.
    fn tuned(url: &str, pool: &str, replica: ReplicaId, t: Tuning) -> Self {
        let garbage_after = (t.staleness * 10).max(Duration::from_secs(60));
        Self {
            store: StoreConfig {
                url: url.to_owned(),
                username: None,
                password: None,
                key: format!("kvpick:inflight:{pool}"),
                timeout: t.timeout,
                key_ttl: garbage_after,
                garbage_after,
                max_fields: t.max_replicas,
                max_value: 32 + t.max_endpoints * codec::MAX_ENTRY_BYTES,
            },
            replica,
            interval: t.interval,
            staleness: t.staleness,
            max_replicas: t.max_replicas,
            max_endpoints: t.max_endpoints,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }

    /// What the core holds peers' reports to.
    pub fn peer_limits(&self) -> PeerLimits {
        PeerLimits {
            staleness: self.staleness,
            max_peers: self.max_replicas,
        }
    }
}

impl SharedInflightArgs {
    /// The settings the flags ask for; `None` when sharing is off.
    pub fn config(&self, pool_name: Option<&str>) -> Result<Option<SharedInflightConfig>, Error> {
        let Some(url) = &self.shared_inflight_url else {
            return Ok(None);
        };
        let bad = |m: String| Err(Error::Config(m));
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return bad("--shared-inflight-url must start with redis:// or rediss://".into());
        }
        let pool = self
            .shared_inflight_pool
            .as_deref()
            .or(pool_name)
            .unwrap_or("default");
        if ReplicaId::new(pool).is_none() {
            return bad(format!(
                "--shared-inflight-pool {pool:?}: letters, digits and .-_: only, at most 64 bytes"
            ));
        }
        let name = match &self.shared_inflight_replica {
            Some(name) => name.clone(),
            None => default_replica_name(),
        };
        let Some(replica) = ReplicaId::new(&name) else {
            return bad(format!(
                "--shared-inflight-replica {name:?}: letters, digits and .-_: only, at most 64 bytes"
            ));
        };
        if self.shared_inflight_interval.is_zero() || self.shared_inflight_timeout.is_zero() {
            return bad(
                "--shared-inflight-interval and --shared-inflight-timeout must be positive".into(),
            );
        }
        if self.shared_inflight_staleness < 2 * self.shared_inflight_interval {
            return bad(
                "--shared-inflight-staleness must be at least twice --shared-inflight-interval"
                    .into(),
            );
        }
        if !(1..=1024).contains(&self.shared_inflight_max_replicas)
            || !(1..=65_536).contains(&self.shared_inflight_max_endpoints)
        {
            return bad("--shared-inflight-max-replicas must be in 1..=1024 and --shared-inflight-max-endpoints in 1..=65536".into());
        }
        let mut config = SharedInflightConfig::tuned(
            url,
            pool,
            replica,
            Tuning {
                interval: self.shared_inflight_interval,
                staleness: self.shared_inflight_staleness,
                timeout: self.shared_inflight_timeout,
                max_replicas: self.shared_inflight_max_replicas,
                max_endpoints: self.shared_inflight_max_endpoints,
            },
        );
        config.store.username = self.shared_inflight_username.clone();
        config.store.password = self.shared_inflight_password.clone();
        Ok(Some(config))
    }
}

/// `$HOSTNAME` when it is a valid name (in Kubernetes, the pod's name), else `kvpick-` and a
/// random suffix.
fn default_replica_name() -> String {
    use std::hash::BuildHasher;
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| ReplicaId::new(h).is_some())
        .unwrap_or_else(|| {
            let random = std::hash::RandomState::new().hash_one(std::process::id());
            format!("kvpick-{random:016x}")
        })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        shared: SharedInflightArgs,
    }

    #[test]
    fn new_is_what_the_flags_default_to() {
        let cli = Cli::try_parse_from([
            "kvpick-epp",
            "--shared-inflight-url",
            "redis://valkey:6379",
            "--shared-inflight-replica",
            "epp-0",
        ])
        .unwrap();
        let flags = cli.shared.config(Some("pool")).unwrap().unwrap();
        let replica = ReplicaId::new("epp-0").unwrap();
        let new = SharedInflightConfig::new("redis://valkey:6379", "pool", replica);
        assert_eq!(format!("{flags:?}"), format!("{new:?}"));
        assert_eq!(new.interval, Duration::from_millis(2));
        assert_eq!(new.store.timeout, Duration::from_millis(250));
    }
}
