//! Leases of a [`RedisStore`]: `SET NX PX`, released by their holder only.

use super::scripts::{lease_key, RELEASE_LEASE};
use super::RedisStore;
use crate::store::{Leases, StoreError, StoreFuture};
use redis::Value;
use std::sync::Arc;
use std::time::Duration;

impl Leases for RedisStore {
    /// `SET {key}!lease token NX PX ttl` (the key's hash tag: on a cluster, the lease lives
    /// with its entry).
    fn try_lease(&self, key: Arc<str>, token: Arc<str>, ttl: Duration) -> StoreFuture<bool> {
        let this = self.clone();
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(lease_key(&key))
                .arg(&*token)
                .arg("NX")
                .arg("PX")
                .arg(millis);
            match this.run(&cmd).await? {
                Value::Okay => Ok(true),
                Value::Nil => Ok(false),
                other => Err(StoreError::new(format!(
                    "redis: unexpected reply to a lease: {other:?}"
                ))),
            }
        })
    }

    /// Deletes the lease by a compare-and-delete script: only while `token` holds it.
    fn release_lease(&self, key: Arc<str>, token: Arc<str>) -> StoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(RELEASE_LEASE)
                .arg(1)
                .arg(lease_key(&key))
                .arg(&*token);
            this.run(&cmd).await.map(drop)
        })
    }
}
