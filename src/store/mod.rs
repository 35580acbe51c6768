//! Where entries live: the [`Store`] trait, [`MemoryStore`] (the default), [`TieredStore`] and
//! [`Guarded`]; `RedisStore` with the `redis` feature.
//!
//! A store keeps [`Entry`] values under string keys for a time to live, and the tombstones
//! invalidations leave. What the instances sharing a store coordinate through is optional, each
//! a small trait: a [`Bus`], [`Leases`], followed [`Writes`], a [`HealthCheck`].
//!
//! Every method returns a boxed future. A store error is never shown to a client: the cache
//! counts it and answers from the service instead.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, SystemTime};
//! use tower_stash::{Entry, MemoryStore, Store};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = MemoryStore::new(16 * 1024 * 1024);
//! let entry = Entry::new("ns:v1:k", http::StatusCode::OK, Default::default(), "hi".into())
//!     .with_times(SystemTime::now(), Duration::from_secs(60));
//! store.put("ns:v1:k".into(), Arc::new(entry), Duration::from_secs(60)).await.unwrap();
//! let hit = store.get("ns:v1:k".into()).await.unwrap().unwrap();
//! assert_eq!(hit.body(), "hi");
//! # }
//! ```

pub(crate) mod bus;
mod health;
mod lease;
mod memory;
mod writes;

pub use bus::{Bus, BusEvent};
pub use health::{BreakerState, Health, HealthCheck, HealthReport};
pub use lease::Leases;
pub use memory::MemoryStore;
pub use writes::{WriteTicket, Writes};

use crate::Entry;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The future a [`Store`] method returns.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// A place to keep cached entries, and the tombstones invalidations leave in their place.
///
/// A store implements [`get`](Self::get), [`put`](Self::put) and [`delete`](Self::delete);
/// every other method has a default that suits a store no other instance shares. A store
/// shared by several instances adds what they coordinate through: a [`bus`](Self::bus),
/// [`leases`](Self::leases), followed [`writes`](Self::writes); and a
/// [`health_check`](Self::health_check) for a store that can fail. Each is `None` by default.
///
/// The rules: every stored key expires; an entry never replaces one stored later (a fill whose
/// request began earlier never wins); and a tombstone refuses, while it lasts, every fill whose
/// request began before it. The futures returned own what they need (`'static`), and calls
/// may come from many tasks at once.
///
/// # Example
///
/// A store that counts its lookups, over a memory store:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower_stash::{Entry, MemoryStore, Stash, Store, StoreFuture};
///
/// #[derive(Default)]
/// struct Counted {
///     memory: MemoryStore,
///     lookups: AtomicU64,
/// }
///
/// impl Store for Counted {
///     fn get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
///         self.lookups.fetch_add(1, Ordering::Relaxed);
///         self.memory.get(key)
///     }
///     fn put(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) -> StoreFuture<()> {
///         self.memory.put(key, entry, ttl)
///     }
///     fn delete(&self, key: Arc<str>) -> StoreFuture<()> {
///         self.memory.delete(key)
///     }
/// }
///
/// let stash = Stash::builder().store(Counted::default()).build().unwrap();
/// assert!(stash.store().bus().is_none());
/// ```
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
    /// the same round trip where the store can (Redis: `GET` and `PEXPIRE` in one script). The
    /// default is [`get`](Self::get): a store that keeps entries until their absolute cap needs
    /// no more, as the cache checks the idle time itself.
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
    /// [`Bus::live`]); reading as [`get_sliding`](Self::get_sliding) when `idle` is given. The
    /// default is [`get`](Self::get) or `get_sliding`.
    fn get_shared(&self, key: Arc<str>, idle: Option<Duration>) -> StoreFuture<Option<Arc<Entry>>> {
        match idle {
            Some(idle) => self.get_sliding(key, idle),
            None => self.get(key),
        }
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

    /// A key's invalidation in fewer round trips, where the store can: invalidates `key` as
    /// [`invalidate`](Self::invalidate) does and the entries of namespace `ns` tagged `family`
    /// (the key's variants) as [`invalidate_tag`](Self::invalidate_tag) does, then publishes
    /// `message` on the store's [bus](Self::bus) (none without one); the future says how many
    /// subscribers got it. Nothing is published unless all of it was done. `None`, the
    /// default, has the caller make the three calls: Redis on one server does it all in one
    /// script.
    fn invalidate_and_publish(
        &self,
        key: Arc<str>,
        ns: Arc<str>,
        family: Arc<str>,
        at: SystemTime,
        keep: Duration,
        message: bytes::Bytes,
    ) -> Option<StoreFuture<u64>> {
        let _ = (key, ns, family, at, keep, message);
        None
    }

    /// Whether a fill of `key` whose request began at `began` is refused, as far as the store
    /// knows at once, without waiting (a tombstone in memory: an invalidation made here or
    /// heard on the bus since the request began): then `Cache-Status` does not say `stored`.
    /// The default says no.
    fn refuses(&self, key: &str, began: SystemTime) -> bool {
        let _ = (key, began);
        false
    }

    /// The store's own clock, for a store that instances share: the [`Stash`](crate::Stash)
    /// orders fills, invalidations and write-throughs by it rather than by instance clocks,
    /// which may disagree (see [`Clock::follows_store`](crate::Clock::follows_store)). The
    /// default is `None` (a store no other instance shares, or one without a clock): then the
    /// instance's clock dates them.
    fn time(&self) -> Option<StoreFuture<SystemTime>> {
        None
    }

    /// Up to `limit` keys of live entries this store holds that start with `prefix`, for a
    /// purge by prefix ([`Stash::invalidate_prefix`](crate::Stash::invalidate_prefix)). The
    /// default lists none.
    fn keys(&self, prefix: Arc<str>, limit: usize) -> StoreFuture<Vec<String>> {
        let _ = (prefix, limit);
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// The part of the store that holds `key`, for a store whose parts fail apart (the master
    /// of a Redis Cluster that serves the key's slot, by address): [`Guarded`] gives each part
    /// a breaker of its own, so that one failing part costs only its own keys. The default is
    /// `None`: one part.
    fn part_of(&self, key: &str) -> Option<Arc<str>> {
        let _ = key;
        None
    }

    /// Told by [`Guarded`] that `part`'s calls keep failing (its breaker opened): a store of
    /// parts looks at them again (a cluster reads its slot map afresh, so that a replica that
    /// took over a paused master's slots is found). The default does nothing.
    fn part_failing(&self, part: &str) {
        let _ = part;
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

    /// Counts of what the store holds, for [`Stats`](crate::Stats): called when stats are read
    /// and now and then after a store, never on the hit path. The default knows nothing.
    fn usage(&self) -> StoreUsage {
        StoreUsage::default()
    }

    /// The bus other instances sharing this store hear invalidations on. The default is
    /// `None`: no other instance shares the store.
    fn bus(&self) -> Option<&dyn Bus> {
        None
    }

    /// Leases, so that one instance at a time calls the service for a key. A store that has
    /// them is one other instances share: hits served from memory are then reported to it
    /// ([`touch`](Self::touch)). The default is `None`: every lease is granted at once.
    fn leases(&self) -> Option<&dyn Leases> {
        None
    }

    /// Follows writes in progress, so that a write-through may store its response. The
    /// default is `None`: every write-through ends as an invalidation.
    fn writes(&self) -> Option<&dyn Writes> {
        None
    }

    /// Pings the store and reports its health. The default is `None`: a store with nothing to
    /// ping (memory), always [`Health::Ok`].
    fn health_check(&self) -> Option<&dyn HealthCheck> {
        None
    }
}

/// What the layers ask of any store, through its extensions.
impl dyn Store {
    /// Whether other instances share the store (it has [leases](Store::leases)).
    pub(crate) fn is_shared(&self) -> bool {
        self.leases().is_some()
    }

    /// Whether invalidations from other instances reach this one now: see [`Bus::live`];
    /// `true` without a bus.
    pub(crate) fn bus_live(&self) -> bool {
        self.bus().is_none_or(|bus| bus.live())
    }

    /// Takes the lease on `key` (see [`Leases::try_lease`]); granted at once without leases.
    pub(crate) fn try_lease(
        &self,
        key: Arc<str>,
        token: Arc<str>,
        ttl: Duration,
    ) -> StoreFuture<bool> {
        match self.leases() {
            Some(leases) => leases.try_lease(key, token, ttl),
            None => Box::pin(std::future::ready(Ok(true))),
        }
    }

    /// Releases the lease on `key` (see [`Leases::release_lease`]).
    pub(crate) fn release_lease(&self, key: Arc<str>, token: Arc<str>) -> StoreFuture<()> {
        match self.leases() {
            Some(leases) => leases.release_lease(key, token),
            None => Box::pin(std::future::ready(Ok(()))),
        }
    }

    /// The store's health: [`HealthCheck::health`], or [`Health::Ok`] without a check.
    pub(crate) fn health(&self) -> Health {
        self.health_check().map_or(Health::Ok, |h| h.health())
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
    kind: ErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    Other,
    /// No connection could be made: refused, timed out, an unknown host.
    Unreachable,
    /// A circuit breaker refused the call without touching the store.
    CircuitOpen,
}

impl StoreError {
    /// A store error with a message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string().into(),
            kind: ErrorKind::Other,
        }
    }

    /// The store could not be reached at all (a connection refused or timed out, an unknown
    /// host), as opposed to a store that answered with an error (a wrong password, a refused
    /// command).
    pub fn unreachable(message: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Unreachable,
            ..Self::new(message)
        }
    }

    /// A call a circuit breaker refused at once, during an outage already reported.
    pub(crate) fn circuit_open() -> Self {
        Self {
            kind: ErrorKind::CircuitOpen,
            ..Self::new("circuit open: not calling the store")
        }
    }

    /// Whether the store could not be reached at all: see [`unreachable`](Self::unreachable).
    pub fn is_unreachable(&self) -> bool {
        self.kind == ErrorKind::Unreachable
    }

    /// Whether a circuit breaker ([`Guarded`]) refused the call without calling the store:
    /// the store failed before, and the breaker said so once.
    pub fn is_circuit_open(&self) -> bool {
        self.kind == ErrorKind::CircuitOpen
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cache store error: {}", self.message)
    }
}

impl std::error::Error for StoreError {}

mod guard;
#[cfg(feature = "redis")]
mod redis;
mod tiered;

#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};
pub use guard::Guarded;
pub use tiered::TieredStore;
