//! The store: one Valkey/Redis hash per pool, one field per replica, read and written in one
//! round trip by a server-side script.
//!
//! Each round, [`Store::round`] runs [`ROUND`]: it stamps this replica's payload with the
//! store's clock (`TIME`) and writes it to its field, pushes the key's expiry out (the whole
//! hash goes when every replica has stopped), deletes fields whose stamp is older than the
//! garbage bound (replicas that went away without a goodbye) or none, and returns the store's `now` and
//! the other replicas' fields, at most `max_fields` of them and each at most `max_value`
//! bytes: whatever is in the hash, the reply this replica buffers is bounded. On shutdown,
//! [`Store::goodbye`] deletes its field so that the others stop counting it at once.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Script, Value};

use crate::error::Error;

/// The round script. ARGV: replica, payload (empty: read only), key TTL ms, max fields, max
/// value bytes, garbage bound ms. Fields examined are capped too (4 × max fields per round),
/// so a hash stuffed with junk costs the store a bounded scan; values without a stamp (no
/// replica wrote them: the script stamps every write) are deleted with the old ones, so junk
/// is cleared a page a round.
const ROUND: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)) .. ' ' .. ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local max_fields, max_value, gc = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {now}
local cursor, seen, n = '0', 0, 0
repeat
  local r = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', 64)
  cursor = r[1]
  local kv = r[2]
  for i = 1, #kv, 2 do
    seen = seen + 1
    local field, value = kv[i], kv[i + 1]
    local at = tonumber(string.match(value, '^(%d+) '))
    if at == nil or now - at > gc then
      redis.call('HDEL', KEYS[1], field)
    elseif field ~= ARGV[1] and n < max_fields and #field <= 64 and #value <= max_value then
      out[#out + 1] = field
      out[#out + 1] = value
      n = n + 1
    end
  end
until cursor == '0' or seen >= 4 * max_fields
return out
";

/// What a round returns: the store's clock and the other replicas' raw fields.
#[derive(Debug, Default)]
pub struct Round {
    /// The store's `now`, ms since the Unix epoch.
    pub now_ms: u64,
    /// (replica name, value), unvalidated.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// How the store is reached and bounded. Its `Debug` leaves the credentials out (settings are
/// logged).
#[derive(Clone)]
pub struct StoreConfig {
    /// `redis://host:port/db` or `rediss://` (TLS).
    pub url: String,
    /// ACL user and password (from the environment, e.g. a Secret), over the URL's.
    pub username: Option<String>,
    /// See `username`.
    pub password: Option<String>,
    /// The hash key.
    pub key: String,
    /// One connect or round takes at most this long.
    pub timeout: Duration,
    /// The key expires this long after the last write.
    pub key_ttl: Duration,
    /// Fields older than this are deleted.
    pub garbage_after: Duration,
    /// Fields returned per round at most.
    pub max_fields: usize,
    /// Bytes per value returned at most.
    pub max_value: usize,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `scheme://user:password@host`: only what follows the userinfo.
        let url = match self.url.split_once("://") {
            Some((scheme, rest)) => {
                format!(
                    "{scheme}://{}",
                    rest.rsplit_once('@').map_or(rest, |(_, host)| host)
                )
            }
            None => "(unparsed)".to_owned(),
        };
        f.debug_struct("StoreConfig")
            .field("url", &url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A connected store.
pub struct Store {
    connection: MultiplexedConnection,
    script: Script,
    config: StoreConfig,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("key", &self.config.key)
            .finish()
    }
}

fn store_error(e: redis::RedisError) -> Error {
    Error::SharedState(e.to_string())
}

impl Store {
    /// Connects (within the timeout). The connection's reader is a task of the client's, owned
    /// by the connection: it ends when the [`Store`] is dropped.
    pub async fn connect(config: StoreConfig) -> Result<Self, Error> {
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(store_error)?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password);
        }
        info = info.set_redis_settings(settings);
        let client = Client::open(info).map_err(store_error)?;
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout));
        let connection = client
            .get_multiplexed_async_connection_with_config(&connection_config)
            .await
            .map_err(store_error)?;
        Ok(Self {
            connection,
            script: Script::new(ROUND),
            config,
        })
    }

    /// Writes `payload` as `replica`'s field (unless empty) and reads the others'.
    pub async fn round(&mut self, replica: &str, payload: &str) -> Result<Round, Error> {
        let c = &self.config;
        let reply: Value = self
            .script
            .key(&c.key)
            .arg(replica)
            .arg(payload)
            .arg(millis(c.key_ttl))
            .arg(c.max_fields)
            .arg(c.max_value)
            .arg(millis(c.garbage_after))
            .invoke_async(&mut self.connection)
            .await
            .map_err(store_error)?;
        parse_round(reply, c.max_fields)
    }

    /// Deletes `replica`'s field.
    pub async fn goodbye(&mut self, replica: &str) -> Result<(), Error> {
        redis::cmd("HDEL")
            .arg(&self.config.key)
            .arg(replica)
            .query_async::<i64>(&mut self.connection)
            .await
            .map(drop)
            .map_err(store_error)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The script's reply: `[now, field, value, field, value, ...]`, at most `max_fields` pairs.
fn parse_round(reply: Value, max_fields: usize) -> Result<Round, Error> {
    let bad = |what: &str| Error::SharedState(format!("unexpected round reply: {what}"));
    let Value::Array(items) = reply else {
        return Err(bad("not an array"));
    };
    let mut items = items.into_iter();
    let now_ms = match items.next() {
        Some(Value::Int(n)) => u64::try_from(n).map_err(|_| bad("negative time"))?,
        _ => return Err(bad("no time")),
    };
    let mut fields = Vec::new();
    while let Some(field) = items.next() {
        let (Value::BulkString(field), Some(Value::BulkString(value))) = (field, items.next())
        else {
            return Err(bad("not field/value pairs"));
        };
        if fields.len() >= max_fields {
            return Err(bad("more fields than asked for"));
        }
        fields.push((field, value));
    }
    Ok(Round { now_ms, fields })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replies_are_checked_before_use() {
        let ok = Value::Array(vec![
            Value::Int(1700),
            Value::BulkString(b"b".to_vec()),
            Value::BulkString(b"1 kvpick1 0".to_vec()),
        ]);
        let r = parse_round(ok, 4).unwrap();
        assert_eq!((r.now_ms, r.fields.len()), (1700, 1));
        for bad in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(-1)]),
            Value::Array(vec![Value::Int(1), Value::BulkString(b"b".to_vec())]),
            Value::Array(vec![Value::Int(1), Value::Int(2), Value::Int(3)]),
        ] {
            assert!(parse_round(bad, 4).is_err());
        }
        let many = Value::Array(
            std::iter::once(Value::Int(1))
                .chain((0..6).map(|i| Value::BulkString(vec![b'a' + i])))
                .collect(),
        );
        assert!(parse_round(many, 2).is_err());
    }

    #[test]
    fn debug_leaves_the_credentials_out() {
        let config = StoreConfig {
            url: "rediss://kvpick:hunter2@valkey:6379/0".into(),
            username: Some("kvpick".into()),
            password: Some("s3cret".into()),
            key: "kvpick:inflight:pool".into(),
            timeout: Duration::from_millis(250),
            key_ttl: Duration::from_secs(10),
            garbage_after: Duration::from_secs(60),
            max_fields: 64,
            max_value: 1 << 16,
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(shown.contains("rediss://valkey:6379/0"), "{shown}");
    }
}
