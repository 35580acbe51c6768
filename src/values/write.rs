//! Write-through of values: [`Values::set`] and [`Values::update`], and the rollback of a
//! write that fails or is dropped.

use super::{value_key, Values};
use crate::values::Codec;
use crate::{Entry, Stash, StoreError};
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;

impl<T, C> Values<T, C>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Stores `value` under `key` after a write to the data (write-through), dated after every
    /// read in progress, so that none of them can put back what it read. When another write
    /// or an invalidation of `key` overlapped this one (on any instance), or the store fails,
    /// `key` is invalidated instead: the next read fetches. [`update`](Self::update) follows
    /// the write itself too.
    pub async fn set(&self, key: impl AsRef<str>, value: &T) -> Result<(), StoreError> {
        let key = key.as_ref();
        let write = Write::begin(self, key).await;
        self.write_through(key, write, value).await.map(drop)
    }

    /// Runs `write`, a write to the data that answers with the new value, and stores that
    /// value under `key` (write-through), following the write from its start: when another
    /// write or an invalidation of `key` overlapped it (on any instance), `key` is invalidated
    /// instead. A write that fails (its error is returned) or is dropped before it ends
    /// invalidates `key` (rollback), since the data may or may not have changed.
    pub async fn update<F, Fut, E>(&self, key: impl AsRef<str>, write: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = key.as_ref();
        let mut guard = Write::begin(self, key).await;
        match write().await {
            Ok(value) => {
                let value = Arc::new(value);
                if let Ok(Some(entry)) = self.write_through(key, guard, &value).await {
                    self.keep_decoded(&entry, Some(value.clone()));
                }
                Ok(value)
            }
            Err(e) => {
                if let Some(ticket) = guard.ticket.take() {
                    self.stash.abandon_write(&guard.base, "", ticket).await;
                }
                Err(e)
            }
        }
    }

    /// Ends `write` storing `value`: the stored entry, `None` when `key` was invalidated.
    async fn write_through(
        &self,
        key: &str,
        mut write: Write,
        value: &T,
    ) -> Result<Option<Arc<Entry>>, StoreError> {
        let ticket = write.ticket.take().expect("a write is ended once");
        let body = match self.codec.encode(value) {
            Ok(body) => body,
            Err(e) => {
                self.stash.abandon_write(&write.base, "", ticket).await;
                return Err(StoreError::new(e));
            }
        };
        let full = format!("{}{}", self.stash.inner.prefix, write.base);
        let grace = self.settings.stale.max(self.settings.if_error);
        let entry = self
            .entry(full, key, StatusCode::OK, body.into(), Some(value))
            .with_grace(grace)
            .with_sliding(self.settings.sliding);
        self.stash
            .write_entry(&write.base, ticket, entry, self.settings.ttl)
            .await
    }
}

/// A write-through in progress: dropped before it ends, it invalidates its key (in the
/// background).
struct Write {
    stash: Stash,
    base: String,
    ticket: Option<crate::WriteTicket>,
}

impl Write {
    async fn begin<T, C>(values: &Values<T, C>, key: &str) -> Self {
        let base = value_key(key);
        let ticket = values.stash.begin_write(&base, "").await;
        Self {
            stash: values.stash.clone(),
            base,
            ticket: Some(ticket),
        }
    }
}

impl Drop for Write {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (stash, base) = (self.stash.clone(), std::mem::take(&mut self.base));
            rt.spawn(async move { stash.abandon_write(&base, "", ticket).await });
        }
    }
}
