//! Leases on keys: [`Leases`].

use super::StoreFuture;
use std::sync::Arc;
use std::time::Duration;

/// Leases on keys in a store several instances share, so that one instance at a time calls
/// the service for a key. Offered through [`Store::leases`](super::Store::leases); a store
/// without them is one no other instance shares, and every lease is granted at once.
///
/// The rule: a lease taken with a token is held by it alone until it expires (`ttl`) or
/// that token releases it.
///
/// # Example
///
/// ```
/// use tower_stash::{MemoryStore, Store};
///
/// // No other instance shares a memory store: it needs no leases.
/// assert!(MemoryStore::default().leases().is_none());
/// ```
pub trait Leases: Send + Sync {
    /// Takes the lease on `key` for `ttl` if nobody holds it: the right to call the service
    /// for `key`. `token` identifies the holder; `Ok(false)` means another holder has it.
    fn try_lease(&self, key: Arc<str>, token: Arc<str>, ttl: Duration) -> StoreFuture<bool>;

    /// Releases the lease on `key` if `token` still holds it (a lease that expired and was
    /// taken by another holder is left alone).
    fn release_lease(&self, key: Arc<str>, token: Arc<str>) -> StoreFuture<()>;

    /// Resolves when the lease on `key` is released, told by the store (a push), for a
    /// caller waiting to take it or to read what its holder stored; the caller polls
    /// meanwhile. The default never resolves: the caller only polls.
    fn lease_released(&self, key: Arc<str>) -> StoreFuture<()> {
        let _ = key;
        Box::pin(std::future::pending())
    }
}
