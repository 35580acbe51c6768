//! Unit tests of what the stash decides on its own.

use super::invalidate::PENDING_MAX;
use super::*;
use crate::test_util::Down;
use crate::MemoryStore;
use crate::{Entry, TieredStore};
use std::time::Duration;

#[tokio::test]
async fn pending_invalidations_are_kept_once_each_and_bounded() {
    let stash = Stash::builder()
        .store(TieredStore::new(MemoryStore::default(), Down))
        .build()
        .unwrap();
    let kept: Arc<str> = "stash:v1:kept".into();
    let entry = Entry::new(&*kept, http::StatusCode::OK, Default::default(), "x".into())
        .with_times(SystemTime::now(), Duration::from_secs(60));
    assert!(stash
        .store()
        .put(kept.clone(), Arc::new(entry), Duration::from_secs(60))
        .await
        .is_err());
    assert!(
        stash.store().get_local(&kept).unwrap().is_some(),
        "the memory tier keeps it"
    );

    // The same invalidation twice waits once.
    assert!(stash.invalidate_key("a").await.is_err());
    assert!(stash.invalidate_key("a").await.is_err());
    assert!(stash.invalidate_tag("a").await.is_err());
    assert_eq!(stash.pending_invalidations(), 2);

    // Up to the bound, nothing is given up.
    for i in 2..PENDING_MAX {
        let _ = stash.invalidate_key(&format!("k{i}")).await;
    }
    assert_eq!(stash.pending_invalidations(), PENDING_MAX);
    assert!(stash.store().get_local(&kept).unwrap().is_some());
    // One more: the oldest is given up, and the memory tier flushed in its place.
    let _ = stash.invalidate_key("one-more").await;
    assert_eq!(stash.pending_invalidations(), PENDING_MAX);
    assert_eq!(stash.store().get_local(&kept), None);
}
