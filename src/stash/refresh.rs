//! Background refreshes: one at a time per key, and none for a while after one failed.

use super::Stash;
use crate::entry::Entry;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long after a failed background refresh of a key no new one starts.
pub(crate) const REFRESH_BACKOFF: Duration = Duration::from_secs(1);

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

impl Stash {
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
}

impl Stash {
    /// Records a hit on a sliding entry stored under `key`: its idle time starts again. A
    /// store shared with other instances (Redis behind the memory tier) hears of it once
    /// every eighth of the idle time while hits go on, in the background.
    pub(crate) fn touch_sliding(&self, key: &str, entry: &Entry, now: SystemTime) {
        let Some(idle) = entry.sliding() else {
            return;
        };
        entry.touch(now);
        let store = self.store();
        if !store.is_shared() || !entry.extend_due(now, idle / 8) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let extend = store.touch(key.into(), idle);
            rt.spawn(async move {
                if let Err(e) = extend.await {
                    tracing::debug!(error = %e, "extending a sliding entry in the store failed");
                }
            });
        }
    }

    /// Whether a fresh hit, `remaining` before `entry` expires, should refresh it early
    /// (XFetch): when `now - delta * beta * ln(rand()) >= expiry`, with `delta` the entry's
    /// recompute time. A `beta` of 0 never does.
    pub(crate) fn refresh_early(&self, entry: &Entry, remaining: Duration, beta: f64) -> bool {
        let delta = entry.recompute_time().as_secs_f64();
        if beta <= 0.0 || delta <= 0.0 {
            return false;
        }
        let remaining = remaining.as_secs_f64();
        // The chance is exp(-remaining / (beta * delta)): below one in a million past 14 of
        // those, so most hits skip the random number and the logarithm.
        if remaining > 14.0 * beta * delta {
            return false;
        }
        xfetch(remaining, delta, beta, self.random())
    }
}

/// XFetch's test with `remaining = expiry - now` and `r` uniform in `[0, 1)`.
pub(crate) fn xfetch(remaining: f64, delta: f64, beta: f64, r: f64) -> bool {
    // `1 - r` is in (0, 1]: its logarithm is finite.
    -delta * beta * (1.0 - r).ln() >= remaining
}
