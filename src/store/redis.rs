//! [`RedisStore`]: entries in Redis, shared by every instance of a service.

use super::guard::step_done;
use super::oom::{self, MemoryWatch};
use super::{
    Bus, BusEvent, HealthCheck, Leases, Store, StoreError, StoreFuture, WriteTicket, Writes,
};
use crate::Entry;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::{AsyncConnectionConfig, ConnectionInfo, IntoConnectionInfo, RedisError, Value};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Deletes a key only while it still holds the given bytes.
const DELETE_IF_SAME: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
/// Deletes a key only while it is not a string (a fill may have replaced it since).
/// Sets `KEYS[1]` to `ARGV[1]` for `ARGV[2]` ms unless it holds an entry stored later: the
/// entry's `stored_at` is bytes 7 to 14 of the envelope (big-endian millis, compared byte by
/// byte, never with Lua's locale-dependent string order), read with GETRANGE, never the whole
/// value. A late fill (its
/// request began before the stored entry's) never replaces a newer entry. A key of another
/// type is replaced (GETRANGE fails on it: `pcall` makes that an empty string). A tombstone
/// (flags byte 4 has bit 1; bit 2 marks sliding expiry) also refuses a fill of the same millisecond.
/// An invalidation passes the key's last writer (`{K}!ws`, see [`WRITE_END`]) as `KEYS[2]`:
/// set to `0` if present, so that no write in progress may store after it.
/// `ARGV[3]` = `1` skips the comparison: a key's invalidation always lands (what Redis saw
/// last wins; a newer entry it drops only costs a miss), since the dates compared come from
/// instance clocks.
const SET_UNLESS_NEWER: &str = "if #KEYS > 1 then redis.call('SET', KEYS[2], '0', 'XX', 'PX', ARGV[2]) end \
    if ARGV[3] ~= '1' then \
    local cur = redis.pcall('GETRANGE', KEYS[1], 0, 13) \
    if type(cur) ~= 'string' then cur = '' end \
    if string.len(cur) == 14 and string.sub(cur, 1, 3) == string.sub(ARGV[1], 1, 3) then \
    local newer = nil \
    for i = 7, 14 do \
    local a, b = string.byte(cur, i), string.byte(ARGV[1], i) \
    if a ~= b then newer = a > b break end \
    end \
    if newer == true or (newer == nil and math.floor(string.byte(cur, 4) / 2) % 2 == 1) then return 0 end \
    end \
    end \
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1";
/// `GET KEYS[1]`, extending its TTL to `ARGV[1]` ms (sliding expiry) unless it is a tombstone
/// (whose time is its own): one round trip, on any Redis version. A key of another type is
/// the `WRONGTYPE` error, as a `GET`.
const GET_SLIDING: &str = "local v = redis.pcall('GET', KEYS[1]) \
    if type(v) == 'string' and string.len(v) >= 4 \
    and math.floor(string.byte(v, 4) / 2) % 2 == 0 then \
    redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return v";
/// Extends `KEYS[1]` to `ARGV[1]` ms unless it is a tombstone.
const TOUCH: &str = "local f = redis.pcall('GETRANGE', KEYS[1], 3, 3) \
    if type(f) == 'string' and f ~= '' and math.floor(string.byte(f) / 2) % 2 == 0 then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return 0";
/// Deletes the lease `KEYS[1]` only while `ARGV[1]` holds it.
const RELEASE_LEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
/// What a key's lease is stored under: `!` never appears unescaped in a key.
fn lease_key(key: &str) -> String {
    format!("{key}!lease")
}
/// Adds `ARGV[2]` to the tag index `KEYS[1]` (a sorted set scored by when each entry leaves
/// the store, `ARGV[1]` ms), drops the members gone by `ARGV[3]`, keeps the index for at
/// least `ARGV[4]` ms (an index holds only live entries and expires after its last one), and
/// returns the tag's epoch: when it was last invalidated, in ms (0 if never). A fill whose
/// request began before the epoch is not stored.
const TAG_ADD: &str = "redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2]) \
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3]) \
    if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then \
    redis.call('PEXPIRE', KEYS[1], ARGV[4]) end \
    local e = redis.call('ZSCORE', KEYS[1], '!epoch') \
    if e then return tonumber(e) - 1e15 end return 0";
/// Sets the epoch of the tag index `KEYS[1]` to `ARGV[1]` ms (never backwards) and keeps the
/// index at least `ARGV[2]` ms. The epoch is the member `!epoch`, scored 10^15 above its time:
/// above every entry's score, so trimming and reading the live members never touch it.
const TAG_EPOCH: &str = "local e = tonumber(ARGV[1]) + 1e15 \
    local cur = redis.call('ZSCORE', KEYS[1], '!epoch') \
    if (not cur) or tonumber(cur) < e then redis.call('ZADD', KEYS[1], e, '!epoch') end \
    if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then \
    redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 1";
/// Removes members of the tag index `KEYS[1]` given as (member, score) pairs in `ARGV`, each
/// only while its score is still the one read: a member a fill added again meanwhile stays.
const TAG_REMOVE: &str = "local n = 0 \
    for i = 1, #ARGV, 2 do \
    local cur = redis.call('ZSCORE', KEYS[1], ARGV[i]) \
    if cur and tonumber(cur) == tonumber(ARGV[i + 1]) then \
    n = n + redis.call('ZREM', KEYS[1], ARGV[i]) end end return n";
/// The writes in progress on key `K`: a sorted set `{K}!w` of their ids, scored by when
/// each stops counting (ms, Redis's clock), and `{K}!ws`, the id of the last to begin (`0`
/// once the key was invalidated since). Both hash-tagged with `K` (keys never hold braces),
/// so that on a cluster they live in the key's slot and one script sees all three.
fn writes_key(key: &str) -> String {
    format!("{{{key}}}!w")
}
fn last_writer_key(key: &str) -> String {
    format!("{{{key}}}!ws")
}
/// Begins write `ARGV[1]`, tracked `ARGV[2]` ms: returns how many other writes of the key
/// are in progress.
const WRITE_BEGIN: &str = "local t = redis.call('TIME') \
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) \
    local others = redis.call('ZCARD', KEYS[1]) \
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) \
    redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) \
    return others";
/// Ends write `ARGV[1]`; when it began alone (`ARGV[2]` is `1`), is still the last to have
/// begun and no invalidation came since, sets `KEYS[3]` to `ARGV[3]` for `ARGV[4]` ms and
/// returns 1. An empty `ARGV[3]` only ends the write.
const WRITE_END: &str = "redis.call('ZREM', KEYS[1], ARGV[1]) \
    local clean = ARGV[2] == '1' and redis.call('GET', KEYS[2]) == ARGV[1] \
    if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[2]) end \
    if clean and ARGV[3] ~= '' then \
    redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4]) return 1 end \
    return 0";
/// Members a tag invalidation asks for per step (`ZSCAN`'s `COUNT`, a hint: a small index,
/// stored as a listpack, comes whole).
const TAG_BATCH: usize = 500;
/// The counter of the instances that applied message `id`.
fn ack_key(id: &str) -> String {
    format!("tower-stash:ack:{id}")
}
/// Counts an acknowledgement in `KEYS[1]`, kept `ARGV[1]` ms.
const ACK: &str = "redis.call('INCR', KEYS[1]) redis.call('PEXPIRE', KEYS[1], ARGV[1]) return 1";
/// The channel invalidations are published on.
const BUS: &str = "tower-stash:bus";
/// The index of the entries of namespace `ns` tagged `tag`: `{ns}:t:{tag, escaped}` (entry
/// keys are `{ns}:v1:...`, so the two never meet).
fn tag_key(ns: &str, tag: &str) -> String {
    let mut k = format!("{ns}:t:");
    crate::key::escape_into(&mut k, tag.as_bytes());
    k
}
/// The namespace of an entry key, `{ns}:v1:...`.
fn namespace(key: &str) -> &str {
    key.split(':').next().unwrap_or(key)
}
fn millis_at(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
/// TCP keepalive on every connection (the pool's, the cluster's, the subscriber's): probes
/// after 10 s without traffic, then every 5 s; 3 unanswered close the connection. A host that
/// vanished without a FIN or an RST is found in about 25 s even on a connection nothing uses;
/// on Linux, data unacknowledged for as long closes it too (`TCP_USER_TIMEOUT`).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
/// How long a pooled connection's call waits for its answer (the redis crate's default, made
/// explicit): a call without an answer by then fails, and counts towards retiring it.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Calls in a row without an answer within [`RESPONSE_TIMEOUT`] that retire a pooled
/// connection (any answer, even an error, resets the count).
const RETIRE_AFTER_TIMEOUTS: u32 = 3;
/// The subscriber connection is PINGed this often...
const SUBSCRIBER_PING_EVERY: Duration = Duration::from_secs(1);
/// ...and its pong must come within this: a subscription silent for longer is lost.
const SUBSCRIBER_PONG_WITHIN: Duration = Duration::from_secs(2);

/// `base` with TCP keepalive (see [`KEEPALIVE_IDLE`]).
fn with_keepalive(base: &TcpSettings) -> TcpSettings {
    let keepalive = TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "windows"
    ))]
    let keepalive = keepalive
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let settings = base.clone().set_keepalive(keepalive);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let settings =
        settings.set_user_timeout(KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES);
    settings
}

/// The connection settings of `url`, with TCP keepalive.
fn connection_info(url: &str) -> Result<ConnectionInfo, RedisError> {
    let info = url.into_connection_info()?;
    let tcp = with_keepalive(info.tcp_settings());
    Ok(info.set_tcp_settings(tcp))
}

const DELETE_IF_NOT_STRING: &str = "if redis.call('TYPE', KEYS[1]).ok ~= 'string' then \
     return redis.call('DEL', KEYS[1]) end return 0";

/// Entries in Redis, shared by every instance of a service, through a [bb8] pool of
/// connections. Cheap to clone: clones share the pool.
///
/// One round trip per call: a lookup is one `GET`, a fill one `SET key value PX ttl`, a delete
/// one `DEL`. Values are [`Entry::encode`] envelopes; a value that does not decode (garbage, a
/// truncated entry, an unknown format version, a key of another type) is a miss, and the key
/// is deleted in the background, only if it still holds the same bytes, so that a fill racing
/// the delete is kept.
///
/// Building a store never waits for Redis and never fails because Redis is down: connections
/// are opened in the background and on demand. A call waits at most the pool's checkout timeout
/// (default 20 ms) for a connection, never bb8's default of 30 s. For a short per-call timeout
/// and a circuit breaker, wrap the store in [`Guarded`](crate::store::Guarded); to keep hot
/// entries in memory too, put it behind a [`TieredStore`](crate::store::TieredStore).
///
/// A connection that fails with a dropped connection is discarded, and so is every connection
/// opened before it (they went to the same server, which is likely gone or restarted); new
/// connections are opened as calls need them, so the store recovers by itself when Redis
/// returns. The same goes, at once, for a connection answering `READONLY` (a master demoted
/// to a replica by a failover: a new connection finds the new master behind the same
/// address), and for one whose calls go unanswered 3 times in a row for 500 ms each (a host
/// that vanished without closing it, a path gone half-open), even when each caller gave up
/// sooner (a call given up goes on in the background until it is answered or times out).
/// Every connection has TCP keepalive (probes after 10 s idle, every 5 s, 3 missed close
/// it). The subscription to other instances' invalidations is PINGed every second: see
/// [`Bus::subscribe`].
///
/// # Out of memory
///
/// Use `maxmemory-policy noeviction` (Redis's default). At `maxmemory`, Redis then refuses
/// every write that may grow its memory, and allows `DEL`:
///
/// - A fill Redis refuses pauses this store's fills (they fail at once, with no round trip,
///   counted as store errors) for 100 ms, doubling with each refusal up to 5 s, until one
///   lands. Reads go on.
/// - An invalidation still takes effect and returns `Ok`: its tombstones and tag epochs are
///   written past `maxmemory` by a script allowed out of memory (Redis 7's `allow-oom`), a
///   few dozen bytes each, in the place of the entries they invalidate, so that a fill whose
///   request began before it is still refused. With
///   [`tombstones_past_maxmemory(false)`](RedisStoreBuilder::tombstones_past_maxmemory), or
///   on a Redis older than 7, the keys are deleted instead (`DEL`): the old value is gone when
///   the invalidation returns, but a fill whose request began before it may put the old value
///   back once memory frees. Acknowledgements of invalidations (a counter kept 10 s) are
///   written past `maxmemory` either way.
///
/// Each outage is said once at warn level, and its end at info level.
///
/// Under an eviction policy, every key this store writes is a candidate: each has a TTL, so
/// `volatile-*` policies evict them as readily as `allkeys-*`. Tombstones and tag indexes can
/// then go like entries: a fill that began before an invalidation may be stored, and a tag
/// invalidation may miss entries. The policy is read in the background when the first
/// connection opens ([`maxmemory_policy`](RedisStore::maxmemory_policy)); any but
/// `noeviction` is warned of once.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use tower_stash::{Guarded, MemoryStore, RedisStore, Stash, TieredStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Password and database index come from the URL.
/// let redis = RedisStore::builder("redis://:secret@127.0.0.1:6380/2")
///     .pool_size(32)
///     .checkout_timeout(Duration::from_millis(20))
///     .build()?; // does not wait for Redis
/// let store = TieredStore::new(MemoryStore::new(64 * 1024 * 1024), Guarded::new(redis));
/// let stash = Stash::builder().store(store).build()?;
/// # let _ = stash;
/// # Ok(())
/// # }
/// ```
///
/// [bb8]: https://docs.rs/bb8
#[derive(Clone)]
pub struct RedisStore {
    backend: Backend,
    checkout_timeout: Duration,
    /// For the pub/sub connection, which cannot be pooled: one server, or each seed node of a
    /// cluster in turn (a message published on any node reaches every node's subscribers).
    clients: Arc<Vec<redis::Client>>,
    /// Whether the pub/sub subscription is up (and the memory tier flushed after a gap).
    bus_live: Arc<std::sync::atomic::AtomicBool>,
    connect_timeout: Duration,
    /// Whether Redis refuses writes for lack of memory, and its `maxmemory-policy`.
    memory: Arc<MemoryWatch>,
}

/// One server through a pool, or a cluster through one multiplexed cluster connection.
#[derive(Clone)]
enum Backend {
    Single {
        pool: bb8::Pool<Manager>,
        /// Shared with the manager: connections opened before it are discarded.
        epoch: Arc<AtomicU64>,
    },
    Cluster(Arc<Cluster>),
}

/// A Redis Cluster: the redis crate's cluster connection (slots, `MOVED` and `ASK`
/// redirections, topology refreshes), opened in the background.
struct Cluster {
    client: redis::cluster::ClusterClient,
    conn: tokio::sync::watch::Sender<Option<redis::cluster_async::ClusterConnection>>,
    connecting: std::sync::atomic::AtomicBool,
    connect_timeout: Duration,
}

impl Cluster {
    /// The cluster connection, opened in the background on first use (a call waits for it at
    /// most `wait`; the opening goes on without it).
    async fn connection(
        self: &Arc<Self>,
        wait: Duration,
    ) -> Result<redis::cluster_async::ClusterConnection, StoreError> {
        if let Some(conn) = self.conn.borrow().as_ref() {
            return Ok(conn.clone());
        }
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                // Each seed has `connect_timeout`; the whole opening (seeds, slots) a few.
                let opened = tokio::time::timeout(
                    this.connect_timeout * 4,
                    this.client.get_async_connection(),
                )
                .await;
                match opened {
                    Ok(Ok(conn)) => {
                        this.conn.send_replace(Some(conn));
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "redis cluster: connecting failed"),
                    Err(_) => tracing::debug!("redis cluster: connecting timed out"),
                }
                this.connecting.store(false, Ordering::Release);
            });
        }
        let mut rx = self.conn.subscribe();
        let waited = tokio::time::timeout(wait, async {
            rx.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|conn| conn.as_ref().cloned())
        })
        .await;
        match waited {
            Ok(Some(conn)) => Ok(conn),
            _ => Err(StoreError::new(format!(
                "redis cluster: no connection within {wait:?}"
            ))),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL: it may hold a password.
        let (connections, idle) = self.connections();
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.backend, Backend::Cluster(_)))
            .field("connections", &connections)
            .field("idle", &idle)
            .field("checkout_timeout", &self.checkout_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A builder for a store on the Redis at `url`: `redis://[:password@]host[:port][/db]`
    /// (or `rediss://`, `redis+unix://`, as the [redis] crate reads them), or on a Redis
    /// Cluster (or Valkey in cluster mode) with `redis+cluster://[:password@]host:port,host:port`
    /// listing seed nodes (see [`cluster`](Self::cluster)).
    ///
    /// [redis]: https://docs.rs/redis
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            pool_size: 16,
            connect_timeout: Duration::from_millis(500),
            checkout_timeout: Duration::from_millis(20),
            tombstones_past_maxmemory: true,
        }
    }

    /// A store on the Redis at `url` with the default settings; see [`RedisStore::builder`].
    pub fn new(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    /// A builder for a store on a Redis Cluster whose seed nodes are `nodes` (`host:port` or
    /// `redis://[:password@]host:port` each). Every command names one key (or keys of one
    /// slot), so each goes to the node that owns it; redirections and topology changes (a
    /// failover) are followed by the redis crate's cluster connection. One multiplexed
    /// connection per node serves every call: the pool size does not apply.
    pub fn cluster<I, T>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        Self::builder(format!("redis+cluster://{}", nodes.join(",")))
    }

    /// Connections open now, and how many of them are idle (a cluster: its one connection,
    /// counted once, never idle).
    pub fn connections(&self) -> (u32, u32) {
        match &self.backend {
            Backend::Single { pool, .. } => {
                let state = pool.state();
                (state.connections, state.idle_connections)
            }
            Backend::Cluster(c) => (u32::from(c.conn.borrow().is_some()), 0),
        }
    }

    /// Whether the store is on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// The server's `maxmemory-policy`, as read (`CONFIG GET`) in the background when the
    /// first connection opened: `None` until then, or if Redis refuses `CONFIG` (a managed
    /// Redis). Any policy but `noeviction` is warned of once: see the store's docs, "Out of
    /// memory".
    pub fn maxmemory_policy(&self) -> Option<String> {
        self.memory.policy()
    }
}

/// Builds a [`RedisStore`]; from [`RedisStore::builder`].
#[must_use]
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    pool_size: u32,
    connect_timeout: Duration,
    checkout_timeout: Duration,
    tombstones_past_maxmemory: bool,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("tombstones_past_maxmemory", &self.tombstones_past_maxmemory)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// The most connections the pool opens (default 16). Each serves one call at a time; a call
    /// that finds none free waits at most the [checkout timeout](Self::checkout_timeout).
    pub fn pool_size(mut self, connections: u32) -> Self {
        self.pool_size = connections;
        self
    }

    /// How long opening a connection (TCP, AUTH, SELECT) may take (default 500 ms). Opening
    /// happens in the background; a call never waits longer than the checkout timeout for it.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a call waits for a free connection before it fails (default 20 ms; bb8's
    /// `connection_timeout`, whose own default of 30 s would hang every request when Redis is
    /// gone).
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.checkout_timeout = timeout;
        self
    }

    /// Whether an invalidation on a Redis out of memory (at `maxmemory` under `noeviction`)
    /// still leaves its tombstones and tag epochs (default `true`): they are written past
    /// `maxmemory` by a script allowed out of memory (Redis 7 or later), a few dozen bytes
    /// each, in the place of the entries they invalidate. With `false` (or on an older Redis)
    /// the keys are deleted instead (`DEL`, which Redis allows out of memory): the store never
    /// takes Redis past `maxmemory` for them, but a fill whose request began before the
    /// invalidation may put the old value back once memory frees. See [`RedisStore`], "Out of
    /// memory".
    pub fn tombstones_past_maxmemory(mut self, allow: bool) -> Self {
        self.tombstones_past_maxmemory = allow;
        self
    }

    /// Builds the store without waiting for Redis: a server that is down is not an error, its
    /// calls fail until it answers. A bad setting is an error naming it (`redis.url`, ...).
    ///
    /// Needs a tokio runtime (the pool runs background tasks on it).
    pub fn build(self) -> Result<RedisStore, StoreError> {
        if let Some(nodes) = cluster_nodes(&self.url) {
            return self.build_cluster(nodes?);
        }
        let mut errors = Vec::new();
        let client = match connection_info(&self.url).and_then(redis::Client::open) {
            Ok(client) => Some(client),
            Err(e) => {
                errors.push(format!("redis.url: {e}"));
                None
            }
        };
        if self.pool_size == 0 {
            errors.push("redis.pool_size: must be at least 1".to_string());
        }
        errors.extend(self.shared_errors());
        let Some(client) = client.filter(|_| errors.is_empty()) else {
            return Err(StoreError::new(errors.join("; ")));
        };
        let epoch = Arc::new(AtomicU64::new(0));
        let memory = Arc::new(MemoryWatch::new(self.tombstones_past_maxmemory));
        let manager = Manager {
            client: client.clone(),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(RESPONSE_TIMEOUT)),
            connect_timeout: self.connect_timeout,
            epoch: epoch.clone(),
        };
        let pool = bb8::Pool::builder()
            .max_size(self.pool_size)
            .connection_timeout(self.checkout_timeout)
            // A PING on every checkout would double the round trips of a hit; dropped
            // connections are found by the calls themselves (see `Manager::has_broken`).
            .test_on_check_out(false)
            // A failed connect is not retried in a loop: the next call asks again.
            .retry_connection(false)
            .min_idle(Some(1))
            // The first connection reads the server's maxmemory-policy, in the background.
            .connection_customizer(Box::new(PolicyCheck(memory.clone())))
            .build_unchecked(manager);
        Ok(RedisStore {
            backend: Backend::Single { pool, epoch },
            checkout_timeout: self.checkout_timeout,
            clients: Arc::new(vec![client]),
            bus_live: Arc::default(),
            connect_timeout: self.connect_timeout,
            memory,
        })
    }

    /// What is wrong with the settings one server and a cluster share.
    fn shared_errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.connect_timeout.is_zero() {
            errors.push("redis.connect_timeout: must be more than zero".to_string());
        }
        if self.checkout_timeout.is_zero() {
            errors.push("redis.checkout_timeout: must be more than zero".to_string());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            errors.push("redis: build() must run inside a tokio runtime".to_string());
        }
        errors
    }

    fn build_cluster(self, nodes: Vec<String>) -> Result<RedisStore, StoreError> {
        let mut errors = Vec::new();
        let mut clients = Vec::new();
        for node in &nodes {
            match connection_info(node).and_then(redis::Client::open) {
                Ok(c) => clients.push(c),
                Err(e) => errors.push(format!("redis.url: node `{}`: {e}", redact(node))),
            }
        }
        if nodes.is_empty() {
            errors.push("redis.url: a cluster needs at least one seed node".to_string());
        }
        errors.extend(self.shared_errors());
        let client = if errors.is_empty() {
            redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                .connection_timeout(self.connect_timeout)
                // A node that stops answering (paused, partitioned) fails its calls, so that
                // the slot map is refreshed once a replica takes over.
                .response_timeout(self.connect_timeout)
                .tcp_settings(with_keepalive(&TcpSettings::default()))
                // Failovers and resharding are followed by a few quick retries; a caller that
                // cannot wait is cut short by its own timeout (`Guarded`).
                .retries(4)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .build()
                .map_err(|e| errors.push(format!("redis.url: {e}")))
                .ok()
        } else {
            None
        };
        let Some(client) = client.filter(|_| errors.is_empty()) else {
            return Err(StoreError::new(errors.join("; ")));
        };
        let cluster = Arc::new(Cluster {
            client,
            conn: tokio::sync::watch::channel(None).0,
            connecting: std::sync::atomic::AtomicBool::new(false),
            connect_timeout: self.connect_timeout,
        });
        let memory = Arc::new(MemoryWatch::new(self.tombstones_past_maxmemory));
        // The first connection reads a node's maxmemory-policy, in the background (the wait
        // ends when the store is dropped).
        let (mut opened, watch) = (cluster.conn.subscribe(), memory.clone());
        tokio::spawn(async move {
            if let Ok(conn) = opened.wait_for(Option::is_some).await {
                if let Some(conn) = conn.as_ref() {
                    watch.check_policy(conn.clone());
                }
            }
        });
        Ok(RedisStore {
            backend: Backend::Cluster(cluster),
            checkout_timeout: self.checkout_timeout,
            clients: Arc::new(clients),
            bus_live: Arc::default(),
            connect_timeout: self.connect_timeout,
            memory,
        })
    }
}

/// The seed nodes of a `redis+cluster://` (or `rediss+cluster://`) URL, as node URLs; `None`
/// for any other URL. Credentials before the first node (`redis+cluster://:pw@h1:1,h2:2`)
/// apply to every node that has none of its own; a node may be a full URL of its own
/// (`redis://:pw@h1:1`).
fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, StoreError>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return None;
    };
    let parts: Vec<&str> = rest
        .trim_end_matches('/')
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let shared_auth = parts
        .first()
        .filter(|p| !p.contains("://"))
        .and_then(|p| p.rsplit_once('@'))
        .map(|(auth, _)| auth);
    let nodes: Vec<String> = parts
        .iter()
        .map(|part| {
            if part.contains("://") {
                return (*part).to_owned();
            }
            let (auth, host) = match part.rsplit_once('@') {
                Some((auth, host)) => (Some(auth), host),
                None => (shared_auth, *part),
            };
            match auth {
                Some(a) => format!("{scheme}://{a}@{host}"),
                None => format!("{scheme}://{host}"),
            }
        })
        .collect();
    if nodes.is_empty() {
        return Some(Err(StoreError::new(
            "redis.url: a cluster needs at least one seed node (redis+cluster://host:port,...)",
        )));
    }
    Some(Ok(nodes))
}

/// The subscriber count in a `PUBSUB NUMSUB` reply (`[channel, count]`, or a map of them,
/// as the cluster connection combines the nodes' replies).
fn count_in(reply: &Value) -> u64 {
    match reply {
        Value::Int(n) => u64::try_from(*n).unwrap_or(0),
        Value::Array(items) => items.iter().map(count_in).sum(),
        Value::Map(pairs) => pairs.iter().map(|(_, v)| count_in(v)).sum(),
        _ => 0,
    }
}

/// A member of a tag index and its score, as Redis wrote them.
type Scored = (Vec<u8>, Vec<u8>);

/// A page of a `ZSCAN` reply: the next cursor (0 when done) and the flat items.
fn scan_page(reply: Value) -> Result<(u64, Vec<Value>), StoreError> {
    let unexpected = |what: &dyn fmt::Debug| {
        StoreError::new(format!("redis: unexpected reply to ZSCAN: {what:?}"))
    };
    let Value::Array(reply) = reply else {
        return Err(unexpected(&reply));
    };
    match <[Value; 2]>::try_from(reply) {
        Ok([Value::BulkString(cursor), Value::Array(items)]) => {
            let next = std::str::from_utf8(&cursor)
                .ok()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| unexpected(&String::from_utf8_lossy(&cursor)))?;
            Ok((next, items))
        }
        Ok(other) => Err(unexpected(&other)),
        Err(other) => Err(unexpected(&other)),
    }
}

/// The (member, score) pairs of a `ZSCAN` page or a `WITHSCORES` reply, in either protocol's
/// shape: a flat `[member, score, member, score, ...]` (RESP2, and `ZSCAN` in both; scores as
/// strings) or `[[member, score], ...]` (`WITHSCORES` in RESP3; scores as doubles). Scores are
/// kept as text, to be handed back to Redis. Any other shape is an error, never an empty list
/// (which would end an invalidation as done).
fn scored_members(items: Vec<Value>) -> Result<Vec<Scored>, StoreError> {
    let unexpected = |what: &dyn fmt::Debug| {
        StoreError::new(format!(
            "redis: unexpected member and score in a reply: {what:?}"
        ))
    };
    let mut pairs = Vec::with_capacity(items.len());
    let mut items = items.into_iter();
    while let Some(item) = items.next() {
        let pair = match item {
            Value::Array(pair) => <[Value; 2]>::try_from(pair).map_err(|p| unexpected(&p))?,
            member => {
                let score = items.next().ok_or_else(|| unexpected(&member))?;
                [member, score]
            }
        };
        match pair {
            [Value::BulkString(m), Value::BulkString(s)] => pairs.push((m, s)),
            [Value::BulkString(m), Value::Double(d)] if d.is_finite() => {
                pairs.push((m, d.to_string().into_bytes()));
            }
            other => return Err(unexpected(&other)),
        }
    }
    Ok(pairs)
}

/// A node URL without its password, for errors.
fn redact(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((head, host)) => {
            let scheme = head.split("://").next().unwrap_or("redis");
            format!("{scheme}://***@{host}")
        }
        None => url.to_owned(),
    }
}

/// Opens the pool's connections (multiplexed, with a connect timeout, a response timeout and
/// TCP keepalive), and retires the ones that no longer serve, which bb8-redis's manager
/// (whose `has_broken` is always `false`) does not do: without it, a connection to a Redis
/// that was restarted, that vanished, or that was demoted to a replica would stay in the pool
/// and fail every call until its lifetime ends (30 min). See [`Hold::observe`].
struct Manager {
    client: redis::Client,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    /// Connections opened before this epoch are discarded.
    epoch: Arc<AtomicU64>,
}

/// A pooled connection.
struct Conn {
    mux: MultiplexedConnection,
    /// The manager's epoch when it was opened.
    epoch: u64,
    /// Set when it was found opened before the manager's epoch.
    broken: bool,
    /// What its calls have met so far.
    liveness: Arc<Liveness>,
}

/// What a pooled connection's calls have met: shared by every call on it.
#[derive(Debug, Default)]
struct Liveness {
    /// Calls in a row that got no answer within [`RESPONSE_TIMEOUT`].
    unanswered: AtomicU32,
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let opening = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config);
        let mux = tokio::time::timeout(self.connect_timeout, opening)
            .await
            .map_err(|_| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting to redis timed out",
                ))
            })??;
        Ok(Conn {
            mux,
            epoch,
            broken: false,
            liveness: Arc::default(),
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(&mut conn.mux).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken || conn.epoch < self.epoch.load(Ordering::Acquire)
    }
}

type Pooled = bb8::PooledConnection<'static, Manager>;

/// Hands each new pooled connection to [`MemoryWatch::check_policy`] (which reads the policy
/// once), without waiting.
#[derive(Debug)]
struct PolicyCheck(Arc<MemoryWatch>);

impl bb8::CustomizeConnection<Conn, RedisError> for PolicyCheck {
    fn on_acquire<'a>(
        &'a self,
        conn: &'a mut Conn,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RedisError>> + Send + 'a>>
    {
        self.0.check_policy(conn.mux.clone());
        Box::pin(std::future::ready(Ok(())))
    }
}

impl RedisStore {
    /// Checks out a live connection: stale ones (opened before a drop was seen) are discarded.
    async fn checkout(
        &self,
        pool: &bb8::Pool<Manager>,
        epoch: &AtomicU64,
    ) -> Result<Pooled, StoreError> {
        loop {
            let mut conn = pool.get_owned().await.map_err(|e| match e {
                bb8::RunError::User(e) => StoreError::new(format!("redis: {e}")),
                bb8::RunError::TimedOut => StoreError::new(format!(
                    "redis: no connection free within {:?}",
                    self.checkout_timeout
                )),
            })?;
            if conn.epoch < epoch.load(Ordering::Acquire) {
                conn.broken = true;
                continue;
            }
            return Ok(conn);
        }
    }

    /// Checks out a connection for one call: a clone of its multiplexed handle, and the
    /// [`Hold`] that reads what the call's outcome says of it. The connection goes back to
    /// the pool at once.
    async fn hold(
        &self,
        pool: &bb8::Pool<Manager>,
        epoch: &Arc<AtomicU64>,
    ) -> Result<(MultiplexedConnection, Hold), StoreError> {
        let conn = self.checkout(pool, epoch).await?;
        let hold = Hold {
            epoch: conn.epoch,
            shared_epoch: epoch.clone(),
            liveness: conn.liveness.clone(),
        };
        Ok((conn.mux.clone(), hold))
    }

    /// Runs one command on a pooled connection: the outer error is the pool's, the inner one
    /// Redis's. What the outcome says of the connection retires it, with every connection
    /// opened before it, when it dropped, stopped answering or reached a demoted master
    /// (see [`Hold::observe`]).
    ///
    /// The connection goes back to the pool at once and the command runs on a clone of its
    /// multiplexed handle: concurrent requests share connections and their commands are
    /// pipelined (one write and one read for many GETs), instead of each request holding a
    /// connection for its round trip.
    async fn query(&self, cmd: &redis::Cmd) -> Result<Result<Value, RedisError>, StoreError> {
        let (pool, shared_epoch) = match &self.backend {
            Backend::Single { pool, epoch } => (pool, epoch),
            Backend::Cluster(cluster) => {
                let mut conn = cluster.connection(self.checkout_timeout).await?;
                return Ok(cmd.query_async::<Value>(&mut conn).await);
            }
        };
        let (mut mux, hold) = self.hold(pool, shared_epoch).await?;
        let cmd = cmd.clone();
        Ok(hold
            .watch(async move { cmd.query_async::<Value>(&mut mux).await })
            .await)
    }

    /// Runs a pipeline in one round trip (on a cluster, each command on its own, all at once:
    /// their keys may live on different nodes); any error is a [`StoreError`].
    async fn run_pipe(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, StoreError> {
        let (pool, shared_epoch) = match &self.backend {
            Backend::Single { pool, epoch } => (pool, epoch),
            Backend::Cluster(_) => {
                let replies =
                    futures_util::future::join_all(pipe.cmd_iter().map(|cmd| self.run(cmd))).await;
                return replies.into_iter().collect();
            }
        };
        let (mut mux, hold) = self.hold(pool, shared_epoch).await?;
        let pipe = pipe.clone();
        hold.watch(async move { pipe.query_async::<Vec<Value>>(&mut mux).await })
            .await
            .map_err(|e| StoreError::new(format!("redis: {e}")))
    }

    /// Runs one command; any error is a [`StoreError`].
    async fn run(&self, cmd: &redis::Cmd) -> Result<Value, StoreError> {
        self.query(cmd)
            .await?
            .map_err(|e| StoreError::new(format!("redis: {e}")))
    }

    /// Runs `pipe`'s commands in one round trip (on a cluster, each on its own, all at once),
    /// and returns each one's reply or Redis's error: a command Redis refuses does not hide the
    /// others' replies. Failing to reach Redis is the outer error (on a cluster, per command).
    async fn run_each(
        &self,
        pipe: &mut redis::Pipeline,
    ) -> Result<Vec<Result<Value, RedisError>>, StoreError> {
        if self.is_cluster() {
            let replies =
                futures_util::future::join_all(pipe.cmd_iter().map(|cmd| self.query(cmd))).await;
            return replies.into_iter().collect();
        }
        let replies = self.run_pipe(pipe.ignore_errors()).await?;
        Ok(replies.into_iter().map(Value::extract_error).collect())
    }

    /// Redis's error `e` as a [`StoreError`]; a refusal for lack of memory pauses fills.
    fn refusal(&self, e: &RedisError) -> StoreError {
        if oom::is_oom(e) {
            self.memory.refused();
        }
        StoreError::new(format!("redis: {e}"))
    }

    /// Deletes `key` in the background: only while it still holds `bad`, if given, else only
    /// while it is not a string.
    fn discard(&self, key: Arc<str>, bad: Option<Bytes>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        rt.spawn(async move {
            let mut cmd = redis::cmd("EVAL");
            match &bad {
                Some(bad) => cmd.arg(DELETE_IF_SAME).arg(1).arg(&*key).arg(&bad[..]),
                None => cmd.arg(DELETE_IF_NOT_STRING).arg(1).arg(&*key),
            };
            if let Err(e) = this.run(&cmd).await {
                tracing::debug!(%key, error = %e, "deleting an unreadable entry failed");
            }
        });
    }
}

/// One call's hold on a pooled connection: what its outcome says of the connection.
#[derive(Clone)]
struct Hold {
    /// The connection's epoch.
    epoch: u64,
    /// The manager's: raised past `epoch` to retire the connection.
    shared_epoch: Arc<AtomicU64>,
    liveness: Arc<Liveness>,
}

impl Hold {
    /// Runs `call` and reads its outcome, even when the caller gives up first (see
    /// [`Watched`]).
    fn watch<T: Send + 'static, F>(self, call: F) -> Watched<T>
    where
        F: Future<Output = Result<T, RedisError>> + Send + 'static,
    {
        Watched {
            call: Some(Box::pin(call)),
            hold: self,
        }
    }

    /// Retires the connection, with every connection opened before it (they went to the same
    /// server), when `reply` shows that it no longer serves:
    ///
    /// - it dropped (a server restarted or killed);
    /// - it reached a demoted master (`READONLY`): every write would fail until it recycled,
    ///   while a new connection finds the new master behind the same address;
    /// - [`RETIRE_AFTER_TIMEOUTS`] calls in a row got no answer within [`RESPONSE_TIMEOUT`]
    ///   (a host that vanished, or a path that went half-open, which no error reports): once
    ///   the server answers again, a new connection serves. A server that is only slow costs
    ///   a reconnection.
    ///
    /// Any other answer, even an error, shows the connection serves, and resets the count.
    fn observe<T>(&self, reply: &Result<T, RedisError>) {
        let why = match reply {
            Err(e) if e.is_timeout() => {
                let unanswered = self.liveness.unanswered.fetch_add(1, Ordering::AcqRel) + 1;
                if unanswered < RETIRE_AFTER_TIMEOUTS {
                    return;
                }
                "calls in a row got no answer"
            }
            Err(e) if e.is_connection_dropped() || e.is_unrecoverable_error() => {
                "the connection dropped"
            }
            Err(e) if e.code() == Some("READONLY") => "the server is a read-only replica now",
            Ok(_) | Err(_) => {
                self.liveness.unanswered.store(0, Ordering::Release);
                return;
            }
        };
        let before = self
            .shared_epoch
            .fetch_max(self.epoch + 1, Ordering::AcqRel);
        if before <= self.epoch {
            tracing::warn!(
                reason = why,
                "redis: retiring the connection and every one opened before it"
            );
        }
    }
}

/// A call on a connection, boxed to be moved to another task.
type Call<T> = Pin<Box<dyn Future<Output = Result<T, RedisError>> + Send>>;

/// Why a subscription ended.
enum Ended {
    /// The connection closed.
    Dropped,
    /// A PING failed.
    Failed(RedisError),
    /// A PING got no pong in time: the connection may be half-open.
    Silent,
    /// Nobody listens any more (the store was dropped).
    Unsubscribed,
}

/// A call on a pooled connection, whose outcome its [`Hold`] reads. Dropped unfinished (the
/// caller gave up: [`Guarded`](crate::store::Guarded)'s timeout, a client gone away), the
/// call is finished in the background, up to the connection's [`RESPONSE_TIMEOUT`]: a
/// connection that no longer answers is found even when every caller gives up first.
// The bounds are `Drop`'s, which finishes the call on another task.
struct Watched<T: Send + 'static> {
    call: Option<Call<T>>,
    hold: Hold,
}

impl<T: Send + 'static> Future for Watched<T> {
    type Output = Result<T, RedisError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(call) = this.call.as_mut() else {
            return Poll::Pending;
        };
        let reply = std::task::ready!(call.as_mut().poll(cx));
        this.call = None;
        this.hold.observe(&reply);
        Poll::Ready(reply)
    }
}

impl<T: Send + 'static> Drop for Watched<T> {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hold = self.hold.clone();
        rt.spawn(async move { hold.observe(&call.await) });
    }
}

impl RedisStore {
    /// Runs `cmd` (a `GET`, or the sliding read script, of `key`) and reads the entry it returns.
    fn read(&self, key: Arc<str>, cmd: redis::Cmd) -> StoreFuture<Option<Arc<Entry>>> {
        let this = self.clone();
        Box::pin(async move {
            let bytes = match this.query(&cmd).await? {
                Ok(Value::Nil) => return Ok(None),
                // `Bytes::from(Vec)` takes the buffer: the entry's body is a slice of it.
                Ok(Value::BulkString(v)) => Bytes::from(v),
                Ok(other) => {
                    return Err(StoreError::new(format!(
                        "redis: unexpected reply to a read: {other:?}"
                    )))
                }
                // A key of another type: as unreadable as garbage.
                Err(e) if e.code() == Some("WRONGTYPE") => {
                    tracing::warn!(%key, "a key of another type in redis: a miss, deleted");
                    this.discard(key, None);
                    return Ok(None);
                }
                Err(e) => return Err(StoreError::new(format!("redis: {e}"))),
            };
            match Entry::decode(bytes.clone()) {
                Ok(entry) if entry.is_tombstone() => Ok(None),
                Ok(entry) => Ok(Some(Arc::new(entry))),
                Err(e) => {
                    tracing::warn!(%key, error = %e, "unreadable entry in redis: a miss, deleted");
                    this.discard(key, Some(bytes));
                    Ok(None)
                }
            }
        })
    }

    /// Adds `key` to the indexes of its entry's tags, kept `millis` ms: true when one of
    /// them was invalidated at or after the entry's request began (it must not be stored).
    async fn add_to_tags(&self, key: &str, entry: &Entry, millis: u64) -> Result<bool, StoreError> {
        if entry.tags().is_empty() {
            return Ok(false);
        }
        // The tag indexes first: a tag invalidation that reads an index after this sees the
        // key; one that set its epoch before this is seen here.
        let now = millis_at(SystemTime::now());
        let leaves = now.saturating_add(millis);
        let ns = namespace(key);
        let mut pipe = redis::pipe();
        for tag in entry.tags() {
            pipe.cmd("EVAL")
                .arg(TAG_ADD)
                .arg(1)
                .arg(tag_key(ns, tag))
                .arg(leaves)
                .arg(key)
                .arg(now)
                .arg(millis);
        }
        let started = millis_at(entry.stored_at());
        let mut invalidated = false;
        for epoch in self.run_each(&mut pipe).await? {
            match epoch {
                Ok(Value::Int(at)) => invalidated |= u64::try_from(at).unwrap_or(0) >= started,
                Ok(_) => {}
                Err(e) => return Err(self.refusal(&e)),
            }
        }
        Ok(invalidated)
    }
}

impl RedisStore {
    /// The command that leaves a tombstone (`stone`, for `keep`) in the place of `key` unless
    /// it holds an entry stored after the tombstone's date, and ends the writes in progress.
    /// With `force`, the tombstone lands whatever the key holds.
    fn tombstone_cmd(
        script: &str,
        key: &[u8],
        stone: &[u8],
        keep: Duration,
        force: bool,
    ) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script)
            .arg(2)
            .arg(key)
            .arg(last_writer_key(&String::from_utf8_lossy(key)))
            .arg(stone)
            .arg(ms(keep))
            .arg(if force { "1" } else { "0" });
        cmd
    }

    /// Leaves a tombstone dated `at` for `keep` in the place of each of `keys`, unless it
    /// holds an entry stored after `at`, in one round trip; says of each whether its entry is
    /// gone (the tombstone landed) or stays (a newer entry).
    ///
    /// Out of memory (Redis at `maxmemory` under `noeviction`), the tombstones Redis refused
    /// are written again by a script allowed out of memory (Redis 7's `allow-oom`: a tombstone
    /// is small, and takes the place of what it invalidates), so that the guarantee holds. A
    /// Redis that refuses that too (older than 7), or a store that must not write past
    /// `maxmemory`, has the keys deleted instead (`DEL`, allowed out of memory): gone, but
    /// without a tombstone, said once per outage. Each round trip is a step.
    async fn tombstone_keys(
        &self,
        keys: &[&[u8]],
        at: SystemTime,
        keep: Duration,
        force: bool,
    ) -> Result<Vec<bool>, StoreError> {
        let stones: Vec<Bytes> = keys
            .iter()
            .map(|key| Entry::tombstone(&*String::from_utf8_lossy(key), at).encode())
            .collect();
        let mut pipe = redis::pipe();
        for (key, stone) in keys.iter().zip(&stones) {
            pipe.add_command(Self::tombstone_cmd(
                SET_UNLESS_NEWER,
                key,
                stone,
                keep,
                force,
            ));
        }
        let replies = self.run_each(&mut pipe).await?;
        step_done();
        if replies.len() != keys.len() {
            return Err(StoreError::new(format!(
                "redis: {} replies to {} tombstones",
                replies.len(),
                keys.len()
            )));
        }
        let mut gone = vec![false; keys.len()];
        let mut refused = Vec::new();
        for (i, reply) in replies.into_iter().enumerate() {
            match reply {
                Ok(Value::Int(1)) => gone[i] = true,
                // An entry stored after `at`: it stays.
                Ok(_) => {}
                Err(e) if oom::is_oom(&e) => refused.push(i),
                Err(e) => return Err(StoreError::new(format!("redis: {e}"))),
            }
        }
        if refused.is_empty() {
            if gone.contains(&true) {
                self.memory.accepted();
            }
            return Ok(gone);
        }
        self.memory.refused();
        let mut delete = Vec::new();
        if self.memory.past_maxmemory() {
            let script = oom::allow_oom(SET_UNLESS_NEWER);
            let mut pipe = redis::pipe();
            for &i in &refused {
                pipe.add_command(Self::tombstone_cmd(
                    &script, keys[i], &stones[i], keep, force,
                ));
            }
            let replies = self.run_each(&mut pipe).await?;
            step_done();
            for (&i, reply) in refused.iter().zip(replies) {
                match reply {
                    Ok(Value::Int(1)) => gone[i] = true,
                    Ok(_) => {}
                    Err(e) if oom::is_refusal(&e) => {
                        tracing::debug!(error = %e, "redis refuses a tombstone allowed out of memory");
                        delete.push(i);
                    }
                    Err(e) => return Err(StoreError::new(format!("redis: {e}"))),
                }
            }
        } else {
            delete = refused;
        }
        if delete.is_empty() {
            return Ok(gone);
        }
        self.memory.deleted_instead();
        let mut pipe = redis::pipe();
        for &i in &delete {
            // The key and its last writer (one slot): a write in progress no longer stores.
            pipe.cmd("DEL")
                .arg(keys[i])
                .arg(last_writer_key(&String::from_utf8_lossy(keys[i])));
        }
        let replies = self.run_each(&mut pipe).await?;
        step_done();
        for (&i, reply) in delete.iter().zip(replies) {
            reply.map_err(|e| StoreError::new(format!("redis: {e}")))?;
            gone[i] = true;
        }
        Ok(gone)
    }

    /// Leaves a tombstone dated `at` in the place of each of `pairs` (member, score read),
    /// then removes from `index` the members whose entry is gone, each only while its score
    /// is still the one read. A step per round trip.
    async fn tombstone_members(
        &self,
        index: &str,
        pairs: Vec<Scored>,
        at: SystemTime,
        keep: Duration,
    ) -> Result<(), StoreError> {
        let keys: Vec<&[u8]> = pairs.iter().map(|(member, _)| &member[..]).collect();
        // Every tombstone first: a member leaves the index only once its entry is gone (on
        // a cluster they run on several nodes, and one may fail).
        let gone = self.tombstone_keys(&keys, at, keep, false).await?;
        // A refused tombstone: the member holds an entry stored after `at`, which the next
        // invalidation must still find in the index.
        let mut remove = redis::cmd("EVAL");
        remove.arg(TAG_REMOVE).arg(1).arg(index);
        let mut landed = 0;
        for ((member, score), gone) in pairs.iter().zip(gone) {
            if gone {
                remove.arg(&member[..]).arg(&score[..]);
                landed += 1;
            }
        }
        if landed > 0 {
            self.run(&remove).await?;
            step_done();
        }
        Ok(())
    }

    /// Sets the epoch of the tag index `index` to `at` (see [`TAG_EPOCH`]); out of memory, by
    /// a script allowed out of memory, or not at all where Redis refuses that too (said once
    /// per outage: a fill that began before `at` may then be stored).
    async fn set_tag_epoch(
        &self,
        index: &str,
        at: SystemTime,
        keep: Duration,
    ) -> Result<(), StoreError> {
        let epoch = |script: &str| {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(script)
                .arg(1)
                .arg(index)
                .arg(millis_at(at))
                .arg(ms(keep));
            cmd
        };
        match self.query(&epoch(TAG_EPOCH)).await? {
            Ok(_) => return Ok(()),
            Err(e) if oom::is_oom(&e) => self.memory.refused(),
            Err(e) => return Err(StoreError::new(format!("redis: {e}"))),
        };
        if !self.memory.past_maxmemory() {
            self.memory.deleted_instead();
            return Ok(());
        }
        match self.query(&epoch(&oom::allow_oom(TAG_EPOCH))).await? {
            Ok(_) => {}
            Err(e) if oom::is_refusal(&e) => {
                tracing::debug!(error = %e, "redis refuses a tag epoch allowed out of memory");
                self.memory.deleted_instead();
            }
            Err(e) => return Err(StoreError::new(format!("redis: {e}"))),
        }
        Ok(())
    }
}

impl Store for RedisStore {
    fn get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(&*key);
        self.read(key, cmd)
    }

    fn get_sliding(&self, key: Arc<str>, idle: Duration) -> StoreFuture<Option<Arc<Entry>>> {
        // Read and extended in one round trip.
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(GET_SLIDING).arg(1).arg(&*key).arg(ms(idle));
        self.read(key, cmd)
    }

    fn touch(&self, key: Arc<str>, idle: Duration) -> StoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(TOUCH).arg(1).arg(&*key).arg(ms(idle));
            this.run(&cmd).await.map(drop)
        })
    }

    fn put(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) -> StoreFuture<()> {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        // A sliding entry lives its idle time, extended by every sliding read and touch, up
        // to `ttl`: its tag indexes keep it that long.
        let set_millis = entry
            .sliding()
            .map_or(millis, |idle| millis.min(ms(idle)).max(1));
        if millis == 0 {
            return Box::pin(std::future::ready(Err(StoreError::new(
                "refusing to store an entry with a TTL under a millisecond",
            ))));
        }
        // Redis refused a write for lack of memory a moment ago: no round trip.
        if let Some(left) = self.memory.fills_paused() {
            return Box::pin(std::future::ready(Err(StoreError::new(format!(
                "redis is out of memory: fill skipped (fills resume in {left:?} at most)"
            )))));
        }
        let this = self.clone();
        Box::pin(async move {
            let value = entry.encode();
            if this.add_to_tags(&key, &entry, millis).await? {
                tracing::debug!(%key, "a tag of this fill was invalidated after its request began: not stored");
                return Ok(());
            }
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(SET_UNLESS_NEWER)
                .arg(1)
                .arg(&*key)
                .arg(&value[..])
                .arg(set_millis);
            match this.query(&cmd).await? {
                Ok(Value::Int(1)) => {
                    this.memory.accepted();
                    Ok(())
                }
                Ok(Value::Int(_)) => {
                    tracing::debug!(%key, "a newer entry or an invalidation is stored: this fill is dropped");
                    Ok(())
                }
                Ok(other) => Err(StoreError::new(format!(
                    "redis: unexpected reply to a fill: {other:?}"
                ))),
                Err(e) => Err(this.refusal(&e)),
            }
        })
    }

    fn delete(&self, key: Arc<str>) -> StoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&*key);
            this.run(&cmd).await.map(drop)
        })
    }

    /// Replaces the entry with a tombstone dated `at`, whatever it holds (the dates of
    /// entries come from instance clocks: what Redis saw last wins); out of memory too (see
    /// [`RedisStore`], "Out of memory").
    fn invalidate(&self, key: Arc<str>, at: SystemTime, keep: Duration) -> StoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            this.tombstone_keys(&[key.as_bytes()], at, keep, true)
                .await
                .map(drop)
        })
    }

    /// Sets the tag's epoch (a fill whose request began before it is not stored), then walks
    /// the tag's index with a cursor (`ZSCAN`), about 500 members a step (`TAG_BATCH`): leaves a
    /// tombstone in each live member's place, and removes from the index the members whose
    /// tombstone landed. A member whose tombstone was refused holds an entry stored after
    /// `at` (refilled meanwhile): it stays, for the next invalidation to find. Every member
    /// in the index for the whole walk is seen; the walk ends when the cursor does, whatever
    /// stays behind. Single-key commands only, so it works on a cluster. Each round trip is a
    /// step for [`Guarded`](super::Guarded)'s timeout.
    fn invalidate_tag(
        &self,
        ns: Arc<str>,
        tag: Arc<str>,
        at: SystemTime,
        keep: Duration,
    ) -> StoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let index = tag_key(&ns, &tag);
            this.set_tag_epoch(&index, at, keep).await?;
            step_done();
            let mut cursor = 0;
            loop {
                let mut scan = redis::cmd("ZSCAN");
                scan.arg(&index).arg(cursor).arg("COUNT").arg(TAG_BATCH);
                let (next, items) = scan_page(this.run(&scan).await?)?;
                step_done();
                // Live members only: not the epoch, nor entries gone by their score.
                let now = millis_at(SystemTime::now()) as f64;
                let mut pairs = Vec::with_capacity(items.len());
                for (member, score) in scored_members(items)? {
                    let s = std::str::from_utf8(&score)
                        .ok()
                        .and_then(|s| s.parse::<f64>().ok())
                        .ok_or_else(|| {
                            StoreError::new(format!(
                                "redis: a tag index score that is no number: {:?}",
                                String::from_utf8_lossy(&score)
                            ))
                        })?;
                    if s >= now && s < 1e15 {
                        pairs.push((member, score));
                    }
                }
                if !pairs.is_empty() {
                    this.tombstone_members(&index, pairs, at, keep).await?;
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        })
    }

    fn bus(&self) -> Option<&dyn Bus> {
        Some(self)
    }

    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }

    fn writes(&self) -> Option<&dyn Writes> {
        Some(self)
    }

    fn health_check(&self) -> Option<&dyn HealthCheck> {
        Some(self)
    }
}

impl HealthCheck for RedisStore {
    /// `PING`, as every call goes (a dropped connection is discarded). On a cluster, every
    /// master is pinged and one answer is enough: one breaker serves the whole cluster, and
    /// the masters that answer keep serving their keys.
    fn ping(&self) -> StoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let cmd = redis::cmd("PING");
            let reply = match &this.backend {
                Backend::Single { .. } => this.run(&cmd).await?,
                Backend::Cluster(cluster) => {
                    use redis::cluster_routing::{
                        MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo,
                    };
                    let mut conn = cluster.connection(this.checkout_timeout).await?;
                    let any_master = RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::OneSucceeded),
                    ));
                    conn.route_command(cmd, any_master)
                        .await
                        .map_err(|e| StoreError::new(format!("redis: {e}")))?
                }
            };
            match reply {
                Value::SimpleString(pong) if pong == "PONG" => Ok(()),
                other => Err(StoreError::new(format!(
                    "redis: unexpected reply to PING: {other:?}"
                ))),
            }
        })
    }
}

impl Writes for RedisStore {
    fn begin_write(&self, key: Arc<str>, keep: Duration) -> StoreFuture<WriteTicket> {
        let this = self.clone();
        Box::pin(async move {
            let id = fastrand::u64(1..);
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(WRITE_BEGIN)
                .arg(2)
                .arg(writes_key(&key))
                .arg(last_writer_key(&key))
                .arg(id)
                .arg(ms(keep));
            match this.run(&cmd).await? {
                Value::Int(others) => Ok(WriteTicket::new(id, others == 0)),
                other => Err(StoreError::new(format!(
                    "redis: unexpected reply to a write's start: {other:?}"
                ))),
            }
        })
    }

    /// Adds the entry to its tags' indexes, then ends the write and stores the entry in one
    /// script: no invalidation or other write can come between the check and the `SET`.
    fn end_write(
        &self,
        key: Arc<str>,
        ticket: WriteTicket,
        entry: Option<(Arc<Entry>, Duration)>,
    ) -> StoreFuture<bool> {
        let this = self.clone();
        Box::pin(async move {
            if ticket.id() == 0 {
                return Ok(false);
            }
            let mut value = Bytes::new();
            let mut millis = 1;
            if let Some((entry, ttl)) = entry.filter(|_| ticket.alone()) {
                millis = ms(ttl);
                // A tag invalidated since the write began: ended, not stored.
                if !this.add_to_tags(&key, &entry, millis).await? {
                    value = entry.encode();
                }
            }
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(WRITE_END)
                .arg(3)
                .arg(writes_key(&key))
                .arg(last_writer_key(&key))
                .arg(&*key)
                .arg(ticket.id())
                .arg(if ticket.alone() { "1" } else { "0" })
                .arg(&value[..])
                .arg(millis);
            match this.run(&cmd).await? {
                Value::Int(stored) => Ok(stored == 1),
                other => Err(StoreError::new(format!(
                    "redis: unexpected reply to a write's end: {other:?}"
                ))),
            }
        })
    }
}

impl Bus for RedisStore {
    fn publish(&self, message: Bytes) -> StoreFuture<u64> {
        let this = self.clone();
        Box::pin(async move {
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(BUS).arg(&message[..]);
            if this.is_cluster() {
                // A cluster forwards the message to every node, but PUBLISH counts only the
                // subscribers of the node it ran on: ask every node how many it has.
                let mut numsub = redis::cmd("PUBSUB");
                numsub.arg("NUMSUB").arg(BUS);
                let (published, subscribers) =
                    futures_util::join!(this.run(&cmd), this.run(&numsub));
                let published = published?;
                // Counting is best effort: with a node down, the message still went out,
                // and waiting for acknowledgements is skipped rather than the call failed.
                return Ok(match subscribers {
                    Ok(n) => count_in(&n),
                    Err(e) => {
                        tracing::debug!(error = %e, "redis cluster: counting subscribers failed");
                        count_in(&published)
                    }
                });
            }
            match this.run(&cmd).await? {
                Value::Int(n) => Ok(u64::try_from(n).unwrap_or(0)),
                other => Err(StoreError::new(format!(
                    "redis: unexpected reply to PUBLISH: {other:?}"
                ))),
            }
        })
    }

    /// A task holds a pub/sub connection: it reconnects after a drop (100 ms, then backing
    /// off to 2 s), and reports [`BusEvent::Lost`] each time it has subscribed again. While
    /// the subscription is down, memory tiers keep serving (a Redis outage costs hit rate,
    /// not the memory tier); what they hold is dropped once it is back, since invalidations
    /// may have been missed meanwhile.
    ///
    /// The connection is PINGed every second: a pong that does not come within 2 s (a host
    /// that vanished without closing the connection, a path gone half-open) counts as lost
    /// at once, as no error would ever say so. Invalidations may have been missed since the
    /// last pong, so [`BusEvent::Lost`] is reported then too (the memory tier is flushed
    /// within 3 s of the silence), and the task subscribes again as after a drop.
    fn subscribe(&self, sink: Weak<dyn Fn(BusEvent) + Send + Sync>) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("redis: no tokio runtime to subscribe on: invalidations from other instances are not heard");
            return false;
        };
        let clients = self.clients.clone();
        let connect_timeout = self.connect_timeout;
        let live = self.bus_live.clone();
        rt.spawn(async move {
            use futures_util::StreamExt;
            // Delivers `event`; false once the sink is gone (the store was dropped).
            let deliver = |event: BusEvent| match sink.upgrade() {
                Some(sink) => {
                    sink(event);
                    true
                }
                None => false,
            };
            let mut pause = Duration::from_millis(100);
            let mut resubscribed = false;
            // A cluster's nodes in turn: when one goes, the next.
            let mut next = 0;
            loop {
                let client = &clients[next % clients.len()];
                next += 1;
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(BUS).await?;
                    Ok::<_, RedisError>(pubsub)
                };
                match tokio::time::timeout(connect_timeout, subscribed).await {
                    Ok(Ok(pubsub)) => {
                        pause = Duration::from_millis(100);
                        // Messages sent while there was no subscription are lost. (Not before
                        // the first attempt: the tier was empty.)
                        if resubscribed && !deliver(BusEvent::Lost) {
                            return;
                        }
                        // Live only now that what may have been missed is flushed.
                        live.store(true, Ordering::Release);
                        let (mut control, mut messages) = pubsub.split();
                        // Ends when the sink is gone, or the connection does not answer.
                        let alive = async {
                            loop {
                                tokio::time::sleep(SUBSCRIBER_PING_EVERY).await;
                                if sink.strong_count() == 0 {
                                    return Ended::Unsubscribed;
                                }
                                let pong = control.ping::<Value>();
                                match tokio::time::timeout(SUBSCRIBER_PONG_WITHIN, pong).await {
                                    Ok(Ok(_)) => {}
                                    Ok(Err(e)) => return Ended::Failed(e),
                                    Err(_) => return Ended::Silent,
                                }
                            }
                        };
                        tokio::pin!(alive);
                        let ended = loop {
                            tokio::select! {
                                msg = messages.next() => {
                                    let Some(msg) = msg else { break Ended::Dropped };
                                    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                                    if !deliver(BusEvent::Message(payload)) {
                                        return;
                                    }
                                }
                                ended = &mut alive => break ended,
                            }
                        };
                        live.store(false, Ordering::Release);
                        match ended {
                            Ended::Unsubscribed => return,
                            Ended::Dropped => {
                                tracing::warn!("redis: the invalidation subscription dropped");
                            }
                            Ended::Failed(e) => tracing::warn!(
                                error = %e,
                                "redis: the invalidation subscription failed its PING"
                            ),
                            Ended::Silent => {
                                tracing::warn!(
                                    within = ?SUBSCRIBER_PONG_WITHIN,
                                    "redis: the invalidation subscription went silent (no pong): \
                                     flushing the memory tier and subscribing again"
                                );
                                // Invalidations may have been missed since the last pong.
                                if !deliver(BusEvent::Lost) {
                                    return;
                                }
                            }
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "redis: subscribing failed"),
                    Err(_) => tracing::debug!("redis: subscribing timed out"),
                }
                // Whatever happened, the next subscription follows a time without one.
                resubscribed = true;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                if sink.strong_count() == 0 {
                    return;
                }
            }
        });
        true
    }

    fn live(&self) -> bool {
        self.bus_live.load(Ordering::Acquire)
    }

    /// `INCR` of the message's acknowledgement counter (kept 10 s).
    fn acknowledge(&self, id: Arc<str>) -> StoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            // One script: the counter never lives without its expiry.
            let ack = |script: &str| {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(script).arg(1).arg(ack_key(&id)).arg(10_000);
                cmd
            };
            match this.query(&ack(ACK)).await? {
                // Out of memory, the publisher still learns that this instance applied it.
                Err(e) if oom::is_oom(&e) => this.run(&ack(&oom::allow_oom(ACK))).await.map(drop),
                reply => reply
                    .map(drop)
                    .map_err(|e| StoreError::new(format!("redis: {e}"))),
            }
        })
    }

    fn acknowledgements(&self, id: Arc<str>) -> StoreFuture<u64> {
        let this = self.clone();
        Box::pin(async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(ack_key(&id));
            match this.run(&cmd).await? {
                Value::Nil => Ok(0),
                Value::BulkString(b) => Ok(std::str::from_utf8(&b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)),
                other => Err(StoreError::new(format!(
                    "redis: unexpected reply to GET: {other:?}"
                ))),
            }
        })
    }
}

impl Leases for RedisStore {
    /// `SET {key}!lease token NX PX ttl`.
    fn try_lease(&self, key: Arc<str>, token: Arc<str>, ttl: Duration) -> StoreFuture<bool> {
        let this = self.clone();
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(lease_key(&key))
                .arg(&*token)
                .arg("NX")
                .arg("PX")
                .arg(millis);
            match this.run(&cmd).await? {
                Value::Okay => Ok(true),
                Value::Nil => Ok(false),
                other => Err(StoreError::new(format!(
                    "redis: unexpected reply to a lease: {other:?}"
                ))),
            }
        })
    }

    /// Deletes the lease by a compare-and-delete script: only while `token` holds it.
    fn release_lease(&self, key: Arc<str>, token: Arc<str>) -> StoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(RELEASE_LEASE)
                .arg(1)
                .arg(lease_key(&key))
                .arg(&*token);
            this.run(&cmd).await.map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::cluster_nodes;

    fn nodes(url: &str) -> Vec<String> {
        cluster_nodes(url).unwrap().unwrap()
    }

    #[test]
    fn cluster_urls_name_their_seed_nodes() {
        assert_eq!(
            nodes("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/"),
            ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        // Shared credentials, and a node with its own.
        assert_eq!(
            nodes("redis+cluster://:pw@h1:1, h2:2,u:other@h3:3"),
            [
                "redis://:pw@h1:1",
                "redis://:pw@h2:2",
                "redis://u:other@h3:3"
            ]
        );
        // Full node URLs, as `RedisStore::cluster` joins them.
        assert_eq!(
            nodes("redis+cluster://redis://:a@h1:1,redis://:b@h2:2"),
            ["redis://:a@h1:1", "redis://:b@h2:2"]
        );
        assert_eq!(nodes("rediss+cluster://h1:1"), ["rediss://h1:1"]);
        assert!(cluster_nodes("redis+cluster://").unwrap().is_err());
        assert!(cluster_nodes("redis://h:1").is_none());
    }

    #[test]
    fn scored_members_read_both_protocols_and_refuse_other_shapes() {
        use super::scored_members;
        use redis::Value::{Array, BulkString, Double, Int};
        let b = |s: &str| BulkString(s.as_bytes().to_vec());
        let want = vec![
            (b"a".to_vec(), b"1712345678901".to_vec()),
            (b"b".to_vec(), b"1712345678902".to_vec()),
        ];
        // RESP2: flat, scores as strings.
        let flat = vec![b("a"), b("1712345678901"), b("b"), b("1712345678902")];
        assert_eq!(scored_members(flat).unwrap(), want);
        // RESP3: a pair per member, scores as doubles.
        let nested = vec![
            Array(vec![b("a"), Double(1712345678901.0)]),
            Array(vec![b("b"), Double(1712345678902.0)]),
        ];
        assert_eq!(scored_members(nested).unwrap(), want);
        assert_eq!(scored_members(vec![]).unwrap(), vec![]);
        // Anything else is an error, not "no members".
        assert!(scored_members(vec![b("a")]).is_err());
        assert!(scored_members(vec![b("a"), Int(1)]).is_err());
        assert!(scored_members(vec![Array(vec![b("a")])]).is_err());
        assert!(scored_members(vec![Array(vec![b("a"), Double(f64::NAN)])]).is_err());
    }

    #[test]
    fn timeouts_in_a_row_a_drop_or_readonly_retire_a_connection_and_every_older_one() {
        use super::{Hold, Liveness, RETIRE_AFTER_TIMEOUTS};
        use redis::{ErrorKind, RedisError, ServerErrorKind};
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let timeout = || -> Result<(), RedisError> {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer").into())
        };
        let shared = Arc::new(AtomicU64::new(4));
        let hold = |epoch| Hold {
            epoch,
            shared_epoch: shared.clone(),
            liveness: Arc::new(Liveness::default()),
        };
        let conn = hold(4);
        // Timeouts retire only in a row: any answer, even an error, resets the count.
        for _ in 0..3 {
            for _ in 1..RETIRE_AFTER_TIMEOUTS {
                conn.observe(&timeout());
            }
            conn.observe(&Err::<(), _>(RedisError::from((
                ErrorKind::Server(ServerErrorKind::ResponseError),
                "an error answer",
            ))));
            conn.observe(&timeout());
            conn.observe(&Ok(()));
        }
        assert_eq!(shared.load(Ordering::SeqCst), 4);
        for _ in 0..RETIRE_AFTER_TIMEOUTS {
            conn.observe(&timeout());
        }
        assert_eq!(
            shared.load(Ordering::SeqCst),
            5,
            "retired, with all before it"
        );
        // A demoted master: at once.
        hold(5).observe(&Err::<(), _>(RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ))));
        assert_eq!(shared.load(Ordering::SeqCst), 6);
        // A dropped connection: at once. An older connection's failure retires no newer one.
        hold(6).observe(&Err::<(), _>(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset).into(),
        ));
        assert_eq!(shared.load(Ordering::SeqCst), 7);
        hold(3).observe(&Err::<(), _>(
            std::io::Error::from(std::io::ErrorKind::BrokenPipe).into(),
        ));
        assert_eq!(shared.load(Ordering::SeqCst), 7);
    }

    #[test]
    fn passwords_never_reach_errors() {
        assert_eq!(super::redact("redis://:p@ss@host:1"), "redis://***@host:1");
    }
}
