//! The shared handle: the store, the statistics and the settings every layer uses.
//!
//! A [`Stash`] is cheap to clone (one `Arc`); give a clone to each layer. With no store set it
//! keeps entries in a [`MemoryStore`](crate::MemoryStore) of 64 MiB, so a cache works with nothing else running.
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

mod builder;
mod clock;
mod entries;
mod invalidate;
mod outage;
mod ready;
mod refresh;
#[cfg(test)]
pub(crate) use refresh::xfetch;
mod stats;
mod status;
#[cfg(test)]
mod tests;
mod write;

pub use builder::{IntoStore, StashBuilder};
pub use clock::{Clock, ManualClock, SystemClock};
pub use invalidate::PREFIX_LIMIT;
pub use stats::{InvalidationRecord, RouteStats, Stats};

pub(crate) use entries::complete_headers;
pub(crate) use stats::Outcome;

use crate::key;
use crate::policy::ConfigError;
use crate::store::Store;
use invalidate::Pending;
use stats::Counters;
use status::StatusHeaders;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) namespace: String,
    pub(crate) prefix: String,
    pub(crate) max_key_len: usize,
    pub(crate) clock: Arc<dyn Clock>,
    /// The shared store's clock, when the stash follows it (see [`Clock::follows_store`]).
    pub(crate) store_clock: Option<clock::StoreClock>,
    pub(crate) counters: Counters,
    pub(crate) status: StatusHeaders,
    /// How long a lease on a key lasts unless released.
    pub(crate) lease_ttl: Duration,
    /// Invalidations are dated this much later than now (clock skew between instances),
    /// unless dated by the store's clock.
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
    /// Store errors met by the layers, logged without a storm.
    pub(crate) error_log: outage::ErrorLog,
    /// A seeded random source (tests); the thread's own when `None`.
    pub(crate) rng: Option<Mutex<fastrand::Rng>>,
    /// The routes of the cache layers on this stash, for [`Stash::route_stats`].
    pub(crate) routes: Mutex<Vec<std::sync::Weak<crate::policy::CompiledPolicy>>>,
    /// The last invalidations made here, newest last.
    pub(crate) recent: Mutex<std::collections::VecDeque<stats::InvalidationRecord>>,
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
    /// A stash on a 64 MiB [`MemoryStore`](crate::MemoryStore), namespace `stash`.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default configuration is valid")
    }

    /// A stash configured from the environment: tiered on Redis (a 64 MiB memory tier in front
    /// of a guarded `RedisStore`) when `REDIS_URL` is set, in memory
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

    /// The hashed key `full` (a full key, namespace included) is stored under when it is too
    /// long; `None` when it is stored as it is.
    pub(crate) fn hashed_key(&self, full: &str) -> Option<String> {
        key::storage_key(full, self.inner.prefix.len(), self.inner.max_key_len)
    }

    /// The name `tag` is indexed under: hashed past the stash's `max_key_len`, as keys are.
    pub(crate) fn tag_name<'t>(&self, tag: &'t str) -> std::borrow::Cow<'t, str> {
        key::tag_name(tag, self.inner.max_key_len)
    }

    /// The tag every variant of the base key `base` carries, as it is indexed.
    pub(crate) fn family(&self, base: &str) -> String {
        self.tag_name(&family_tag(base)).into_owned()
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

    /// A random number in `[0, 1)`: from the seeded source if the stash has one.
    pub(crate) fn random(&self) -> f64 {
        match &self.inner.rng {
            Some(rng) => rng.lock().unwrap_or_else(|e| e.into_inner()).f64(),
            None => fastrand::f64(),
        }
    }
}

/// The tag every variant of the base key `base` (without the namespace) carries.
pub(crate) fn family_tag(base: &str) -> String {
    format!("~{base}")
}
