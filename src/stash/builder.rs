//! [`StashBuilder`]: a stash's store and settings, checked when it is built.

use super::clock::{Clock, SystemClock};
use super::stats::Counters;
use super::status::StatusHeaders;
use super::{Inner, Stash};
use crate::key;
use crate::policy::ConfigError;
use crate::store::{MemoryStore, Store};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What [`StashBuilder::store`] takes: a [`Store`], or one already shared as `Arc<dyn Store>`.
pub trait IntoStore {
    /// The store, shared.
    fn into_store(self) -> Arc<dyn Store>;
}

impl<S: Store> IntoStore for S {
    fn into_store(self) -> Arc<dyn Store> {
        Arc::new(self)
    }
}

impl IntoStore for Arc<dyn Store> {
    fn into_store(self) -> Arc<dyn Store> {
        self
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
    shown_to: Option<super::status::ShownTo>,
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
            shown_to: None,
            seed: None,
            lease_ttl: Duration::from_secs(5),
            invalidation_margin: Duration::from_millis(50),
            tombstone_ttl: Duration::from_secs(60),
        }
    }
}

impl StashBuilder {
    /// Sets the store (default: a 64 MiB [`MemoryStore`]): any [`Store`], or one already
    /// shared as an `Arc<dyn Store>`.
    pub fn store(mut self, store: impl IntoStore) -> Self {
        self.store = Some(store.into_store());
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

    /// Renamed: [`store`](Self::store) takes an `Arc<dyn Store>` too.
    #[deprecated(note = "use `store`, which takes an `Arc<dyn Store>` too")]
    pub fn shared_store(self, store: Arc<dyn Store>) -> Self {
        self.store(store)
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
    /// of hits to `Cache-Status` headers (default off). Shown to every client unless
    /// [`cache_status_for`](Self::cache_status_for) chooses (a warning at build says so).
    pub fn cache_status_detail(mut self, show: bool) -> Self {
        self.show_detail = show;
        self
    }

    /// Shows the `Cache-Status` key, detail and ttl (where
    /// [`cache_status_key`](Self::cache_status_key) or
    /// [`cache_status_detail`](Self::cache_status_detail) turns them on) only to requests
    /// whose headers `shown` accepts, such as an operator's token; every other client gets
    /// the plain value (`hit`, `fwd=miss`, ...). Keys and details can reveal request data and
    /// the cache's rules: in production, show them to the people who operate it.
    ///
    /// ```
    /// use tower_stash::Stash;
    /// let stash = Stash::builder()
    ///     .cache_status_detail(true)
    ///     .cache_status_for(|headers| {
    ///         headers.get("x-debug-token").is_some_and(|t| t == "s3cret")
    ///     })
    ///     .build()?;
    /// # let _ = stash;
    /// # Ok::<(), tower_stash::ConfigError>(())
    /// ```
    pub fn cache_status_for(
        mut self,
        shown: impl Fn(&http::HeaderMap) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.shown_to = Some(Arc::new(shown));
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

    /// How much later than now an invalidation is dated (default 50 ms) when it is dated by
    /// the stash's [`Clock`](crate::Clock): a fill whose request began before that is refused.
    /// It covers clock skew between instances sharing a store without a clock of its own
    /// ([`Store::time`](crate::Store::time)); fills that begin within the margin after an
    /// invalidation are answered but not stored. A stash on Redis dates by Redis's clock
    /// instead, with a bound measured on each sample (see [`Stash::now`](crate::Stash::now)),
    /// and uses the margin only before its first sample.
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
        let status = StatusHeaders::new(
            self.status_name,
            self.show_key,
            self.show_detail,
            self.shown_to,
        );
        if status.shown_to_all() {
            tracing::warn!(
                "Cache-Status keys or details are shown to every client (they can reveal \
                 request data and the cache's rules): choose who sees them with \
                 StashBuilder::cache_status_for"
            );
        }
        let store: Arc<dyn crate::Store> =
            store.unwrap_or_else(|| Arc::new(MemoryStore::default()));
        let follows = store.time().is_some() && self.clock.follows_store();
        let stash = Stash {
            inner: Arc::new(Inner {
                store_clock: follows.then(super::clock::StoreClock::new),
                store,
                namespace: self.namespace,
                prefix,
                max_key_len: self.max_key_len,
                clock: self.clock,
                counters: Counters::default(),
                status,
                refreshing: Mutex::default(),
                routes: Mutex::default(),
                recent: Mutex::default(),
                refresh_failed: Mutex::default(),
                invalidation_margin: self.invalidation_margin,
                tombstone_ttl: self.tombstone_ttl,
                pending: Mutex::default(),
                publish_refused: std::sync::atomic::AtomicBool::new(false),
                invalidations: AtomicU64::new(0),
                retrying: std::sync::atomic::AtomicBool::new(false),
                lease_ttl: self.lease_ttl,
                error_log: Default::default(),
                rng: self.seed.map(|s| Mutex::new(fastrand::Rng::with_seed(s))),
            }),
        };
        stash.keep_sampling();
        super::stats::describe_metrics();
        Ok(stash)
    }
}
