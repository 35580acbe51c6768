//! What a stash counts: [`Stats`], read with [`Stash::stats`], and the counters behind them.

use super::Stash;
use crate::policy::CompiledPolicy;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A snapshot of a stash's counters, from [`Stash::stats`]. It serializes (serde) as a flat
/// object with `hit_rate`, `health` and `breaker` as strings and `since_last_success_ms`.
///
/// The counters are also reported through the [`metrics`](https://docs.rs/metrics) crate as
/// `tower_stash_hits_total`, `tower_stash_misses_total`, `tower_stash_bypasses_total`,
/// `tower_stash_stores_total`, `tower_stash_store_errors_total`, `tower_stash_stale_total`,
/// `tower_stash_collapsed_total`, `tower_stash_leases_total`, `tower_stash_refreshes_total`,
/// `tower_stash_unreadable_total`, and the gauges `tower_stash_entries`, `tower_stash_bytes`
/// and `tower_stash_evictions` (refreshed whenever the stats are read, and every 256 stores),
/// `tower_stash_store_healthy` (1 or 0) and `tower_stash_breaker_open` (0 closed, 0.5
/// half-open, 1 open; for a store with a breaker). Requests on cached routes are also counted
/// by route pattern (`GET /users/{id}`, never the path) and outcome (`hit`, `miss`, `stale`,
/// `bypass`) as `tower_stash_requests_total{route, outcome}`: one series per route and
/// outcome, as many as the routes table has. Each metric is described (`describe_*`) when a
/// stash is built: install the recorder first.
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
    /// Typed values found but not read (see [`values`](crate::values)): written with another
    /// codec or an older type version, or bytes the codec could not decode. Each is a miss too.
    pub unreadable: u64,
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

impl serde::Serialize for Stats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut o = s.serialize_struct("Stats", 17)?;
        o.serialize_field("hits", &self.hits)?;
        o.serialize_field("misses", &self.misses)?;
        o.serialize_field("hit_rate", &self.hit_rate())?;
        o.serialize_field("stale", &self.stale)?;
        o.serialize_field("collapsed", &self.collapsed)?;
        o.serialize_field("leases", &self.leases)?;
        o.serialize_field("refreshes", &self.refreshes)?;
        o.serialize_field("bypasses", &self.bypasses)?;
        o.serialize_field("stores", &self.stores)?;
        o.serialize_field("store_errors", &self.store_errors)?;
        o.serialize_field("unreadable", &self.unreadable)?;
        o.serialize_field("evictions", &self.evictions)?;
        o.serialize_field("entries", &self.entries)?;
        o.serialize_field("bytes", &self.bytes)?;
        o.serialize_field("health", self.health.as_str())?;
        o.serialize_field("breaker", &self.breaker.map(|b| b.as_str()))?;
        o.serialize_field(
            "since_last_success_ms",
            &self
                .since_last_success
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )?;
        o.end()
    }
}

/// What happened to a request on a cached route, as a metric label.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Hit,
    Miss,
    Stale,
    Bypass,
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
    unreadable: AtomicU64,
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
    unreadable => unreadable, "tower_stash_unreadable_total";
}

impl Counters {
    /// Counts a request of `policy`'s route by its outcome, besides the totals.
    pub(crate) fn on_route(&self, policy: &CompiledPolicy, outcome: Outcome) {
        policy.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
        let route = &policy.route_label;
        let outcome = match outcome {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Bypass => "bypass",
        };
        metrics::counter!(
            "tower_stash_requests_total",
            "route" => route.clone(),
            "policy" => policy.policy_label.clone(),
            "outcome" => outcome
        )
        .increment(1);
        // The request's span, where there is one (`tower_stash.request`, debug): no lookup of
        // the current span while nothing listens at that level.
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            tracing::Span::current().record("outcome", outcome);
        }
    }
}

impl Counters {
    /// Counts a fresh hit by the tier that answered it: `memory` (this instance's memory, at
    /// once) or `shared` (the store behind it: Redis).
    pub(crate) fn tier_hit(&self, tier: &'static str) {
        metrics::counter!("tower_stash_tier_hits_total", "tier" => tier).increment(1);
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            tracing::Span::current().record("tier", tier);
        }
    }
}

/// Describes every metric a stash reports, to the recorder installed now.
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for (name, help) in [
        (
            "tower_stash_hits_total",
            "Requests answered from the cache (304s included).",
        ),
        (
            "tower_stash_misses_total",
            "Requests on a cached route that went to the service.",
        ),
        (
            "tower_stash_bypasses_total",
            "Requests on a cached route that skipped the cache.",
        ),
        ("tower_stash_stores_total", "Responses and values stored."),
        (
            "tower_stash_store_errors_total",
            "Store calls that failed (answered by the service).",
        ),
        (
            "tower_stash_stale_total",
            "Requests answered with a stale entry.",
        ),
        (
            "tower_stash_collapsed_total",
            "Requests that waited for another's call (single flight).",
        ),
        (
            "tower_stash_leases_total",
            "Leases taken in the shared store.",
        ),
        (
            "tower_stash_refreshes_total",
            "Background refreshes started.",
        ),
        (
            "tower_stash_unreadable_total",
            "Typed values found but not readable (codec, version).",
        ),
        (
            "tower_stash_requests_total",
            "Requests on cached routes, by route pattern and outcome.",
        ),
        (
            "tower_stash_tier_hits_total",
            "Fresh hits by the tier that answered: memory, or the shared store (Redis).",
        ),
    ] {
        describe_counter!(name, Unit::Count, help);
    }
    describe_histogram!(
        "tower_stash_upstream_seconds",
        Unit::Seconds,
        "How long the service took to answer a miss (to its response head), by route pattern."
    );
    describe_histogram!(
        "tower_stash_store_call_seconds",
        Unit::Seconds,
        "Store calls made through Guarded (Redis), by operation and outcome (ok, error); \
         calls refused by an open breaker are not timed."
    );
    describe_gauge!(
        "tower_stash_entries",
        Unit::Count,
        "Entries the store holds (approximate)."
    );
    describe_gauge!(
        "tower_stash_bytes",
        Unit::Bytes,
        "Bytes the store holds (approximate)."
    );
    describe_gauge!(
        "tower_stash_evictions",
        Unit::Count,
        "Entries evicted to stay within the memory bound, so far."
    );
    describe_gauge!(
        "tower_stash_store_healthy",
        "1 while the store is used, 0 while it is skipped after failures."
    );
    describe_gauge!(
        "tower_stash_breaker_open",
        "The store's circuit breaker: 0 closed, 0.5 half-open, 1 open."
    );
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
        let health = report.map_or_else(|| self.inner.store.health(), |r| r.health());
        metrics::gauge!("tower_stash_store_healthy").set(if health == crate::Health::Ok {
            1.0
        } else {
            0.0
        });
        if let Some(r) = report {
            metrics::gauge!("tower_stash_breaker_open").set(match r.breaker {
                crate::BreakerState::Closed => 0.0,
                crate::BreakerState::HalfOpen => 0.5,
                _ => 1.0,
            });
        }
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
            unreadable: get(&c.unreadable),
            evictions: usage.evictions,
            entries: usage.entries,
            bytes: usage.bytes,
            // One reading of the breaker, so that the fields agree.
            health,
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
        if n.is_multiple_of(256) {
            self.usage();
        }
    }

    /// The store's usage, also set on the size gauges.
    fn usage(&self) -> crate::StoreUsage {
        let usage = self.inner.store.usage();
        // What the store counts is its memory (a `TieredStore`'s memory tier).
        metrics::gauge!("tower_stash_entries", "tier" => "memory").set(usage.entries as f64);
        metrics::gauge!("tower_stash_bytes", "tier" => "memory").set(usage.bytes as f64);
        metrics::gauge!("tower_stash_evictions", "tier" => "memory").set(usage.evictions as f64);
        usage
    }
}

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;

/// The requests of one route pattern (`GET /users/{id}`) by outcome, over every cache layer
/// on the stash: see [`Stash::route_stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteStats {
    /// The method and path pattern.
    pub route: String,
    /// Answered fresh from the cache.
    pub hits: u64,
    /// Sent to the service.
    pub misses: u64,
    /// Answered stale (while revalidating, or because the service failed).
    pub stale: u64,
    /// Not cached (credentials, `no-store`, ...).
    pub bypasses: u64,
}

impl RouteStats {
    /// Hits (stale answers included) over hits, stale answers and misses; zero before any.
    pub fn hit_rate(&self) -> f64 {
        let served = self.hits + self.stale;
        let total = served + self.misses;
        if total == 0 {
            0.0
        } else {
            served as f64 / total as f64
        }
    }
}

/// An invalidation made through this stash: see [`Stash::recent_invalidations`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidationRecord {
    /// `key` or `tag`.
    pub kind: &'static str,
    /// The key or tag.
    pub target: String,
    /// When it was made.
    pub at: std::time::SystemTime,
    /// Whether the store took it at once (else it is retried in the background).
    pub ok: bool,
}

/// How many invalidations [`Stash::recent_invalidations`] keeps.
const RECENT: usize = 100;

impl Stash {
    /// Requests by route pattern and outcome, over every [`CacheLayer`](crate::CacheLayer)
    /// built on this stash (and its clones), by route.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_stash::{CacheLayer, Policy, Routes, Stash};
    /// let stash = Stash::new();
    /// let _layer = CacheLayer::new(
    ///     stash.clone(),
    ///     Routes::new().get("/users/{id}", Policy::ttl(Duration::from_secs(60))),
    /// );
    /// let routes = stash.route_stats();
    /// assert_eq!(routes[0].route, "GET /users/{id}");
    /// assert_eq!(routes[0].hits, 0);
    /// ```
    pub fn route_stats(&self) -> Vec<RouteStats> {
        let mut routes = self.inner.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.retain(|p| p.strong_count() > 0);
        let mut by_route: std::collections::BTreeMap<String, RouteStats> = Default::default();
        for policy in routes.iter().filter_map(std::sync::Weak::upgrade) {
            let n = |o: Outcome| policy.counts[o as usize].load(Ordering::Relaxed);
            let entry = by_route
                .entry(policy.route.clone())
                .or_insert_with(|| RouteStats {
                    route: policy.route.clone(),
                    hits: 0,
                    misses: 0,
                    stale: 0,
                    bypasses: 0,
                });
            entry.hits += n(Outcome::Hit);
            entry.misses += n(Outcome::Miss);
            entry.stale += n(Outcome::Stale);
            entry.bypasses += n(Outcome::Bypass);
        }
        by_route.into_values().collect()
    }

    /// The last invalidations (up to 100) made through this stash, oldest first: by its
    /// layers, its rules, or [`invalidate_key`](Self::invalidate_key) and
    /// [`invalidate_tag`](Self::invalidate_tag). Those other instances made reach this one
    /// through the store's bus and are not listed here.
    pub fn recent_invalidations(&self) -> Vec<InvalidationRecord> {
        let recent = self.inner.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().cloned().collect()
    }

    pub(crate) fn register_routes<'a>(
        &self,
        policies: impl Iterator<Item = &'a std::sync::Arc<CompiledPolicy>>,
    ) {
        let mut routes = self.inner.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.retain(|p| p.strong_count() > 0);
        routes.extend(policies.map(std::sync::Arc::downgrade));
    }

    pub(crate) fn record_invalidation(&self, kind: &'static str, target: &str, ok: bool) {
        let mut recent = self.inner.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= RECENT {
            recent.pop_front();
        }
        recent.push_back(InvalidationRecord {
            kind,
            target: target.to_owned(),
            at: std::time::SystemTime::now(),
            ok,
        });
    }
}
