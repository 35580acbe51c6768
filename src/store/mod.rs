//! Where entries live: the [`Store`] trait and [`MemoryStore`], the in-memory default.
//!
//! A store keeps [`Entry`] values under string keys for a time to live. Stores that keep bytes
//! (Redis) use [`Entry::encode`] and [`Entry::decode`]; the memory store keeps the decoded entry,
//! so a hit costs no decoding at all.
//!
//! Every method returns a boxed future. A store error is never shown to a client: the cache
//! counts it and answers from the service instead.
//!
//! # Example
//!
//! ```
//! use std::sync::{Arc, Weak};
//! use std::time::{Duration, SystemTime};
//! use tower_stash::{Entry, MemoryStore, Store};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = MemoryStore::new(16 * 1024 * 1024);
//! let entry = Entry::new("ns:v1:k", http::StatusCode::OK, Default::default(), "hi".into())
//!     .with_times(std::time::SystemTime::now(), Duration::from_secs(60));
//! store.put("ns:v1:k".into(), Arc::new(entry), Duration::from_secs(60)).await.unwrap();
//! let hit = store.get("ns:v1:k".into()).await.unwrap().unwrap();
//! assert_eq!(hit.body(), "hi");
//! # }
//! ```

pub(crate) mod bus;
mod memory;

pub use bus::BusEvent;
pub use memory::MemoryStore;

use crate::Entry;
use bytes::Bytes;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

/// The future a [`Store`] method returns.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// A place to keep cached entries.
///
/// Implementations must be cheap to call concurrently; the futures they return own what they
/// need (`'static`), so a request can hold one while it waits.
pub trait Store: Send + Sync + 'static {
    /// Looks up `key`. A missing, expired or unreadable entry is `Ok(None)`.
    fn get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>>;

    /// Looks up `key` at once, when the store can answer without waiting (memory): `Some` with
    /// the answer, or `None` to ask [`get`](Self::get). The cache tries this first, so that a
    /// memory hit costs no future and no allocation. The default always says `None`.
    fn get_local(&self, key: &str) -> Option<Option<Arc<Entry>>> {
        let _ = key;
        None
    }

    /// Looks up `key` and, when found, keeps it at least `idle` longer (sliding expiry), in
    /// the same round trip where the store can (Redis: `GET` and `PEXPIRE` in one script). The default is
    /// [`get`](Self::get): a store that keeps entries until their absolute cap needs no more,
    /// as the cache checks the idle time itself.
    fn get_sliding(&self, key: Arc<str>, idle: Duration) -> StoreFuture<Option<Arc<Entry>>> {
        let _ = idle;
        self.get(key)
    }

    /// Keeps `key` at least `idle` longer, if present (sliding expiry after a hit the store
    /// did not see, such as one from a memory tier in front). The default does nothing.
    fn touch(&self, key: Arc<str>, idle: Duration) -> StoreFuture<()> {
        let _ = (key, idle);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Looks up `key` in the shared store alone, past any memory tier in front of it (for
    /// entries that must not be served from memory while invalidations may be missed: see
    /// [`bus_live`](Self::bus_live)); reading as [`get_sliding`](Self::get_sliding) when
    /// `idle` is given. The default is [`get`](Self::get) or `get_sliding`.
    fn get_shared(&self, key: Arc<str>, idle: Option<Duration>) -> StoreFuture<Option<Arc<Entry>>> {
        match idle {
            Some(idle) => self.get_sliding(key, idle),
            None => self.get(key),
        }
    }

    /// Whether invalidations made by other instances reach this one now (its bus
    /// subscription is up). While it is down, a memory tier may hold what another instance
    /// invalidated: the cache serves session-scoped entries from the shared store only. The
    /// default is `true`: a store no other instance shares misses nothing.
    fn bus_live(&self) -> bool {
        true
    }

    /// Stores `entry` under `key` for `ttl`. Every stored key must expire. An entry with
    /// [sliding expiry](Entry::sliding) may be kept for less, its idle time, if the store
    /// extends it on every [`get_sliding`](Self::get_sliding) and [`touch`](Self::touch).
    fn put(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) -> StoreFuture<()>;

    /// Stores `entry` under `key` for `ttl` in this instance's own tier only (memory), for
    /// what only [`get_local`](Self::get_local) reads (partial responses); `None` when the
    /// store has no such tier. The default says `None`.
    fn put_local(
        &self,
        key: Arc<str>,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Option<StoreFuture<()>> {
        let _ = (key, entry, ttl);
        None
    }

    /// Removes `key`, if present.
    fn delete(&self, key: Arc<str>) -> StoreFuture<()>;

    /// Invalidates `key`: removes its entry and leaves a [tombstone](Entry::tombstone) dated
    /// `at` for `keep`, so that a fill whose request began before `at` is refused. The default
    /// deletes the key (no tombstone).
    fn invalidate(&self, key: Arc<str>, at: SystemTime, keep: Duration) -> StoreFuture<()> {
        let _ = (at, keep);
        self.delete(key)
    }

    /// Invalidates every entry of the namespace `ns` tagged `tag`, as
    /// [`invalidate`](Self::invalidate) does one key. The default does nothing: a store that
    /// keeps tags must implement it.
    fn invalidate_tag(
        &self,
        ns: Arc<str>,
        tag: Arc<str>,
        at: SystemTime,
        keep: Duration,
    ) -> StoreFuture<()> {
        let _ = (ns, tag, at, keep);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Registers the start of a write to `key` (a write-through): the ticket says whether
    /// another write to `key` was in progress then. Tracking lasts at most `keep`. The
    /// default tracks nothing: every write-through ends as an invalidation.
    fn begin_write(&self, key: Arc<str>, keep: Duration) -> StoreFuture<WriteTicket> {
        let _ = (key, keep);
        Box::pin(std::future::ready(Ok(WriteTicket::untracked())))
    }

    /// Ends the write `ticket` began, and stores `entry` for its TTL under `key` only if the
    /// write overlapped no other write and no [invalidation](Self::invalidate) of `key`:
    /// `Ok(true)` when stored. On `Ok(false)` the caller invalidates `key`, since the order
    /// in which overlapping writes reached the data is unknown. The default stores nothing.
    fn end_write(
        &self,
        key: Arc<str>,
        ticket: WriteTicket,
        entry: Option<(Arc<Entry>, Duration)>,
    ) -> StoreFuture<bool> {
        let _ = (key, ticket, entry);
        Box::pin(std::future::ready(Ok(false)))
    }

    /// Sends `message` to every instance subscribed to this store (Redis pub/sub), and says
    /// how many subscribers got it. The default sends nothing: no one else shares the store.
    fn publish(&self, message: Bytes) -> StoreFuture<u64> {
        let _ = message;
        Box::pin(std::future::ready(Ok(0)))
    }

    /// Records that this instance applied the message `id` (see
    /// [`acknowledgements`](Self::acknowledgements)). The default records nothing.
    fn acknowledge(&self, id: Arc<str>) -> StoreFuture<()> {
        let _ = id;
        Box::pin(std::future::ready(Ok(())))
    }

    /// How many instances have applied the message `id` so far.
    fn acknowledgements(&self, id: Arc<str>) -> StoreFuture<u64> {
        let _ = id;
        Box::pin(std::future::ready(Ok(0)))
    }

    /// Calls `sink` with each message [published](Self::publish) by any instance, and with
    /// [`BusEvent::Lost`] whenever messages may have been missed (the subscription dropped and
    /// is back, or was found silent), until the sink is dropped. Returns whether the store has a bus at all
    /// (the default has none).
    fn subscribe(&self, sink: Weak<dyn Fn(BusEvent) + Send + Sync>) -> bool {
        let _ = sink;
        false
    }

    /// Whether other instances share this store (Redis), so that leases coordinate them.
    /// The default is `false`: [`try_lease`](Self::try_lease) always grants.
    fn is_shared(&self) -> bool {
        false
    }

    /// Takes the lease on `key` for `ttl` if nobody holds it: the right to call the service
    /// for `key`, one instance at a time. `token` identifies the holder; `Ok(false)` means
    /// another holder has it. The default grants every lease (a store no one else shares).
    fn try_lease(&self, key: Arc<str>, token: Arc<str>, ttl: Duration) -> StoreFuture<bool> {
        let _ = (key, token, ttl);
        Box::pin(std::future::ready(Ok(true)))
    }

    /// Releases the lease on `key` if `token` still holds it (a lease that expired and was
    /// taken by another holder is left alone).
    fn release_lease(&self, key: Arc<str>, token: Arc<str>) -> StoreFuture<()> {
        let _ = (key, token);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Whether the store is being used, or skipped because it failed (an open circuit
    /// breaker). The default is always [`Health::Ok`].
    fn health(&self) -> Health {
        Health::Ok
    }

    /// A count that moves whenever this instance applies an invalidation (its own, or one
    /// heard on the bus) or flushes: single flight never lets a request join a call that
    /// began before the count last moved. The default is 0 (the [`Stash`](crate::Stash)
    /// counts its own invalidations too).
    fn invalidations(&self) -> u64 {
        0
    }

    /// Drops what this instance keeps of the shared store's entries (a memory tier in front
    /// of it), for when invalidations may have been lost. The default does nothing.
    fn clear_local(&self) {}

    /// Checks that the store answers (Redis: `PING`), for a background probe while no call
    /// is made. The default answers `Ok` at once: a store with nothing to ping (memory).
    fn ping(&self) -> StoreFuture<()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The circuit breaker's state and the time since the last successful call, for a store
    /// that has a breaker ([`Guarded`](crate::Guarded)); read with [`Stash::stats`](crate::Stash::stats).
    /// The default is `None`: no breaker.
    fn health_report(&self) -> Option<HealthReport> {
        None
    }

    /// Counts of what the store holds, for [`Stats`](crate::Stats): called when stats are read
    /// and now and then after a store, never on the hit path. The default knows nothing.
    fn usage(&self) -> StoreUsage {
        StoreUsage::default()
    }
}

/// A write in progress on one key: see [`Store::begin_write`] and [`Store::end_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteTicket {
    id: u64,
    alone: bool,
}

impl WriteTicket {
    /// The ticket of write `id` (never 0), `alone` when no other write to its key was in
    /// progress as it began.
    pub fn new(id: u64, alone: bool) -> Self {
        Self {
            id: id.max(1),
            alone,
        }
    }

    /// A write the store does not follow (it failed, or cannot): it ends as an invalidation.
    pub fn untracked() -> Self {
        Self {
            id: 0,
            alone: false,
        }
    }

    /// The write's id; 0 for an untracked write.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether no other write to the key was in progress as this one began (always false
    /// for an untracked write).
    pub fn alone(&self) -> bool {
        self.alone && self.id != 0
    }
}

/// Whether a store is being used: see [`Store::health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Health {
    /// Calls go to the store.
    #[default]
    Ok,
    /// The store failed and is skipped for now (a circuit breaker is open or probing): calls
    /// fail at once, requests are served from memory or by the service, and nobody waits.
    Degraded,
}

impl Health {
    /// `"ok"` or `"degraded"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a store's circuit breaker: see [`Store::health_report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go to the store.
    Closed,
    /// Calls fail at once, without touching the store, until a probe.
    Open,
    /// One probe (a ping, or a call) is finding out whether the store answers again; the
    /// other calls fail at once.
    HalfOpen,
}

impl BreakerState {
    /// `"closed"`, `"open"` or `"half-open"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }

    /// [`Health::Ok`] while closed, [`Health::Degraded`] otherwise.
    pub fn health(self) -> Health {
        match self {
            Self::Closed => Health::Ok,
            Self::Open | Self::HalfOpen => Health::Degraded,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a store with a circuit breaker knows of its health: see [`Store::health_report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// The breaker's state.
    pub breaker: BreakerState,
    /// How long ago a call (or a ping) last succeeded; `None` before the first success.
    pub since_last_success: Option<Duration>,
}

impl HealthReport {
    /// A report of `breaker`, whose store last answered `since_last_success` ago.
    pub fn new(breaker: BreakerState, since_last_success: Option<Duration>) -> Self {
        Self {
            breaker,
            since_last_success,
        }
    }

    /// The health the breaker's state means.
    pub fn health(&self) -> Health {
        self.breaker.health()
    }
}

/// What a store holds, as far as it knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreUsage {
    /// Entries held (approximate for the memory store).
    pub entries: u64,
    /// Bytes held, weighed by [`Entry::weight`].
    pub bytes: u64,
    /// Entries removed to stay within the size bound.
    pub evictions: u64,
}

/// A store failed: Redis unreachable, a timeout, a full server.
#[derive(Debug, Clone)]
pub struct StoreError {
    message: Arc<str>,
}

impl StoreError {
    /// A store error with a message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string().into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cache store error: {}", self.message)
    }
}

impl std::error::Error for StoreError {}

#[cfg(feature = "redis")]
mod guard;
#[cfg(feature = "redis")]
mod oom;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod tiered;

#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};
#[cfg(feature = "redis")]
pub use guard::Guarded;
#[cfg(feature = "redis")]
pub use tiered::TieredStore;
