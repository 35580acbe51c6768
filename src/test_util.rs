//! Bounded waits and a failing store for the unit tests.

use crate::{Entry, Store, StoreError, StoreFuture};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A shared store that is always down: every call fails.
pub(crate) struct Down;

impl Store for Down {
    fn get(&self, _: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        Box::pin(async { Err(StoreError::new("down")) })
    }
    fn put(&self, _: Arc<str>, _: Arc<Entry>, _: Duration) -> StoreFuture<()> {
        Box::pin(async { Err(StoreError::new("down")) })
    }
    fn delete(&self, _: Arc<str>) -> StoreFuture<()> {
        Box::pin(async { Err(StoreError::new("down")) })
    }
    fn invalidate_tag(
        &self,
        _: Arc<str>,
        _: Arc<str>,
        _: SystemTime,
        _: Duration,
    ) -> StoreFuture<()> {
        Box::pin(async { Err(StoreError::new("down")) })
    }
}

/// Waits for `fut`, failing the test after 10 seconds.
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until `cond` holds, checking every millisecond, for at most 10 seconds.
pub(crate) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
}
