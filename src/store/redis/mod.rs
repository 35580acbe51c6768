//! [`RedisStore`]: entries in Redis, shared by every instance of a service.

mod batch;
mod builder;
mod bus;
mod check;
mod cluster;
mod connect;
mod given;
mod leases;
mod oom;
mod pool;
mod scripts;
#[cfg(feature = "sentinel")]
mod sentinel;
#[cfg(test)]
mod tests;
mod tombstones;
mod writes;

pub use builder::RedisStoreBuilder;

use super::{Bus, HealthCheck, Leases, Store, StoreError, StoreFuture, Writes};
use crate::Entry;
use bytes::Bytes;
use cluster::Clusters;
use given::Given;
use oom::MemoryWatch;
use pool::Manager;
use redis::Value;
use scripts::{
    eval, ms, set_unless_newer, DELETE_IF_NOT_STRING, DELETE_IF_SAME, GET_SLIDING, TOUCH,
};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Entries in Redis, shared by every instance of a service, through a [bb8] pool of
/// connections. Cheap to clone: clones share the pool.
///
/// One round trip per call: a lookup is one `GET`, a fill one `SET key value PX ttl`, a delete
/// one `DEL`; on one server, a key's invalidation (its tombstone, its variants' and the
/// message on the bus) one script. Values are [`Entry::encode`] envelopes; a value that does not decode (garbage, a
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
    clients: Arc<Vec<connect::Target>>,
    /// Whether the pub/sub subscription is up (and the memory tier flushed after a gap).
    bus_live: Arc<std::sync::atomic::AtomicBool>,
    /// Set once Redis refused a key's invalidation in one script for another reason than
    /// memory (an ACL, a server that forbids undeclared keys): invalidations take the steps.
    one_script: Arc<tombstones::Refused>,
    /// The acknowledgements heard on the bus, for the invalidations this instance waits on.
    acks: Arc<bus::AckBoard>,
    /// The leases this instance waits for, told of their release on the bus.
    releases: Arc<leases::ReleaseBoard>,
    connect_timeout: Duration,
    /// Whether Redis refuses writes for lack of memory, and its `maxmemory-policy`.
    memory: Arc<MemoryWatch>,
}

/// One server through a pool, or through the connections the application gave; or a
/// cluster through multiplexed cluster connections.
#[derive(Clone)]
enum Backend {
    Single {
        pool: bb8::Pool<Manager>,
        /// Shared with the manager: connections opened before it are discarded.
        epoch: Arc<AtomicU64>,
        /// The `GET`s, sent in batches.
        reads: Arc<batch::Reads>,
    },
    Given(Arc<dyn Given>),
    Cluster(Arc<Clusters>),
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
        RedisStoreBuilder::new(url.into())
    }

    /// A builder for a store on the server of `client`, a [`redis::Client`] the application
    /// already has: its address, credentials, database, protocol and TLS settings are used as
    /// they are (TCP keepalive is added). The store opens its own pool with it, unless given
    /// the application's connection ([`RedisStoreBuilder::connection`]: a
    /// `ConnectionManager` or a multiplexed connection) or bb8 pool
    /// ([`RedisStoreBuilder::pool`]); the client always opens the subscription to the
    /// invalidation bus, which those cannot carry.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_stash::RedisStore;
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let conn = client.get_multiplexed_async_connection().await?;
    /// let store = RedisStore::from_client(client).connection(conn).build()?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_client(client: redis::Client) -> RedisStoreBuilder {
        RedisStoreBuilder::from_client(client)
    }

    /// A store on the Redis at `url` with the default settings; see [`RedisStore::builder`].
    pub fn new(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    /// A builder for a store on a Redis Cluster whose seed nodes are `nodes` (`host:port` or
    /// `redis://[:password@]host:port` each). Every command names one key (or keys of one
    /// slot), so each goes to the node that owns it; redirections and topology changes (a
    /// failover) are followed by the redis crate's cluster connection, one multiplexed
    /// connection per node; [`pool_size`](RedisStoreBuilder::pool_size) such cluster
    /// connections (default 1) are used in turn.
    pub fn cluster<I, T>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        Self::builder(format!("redis+cluster://{}", nodes.join(",")))
    }

    /// Connections open now, and how many of them are idle (a cluster: its cluster connections
    /// open, never idle; a given connection: 1; a given pool: the pool's).
    pub fn connections(&self) -> (u32, u32) {
        match &self.backend {
            Backend::Single { pool, .. } => {
                let state = pool.state();
                (state.connections, state.idle_connections)
            }
            Backend::Given(given) => given.state(),
            Backend::Cluster(c) => (c.opened(), 0),
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

impl RedisStore {
    /// Runs `cmd` (a `GET`, or the sliding read script, of `key`) and reads the entry it
    /// returns. A `GET` on one server goes in the next batch of reads (see [`batch`]).
    fn read(&self, key: Arc<str>, cmd: redis::Cmd, get: bool) -> StoreFuture<Option<Arc<Entry>>> {
        let this = self.clone();
        Box::pin(async move {
            let reply = match &this.backend {
                Backend::Single { reads, .. } if get => reads.query(cmd).await?,
                _ => this.query(&cmd).await?,
            };
            let bytes = match reply {
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

    /// Deletes `key` in the background: only while it still holds `bad`, if given, else only
    /// while it is not a string.
    fn discard(&self, key: Arc<str>, bad: Option<Bytes>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        rt.spawn(async move {
            let mut cmd;
            match &bad {
                Some(bad) => {
                    cmd = eval(DELETE_IF_SAME);
                    cmd.arg(1).arg(&*key).arg(&bad[..])
                }
                None => {
                    cmd = eval(DELETE_IF_NOT_STRING);
                    cmd.arg(1).arg(&*key)
                }
            };
            if let Err(e) = this.run(&cmd).await {
                tracing::debug!(%key, error = %e, "deleting an unreadable entry failed");
            }
        });
    }
}

impl Store for RedisStore {
    fn get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(&*key);
        self.read(key, cmd, true)
    }

    fn get_sliding(&self, key: Arc<str>, idle: Duration) -> StoreFuture<Option<Arc<Entry>>> {
        // Read and extended in one round trip.
        let mut cmd = eval(GET_SLIDING);
        cmd.arg(1).arg(&*key).arg(ms(idle));
        self.read(key, cmd, false)
    }

    fn touch(&self, key: Arc<str>, idle: Duration) -> StoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let mut cmd = eval(TOUCH);
            cmd.arg(1).arg(&*key).arg(ms(idle));
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
            if !entry.tags().is_empty() && !this.is_cluster() {
                // One round trip on one server: the tag indexes, their epochs and the fill.
                return this
                    .put_tagged(&key, &entry, &value, set_millis, millis)
                    .await;
            }
            if this
                .add_to_tags(&key, &entry, entry.stored_at(), millis)
                .await?
            {
                tracing::debug!(%key, "a tag of this fill was invalidated after its request began: not stored");
                return Ok(());
            }
            let mut cmd = eval(set_unless_newer());
            cmd.arg(1).arg(&*key).arg(&value[..]).arg(set_millis);
            let reply = this.query(&cmd).await?;
            this.filled(&key, reply)
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
        Box::pin(async move { this.invalidate_tagged(&ns, &tag, at, keep).await })
    }

    /// On one server, one script (tombstones, the family's epoch, its variants' tombstones
    /// and the message: see [`RedisStore::invalidate_and_publish`]); a cluster makes the
    /// three calls, its keys being in several slots.
    fn invalidate_and_publish(
        &self,
        key: Arc<str>,
        ns: Arc<str>,
        family: Arc<str>,
        at: SystemTime,
        keep: Duration,
        message: Bytes,
    ) -> Option<StoreFuture<u64>> {
        if self.is_cluster() {
            return None;
        }
        let this = self.clone();
        Some(Box::pin(async move {
            this.invalidate_family(&key, &ns, &family, at, keep, message)
                .await
        }))
    }

    /// `SCAN` with `MATCH prefix*` (the prefix's glob characters escaped), a step per page;
    /// on a cluster, on every master.
    fn keys(&self, prefix: Arc<str>, limit: usize) -> StoreFuture<Vec<String>> {
        let this = self.clone();
        Box::pin(async move { this.scan_prefix(&prefix, limit).await })
    }

    /// On a cluster, the master that serves `key`'s slot (`host:port`), as last read with
    /// `CLUSTER SLOTS`; `None` on one server, and before the first reading.
    fn part_of(&self, key: &str) -> Option<Arc<str>> {
        match &self.backend {
            Backend::Cluster(cluster) => cluster.master_of(key),
            _ => None,
        }
    }

    /// On a cluster, reads the slot map again, in the background (asking that master last);
    /// if the slots moved (a replica took over a paused master, which sends no `MOVED`), the
    /// cluster connections are opened afresh to follow them.
    fn part_failing(&self, part: &str) {
        if let Backend::Cluster(cluster) = &self.backend {
            tracing::debug!(
                master = part,
                "redis cluster: a master keeps failing, reading the slots afresh"
            );
            cluster.clone().read_owners(Some(part));
        }
    }

    /// `TIME`: Redis's clock (on a cluster, any master's: their clocks must agree, as NTP
    /// keeps them).
    fn time(&self) -> Option<StoreFuture<SystemTime>> {
        let this = self.clone();
        Some(Box::pin(async move {
            let reply = this.run(&redis::cmd("TIME")).await?;
            parse_time(&reply).ok_or_else(|| {
                StoreError::new(format!("redis: unexpected reply to TIME: {reply:?}"))
            })
        }))
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
    /// [`RedisStore::check`].
    fn check(&self, timeout: Duration) -> StoreFuture<String> {
        let this = self.clone();
        Box::pin(async move { RedisStore::check(&this, timeout).await })
    }

    /// `PING`, as every call goes (a dropped connection is discarded). On a cluster, every
    /// master is pinged and one answer is enough: each master has a breaker of its own
    /// ([`ping_part`](HealthCheck::ping_part) pings one).
    fn ping_part(&self, part: &str) -> StoreFuture<()> {
        self.ping_node(part)
    }

    fn ping(&self) -> StoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let cmd = redis::cmd("PING");
            let reply = match &this.backend {
                Backend::Single { .. } | Backend::Given(_) => this.run(&cmd).await?,
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

impl RedisStore {
    /// Where a walk over every key goes: the server (`None`), or each master of a cluster.
    pub(super) async fn masters(&self) -> Result<Vec<Option<Arc<str>>>, StoreError> {
        match &self.backend {
            Backend::Cluster(cluster) => {
                Ok(cluster.masters().await?.into_iter().map(Some).collect())
            }
            _ => Ok(vec![None]),
        }
    }

    /// Runs `cmd` on the cluster node at `addr` (on one server, on the server).
    pub(super) async fn run_on(&self, addr: &str, cmd: &redis::Cmd) -> Result<Value, StoreError> {
        match &self.backend {
            Backend::Cluster(cluster) => cluster.call_on(addr, cmd).await,
            _ => self.run(cmd).await,
        }
    }

    /// `PING` to the cluster node at `part` (`host:port`), apart from the cluster connection;
    /// on one server, [`ping`](HealthCheck::ping).
    fn ping_node(&self, part: &str) -> StoreFuture<()> {
        let Backend::Cluster(cluster) = &self.backend else {
            return HealthCheck::ping(self);
        };
        let (cluster, part) = (cluster.clone(), part.to_owned());
        Box::pin(async move { cluster.ping_node(&part).await })
    }
}

/// `TIME`'s reply, seconds and microseconds as two strings.
fn parse_time(reply: &Value) -> Option<SystemTime> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let number = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse::<u64>().ok(),
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    };
    match parts.as_slice() {
        [secs, micros] => {
            let (secs, micros) = (number(secs)?, number(micros)?);
            std::time::UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))?
                .checked_add(Duration::from_micros(micros.min(999_999)))
        }
        _ => None,
    }
}
