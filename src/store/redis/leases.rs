//! Leases of a [`RedisStore`]: `SET NX PX` in a script that marks a lease waited on, released
//! by their holder only, with the release of a waited-on lease announced on the bus.

use super::scripts::{
    eval, lease_key, lease_waited_key, released_message, BUS, RELEASED_PREFIX, RELEASE_LEASE,
    TAKE_LEASE,
};
use super::RedisStore;
use crate::store::{Leases, StoreError, StoreFuture};
use redis::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

impl Leases for RedisStore {
    /// `SET {key}!lease token NX PX ttl` (the key's hash tag: on a cluster, the lease lives
    /// with its entry); when another holds it, `{key}!lease!w` marks it waited on, in the
    /// same script.
    fn try_lease(&self, key: Arc<str>, token: Arc<str>, ttl: Duration) -> StoreFuture<bool> {
        let this = self.clone();
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Box::pin(async move {
            let mut cmd = eval(TAKE_LEASE);
            cmd.arg(2)
                .arg(lease_key(&key))
                .arg(lease_waited_key(&key))
                .arg(&*token)
                .arg(millis);
            match this.run(&cmd).await? {
                Value::Int(1) => Ok(true),
                Value::Int(0) => Ok(false),
                other => Err(StoreError::new(format!(
                    "redis: unexpected reply to a lease: {other:?}"
                ))),
            }
        })
    }

    /// Deletes the lease by a compare-and-delete script: only while `token` holds it; if
    /// someone waited for it, the release is published on the bus.
    fn release_lease(&self, key: Arc<str>, token: Arc<str>) -> StoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let mut cmd = eval(RELEASE_LEASE);
            cmd.arg(2)
                .arg(lease_key(&key))
                .arg(lease_waited_key(&key))
                .arg(&*token)
                .arg(BUS)
                .arg(released_message(&key));
            this.run(&cmd).await.map(drop)
        })
    }

    /// Heard on this instance's bus subscription (which a memory tier in front opens);
    /// without one, never: the waiter polls.
    fn lease_released(&self, key: Arc<str>) -> StoreFuture<()> {
        let board = self.releases.clone();
        Box::pin(async move {
            board.wait(key).await;
            Ok(())
        })
    }
}

/// The leases this instance waits for, told of their release by the bus.
#[derive(Default)]
pub(super) struct ReleaseBoard {
    waiting: Mutex<HashMap<Arc<str>, tokio::sync::watch::Sender<()>>>,
}

impl ReleaseBoard {
    fn waiting(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, tokio::sync::watch::Sender<()>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads a release message; false when `payload` is not one.
    pub(super) fn heard(&self, payload: &[u8]) -> bool {
        let Some(key) = payload.strip_prefix(RELEASED_PREFIX) else {
            return false;
        };
        if let Ok(key) = std::str::from_utf8(key) {
            if let Some(tx) = self.waiting().get(key) {
                tx.send_replace(());
            }
        }
        true
    }

    /// Resolves at the next release of the lease on `key` heard.
    async fn wait(self: Arc<Self>, key: Arc<str>) {
        let mut rx = self
            .waiting()
            .entry(key.clone())
            .or_insert_with(|| tokio::sync::watch::channel(()).0)
            .subscribe();
        /// Forgets the key once its last waiter is gone.
        struct Waiting(Arc<ReleaseBoard>, Arc<str>);
        impl Drop for Waiting {
            fn drop(&mut self) {
                let mut waiting = self.0.waiting();
                if waiting
                    .get(&self.1)
                    .is_some_and(|tx| tx.receiver_count() == 0)
                {
                    waiting.remove(&self.1);
                }
            }
        }
        let waiting = Waiting(self.clone(), key);
        let told = rx.changed().await;
        drop(rx);
        drop(waiting);
        if told.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
