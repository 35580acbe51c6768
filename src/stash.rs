//! The shared handle: the store, the statistics and the settings every layer uses.
//!
//! A [`Stash`] is cheap to clone (one `Arc`); give a clone to each layer. With no store set it
//! keeps entries in a [`MemoryStore`] of 64 MiB, so a cache works with nothing else running.
//!
//! # Example
//!
//! ```
//! use tower_stash::{MemoryStore, Stash};
//!
//! let stash = Stash::builder()
//!     .store(MemoryStore::new(128 * 1024 * 1024))
//!     .namespace("shop")
//!     .cache_status_detail(true)
//!     .build()
//!     .unwrap();
//! assert_eq!(stash.stats().hits, 0);
//!
//! // Mistakes name their field.
//! let err = Stash::builder().namespace("a b").build().unwrap_err();
//! assert!(err.to_string().contains("stash.namespace"));
//! ```

use crate::key;
use crate::policy::ConfigError;
use crate::store::bus::{bus_message, new_message_id};
use crate::store::{MemoryStore, Store, WriteTicket};
use crate::StoreError;
use http::HeaderValue;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A source of the current time. Tests use [`ManualClock`] to move time without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's clock, the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(SystemTime::now())
    }
}

impl ManualClock {
    /// A clock stopped at `now`.
    pub fn new(now: SystemTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(now)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A snapshot of a stash's counters, from [`Stash::stats`].
///
/// The counters are also reported through the [`metrics`](https://docs.rs/metrics) crate as
/// `tower_stash_hits_total`, `tower_stash_misses_total`, `tower_stash_bypasses_total`,
/// `tower_stash_stores_total`, `tower_stash_store_errors_total`, `tower_stash_stale_total`,
/// `tower_stash_collapsed_total`, `tower_stash_leases_total`, `tower_stash_refreshes_total`,
/// and the gauges `tower_stash_entries`, `tower_stash_bytes` and `tower_stash_evictions`
/// (refreshed whenever the stats are read, and every 256 stores).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Requests answered from the cache (304s included).
    pub hits: u64,
    /// Requests on a cached route that found no fresh entry and went to the service.
    pub misses: u64,
    /// Requests answered with a stale entry (stale-while-revalidate, stale-if-error).
    pub stale: u64,
    /// Requests that waited for another request for the same key (in this instance or
    /// another) instead of calling the service: see [`SingleFlightLayer`](crate::SingleFlightLayer).
    pub collapsed: u64,
    /// Leases taken in the shared store: one instance's right to call the service for a key.
    pub leases: u64,
    /// Background refreshes started (stale-while-revalidate and early refresh).
    pub refreshes: u64,
    /// Requests on a cached route that skipped the cache (credentials, for example).
    pub bypasses: u64,
    /// Responses stored.
    pub stores: u64,
    /// Store calls that failed; each was served from the service instead.
    pub store_errors: u64,
    /// Entries evicted to stay within the memory bound.
    pub evictions: u64,
    /// Entries held by the store (approximate).
    pub entries: u64,
    /// Bytes held by the store (approximate).
    pub bytes: u64,
    /// Whether the store is in use or skipped after failures.
    pub health: crate::Health,
    /// The store's circuit breaker; `None` for a store without one (memory).
    pub breaker: Option<crate::BreakerState>,
    /// How long ago the store last answered a call or a ping; `None` for a store without a
    /// breaker, or before its first answer.
    pub since_last_success: Option<Duration>,
}

impl Stats {
    /// Hits over hits and misses; zero before any request.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    collapsed: AtomicU64,
    leases: AtomicU64,
    refreshes: AtomicU64,
    bypasses: AtomicU64,
    stores: AtomicU64,
    store_errors: AtomicU64,
}

macro_rules! count {
    ($($fn:ident => $field:ident, $metric:literal;)*) => {
        impl Counters {
            $(
                pub(crate) fn $fn(&self) {
                    self.$field.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!($metric).increment(1);
                }
            )*
        }
    };
}

count! {
    hit => hits, "tower_stash_hits_total";
    miss => misses, "tower_stash_misses_total";
    bypass => bypasses, "tower_stash_bypasses_total";
    store_error => store_errors, "tower_stash_store_errors_total";
    stale => stale, "tower_stash_stale_total";
    collapsed => collapsed, "tower_stash_collapsed_total";
    lease => leases, "tower_stash_leases_total";
    refresh => refreshes, "tower_stash_refreshes_total";
}

/// The `Cache-Status` values that do not change, made once.
impl StatusHeaders {
    /// No key, detail or ttl to add: the ready-made values serve as they are.
    pub(crate) fn plain(&self) -> bool {
        !self.show_key && !self.show_detail
    }
}

#[derive(Debug)]
pub(crate) struct StatusHeaders {
    pub(crate) name: String,
    pub(crate) show_key: bool,
    pub(crate) show_detail: bool,
    pub(crate) hit: HeaderValue,
    pub(crate) stored: HeaderValue,
    pub(crate) miss: HeaderValue,
    pub(crate) bypass: HeaderValue,
    pub(crate) stale: HeaderValue,
    pub(crate) collapsed_hit: HeaderValue,
    pub(crate) collapsed_miss: HeaderValue,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) namespace: String,
    pub(crate) prefix: String,
    pub(crate) max_key_len: usize,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) counters: Counters,
    pub(crate) status: StatusHeaders,
    /// How long a lease on a key lasts unless released.
    pub(crate) lease_ttl: Duration,
    /// Invalidations are dated this much later than now (clock skew between instances).
    pub(crate) invalidation_margin: Duration,
    /// How long a tombstone refuses late fills.
    pub(crate) tombstone_ttl: Duration,
    /// Invalidations that failed (the store was unreachable), retried until they succeed.
    pub(crate) pending: Mutex<Pending>,
    /// Invalidations and write-throughs begun here (with the store's count of those it
    /// applied, the single-flight epoch).
    pub(crate) invalidations: AtomicU64,
    /// Whether a publish was refused for lack of permission (said once).
    pub(crate) publish_refused: std::sync::atomic::AtomicBool,
    /// Whether a task is retrying the pending invalidations.
    pub(crate) retrying: std::sync::atomic::AtomicBool,
    /// When refreshing each key last failed.
    pub(crate) refresh_failed: Mutex<std::collections::HashMap<Arc<str>, std::time::Instant>>,
    /// The keys being refreshed in the background by this process.
    pub(crate) refreshing: Mutex<std::collections::HashSet<Arc<str>>>,
    /// A seeded random source (tests); the thread's own when `None`.
    pub(crate) rng: Option<Mutex<fastrand::Rng>>,
}

/// The shared cache handle: store, statistics, settings. Cheap to clone.
#[derive(Clone)]
pub struct Stash {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Stash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stash")
            .field("namespace", &self.inner.namespace)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for Stash {
    fn default() -> Self {
        Self::new()
    }
}

impl Stash {
    /// A stash on a 64 MiB [`MemoryStore`], namespace `stash`.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default configuration is valid")
    }

    /// A stash configured from the environment: tiered on Redis (a 64 MiB memory tier in front
    /// of a guarded [`RedisStore`](crate::RedisStore)) when `REDIS_URL` is set, in memory
    /// otherwise. `REDIS_URL` set in a build without the `redis` feature is an error rather
    /// than a cache that silently stays local to each instance.
    pub fn from_env() -> Result<Self, ConfigError> {
        let builder = Self::builder();
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => {
                #[cfg(feature = "redis")]
                {
                    builder.redis(url).build()
                }
                #[cfg(not(feature = "redis"))]
                {
                    let _ = (builder, url);
                    Err(ConfigError::new(vec![
                        "REDIS_URL: set, but tower-stash was built without its `redis` feature"
                            .into(),
                    ]))
                }
            }
            _ => builder.build(),
        }
    }

    /// A builder to choose the store and settings.
    pub fn builder() -> StashBuilder {
        StashBuilder::default()
    }

    /// The store entries live in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Whether the store is in use ([`Health::Ok`](crate::Health::Ok)) or skipped after
    /// failures ([`Health::Degraded`](crate::Health::Degraded): a Redis outage). Degraded means
    /// slower, never broken: requests are served from memory or by the service.
    pub fn health(&self) -> crate::Health {
        self.inner.store.health()
    }

    /// The key namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The counters so far, with the store's usage.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let usage = self.usage();
        let report = self
            .inner
            .store
            .health_check()
            .and_then(|h| h.health_report());
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            stale: get(&c.stale),
            collapsed: get(&c.collapsed),
            leases: get(&c.leases),
            refreshes: get(&c.refreshes),
            bypasses: get(&c.bypasses),
            stores: get(&c.stores),
            store_errors: get(&c.store_errors),
            evictions: usage.evictions,
            entries: usage.entries,
            bytes: usage.bytes,
            // One reading of the breaker, so that the fields agree.
            health: report.map_or_else(|| self.inner.store.health(), |r| r.health()),
            breaker: report.map(|r| r.breaker),
            since_last_success: report.and_then(|r| r.since_last_success),
        }
    }

    /// The hashed key `full` (a full key, namespace included) is stored under when it is too
    /// long; `None` when it is stored as it is.
    pub(crate) fn hashed_key(&self, full: &str) -> Option<String> {
        key::storage_key(full, self.inner.prefix.len(), self.inner.max_key_len)
    }

    /// The key `full` is stored under.
    pub(crate) fn stored_key(&self, full: &str) -> Arc<str> {
        self.hashed_key(full)
            .map_or_else(|| full.into(), Into::into)
    }

    /// A count that moves with every invalidation this instance begins or applies (heard
    /// on the bus too): a call that began at another count may predate an invalidation.
    pub(crate) fn epoch(&self) -> u64 {
        self.inner.invalidations.load(Ordering::Acquire) + self.inner.store.invalidations()
    }

    pub(crate) fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// A random number in `[0, 1)`: from the seeded source if the stash has one.
    pub(crate) fn random(&self) -> f64 {
        match &self.inner.rng {
            Some(rng) => rng.lock().unwrap_or_else(|e| e.into_inner()).f64(),
            None => fastrand::f64(),
        }
    }

    /// Invalidates the entry under `key` and every variant of it (the same key with other
    /// keyed query parameters or headers), in every instance: `key` is what the route's key
    /// template renders, without the namespace (`user:42`), or `GET /path` for a route with
    /// the default key. Characters outside `A-Z a-z 0-9 - . _ ~` in parameter values are
    /// percent-escaped in keys, as the template does.
    ///
    /// Every instance drops its memory copy (through the store's bus), and a fill whose
    /// request began before the invalidation can never put the old value back. When the store
    /// is unreachable, the error is returned and the invalidation is retried in the background
    /// until it succeeds; this instance's memory copy is dropped at once.
    pub async fn invalidate_key(&self, key: &str) -> Result<(), StoreError> {
        self.invalidate(Invalidation::Key(key.into())).await
    }

    /// Invalidates every entry tagged `tag` (by its policy, or by its handler through
    /// [`CacheHint`](crate::CacheHint)), in every instance; see
    /// [`invalidate_key`](Self::invalidate_key).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), StoreError> {
        self.invalidate(Invalidation::Tag(tag.into())).await
    }

    /// Begins a write-through of `key` (a base key, without the namespace): the store
    /// follows the writes in progress on it (across instances on a shared store), so that
    /// [`write_through`](Self::write_through) knows whether this write overlapped another.
    /// A store that fails leaves the write untracked: it ends as an invalidation.
    pub(crate) async fn begin_write(&self, key: &str) -> WriteTicket {
        let stored = self.stored_key(&format!("{}{key}", self.inner.prefix));
        let begin = match self.store().writes() {
            Some(writes) => writes.begin_write(stored, self.inner.tombstone_ttl),
            None => return WriteTicket::untracked(),
        };
        match begin.await {
            Ok(ticket) => ticket,
            Err(e) => {
                self.counters().store_error();
                tracing::debug!(%key, error = %e, "a write could not be followed: it will invalidate");
                WriteTicket::untracked()
            }
        }
    }

    /// Ends a write-through that failed (or whose outcome is unknown): the key is
    /// invalidated, as the data may or may not have changed.
    pub(crate) async fn abandon_write(&self, key: &str, ticket: WriteTicket) {
        let stored = self.stored_key(&format!("{}{key}", self.inner.prefix));
        if let Some(end) = self
            .store()
            .writes()
            .map(|w| w.end_write(stored, ticket, None))
        {
            let _ = end.await;
        }
        let _ = self.invalidate(Invalidation::Key(key.into())).await;
    }

    /// Stores a write's response as the entry of `key` (a base key, without the namespace)
    /// when the write overlapped no other write of `key` and no invalidation of it (see
    /// [`begin_write`](Self::begin_write)); otherwise, since the order in which overlapping
    /// writes reached the data is unknown, invalidates `key` instead. The entry is dated
    /// now plus the invalidation margin, so that a read that began before the write cannot
    /// replace it with what it read; the key's variants are invalidated, and the other
    /// instances drop their memory copy.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn write_through(
        &self,
        key: &str,
        ticket: WriteTicket,
        parts: &http::response::Parts,
        body: bytes::Bytes,
        trailers: Option<http::HeaderMap>,
        ttl: Duration,
        tags: &[String],
    ) -> Result<(), StoreError> {
        self.inner.invalidations.fetch_add(1, Ordering::Release);
        let at = self.now() + self.inner.invalidation_margin;
        let keep = self.inner.tombstone_ttl;
        let full = format!("{}{key}", self.inner.prefix);
        let stored = self.hashed_key(&full).unwrap_or_else(|| full.clone());
        let mut headers = parts.headers.clone();
        crate::headers::strip_hop_by_hop(&mut headers);
        for name in [
            crate::CacheHint::SKIP_HEADER,
            crate::CacheHint::TTL_HEADER,
            crate::CacheHint::TAGS_HEADER,
        ] {
            headers.remove(name);
        }
        // The write's own length: what it declared may be for another encoding.
        headers.remove(http::header::CONTENT_LENGTH);
        crate::cache::complete_headers(&mut headers, parts.status, &body, true, self);
        // Dated `at`; the older copies it replaces are invalidated as of just before, so that
        // an invalidation made after the write (dated `at` or later) still drops it.
        let older = at - Duration::from_millis(1);
        let entry = crate::Entry::new(full, parts.status, headers, body)
            .with_times(at, ttl)
            .with_trailers(trailers)
            .with_tags(tags.to_vec());
        let ns: Arc<str> = self.inner.namespace.as_str().into();
        let family: Arc<str> = family_tag(key).into();
        let store = self.store();
        let id = new_message_id();
        let result = async {
            let Some(writes) = store.writes() else {
                return Ok(false);
            };
            let end =
                writes.end_write(stored.as_str().into(), ticket, Some((Arc::new(entry), ttl)));
            if !end.await? {
                return Ok(false);
            }
            store
                .invalidate_tag(ns.clone(), family.clone(), older, keep)
                .await?;
            let sent = self
                .publish(bus_message(
                    b'k',
                    older,
                    keep,
                    &id,
                    &[&stored, &ns, &family],
                ))
                .await?;
            self.await_acks(&id, sent).await;
            Ok(true)
        }
        .await;
        match result {
            Ok(true) => {
                self.stored();
                Ok(())
            }
            Ok(false) => {
                tracing::debug!(%key, "the write overlapped another write or an invalidation: invalidating the key");
                self.invalidate(Invalidation::Key(key.into())).await
            }
            Err(e) => {
                self.publish_failed(&e);
                tracing::warn!(%key, error = %e, "write-through failed: invalidating the key");
                self.counters().store_error();
                // No old value may outlive the write: the key goes (retried until it does).
                let _ = self.invalidate(Invalidation::Key(key.into())).await;
                Err(e)
            }
        }
    }

    pub(crate) async fn invalidate(&self, what: Invalidation) -> Result<(), StoreError> {
        self.inner.invalidations.fetch_add(1, Ordering::Release);
        let result = self.apply(&what).await;
        if let Err(e) = &result {
            self.counters().store_error();
            tracing::warn!(?what, error = %e, "invalidation failed: retrying in the background");
            self.queue(std::iter::once(what));
            self.retry_pending();
        }
        result
    }

    /// Invalidates in the store and tells the other instances.
    async fn apply(&self, what: &Invalidation) -> Result<(), StoreError> {
        let at = self.now() + self.inner.invalidation_margin;
        let keep = self.inner.tombstone_ttl;
        let store = self.store();
        let ns: Arc<str> = self.inner.namespace.as_str().into();
        let id = new_message_id();
        let message = match what {
            Invalidation::Key(key) => {
                let full = format!("{}{key}", self.inner.prefix);
                let stored = self.hashed_key(&full).unwrap_or_else(|| full.clone());
                let family: Arc<str> = family_tag(key).into();
                let one = store.invalidate(stored.as_str().into(), at, keep);
                let all = store.invalidate_tag(ns.clone(), family.clone(), at, keep);
                one.await?;
                all.await?;
                bus_message(b'k', at, keep, &id, &[&stored, &ns, &family])
            }
            Invalidation::Tag(tag) => {
                store
                    .invalidate_tag(ns.clone(), tag.as_str().into(), at, keep)
                    .await?;
                bus_message(b't', at, keep, &id, &[&ns, tag])
            }
        };
        let sent = match self.publish(message).await {
            Ok(sent) => sent,
            Err(e) => {
                self.publish_failed(&e);
                return Err(e);
            }
        };
        self.await_acks(&id, sent).await;
        Ok(())
    }

    /// Publishes `message` on the store's bus: how many subscribers got it (none without a bus).
    async fn publish(&self, message: bytes::Bytes) -> Result<u64, StoreError> {
        match self.store().bus() {
            Some(bus) => bus.publish(message).await,
            None => Ok(0),
        }
    }

    /// Says once, at error level, that the store refuses the bus for lack of permission: a
    /// setting to fix, not an outage to wait out (every invalidation keeps failing).
    fn publish_failed(&self, e: &StoreError) {
        if e.to_string().contains("NOPERM")
            && !self.inner.publish_refused.swap(true, Ordering::Relaxed)
        {
            tracing::error!(
                error = %e,
                "the store refuses to publish invalidations: other instances keep their memory copies of what is invalidated; grant the Redis user the channel `tower-stash:bus` (ACL `&tower-stash:bus`)"
            );
        }
    }

    /// Waits until the `sent` subscribers of message `id` have applied it (every instance
    /// has dropped its memory copy), for at most [`ACK_WAIT`]: the caller's next read, on
    /// any instance, then sees the change.
    async fn await_acks(&self, id: &str, sent: u64) {
        if sent == 0 {
            return;
        }
        let Some(bus) = self.store().bus() else {
            return;
        };
        let deadline = std::time::Instant::now() + ACK_WAIT;
        let mut pause = Duration::from_micros(200);
        loop {
            match bus.acknowledgements(id.into()).await {
                Ok(n) if n >= sent => return,
                Ok(_) => {}
                Err(_) => return,
            }
            if std::time::Instant::now() + pause > deadline {
                tracing::debug!(
                    id,
                    sent,
                    "not every instance acknowledged the invalidation in time"
                );
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }

    /// Queues invalidations to retry, each once. Past [`PENDING_MAX`] the oldest are
    /// dropped, and this instance's memory tier is flushed in their place (its copies of
    /// what they named go; the shared store's may stay until they expire): said at error
    /// level.
    fn queue(&self, what: impl IntoIterator<Item = Invalidation>) {
        let dropped = {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            what.into_iter().map(|w| pending.push(w)).sum::<usize>()
        };
        if dropped > 0 {
            tracing::error!(
                dropped,
                bound = PENDING_MAX,
                "too many invalidations wait for the store: the oldest are given up and the memory tier is flushed in their place; the store may serve what they named until it expires"
            );
            self.store().clear_local();
        }
    }

    /// Retries the pending invalidations in the background until every one succeeds.
    fn retry_pending(&self) {
        if self.inner.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.inner.retrying.store(false, Ordering::Release);
            return;
        };
        // A weak handle: the task ends when the application drops the stash.
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            let mut pause = Duration::from_millis(50);
            loop {
                tokio::time::sleep(pause).await;
                let Some(inner) = weak.upgrade() else { return };
                let stash = Stash { inner };
                let batch = stash
                    .inner
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                let mut failed = Vec::new();
                for what in batch {
                    if stash.apply(&what).await.is_err() {
                        failed.push(what);
                    }
                }
                stash.queue(failed);
                let pending = stash
                    .inner
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if pending.is_empty() {
                    stash.inner.retrying.store(false, Ordering::Release);
                    return;
                }
                drop(pending);
                // Soon after Redis is back: its old values must go before others read them.
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        });
    }

    /// How many invalidations wait to be retried.
    pub fn pending_invalidations(&self) -> usize {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Remembers that refreshing `key` failed: no new refresh for [`REFRESH_BACKOFF`].
    pub(crate) fn refresh_failed(&self, key: Arc<str>) {
        let mut failed = self
            .inner
            .refresh_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if failed.len() >= 4096 {
            failed.retain(|_, at| now.duration_since(*at) < REFRESH_BACKOFF);
        }
        failed.insert(key, now);
    }

    /// Marks `key` as being refreshed, unless it already is, or its last refresh failed
    /// less than [`REFRESH_BACKOFF`] ago (a failing service is not asked on every stale hit):
    /// the guard unmarks it.
    pub(crate) fn begin_refresh(&self, key: Arc<str>) -> Option<Refreshing> {
        {
            let failed = self
                .inner
                .refresh_failed
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if failed
                .get(&key)
                .is_some_and(|at| at.elapsed() < REFRESH_BACKOFF)
            {
                return None;
            }
        }
        let mut set = self
            .inner
            .refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !set.insert(key.clone()) {
            return None;
        }
        Some(Refreshing {
            stash: self.clone(),
            key,
        })
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Counts a successful store; refreshes the size gauges every 256 stores.
    pub(crate) fn stored(&self) {
        let n = self.inner.counters.stores.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tower_stash_stores_total").increment(1);
        if n % 256 == 0 {
            self.usage();
        }
    }

    /// The store's usage, also set on the size gauges.
    fn usage(&self) -> crate::StoreUsage {
        let usage = self.inner.store.usage();
        metrics::gauge!("tower_stash_entries").set(usage.entries as f64);
        metrics::gauge!("tower_stash_bytes").set(usage.bytes as f64);
        usage
    }
}

/// How long after a failed background refresh of a key no new one starts.
pub(crate) const REFRESH_BACKOFF: Duration = Duration::from_secs(1);

/// An invalidation to apply (and to retry when the store fails).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Invalidation {
    Key(String),
    Tag(String),
}

/// The most invalidations that wait to be retried: past it, the oldest are given up.
pub(crate) const PENDING_MAX: usize = 10_000;

/// Invalidations that failed, in the order they came, each at most once.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    order: std::collections::VecDeque<Invalidation>,
    queued: std::collections::HashSet<Invalidation>,
}

impl Pending {
    /// Queues `what` unless it is queued already; returns how many of the oldest were given
    /// up to stay within [`PENDING_MAX`].
    fn push(&mut self, what: Invalidation) -> usize {
        if !self.queued.insert(what.clone()) {
            return 0;
        }
        self.order.push_back(what);
        let mut dropped = 0;
        while self.order.len() > PENDING_MAX {
            if let Some(old) = self.order.pop_front() {
                self.queued.remove(&old);
                dropped += 1;
            }
        }
        dropped
    }

    /// Takes every queued invalidation, oldest first.
    fn take(&mut self) -> Vec<Invalidation> {
        self.queued.clear();
        self.order.drain(..).collect()
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The longest an invalidation waits for every instance to acknowledge it.
const ACK_WAIT: Duration = Duration::from_millis(50);

/// The tag every variant of the base key `base` (without the namespace) carries.
pub(crate) fn family_tag(base: &str) -> String {
    format!("~{base}")
}

/// A background refresh in progress; unmarks its key when dropped (also on a panic).
pub(crate) struct Refreshing {
    stash: Stash,
    key: Arc<str>,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        let mut set = self
            .stash
            .inner
            .refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        set.remove(&self.key);
    }
}

/// Builds a [`Stash`].
#[must_use]
#[derive(Clone)]
pub struct StashBuilder {
    store: Option<Arc<dyn Store>>,
    #[cfg(feature = "redis")]
    redis: Option<String>,
    namespace: String,
    max_key_len: usize,
    clock: Arc<dyn Clock>,
    status_name: String,
    show_key: bool,
    show_detail: bool,
    seed: Option<u64>,
    lease_ttl: Duration,
    invalidation_margin: Duration,
    tombstone_ttl: Duration,
}

impl fmt::Debug for StashBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StashBuilder")
            .field("namespace", &self.namespace)
            .field("max_key_len", &self.max_key_len)
            .finish_non_exhaustive()
    }
}

impl Default for StashBuilder {
    fn default() -> Self {
        Self {
            store: None,
            #[cfg(feature = "redis")]
            redis: None,
            namespace: "stash".into(),
            max_key_len: 250,
            clock: Arc::new(SystemClock),
            status_name: "tower-stash".into(),
            show_key: false,
            show_detail: false,
            seed: None,
            lease_ttl: Duration::from_secs(5),
            invalidation_margin: Duration::from_millis(50),
            tombstone_ttl: Duration::from_secs(60),
        }
    }
}

impl StashBuilder {
    /// Sets the store (default: a 64 MiB [`MemoryStore`]).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Uses Redis at `url` behind a 64 MiB memory tier: a [`TieredStore`](crate::TieredStore)
    /// over a [`Guarded`](crate::Guarded) [`RedisStore`](crate::RedisStore) with their default
    /// settings (set a store yourself to tune them). Building does not wait for Redis: while
    /// it is unreachable the stash is degraded, and it recovers by itself.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis = Some(url.into());
        self
    }

    /// Sets a shared store.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Sets the namespace every key starts with (default `stash`): letters, digits, `-._~`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Keys longer than this many bytes are stored under a 128-bit hash (default 250).
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.max_key_len = bytes;
        self
    }

    /// Sets the clock (default: the system's).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Sets the cache name in `Cache-Status` headers (default `tower-stash`).
    pub fn cache_status_name(mut self, name: impl Into<String>) -> Self {
        self.status_name = name.into();
        self
    }

    /// Adds the key to `Cache-Status` headers (default off: keys can reveal request data).
    pub fn cache_status_key(mut self, show: bool) -> Self {
        self.show_key = show;
        self
    }

    /// Adds `detail` (why a response was not stored or was bypassed) and the remaining `ttl`
    /// of hits to `Cache-Status` headers (default off).
    pub fn cache_status_detail(mut self, show: bool) -> Self {
        self.show_detail = show;
        self
    }

    /// How long a lease on a key lasts in a shared store unless its holder releases it
    /// (default 5 s): the longest other instances wait on a leader that died. Set it above
    /// the service's usual time to answer, or a slow leader's lease lapses and another
    /// instance calls the service too.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How much later than now an invalidation is dated (default 50 ms): a fill whose request
    /// began before that is refused. Covers clock skew between instances; fills that begin
    /// within the margin after an invalidation are answered but not stored.
    pub fn invalidation_margin(mut self, margin: Duration) -> Self {
        self.invalidation_margin = margin;
        self
    }

    /// How long an invalidated key keeps refusing fills whose request began before the
    /// invalidation (default 60 s): set it above the longest time the service takes to answer.
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// Seeds the random source used for early refresh and TTL jitter, so that a test sees
    /// the same choices on every run (default: a per-thread source seeded by the system).
    pub fn random_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Builds the stash, or says which setting is wrong.
    pub fn build(self) -> Result<Stash, ConfigError> {
        let mut errors = Vec::new();
        if self.namespace.is_empty()
            || !key::is_literal(&self.namespace, false)
            || self.namespace.contains('/')
        {
            errors.push(format!(
                "stash.namespace: `{}` must be non-empty letters, digits and `-._~`",
                self.namespace
            ));
        }
        let prefix = key::prefix(&self.namespace);
        if self.max_key_len < prefix.len() + 33 {
            errors.push(format!(
                "stash.max_key_len: {} is shorter than a hashed key ({})",
                self.max_key_len,
                prefix.len() + 33
            ));
        }
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~!#$%&'*+^`|".contains(&b))
        };
        if !token(&self.status_name) {
            errors.push(format!(
                "stash.cache_status_name: `{}` must be an HTTP token",
                self.status_name
            ));
        }
        #[cfg(feature = "redis")]
        let mut store = self.store;
        #[cfg(not(feature = "redis"))]
        let store = self.store;
        #[cfg(feature = "redis")]
        if let Some(url) = self.redis {
            if store.is_some() {
                errors.push("stash.redis: set either a store or a Redis URL, not both".into());
            }
            match crate::RedisStore::new(url) {
                Ok(redis) => {
                    store = Some(Arc::new(crate::TieredStore::new(
                        MemoryStore::default(),
                        crate::Guarded::new(redis),
                    )))
                }
                Err(e) => errors.push(format!("stash.redis: {e}")),
            }
        }
        if self.tombstone_ttl < Duration::from_millis(1) {
            errors.push("stash.tombstone_ttl: must be at least a millisecond".into());
        }
        if self.lease_ttl < Duration::from_millis(1) {
            errors.push("stash.lease_ttl: must be at least a millisecond".into());
        }
        if !errors.is_empty() {
            return Err(ConfigError::new(errors));
        }
        let value =
            |s: String| HeaderValue::try_from(s).expect("a token makes a valid header value");
        let name = self.status_name;
        let status = StatusHeaders {
            hit: value(format!("{name}; hit")),
            stored: value(format!("{name}; fwd=miss; stored")),
            miss: value(format!("{name}; fwd=miss")),
            bypass: value(format!("{name}; fwd=bypass")),
            stale: value(format!("{name}; hit; stale")),
            collapsed_hit: value(format!("{name}; hit; collapsed")),
            collapsed_miss: value(format!("{name}; fwd=miss; collapsed")),
            show_key: self.show_key,
            show_detail: self.show_detail,
            name,
        };
        Ok(Stash {
            inner: Arc::new(Inner {
                store: store.unwrap_or_else(|| Arc::new(MemoryStore::default())),
                namespace: self.namespace,
                prefix,
                max_key_len: self.max_key_len,
                clock: self.clock,
                counters: Counters::default(),
                status,
                refreshing: Mutex::default(),
                refresh_failed: Mutex::default(),
                invalidation_margin: self.invalidation_margin,
                tombstone_ttl: self.tombstone_ttl,
                pending: Mutex::default(),
                publish_refused: std::sync::atomic::AtomicBool::new(false),
                invalidations: AtomicU64::new(0),
                retrying: std::sync::atomic::AtomicBool::new(false),
                lease_ttl: self.lease_ttl,
                rng: self.seed.map(|s| Mutex::new(fastrand::Rng::with_seed(s))),
            }),
        })
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;
    use crate::test_util::Down;
    use crate::{Entry, TieredStore};

    #[tokio::test]
    async fn pending_invalidations_are_kept_once_each_and_bounded() {
        let stash = Stash::builder()
            .store(TieredStore::new(MemoryStore::default(), Down))
            .build()
            .unwrap();
        let kept: Arc<str> = "stash:v1:kept".into();
        let entry = Entry::new(&*kept, http::StatusCode::OK, Default::default(), "x".into())
            .with_times(SystemTime::now(), Duration::from_secs(60));
        assert!(stash
            .store()
            .put(kept.clone(), Arc::new(entry), Duration::from_secs(60))
            .await
            .is_err());
        assert!(
            stash.store().get_local(&kept).unwrap().is_some(),
            "the memory tier keeps it"
        );

        // The same invalidation twice waits once.
        assert!(stash.invalidate_key("a").await.is_err());
        assert!(stash.invalidate_key("a").await.is_err());
        assert!(stash.invalidate_tag("a").await.is_err());
        assert_eq!(stash.pending_invalidations(), 2);

        // Up to the bound, nothing is given up.
        for i in 2..PENDING_MAX {
            let _ = stash.invalidate_key(&format!("k{i}")).await;
        }
        assert_eq!(stash.pending_invalidations(), PENDING_MAX);
        assert!(stash.store().get_local(&kept).unwrap().is_some());
        // One more: the oldest is given up, and the memory tier flushed in its place.
        let _ = stash.invalidate_key("one-more").await;
        assert_eq!(stash.pending_invalidations(), PENDING_MAX);
        assert_eq!(stash.store().get_local(&kept), None);
    }
}
