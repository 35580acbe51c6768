//! Writes in progress, followed in Redis for a [`RedisStore`]: one sorted set per key,
//! hash-tagged with it, so that one script sees the key and its writes.

use super::scripts::{eval, last_writer_key, ms, writes_key, WRITE_BEGIN, WRITE_END};
use super::RedisStore;
use crate::store::{StoreError, StoreFuture, WriteTicket, Writes};
use crate::Entry;
use bytes::Bytes;
use redis::Value;
use std::sync::Arc;
use std::time::Duration;

impl Writes for RedisStore {
    fn begin_write(&self, key: Arc<str>, keep: Duration) -> StoreFuture<WriteTicket> {
        let this = self.clone();
        Box::pin(async move {
            let id = fastrand::u64(1..);
            let mut cmd = eval(WRITE_BEGIN);
            cmd.arg(2)
                .arg(writes_key(&key))
                .arg(last_writer_key(&key))
                .arg(id)
                .arg(ms(keep));
            match this.run(&cmd).await? {
                Value::Int(others) => Ok(WriteTicket::new(id, others == 0)),
                other => Err(StoreError::new(format!(
                    "redis: unexpected reply to a write's start: {other:?}"
                ))),
            }
        })
    }

    /// Adds the entry to its tags' indexes, then ends the write and stores the entry in one
    /// script: no invalidation or other write can come between the check and the `SET`.
    fn end_write(
        &self,
        key: Arc<str>,
        ticket: WriteTicket,
        entry: Option<(Arc<Entry>, Duration)>,
    ) -> StoreFuture<bool> {
        let this = self.clone();
        Box::pin(async move {
            if ticket.id() == 0 {
                return Ok(false);
            }
            let mut value = Bytes::new();
            let mut millis = 1;
            if let Some((entry, ttl)) = entry.filter(|_| ticket.alone()) {
                // A tag invalidated since the write began: ended, not stored.
                let began = ticket.began().unwrap_or_else(|| entry.stored_at());
                if !this.add_to_tags(&key, &entry, began, ms(ttl)).await? {
                    value = entry.encode();
                }
                // As `put`: a sliding entry lives its idle time (extended by its reads), its
                // tag indexes its whole TTL.
                millis = entry
                    .sliding()
                    .map_or(ms(ttl), |idle| ms(ttl).min(ms(idle)).max(1));
            }
            let mut cmd = eval(WRITE_END);
            cmd.arg(3)
                .arg(writes_key(&key))
                .arg(last_writer_key(&key))
                .arg(&*key)
                .arg(ticket.id())
                .arg(if ticket.alone() { "1" } else { "0" })
                .arg(&value[..])
                .arg(millis);
            match this.run(&cmd).await? {
                Value::Int(stored) => Ok(stored == 1),
                other => Err(StoreError::new(format!(
                    "redis: unexpected reply to a write's end: {other:?}"
                ))),
            }
        })
    }
}
