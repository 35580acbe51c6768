//! What a stash counts: [`Stats`], read with [`Stash::stats`], and the counters behind them.

use super::Stash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

impl Stash {
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
