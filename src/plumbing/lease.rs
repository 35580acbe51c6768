//! Leases in a shared store: one instance at a time calls the service for a key.

use crate::Stash;
use std::sync::{Arc, Mutex};

/// A lease held on a key. Released when the entry is stored (or at once when nothing will
/// be); dropped unreleased, it is released in the background; in any case it expires by
/// itself after the stash's lease TTL, so a dead holder never blocks a key for long.
pub(crate) struct Lease {
    stash: Stash,
    key: Arc<str>,
    /// `None` when nothing was taken in a store (a store no one shares, or one that failed).
    token: Option<Arc<str>>,
}

impl Lease {
    /// Takes the lease on `key`: `None` when another holder has it. A store that no one
    /// shares grants at once; a failing store grants too (degraded: no coordination, never a
    /// wait).
    pub(crate) async fn take(stash: &Stash, key: &Arc<str>) -> Option<Lease> {
        let store = stash.store();
        if !store.is_shared() {
            return Some(Self::local(stash, key));
        }
        let token: Arc<str> = format!("{:032x}", fastrand::u128(..)).into();
        // Until the answer is in, the lease may have been taken without us knowing (a timeout
        // after the SET landed, or this future dropped): the guard releases it then.
        let mut pending = Lease {
            stash: stash.clone(),
            key: key.clone(),
            token: Some(token.clone()),
        };
        match store
            .try_lease(key.clone(), token, stash.inner.lease_ttl)
            .await
        {
            Ok(true) => Some(pending),
            Ok(false) => {
                pending.token = None;
                None
            }
            Err(e) => {
                stash.counters().store_error();
                tracing::debug!(%key, error = %e, "taking a lease failed: going on alone");
                drop(pending);
                Some(Self::local(stash, key))
            }
        }
    }

    /// Counts the lease in [`Stats::leases`](crate::Stats::leases), when one was taken in a
    /// shared store and is kept to call the service (not one given back at once because the
    /// holder before had just stored the entry).
    pub(crate) fn kept(self) -> Self {
        if self.token.is_some() {
            self.stash.counters().lease();
        }
        self
    }

    fn local(stash: &Stash, key: &Arc<str>) -> Lease {
        Lease {
            stash: stash.clone(),
            key: key.clone(),
            token: None,
        }
    }

    /// Releases the lease now.
    pub(crate) async fn release(mut self) {
        if let Some(token) = self.token.take() {
            let key = self.key.clone();
            if let Err(e) = self.stash.store().release_lease(key, token).await {
                tracing::debug!(key = %self.key, error = %e, "releasing a lease failed: it will expire");
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let release = self.stash.store().release_lease(self.key.clone(), token);
            rt.spawn(async move {
                let _ = release.await;
            });
        }
    }
}

/// A lease on its way from the single-flight leader to the cache that stores its response:
/// a response extension (extensions must be `Clone`).
#[derive(Clone)]
pub(crate) struct LeaseSlot(pub(crate) Arc<Mutex<Option<Lease>>>);

impl LeaseSlot {
    pub(crate) fn new(lease: Lease) -> Self {
        Self(Arc::new(Mutex::new(Some(lease))))
    }

    pub(crate) fn take(&self) -> Option<Lease> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
