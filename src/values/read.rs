//! Reading values: from the memory tier or the store, the decoded value kept with the entry
//! it came from.

use super::{Found, Memo, Values, CODEC, VERSION};
use crate::values::Codec;
use crate::Entry;
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

impl<T, C> Values<T, C>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Looks `stored` up: in the memory tier at once when the store has one, else in the
    /// store. A store error is counted and reads as a miss; so is an unreadable value when
    /// `count` (once per call: not again while waiting for another instance's fetch).
    pub(super) async fn lookup(&self, stored: &Arc<str>, full: &str, count: bool) -> Found<T> {
        let store = self.stash.store();
        let entry = match store.get_local(stored) {
            Some(found) => found,
            None => match store.get(stored.clone()).await {
                Ok(found) => found,
                Err(e) => {
                    self.stash.counters().store_error();
                    tracing::debug!(key = %full, error = %e, "a value's lookup failed: a miss");
                    None
                }
            },
        };
        match entry {
            Some(entry) => self.read(stored, full, entry, count),
            None => Found::Miss,
        }
    }

    /// Looks `stored` up in the shared store alone, past the memory tier (whose copy may be
    /// older than what another instance stored since), and keeps a fresh value found there
    /// in the memory tier. Unreadable values are not counted (the caller's lookup was).
    pub(super) async fn lookup_shared(&self, stored: &Arc<str>, full: &str) -> Found<T> {
        let store = self.stash.store();
        let entry = match store.get_shared(stored.clone(), None).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return Found::Miss,
            Err(e) => {
                self.stash.counters().store_error();
                tracing::debug!(key = %full, error = %e, "a value's lookup failed: a miss");
                return Found::Miss;
            }
        };
        let found = self.read(stored, full, entry.clone(), false);
        if let Found::Value(_) = found {
            let keep = entry.remaining(self.stash.now()) + entry.grace();
            if let Some(put) = store.put_local(stored.clone(), entry, keep) {
                let _ = put.await;
            }
        }
        found
    }

    /// The value of a fresh entry: the one the handle decoded before when the store still
    /// holds that entry, or else decoded now.
    pub(super) fn read(
        &self,
        stored: &Arc<str>,
        full: &str,
        entry: Arc<Entry>,
        count: bool,
    ) -> Found<T> {
        let now = self.stash.now();
        if entry.is_tombstone() || entry.key() != full || now >= entry.stale_until() {
            return Found::Miss;
        }
        let found = if now < entry.fresh_until() {
            Found::Value
        } else {
            Found::Stale
        };
        if let Some(memo) = self.memo.get(stored) {
            if Arc::ptr_eq(&memo.entry, &entry) || same(&memo.entry, &entry) {
                return found(memo.value);
            }
        }
        let headers = entry.headers();
        let readable = headers.get(CODEC).is_some_and(|c| c == C::NAME)
            && headers
                .get(VERSION)
                .is_some_and(|v| v.as_bytes() == self.settings.version.to_string().as_bytes());
        let value = match entry.status() {
            _ if !readable => None,
            StatusCode::NOT_FOUND => Some(None),
            StatusCode::OK => match self.codec.decode::<T>(entry.body()) {
                Ok(v) => Some(Some(Arc::new(v))),
                Err(e) => {
                    tracing::debug!(key = %full, error = %e, "a value could not be decoded: a miss");
                    None
                }
            },
            _ => None,
        };
        let Some(value) = value else {
            if count {
                self.stash.counters().unreadable();
            }
            return Found::Miss;
        };
        self.memo.insert(
            stored.clone(),
            Memo {
                entry,
                value: value.clone(),
            },
        );
        found(value)
    }
}

/// Whether two entries are the same stored value (one read again from a shared store).
fn same(a: &Entry, b: &Entry) -> bool {
    a.stored_at() == b.stored_at()
        && a.status() == b.status()
        && a.body() == b.body()
        && a.headers() == b.headers()
}
