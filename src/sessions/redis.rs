//! Sessions in Redis (a single server, Sentinel-fronted or a Cluster), shared
//! by every authgate instance.
//!
//! Key layout, with `P` the configured prefix and `F` the family id in hex:
//! - `P{f:F}:fam` — hash: user, created, last_used, revoked, expires
//!   (TTL = refresh TTL)
//! - `P{f:F}:t:H` — hash of token hash H: state (live/used), used_at, succ,
//!   expires
//! - `P{f:F}:end` — string: the family's `expires`, or `revoked`; written
//!   with the family, so open WebSockets' sessions are checked with one
//!   `MGET` for thousands of families (see [`super::watch`])
//! - `P u:USER`   — set of the user's family ids (for `sessions list/revoke`),
//!   expiring with the user's longest-lived family (extended at each rotation)
//! - `P tries:{K}` — hash: attempts `n` of throttle key K (hashed) in the
//!   window ending at `until` (TTL = window)
//! - `P ban:{K}`  — a banned throttle key: when the ban ends (TTL = the ban)
//! - `P otp:{K}`  — the last one-time-code step accepted for user key K
//!   (hashed), refusing that step and older ones (TTL: past the step's window)
//!
//! The `{f:F}` hash tag puts every key a rotation touches in one Cluster slot,
//! so the rotation script runs atomically on Cluster too.
//!
//! Every revocation PUBLISHes the family id (hex) on the channel `Prevoked`,
//! from inside the script that revokes, so no revocation goes unannounced.
//!
//! Every expiry is decided by the gateway's [`Clock`] against the instant
//! stored in the record (`expires`, `until`, the ban's end), so a test that
//! moves the clock sees records expire; the Redis TTLs only clean up. A
//! record without its instant (written by an earlier version) is judged by
//! its TTL alone.
//!
//! A write whose answer its caller may never see, because it timed out
//! (`[sessions] timeout`) in a hung Redis, must do nothing when Redis
//! resumes and runs it: a rotation applied then would make the client's
//! retry with its old token look like a replay once `reuse_grace` has
//! passed. The rotation and the one-time-code step therefore carry a
//! deadline in wall-clock ms that the script compares with Redis's `TIME`
//! before writing (Redis replicates scripts by their effects, so `TIME` is
//! allowed before writes). Gateway and Redis clocks are assumed NTP-synchronised;
//! [`DEADLINE_SLACK`] absorbs small skew. On Cluster and behind Sentinel,
//! the node that runs the script judges it on its own clock. Closing the
//! connection after a timeout would not do: Redis still runs what it has
//! read from a socket before it sees the socket closed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::sync::Mutex;

use super::{
    hex, millis, oldest_first, unhex, FailureLimits, FamilyId, FamilyInfo, Revocations,
    RotateRequest, Rotation, SessionStore, StoreError, TokenHash,
};
use crate::clock::Clock;
use crate::config::defaults::SESSION_TIMEOUT;

/// Whether an `expires` field read in a script has passed at `now`
/// (a script's local); an absent one leaves the decision to the TTL.
macro_rules! lua_expired {
    () => {
        "local function expired(at) return at ~= false and tonumber(at) <= now end\n"
    };
}

/// Whether the caller has given up: `deadline` (wall-clock ms, see
/// [`Deadline`]) against Redis's own clock. A script checks it before
/// writing anything, so a command that waited in a hung Redis's socket
/// past its caller's timeout does nothing when Redis resumes.
macro_rules! lua_stale {
    () => {
        r#"
local function stale(deadline)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(deadline)
end
"#
    };
}

/// Revokes family `fam` (a script's local), marks its end key `mark` and
/// announces it on `channel` as `id`. The mark lives as long as the family.
macro_rules! lua_revoke {
    () => {
        r#"
local function revoke(fam, mark, channel, id)
  redis.call('HSET', fam, 'revoked', '1')
  local ttl = redis.call('PTTL', fam)
  -- No key without a TTL: a missing mark sends the check to the record.
  if ttl > 0 then redis.call('SET', mark, 'revoked', 'PX', ttl) else redis.call('DEL', mark) end
  redis.call('PUBLISH', channel, id)
end
"#
    };
}

/// KEYS: family, presented token, successor token, family end. ARGV: now
/// ms, grace ms, ttl ms, sealed successor, the share of the ttl after which
/// the user's index is extended again ([`INDEX_SLACK`]), now + ttl ms,
/// revocation channel, family id, deadline ([`lua_stale`]). `{'stale'}`:
/// past the deadline, nothing done.
const ROTATE: &str = concat!(
    "local now = tonumber(ARGV[1])\n",
    lua_expired!(),
    lua_revoke!(),
    lua_stale!(),
    r#"
if stale(ARGV[9]) then return {'stale'} end
local fam = redis.call('HMGET', KEYS[1], 'user', 'revoked', 'indexed_at', 'expires')
if not fam[1] or fam[2] == '1' or expired(fam[4]) then return {'invalid'} end
local tok = redis.call('HMGET', KEYS[2], 'state', 'used_at', 'succ', 'expires')
if not tok[1] or expired(tok[4]) then return {'invalid'} end
if tok[1] == 'live' then
  redis.call('HSET', KEYS[2], 'state', 'used', 'used_at', ARGV[1], 'succ', ARGV[4])
  redis.call('HSET', KEYS[3], 'state', 'live', 'expires', ARGV[6])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[3])
  local reindex = '0'
  if now - tonumber(fam[3] or '0') > tonumber(ARGV[3]) * ARGV[5] then
    reindex = '1'
    redis.call('HSET', KEYS[1], 'last_used', ARGV[1], 'expires', ARGV[6], 'indexed_at', ARGV[1])
  else
    redis.call('HSET', KEYS[1], 'last_used', ARGV[1], 'expires', ARGV[6])
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'rotated', fam[1], ARGV[1], reindex}
end
if tonumber(ARGV[1]) - tonumber(tok[2]) <= tonumber(ARGV[2]) then
  return {'successor', fam[1], tok[2], tok[3]}
end
revoke(KEYS[1], KEYS[4], ARGV[7], ARGV[8])
return {'reused', fam[1]}
"#
);

/// KEYS: family, token, family end. ARGV: now ms, revocation channel,
/// family id.
const REVOKE_WITH_TOKEN: &str = concat!(
    "local now = tonumber(ARGV[1])\n",
    lua_expired!(),
    lua_revoke!(),
    r#"
local fam = redis.call('HMGET', KEYS[1], 'user', 'revoked', 'expires')
local tok = redis.call('HMGET', KEYS[2], 'state', 'expires')
if fam[1] and fam[2] ~= '1' and not expired(fam[3]) and tok[1] and not expired(tok[2]) then
  revoke(KEYS[1], KEYS[3], ARGV[2], ARGV[3])
  return fam[1]
end
return false
"#
);

/// KEYS: family, family end. ARGV: now ms, revocation channel, family id.
/// Counts only a family that was live.
const REVOKE_FAMILY: &str = concat!(
    "local now = tonumber(ARGV[1])\n",
    lua_expired!(),
    lua_revoke!(),
    r#"
local fam = redis.call('HMGET', KEYS[1], 'user', 'revoked', 'expires')
if fam[1] and fam[2] ~= '1' and not expired(fam[3]) then
  revoke(KEYS[1], KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
"#
);

/// KEYS: family, family end. ARGV: now ms. Whether the family is valid,
/// from its record; writes the end key from the record too, for a family
/// written by an earlier version or whose end key is stale (rotated by an
/// earlier version), so the next batched check finds it right.
const SYNC_END: &str = concat!(
    "local now = tonumber(ARGV[1])\n",
    lua_expired!(),
    r#"
local fam = redis.call('HMGET', KEYS[1], 'user', 'revoked', 'expires')
if not fam[1] then
  redis.call('DEL', KEYS[2])
  return 0
end
local ttl = redis.call('PTTL', KEYS[1])
if fam[2] == '1' then
  if ttl > 0 then redis.call('SET', KEYS[2], 'revoked', 'PX', ttl) end
  return 0
end
if expired(fam[3]) then return 0 end
-- A record without its instant ends with its TTL.
if ttl > 0 then redis.call('SET', KEYS[2], fam[3] or tostring(now + ttl), 'PX', ttl) end
return 1
"#
);

/// Families per `MGET` of the WebSocket safety net: 10,000 open families
/// cost five commands a second. Redis runs one command at a time, and an
/// `MGET` takes about a microsecond a key, so a larger chunk would hold
/// up every other client (logins, refreshes) for longer.
const CHECK_CHUNK: usize = 2000;

/// KEYS: counter, ban. ARGV: now ms, window end ms, window ms, limit, ban
/// end ms, ban ms. Returns the ms a ban still runs, or 0 when the attempt
/// may go ahead.
const COUNT_ATTEMPT: &str = r#"
local now = tonumber(ARGV[1])
local ban = redis.call('GET', KEYS[2])
if ban then
  local left
  -- A ban set by an earlier version holds '1': its TTL is its end.
  if ban == '1' then left = redis.call('PTTL', KEYS[2]) else left = tonumber(ban) - now end
  if left > 0 then return left end
end
local window_end = redis.call('HGET', KEYS[1], 'until')
if not window_end or tonumber(window_end) <= now then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'until', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
if n <= tonumber(ARGV[4]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
return tonumber(ARGV[6])
"#;

/// KEYS: the user's last accepted step. ARGV: step, ttl ms, deadline
/// ([`lua_stale`]). 1: accepted and recorded; 0: that step or a later one
/// was already accepted; -1: past the deadline, nothing recorded (else the
/// user's retry with the same code would be refused as a replay).
const USE_OTP_STEP: &str = concat!(
    lua_stale!(),
    r#"
if stale(ARGV[3]) then return -1 end
local last = redis.call('GET', KEYS[1])
if last and tonumber(last) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#
);

/// How much later than its caller's deadline, on the gateway's clock, a
/// write may still be applied by Redis's clock: room for the two clocks
/// disagreeing (they are assumed NTP-synchronised, within milliseconds).
/// A write applied within it after its caller gave up is harmless as long
/// as `[sessions] timeout` + this stays well under `reuse_grace`: the
/// client's retry with the old token then gets the same successor.
const DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// The instant, in wall-clock Unix ms, after which a write's caller has
/// given up (its `[sessions] timeout` has run out) plus [`DEADLINE_SLACK`].
/// Wall clock, not the injectable [`Clock`], since Redis's `TIME` judges
/// it and tests move the injectable one.
struct Deadline(u64);

impl Deadline {
    fn after(timeout: Duration) -> Deadline {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Deadline(millis(now + timeout + DEADLINE_SLACK))
    }
}

/// A script answered "stale" although its caller was still waiting: Redis's
/// clock runs ahead of the gateway's by more than [`DEADLINE_SLACK`].
fn stale_in_time() -> StoreError {
    tracing::warn!(
        event = "redis_clock_skew",
        slack_ms = millis(DEADLINE_SLACK),
        "Redis judged a write past its deadline while it was awaited: synchronise the clocks (NTP)"
    );
    StoreError::Unavailable("Redis clock ahead of the gateway's".into())
}

/// One connection type for single-server and Cluster deployments, so
/// commands and scripts are written once.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Target {
    Single(ConnectionManager),
    /// Connected on first use, and again after a failed first attempt.
    Cluster(Box<ClusterTarget>),
    /// The master named by Sentinel, asked again after any failure (a
    /// failover moves it).
    Sentinel(Box<SentinelTarget>),
}

struct SentinelTarget {
    client: Mutex<redis::sentinel::SentinelClient>,
    master: Mutex<Option<ConnectionManager>>,
}

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

struct ClusterTarget {
    client: redis::cluster::ClusterClient,
    conn: Mutex<Option<ClusterConnection>>,
}

pub struct RedisSessionStore {
    target: Target,
    prefix: String,
    clock: Clock,
    /// `[sessions] timeout`: the bound on one operation, connecting included.
    timeout: Duration,
    rotate: Arc<Script>,
    revoke_with_token: Script,
    revoke_family: Script,
    sync_end: Script,
    count_attempt: Script,
    use_otp_step: Script,
    /// Where to subscribe to revocations: the server, or each Cluster node
    /// in turn (a Cluster delivers a PUBLISH to every node); empty behind
    /// Sentinel, where the master is asked for.
    subscribe_to: Vec<redis::Client>,
    /// `Prevoked`.
    channel: String,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

impl RedisSessionStore {
    /// `url` is one `redis://`/`rediss://` URL, or several separated by
    /// commas for a Redis Cluster (any reachable nodes; the rest are found).
    /// Nothing is contacted here: a Redis that is down at start makes the
    /// gateway not-ready, not absent.
    /// With `sentinel_master`, the URLs are Sentinel nodes and the store
    /// talks to the master Sentinel names.
    pub async fn new(
        url: &str,
        prefix: &str,
        sentinel_master: Option<&str>,
        clock: Clock,
    ) -> anyhow::Result<RedisSessionStore> {
        Self::with_timeout(url, prefix, sentinel_master, clock, SESSION_TIMEOUT).await
    }

    /// [`RedisSessionStore::new`] with `[sessions] timeout` as the bound on
    /// each operation: past it (a hung Redis, not only a refusing one) the
    /// operation fails and the request gets 503.
    pub async fn with_timeout(
        url: &str,
        prefix: &str,
        sentinel_master: Option<&str>,
        clock: Clock,
        timeout: Duration,
    ) -> anyhow::Result<RedisSessionStore> {
        let urls: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let subscribe_to;
        let target = if let Some(master) = sentinel_master {
            let client = redis::sentinel::SentinelClient::build(
                urls.clone(),
                master,
                None,
                redis::sentinel::SentinelServerType::Master,
            )?;
            subscribe_to = Vec::new();
            Target::Sentinel(Box::new(SentinelTarget {
                client: Mutex::new(client),
                master: Mutex::new(None),
            }))
        } else if urls.len() > 1 || url.contains("cluster=true") {
            let urls: Vec<String> = urls
                .iter()
                .map(|u| u.replace("?cluster=true", ""))
                .collect();
            subscribe_to = urls
                .iter()
                .map(|u| redis::Client::open(u.as_str()))
                .collect::<Result<_, _>>()?;
            let client = redis::cluster::ClusterClientBuilder::new(urls)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()?;
            Target::Cluster(Box::new(ClusterTarget {
                client,
                conn: Mutex::new(None),
            }))
        } else {
            let client = redis::Client::open(urls[0])?;
            subscribe_to = vec![client.clone()];
            Target::Single(ConnectionManager::new_lazy_with_config(
                client,
                manager_config(timeout),
            )?)
        };
        Ok(RedisSessionStore {
            target,
            prefix: prefix.to_string(),
            clock,
            timeout,
            rotate: Arc::new(Script::new(ROTATE)),
            revoke_with_token: Script::new(REVOKE_WITH_TOKEN),
            revoke_family: Script::new(REVOKE_FAMILY),
            sync_end: Script::new(SYNC_END),
            count_attempt: Script::new(COUNT_ATTEMPT),
            use_otp_step: Script::new(USE_OTP_STEP),
            subscribe_to,
            channel: format!("{prefix}revoked"),
        })
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        match &self.target {
            Target::Single(manager) => Ok(Conn::Single(manager.clone())),
            Target::Cluster(cluster) => {
                let ClusterTarget { client, conn } = &**cluster;
                let mut guard = conn.lock().await;
                if let Some(c) = guard.as_ref() {
                    return Ok(Conn::Cluster(c.clone()));
                }
                let c = tokio::time::timeout(self.timeout, client.get_async_connection())
                    .await
                    .map_err(unavailable)?
                    .map_err(unavailable)?;
                *guard = Some(c.clone());
                Ok(Conn::Cluster(c))
            }
            Target::Sentinel(sentinel) => {
                let mut guard = sentinel.master.lock().await;
                if let Some(c) = guard.as_ref() {
                    return Ok(Conn::Single(c.clone()));
                }
                let mut client = sentinel.client.lock().await;
                let master = tokio::time::timeout(self.timeout, client.async_get_client())
                    .await
                    .map_err(unavailable)?
                    .map_err(unavailable)?;
                let manager =
                    ConnectionManager::new_lazy_with_config(master, manager_config(self.timeout))
                        .map_err(unavailable)?;
                *guard = Some(manager.clone());
                Ok(Conn::Single(manager))
            }
        }
    }

    /// After a failure, forget the Sentinel master so the next operation
    /// asks Sentinel again.
    async fn forget_master(&self) {
        if let Target::Sentinel(sentinel) = &self.target {
            *sentinel.master.lock().await = None;
        }
    }

    /// Runs one operation with the store's time bound.
    async fn run<T>(
        &self,
        op: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        let result = match tokio::time::timeout(self.timeout, op(&mut conn)).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => unavailable(e),
            Err(elapsed) => unavailable(elapsed),
        };
        self.forget_master().await;
        Err(result)
    }

    fn family_key(&self, family: &FamilyId) -> String {
        format!("{}{{f:{}}}:fam", self.prefix, hex(family))
    }

    fn end_key(&self, family: &FamilyId) -> String {
        format!("{}{{f:{}}}:end", self.prefix, hex(family))
    }

    /// Whether the family is valid, by its record, and its end key set
    /// from the record.
    async fn sync_end(&self, family: &FamilyId) -> Result<bool, StoreError> {
        let fam = self.family_key(family);
        let end = self.end_key(family);
        let alive: i64 = self
            .run(async |c| {
                self.sync_end
                    .key(&fam)
                    .key(&end)
                    .arg(self.clock.unix_millis())
                    .invoke_async(c)
                    .await
            })
            .await?;
        Ok(alive == 1)
    }

    /// A connection to subscribe on: the server, the first Cluster node
    /// that answers, or the master Sentinel names.
    async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        let mut last = None;
        for client in &self.subscribe_to {
            match tokio::time::timeout(self.timeout, client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => return Ok(pubsub),
                Ok(Err(e)) => last = Some(unavailable(e)),
                Err(elapsed) => last = Some(unavailable(elapsed)),
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        let Target::Sentinel(sentinel) = &self.target else {
            return Err(StoreError::Unsupported("no Redis server to subscribe to"));
        };
        let master = {
            let mut client = sentinel.client.lock().await;
            tokio::time::timeout(self.timeout, client.async_get_client())
                .await
                .map_err(unavailable)?
                .map_err(unavailable)?
        };
        tokio::time::timeout(self.timeout, master.get_async_pubsub())
            .await
            .map_err(unavailable)?
            .map_err(unavailable)
    }

    fn token_key(&self, family: &FamilyId, token: &TokenHash) -> String {
        format!("{}{{f:{}}}:t:{}", self.prefix, hex(family), hex(token))
    }

    fn user_key(&self, username: &str) -> String {
        format!("{}u:{username}", self.prefix)
    }

    /// Adds the family to its user's index and extends the index past the
    /// family's expiry by [`INDEX_SLACK`], so a session kept alive by
    /// refreshing stays listed and revocable. The index is in another hash
    /// slot than the family, hence not part of the rotation script; the
    /// script asks for it only once the slack is used up, so most rotations
    /// cost one round trip.
    async fn index_family(
        &self,
        username: &str,
        family: &FamilyId,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let user = self.user_key(username);
        let until = ttl + ttl.mul_f64(INDEX_SLACK);
        self.run(async |c| {
            redis::pipe()
                .sadd(&user, hex(family))
                .pexpire(&user, millis(until) as i64)
                .query_async::<()>(c)
                .await
        })
        .await
    }

    /// The counter and the ban of a throttle key share a Cluster slot (the
    /// hash tag), so the counting script may touch both.
    fn failure_keys(&self, key: &str) -> [String; 2] {
        let id = key_id(key);
        [
            format!("{}tries:{{{id}}}", self.prefix),
            format!("{}ban:{{{id}}}", self.prefix),
        ]
    }
}

/// A key's stand-in in Redis key names: usernames stay out of Redis, and a
/// `{` in one cannot move a hash tag.
fn key_id(key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(key.as_bytes())[..16])
}

impl RedisSessionStore {
    fn otp_key(&self, key: &str) -> String {
        format!("{}otp:{{{}}}", self.prefix, key_id(key))
    }
}

/// Whether a record's `expires` field says it has expired at `now_ms`; a
/// record without one is left to its Redis TTL.
fn expired(expires: &Option<String>, now_ms: u64) -> bool {
    expires
        .as_deref()
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|at| at <= now_ms)
}

/// How far past a family's expiry its user's index lives: the index is
/// extended at most once per this share of `refresh_ttl` of refreshing.
const INDEX_SLACK: f64 = 0.25;

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(
        &self,
        family: &FamilyId,
        username: &str,
        token: &TokenHash,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let fam = self.family_key(family);
        let tok = self.token_key(family, token);
        let end = self.end_key(family);
        let expires = (now_ms + millis(ttl)).to_string();
        self.run(async |c| {
            redis::pipe()
                .atomic()
                .hset_multiple(
                    &fam,
                    &[
                        ("user", username.to_string()),
                        ("created", now_ms.to_string()),
                        ("last_used", now_ms.to_string()),
                        ("indexed_at", now_ms.to_string()),
                        ("expires", expires.clone()),
                    ],
                )
                .pexpire(&fam, millis(ttl) as i64)
                .hset_multiple(&tok, &[("state", "live"), ("expires", &expires)])
                .pexpire(&tok, millis(ttl) as i64)
                .pset_ex(&end, &expires, millis(ttl))
                .query_async::<()>(c)
                .await
        })
        .await?;
        self.index_family(username, family, ttl).await
    }

    async fn rotate(&self, r: RotateRequest<'_>) -> Result<Rotation, StoreError> {
        let keys = [
            self.family_key(r.family),
            self.token_key(r.family, r.presented),
            self.token_key(r.family, r.successor),
            self.end_key(r.family),
        ];
        let script = self.rotate.clone();
        let deadline = Deadline::after(self.timeout);
        let reply: Vec<String> = self
            .run(async |c| {
                script
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .key(&keys[3])
                    .arg(r.now_ms)
                    .arg(millis(r.grace))
                    .arg(millis(r.ttl))
                    .arg(hex(r.sealed_successor))
                    .arg(INDEX_SLACK)
                    .arg(r.now_ms + millis(r.ttl))
                    .arg(&self.channel)
                    .arg(hex(r.family))
                    .arg(deadline.0)
                    .invoke_async(c)
                    .await
            })
            .await?;
        let field = |i: usize| reply.get(i).cloned().unwrap_or_default();
        let rotation = match reply.first().map(String::as_str) {
            Some("rotated") => Rotation::Rotated {
                username: field(1),
                at_ms: field(2).parse().unwrap_or(r.now_ms),
            },
            Some("successor") => match unhex::<32>(&field(3)) {
                Some(sealed) => Rotation::Successor {
                    username: field(1),
                    at_ms: field(2).parse().unwrap_or(r.now_ms),
                    sealed,
                },
                None => Rotation::Invalid,
            },
            Some("reused") => Rotation::Reused { username: field(1) },
            Some("stale") => return Err(stale_in_time()),
            _ => Rotation::Invalid,
        };
        // The script asks for the index only once its slack is used up.
        if let (Rotation::Rotated { username, .. }, "1") = (&rotation, field(3).as_str()) {
            // The rotation has happened: failing the request now would make
            // the client's retry look like a replay. A missed index update
            // only hides this family from `sessions list/revoke`, once the
            // index lapses, until a later rotation renews it.
            if let Err(e) = self.index_family(username, r.family, r.ttl).await {
                tracing::warn!(event = "session_index_failed", user = %username, error = %e);
            }
        }
        Ok(rotation)
    }

    async fn revoke(
        &self,
        family: &FamilyId,
        token: &TokenHash,
    ) -> Result<Option<String>, StoreError> {
        let fam = self.family_key(family);
        let tok = self.token_key(family, token);
        let user: Option<String> = self
            .run(async |c| {
                self.revoke_with_token
                    .key(&fam)
                    .key(&tok)
                    .key(self.end_key(family))
                    .arg(self.clock.unix_millis())
                    .arg(&self.channel)
                    .arg(hex(family))
                    .invoke_async(c)
                    .await
            })
            .await?;
        Ok(user)
    }

    async fn revoke_user(&self, username: &str) -> Result<usize, StoreError> {
        let user = self.user_key(username);
        let families: Vec<String> = self
            .run(async |c| redis::cmd("SMEMBERS").arg(&user).query_async(c).await)
            .await?;
        let mut count = 0;
        for family in families.iter().filter_map(|f| unhex::<16>(f)) {
            let fam = self.family_key(&family);
            let n: i64 = self
                .run(async |c| {
                    self.revoke_family
                        .key(&fam)
                        .key(self.end_key(&family))
                        .arg(self.clock.unix_millis())
                        .arg(&self.channel)
                        .arg(hex(&family))
                        .invoke_async(c)
                        .await
                })
                .await?;
            count += n as usize;
        }
        Ok(count)
    }

    async fn list_user(&self, username: &str) -> Result<Vec<FamilyInfo>, StoreError> {
        let user = self.user_key(username);
        let families: Vec<String> = self
            .run(async |c| redis::cmd("SMEMBERS").arg(&user).query_async(c).await)
            .await?;
        let mut list = Vec::new();
        for id in families {
            let Some(family) = unhex::<16>(&id) else {
                continue;
            };
            let fam = self.family_key(&family);
            let fields: Vec<Option<String>> = self
                .run(async |c| {
                    redis::cmd("HMGET")
                        .arg(&fam)
                        .arg(&["user", "created", "last_used", "revoked", "expires"])
                        .query_async(c)
                        .await
                })
                .await?;
            match fields.as_slice() {
                // Expired by the clock, not yet by its TTL: not listed,
                // and left in the index until Redis drops it.
                [Some(_), _, _, _, expires] if expired(expires, self.clock.unix_millis()) => {}
                [Some(user), created, last_used, revoked, _] => list.push(FamilyInfo {
                    family: id,
                    username: user.clone(),
                    created_ms: created.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0),
                    last_used_ms: last_used
                        .as_deref()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    revoked: revoked.as_deref() == Some("1"),
                }),
                _ => {
                    // Expired: tidy the index.
                    let _: Result<(), _> = self
                        .run(async |c| redis::cmd("SREM").arg(&user).arg(&id).query_async(c).await)
                        .await;
                }
            }
        }
        Ok(oldest_first(list))
    }

    async fn family_alive(&self, family: &FamilyId) -> Result<bool, StoreError> {
        Ok(self.family_user(family).await?.is_some())
    }

    async fn family_user(&self, family: &FamilyId) -> Result<Option<String>, StoreError> {
        let fam = self.family_key(family);
        let fields: Vec<Option<String>> = self
            .run(async |c| {
                redis::cmd("HMGET")
                    .arg(&fam)
                    .arg(&["user", "revoked", "expires"])
                    .query_async(c)
                    .await
            })
            .await?;
        let now = self.clock.unix_millis();
        Ok(match fields.as_slice() {
            [Some(user), revoked, expires]
                if revoked.as_deref() != Some("1") && !expired(expires, now) =>
            {
                Some(user.clone())
            }
            _ => None,
        })
    }

    /// One `MGET` of end keys per [`CHECK_CHUNK`] families; only a family
    /// whose end key is missing or past is looked up on its own.
    async fn families_alive(&self, families: &[FamilyId]) -> Result<Vec<bool>, StoreError> {
        let mut alive = Vec::with_capacity(families.len());
        for chunk in families.chunks(CHECK_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|f| self.end_key(f)).collect();
            let ends: Vec<Option<String>> = self
                .run(async |c| redis::cmd("MGET").arg(&keys).query_async(c).await)
                .await?;
            let now = self.clock.unix_millis();
            for (family, end) in chunk.iter().zip(ends) {
                let live = match end.as_deref() {
                    Some("revoked") => false,
                    Some(at) if at.parse::<u64>().is_ok_and(|at| at > now) => true,
                    // Expired by now, or written by an earlier version
                    // (which rotates without moving the end key): the
                    // record decides.
                    _ => self.sync_end(family).await?,
                };
                alive.push(live);
            }
        }
        Ok(alive)
    }

    async fn revocations(&self) -> Result<Revocations, StoreError> {
        let mut pubsub = self.pubsub().await?;
        tokio::time::timeout(self.timeout, pubsub.subscribe(&self.channel))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        let families = pubsub.into_on_message().filter_map(|message| {
            let family = message
                .get_payload::<String>()
                .ok()
                .and_then(|id| unhex::<16>(&id));
            std::future::ready(family)
        });
        Ok(families.boxed())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self
            .run(async |c| redis::cmd("PING").query_async(c).await)
            .await?;
        Ok(())
    }

    async fn count_attempt(
        &self,
        key: &str,
        limits: FailureLimits,
    ) -> Result<Option<Duration>, StoreError> {
        let [count, ban] = self.failure_keys(key);
        let now = self.clock.unix_millis();
        let banned_ms: u64 = self
            .run(async |c| {
                self.count_attempt
                    .key(&count)
                    .key(&ban)
                    .arg(now)
                    .arg(now + millis(limits.window))
                    .arg(millis(limits.window))
                    .arg(limits.limit)
                    .arg(now + millis(limits.ban))
                    .arg(millis(limits.ban))
                    .invoke_async(c)
                    .await
            })
            .await?;
        Ok((banned_ms > 0).then(|| Duration::from_millis(banned_ms)))
    }

    async fn ban_remaining(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let [_, ban] = self.failure_keys(key);
        let (until, ttl_ms): (Option<String>, i64) = self
            .run(async |c| redis::pipe().get(&ban).pttl(&ban).query_async(c).await)
            .await?;
        let left_ms = match until.as_deref() {
            None => 0,
            // A ban set by an earlier version holds "1": its TTL is its end.
            Some("1") => ttl_ms.max(0) as u64,
            Some(until) => until
                .parse::<u64>()
                .unwrap_or(0)
                .saturating_sub(self.clock.unix_millis()),
        };
        Ok((left_ms > 0).then(|| Duration::from_millis(left_ms)))
    }

    async fn reset_failures(&self, key: &str) -> Result<(), StoreError> {
        let [count, _] = self.failure_keys(key);
        self.run(async |c| redis::cmd("DEL").arg(&count).query_async(c).await)
            .await
    }

    async fn use_otp_step(&self, key: &str, step: u64, ttl: Duration) -> Result<bool, StoreError> {
        let otp = self.otp_key(key);
        let deadline = Deadline::after(self.timeout);
        let accepted: i8 = self
            .run(async |c| {
                self.use_otp_step
                    .key(&otp)
                    .arg(step)
                    .arg(millis(ttl).max(1))
                    .arg(deadline.0)
                    .invoke_async(c)
                    .await
            })
            .await?;
        match accepted {
            -1 => Err(stale_in_time()),
            accepted => Ok(accepted == 1),
        }
    }
}
