//! Invalidations: of a key (and its variants) or of a tag, in the store and, through its bus,
//! in every instance; retried in the background while the store fails.

use super::Stash;
use crate::store::bus::{bus_message, new_message_id};
use crate::StoreError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

impl Stash {
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
        let tag = self.tag_name(tag).into_owned();
        self.invalidate(Invalidation::Tag(tag)).await
    }

    /// Invalidates every entry whose key starts with `prefix` (keys as
    /// [`invalidate_key`](Self::invalidate_key) names them: `user:`, or `GET /users/` for
    /// routes with the default key), in every instance: the store lists them (the memory
    /// tier's, and Redis's by `SCAN`, on every master of a cluster) and each is invalidated
    /// as `invalidate_key` does, 32 at a time. At most [`PREFIX_LIMIT`] keys; returns how
    /// many. Keys too long to be stored as they are (hashed) are not found by a prefix:
    /// invalidate those by tag. A store that lists no keys (a custom one) finds none.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        let ns = self.inner.prefix.len();
        let full: Arc<str> = format!("{}{prefix}", self.inner.prefix).into();
        let keys = self.store().keys(full, PREFIX_LIMIT).await?;
        let mut done = 0;
        for chunk in keys.chunks(32) {
            let mut set = tokio::task::JoinSet::new();
            for key in chunk {
                let (stash, key) = (self.clone(), key.get(ns..).unwrap_or_default().to_owned());
                set.spawn(async move { stash.invalidate_key(&key).await });
            }
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok(Ok(())) => done += 1,
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(StoreError::new(format!("an invalidation task: {e}"))),
                }
            }
        }
        Ok(done)
    }

    pub(crate) async fn invalidate(&self, what: Invalidation) -> Result<(), StoreError> {
        use tracing::Instrument;
        let (kind, target) = match &what {
            Invalidation::Key(key) => ("key", key.as_str()),
            Invalidation::Tag(tag) => ("tag", tag.as_str()),
        };
        let span = tracing::debug_span!("tower_stash.invalidate", kind, target);
        let target = target.to_owned();
        let result = self.invalidate_in_span(what).instrument(span).await;
        self.record_invalidation(kind, &target, result.is_ok());
        result
    }

    async fn invalidate_in_span(&self, what: Invalidation) -> Result<(), StoreError> {
        self.inner.invalidations.fetch_add(1, Ordering::Release);
        let result = self.apply(&what).await;
        if let Err(e) = &result {
            self.store_failed(
                "invalidation failed: retrying in the background",
                &format_args!("{what:?}"),
                e,
            );
            self.queue(std::iter::once(what));
            self.retry_pending();
        }
        result
    }

    /// Invalidates in the store and tells the other instances.
    async fn apply(&self, what: &Invalidation) -> Result<(), StoreError> {
        let (at, store_time) = self.stamp();
        let keep = self.inner.tombstone_ttl;
        let store = self.store();
        let ns: Arc<str> = self.inner.namespace.as_str().into();
        let id = new_message_id();
        let (message, done) = match what {
            Invalidation::Key(key) => {
                let full = format!("{}{key}", self.inner.prefix);
                let stored: Arc<str> = self.hashed_key(&full).unwrap_or(full).into();
                let family: Arc<str> = self.family(key).into();
                let message = bus_message(b'k', at, keep, &id, &[&stored, &ns, &family]);
                // In one call where the store can (Redis on one server: one script).
                let done = store.invalidate_and_publish(
                    stored.clone(),
                    ns.clone(),
                    family.clone(),
                    at,
                    keep,
                    message.clone(),
                );
                if done.is_none() {
                    // The key and its variants at once (neither depends on the other).
                    let one = store.invalidate(stored, at, keep);
                    let all = store.invalidate_tag(ns, family, at, keep);
                    let (one, all) = crate::concurrently::join(one, all).await;
                    one?;
                    all?;
                }
                (message, done)
            }
            Invalidation::Tag(tag) => {
                store
                    .invalidate_tag(ns.clone(), tag.as_str().into(), at, keep)
                    .await?;
                (bus_message(b't', at, keep, &id, &[&ns, tag]), None)
            }
        };
        let published = match done {
            Some(done) => done.await,
            None => self.publish(message).await,
        };
        let sent = match published {
            Ok(sent) => sent,
            Err(e) => {
                self.publish_failed(&e);
                return Err(e);
            }
        };
        self.await_acks(&id, sent).await;
        // Then what is left of the commit wait (time only: run alongside the calls above it
        // measured no faster, its last fraction of a millisecond being spent yielding).
        self.commit_wait(at, store_time).await;
        Ok(())
    }

    /// Publishes `message` on the store's bus: how many subscribers got it (none without a bus).
    pub(super) async fn publish(&self, message: bytes::Bytes) -> Result<u64, StoreError> {
        match self.store().bus() {
            Some(bus) => bus.publish(message).await,
            None => Ok(0),
        }
    }

    /// Says once, at error level, that the store refuses the bus for lack of permission: a
    /// setting to fix, not an outage to wait out (every invalidation keeps failing).
    pub(super) fn publish_failed(&self, e: &StoreError) {
        // A refused channel, not a refused key or command (the store's invalidation in one
        // call may fail for those too).
        let message = e.to_string();
        if message.contains("NOPERM")
            && message.contains("channel")
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
    pub(super) async fn await_acks(&self, id: &str, sent: u64) {
        if sent == 0 {
            return;
        }
        let Some(bus) = self.store().bus() else {
            return;
        };
        let deadline = std::time::Instant::now() + ACK_WAIT;
        // Told by the bus where it can (Redis: the subscribers publish their counts), and
        // asked now and then meanwhile (a publisher without a subscription of its own, a
        // count published while it was not listening).
        let pushed = bus.pushed_acknowledgements(id.into(), sent);
        let asked = async {
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
        };
        crate::concurrently::first(pushed, asked).await;
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
}

/// An invalidation to apply (and to retry when the store fails).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Invalidation {
    Key(String),
    Tag(String),
}

/// The most keys [`Stash::invalidate_prefix`] invalidates at once.
pub const PREFIX_LIMIT: usize = 10_000;

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
    pub(super) fn push(&mut self, what: Invalidation) -> usize {
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
    pub(super) fn take(&mut self) -> Vec<Invalidation> {
        self.queued.clear();
        self.order.drain(..).collect()
    }

    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The longest an invalidation waits for every instance to acknowledge it.
const ACK_WAIT: Duration = Duration::from_millis(50);
