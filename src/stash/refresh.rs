//! Background refreshes: one at a time per key, and none for a while after one failed.

use super::Stash;
use std::sync::Arc;
use std::time::Duration;

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
