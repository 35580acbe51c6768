//! Reading values: from the memory tier or the store, the decoded value kept with the entry
//! it came from.

use super::{push_escaped, Decoded, Found, Values, CODEC, VERSION};
use crate::values::Codec;
use crate::Entry;
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::RefCell;
use std::sync::Arc;

thread_local! {
    /// The buffer a memory hit builds its key in (no allocation per hit).
    static KEY: RefCell<String> = const { RefCell::new(String::new()) };
}

impl<T, C> Values<T, C>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// What the memory tier says of `key` at once: `None` when it has nothing to say (no
    /// memory tier, or one that asks the shared store first).
    pub(super) fn local(&self, key: &str) -> Option<Found<T>> {
        KEY.with_borrow_mut(|full| {
            full.clear();
            full.push_str(&self.stash.inner.prefix);
            full.push('=');
            push_escaped(full, key);
            let hashed = self.stash.hashed_key(full);
            let stored = hashed.as_deref().unwrap_or(full);
            let found = match self.stash.store().get_local(stored)? {
                Some(entry) => self.read(stored, full, &entry, true),
                None => Found::Miss,
            };
            Some(found)
        })
    }

    /// Looks `stored` up: in the memory tier at once when the store has one, else in the
    /// store. A store error is counted and reads as a miss; so is an unreadable value when
    /// `count` (once per call: not again while waiting for another instance's fetch).
    pub(super) async fn lookup(&self, stored: &Arc<str>, full: &str, count: bool) -> Found<T> {
        let store = self.stash.store();
        let entry = match store.get_local(stored) {
            Some(found) => found,
            // Through the tiers (a memory tier in front keeps what the shared store had).
            None => match match self.settings.sliding {
                Some(idle) => store.get_sliding(stored.clone(), idle),
                None => store.get(stored.clone()),
            }
            .await
            {
                Ok(found) => found,
                Err(e) => {
                    self.stash.counters().store_error();
                    tracing::debug!(key = %full, error = %e, "a value's lookup failed: a miss");
                    None
                }
            },
        };
        match entry {
            Some(entry) => self.read(stored, full, &entry, count),
            None => Found::Miss,
        }
    }

    /// Looks `stored` up in the shared store alone, past the memory tier (whose copy may be
    /// older than what another instance stored since), and keeps a fresh value found there
    /// in the memory tier. Unreadable values are not counted (the caller's lookup was).
    pub(super) async fn lookup_shared(&self, stored: &Arc<str>, full: &str) -> Found<T> {
        let store = self.stash.store();
        let read = store.get_shared(stored.clone(), self.settings.sliding);
        let entry = match read.await {
            Ok(Some(entry)) => entry,
            Ok(None) => return Found::Miss,
            Err(e) => {
                self.stash.counters().store_error();
                tracing::debug!(key = %full, error = %e, "a value's lookup failed: a miss");
                return Found::Miss;
            }
        };
        let found = self.read(stored, full, &entry, false);
        if let Found::Value(_) | Found::Early(_) = found {
            let keep = entry.remaining(self.stash.now()) + entry.grace();
            if let Some(put) = store.put_local(stored.clone(), entry, keep) {
                let _ = put.await;
            }
        }
        found
    }

    /// What `entry`, stored under `stored`, is good for now: its value decoded once (kept
    /// with the entry), fresh (a read of a sliding entry extends it; XFetch may choose this
    /// read to refresh it early), stale, or a miss.
    pub(super) fn read(
        &self,
        stored: &str,
        full: &str,
        entry: &Arc<Entry>,
        count: bool,
    ) -> Found<T> {
        let now = self.stash.now();
        if entry.is_tombstone() || entry.key() != full || now >= entry.stale_until() {
            return Found::Miss;
        }
        let value = match entry.decoded::<Decoded<T, C>>(self.settings.version) {
            Some(decoded) => decoded.0.clone(),
            None => match self.decode(full, entry) {
                Some(value) => {
                    self.keep_decoded(entry, value.clone());
                    value
                }
                None => {
                    if count {
                        self.stash.counters().unreadable();
                    }
                    return Found::Miss;
                }
            },
        };
        let fresh_until = entry.fresh_until();
        if let Ok(remaining) = fresh_until.duration_since(now) {
            if !remaining.is_zero() {
                self.stash.touch_sliding(stored, entry, now);
                return match self
                    .stash
                    .refresh_early(entry, remaining, self.settings.beta)
                {
                    true => Found::Early(value),
                    false => Found::Value(value),
                };
            }
        }
        let past = now.duration_since(fresh_until).unwrap_or_default();
        if past < self.settings.stale {
            Found::Stale(value)
        } else if past < self.settings.if_error {
            Found::Spare(value)
        } else {
            Found::Miss
        }
    }

    /// The value in `entry`'s body (`Some(None)`: a cached not-found), or `None` when it was
    /// stored with another codec or version, or does not decode.
    fn decode(&self, full: &str, entry: &Entry) -> Option<Option<Arc<T>>> {
        let headers = entry.headers();
        let readable = headers.get(CODEC).is_some_and(|c| c == C::NAME)
            && headers.get(VERSION).is_some_and(|v| {
                v.to_str()
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
                    .is_some_and(|v| v == self.settings.version)
            });
        match entry.status() {
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
        }
    }
}
