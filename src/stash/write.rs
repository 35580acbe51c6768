//! Write-through: a write's response stored as the key's entry, unless another write or an
//! invalidation overlapped it (then the key is invalidated).

use super::invalidate::Invalidation;
use super::Stash;
use crate::store::bus::{bus_message, new_message_id};
use crate::store::WriteTicket;
use crate::StoreError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

impl Stash {
    /// Begins a write-through of `key` (a base key, without the namespace): the store
    /// follows the writes in progress on it (across instances on a shared store), so that
    /// [`write_through`](Self::write_through) knows whether this write overlapped another.
    /// A store that fails leaves the write untracked: it ends as an invalidation. `variant`
    /// is what the read's key appends to `key` for the entry written (its host, or nothing).
    pub(crate) async fn begin_write(&self, key: &str, variant: &str) -> WriteTicket {
        let stored = self.stored_key(&format!("{}{key}{variant}", self.inner.prefix));
        let began = self.began();
        let begin = match self.store().writes() {
            Some(writes) => writes.begin_write(stored, self.inner.tombstone_ttl),
            None => return WriteTicket::untracked(),
        };
        match begin.await {
            Ok(ticket) => ticket.with_began(began),
            Err(e) => {
                self.counters().store_error();
                tracing::debug!(%key, error = %e, "a write could not be followed: it will invalidate");
                WriteTicket::untracked()
            }
        }
    }

    /// Ends a write-through that failed (or whose outcome is unknown): the key is
    /// invalidated, as the data may or may not have changed.
    pub(crate) async fn abandon_write(&self, key: &str, variant: &str, ticket: WriteTicket) {
        let stored = self.stored_key(&format!("{}{key}{variant}", self.inner.prefix));
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
    /// and `variant` (see [`begin_write`](Self::begin_write)) when the write overlapped no
    /// other write of `key` and no invalidation of it; otherwise, since the order in which
    /// overlapping writes reached the data is unknown, invalidates `key` instead. The entry
    /// is dated the latest the store's time can be now ([`stamp`](Self::stamp)), so that a
    /// read that began before the write cannot replace it with what it read; the key's
    /// variants are invalidated, and the other instances drop their memory copy. It returns
    /// once the store's time is surely past that date, so that an invalidation made after it
    /// is dated later.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn write_through(
        &self,
        key: &str,
        variant: &str,
        ticket: WriteTicket,
        parts: &http::response::Parts,
        body: bytes::Bytes,
        trailers: Option<http::HeaderMap>,
        ttl: Duration,
        tags: &[String],
    ) -> Result<(), StoreError> {
        let full = format!("{}{key}{variant}", self.inner.prefix);
        let mut headers = parts.headers.clone();
        crate::headers::strip_hop_by_hop(&mut headers);
        for name in [
            crate::headers::HINT_SKIP,
            crate::headers::HINT_TTL,
            crate::headers::HINT_TAGS,
        ] {
            headers.remove(name);
        }
        // The write's own length: what it declared may be for another encoding.
        headers.remove(http::header::CONTENT_LENGTH);
        super::complete_headers(&mut headers, parts.status, &body, true, self);
        let entry = crate::Entry::new(full, parts.status, headers, body)
            .with_trailers(trailers)
            .with_tags(tags.iter().map(|t| self.tag_name(t).into_owned()).collect());
        self.write_entry(key, ticket, entry, ttl).await.map(drop)
    }

    /// [`write_through`](Self::write_through) of a ready entry (its key the full key of
    /// `key` and its variant; its times are set here): the stored entry when it was stored, `None` when the
    /// write overlapped another and `key` was invalidated instead.
    pub(crate) async fn write_entry(
        &self,
        key: &str,
        ticket: WriteTicket,
        entry: crate::Entry,
        ttl: Duration,
    ) -> Result<Option<Arc<crate::Entry>>, StoreError> {
        self.inner.invalidations.fetch_add(1, Ordering::Release);
        let (stamp, store_time) = self.stamp();
        let keep = self.inner.tombstone_ttl;
        let stored = self.stored_key(entry.key());
        // Dated by the store's time, the older copies it replaces are invalidated as of the
        // write (every read that began before it is refused), and it is dated just after:
        // the wait before returning puts the store's time past that, so that an
        // invalidation made once the write returned still drops it. Dated by the clock (no
        // wait), it is dated `stamp` and the older copies as of just before.
        // (A microsecond apart: stores keep dates to the microsecond.)
        let tick = Duration::from_micros(1);
        let (older, at) = if store_time {
            (stamp, stamp + tick)
        } else {
            (stamp - tick, stamp)
        };
        let entry = Arc::new(entry.with_times(at, ttl).with_written(true));
        let ns: Arc<str> = self.inner.namespace.as_str().into();
        let family: Arc<str> = self.family(key).into();
        let store = self.store();
        let id = new_message_id();
        let result = async {
            let Some(writes) = store.writes() else {
                return Ok(false);
            };
            // Kept through its grace (a value's stale windows) too.
            let kept = ttl.saturating_add(entry.grace()).min(crate::entry::MAX_TTL);
            let end = writes.end_write(stored.clone(), ticket, Some((entry.clone(), kept)));
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
            self.commit_wait(at, store_time).await;
            Ok(true)
        }
        .await;
        match result {
            Ok(true) => {
                self.stored();
                Ok(Some(entry))
            }
            Ok(false) => {
                tracing::debug!(%key, "the write overlapped another write or an invalidation: invalidating the key");
                self.invalidate(Invalidation::Key(key.into()))
                    .await
                    .map(|()| None)
            }
            Err(e) => {
                self.publish_failed(&e);
                self.store_failed("write-through failed: invalidating the key", &key, &e);
                // No old value may outlive the write: the key goes (retried until it does).
                let _ = self.invalidate(Invalidation::Key(key.into())).await;
                Err(e)
            }
        }
    }
}
