//! The memory store: its bound, its read index, and what invalidations keep.

use super::*;
use http::StatusCode;
use std::time::SystemTime;

fn entry(key: &str, body_len: usize) -> Arc<Entry> {
    Arc::new(
        Entry::new(
            key,
            StatusCode::OK,
            Default::default(),
            vec![b'x'; body_len].into(),
        )
        .with_times(SystemTime::now(), Duration::from_secs(60)),
    )
}

#[test]
fn keeps_the_byte_bound_under_many_keys() {
    let bound = 256 * 1024;
    let store = MemoryStore::new(bound);
    for i in 0..5_000 {
        let key: Arc<str> = format!("k{i}").into();
        store.insert(key.clone(), entry(&key, 1000), Duration::from_secs(60));
    }
    store.run_pending_tasks();
    let usage = store.usage();
    assert!(usage.bytes <= bound, "{usage:?}");
    assert!(usage.entries > 50 && usage.entries < 5_000, "{usage:?}");
    assert!(usage.evictions > 0, "{usage:?}");
    // The read index holds exactly what moka holds: evictions leave it too.
    assert_eq!(store.index.len() as u64, usage.entries);
}

#[test]
fn index_follows_replace_delete_and_expiry() {
    let store = MemoryStore::new(1 << 20);
    let key: Arc<str> = "k".into();
    let (a, b) = (entry("k", 1), entry("k", 2));
    store.insert(key.clone(), a, Duration::from_secs(60));
    store.insert(key.clone(), b.clone(), Duration::from_secs(60));
    store.run_pending_tasks();
    assert!(Arc::ptr_eq(&store.get_now("k").unwrap(), &b));
    drop(store.delete(key.clone()));
    store.run_pending_tasks();
    assert!(store.get_now("k").is_none());
    assert!(store.index.is_empty());
    store.insert(key.clone(), entry("k", 3), Duration::from_millis(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.index.contains_key("k") {
        assert!(
            Instant::now() < deadline,
            "expired entry never left the index"
        );
        std::thread::yield_now();
        store.run_pending_tasks();
    }
    assert!(store.get_now("k").is_none());
}

#[test]
fn reading_an_expired_entry_does_not_deadlock() {
    // moka's inline housekeeping calls the eviction listener, which writes to the index:
    // no index guard may be held across a moka call.
    let store = MemoryStore::new(1 << 20);
    for i in 0..200 {
        let key: Arc<str> = format!("k{i}").into();
        store.insert(key.clone(), entry(&key, 1), Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(5)); // let them expire: nothing to await
    let (done, finished) = std::sync::mpsc::channel();
    let reader = store.clone();
    std::thread::spawn(move || {
        for _ in 0..50 {
            for i in 0..200 {
                assert!(reader.get_now(&format!("k{i}")).is_none());
            }
        }
        let _ = done.send(());
    });
    // A deadlock fails the test instead of hanging it.
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("reads of expired entries deadlocked or panicked");
}

#[test]
fn entry_larger_than_the_bound_is_not_kept() {
    let store = MemoryStore::new(10_000);
    let key: Arc<str> = "big".into();
    store.insert(key.clone(), entry(&key, 20_000), Duration::from_secs(60));
    store.run_pending_tasks();
    assert!(store.get_now("big").is_none());
}

fn tagged(key: &str, tags: &[&str], at: SystemTime) -> Arc<Entry> {
    Arc::new(
        Entry::new(key, StatusCode::OK, Default::default(), "x".into())
            .with_times(at, Duration::from_secs(60))
            .with_tags(tags.iter().map(|t| t.to_string()).collect()),
    )
}

#[tokio::test]
async fn a_tag_invalidation_looks_at_its_members_only() {
    let store = MemoryStore::new(64 << 20);
    let now = SystemTime::now() - Duration::from_secs(1);
    let ttl = Duration::from_secs(60);
    for i in 0..10_000 {
        let key = format!("ns:k{i}");
        store
            .put(
                key.clone().into(),
                tagged(&key, &[&format!("~k{i}")], now),
                ttl,
            )
            .await
            .unwrap();
    }
    // Two variants of one key share its family tag.
    let v = "ns:k7|~h=1";
    store
        .put(v.into(), tagged(v, &["~k7"], now), ttl)
        .await
        .unwrap();
    store
        .invalidate_tag("ns".into(), "~k7".into(), SystemTime::now(), ttl)
        .await
        .unwrap();
    assert!(store.get_now("ns:k7").is_none() && store.get_now(v).is_none());
    assert!(store.get_now("ns:k8").is_some());
    assert!(
        store.examined() <= 2,
        "{} entries examined for a tag of two",
        store.examined()
    );
}

#[tokio::test]
async fn a_flood_of_invalidations_keeps_bookkeeping_bounded_and_live_entries_in() {
    // A store nearly full of live entries, then invalidations of 100,000 other keys and
    // tags (what a POST flood sends): the live entries all stay, and what is kept about
    // the invalidations stays within a bound.
    let store = MemoryStore::new(4 << 20);
    let ttl = Duration::from_secs(60);
    let old = SystemTime::now() - Duration::from_secs(1);
    let mut live = Vec::new();
    for i in 0..2_000 {
        let key = format!("ns:live{i}");
        store
            .put(key.clone().into(), entry(&key, 1000), ttl)
            .await
            .unwrap();
        live.push(key);
    }
    store.run_pending_tasks();
    let before = store.usage();
    assert_eq!(before.entries, 2_000, "{before:?}");
    let mut kept = Vec::new();
    for i in 0..100_000 {
        let at = SystemTime::now();
        let key = format!("ns:gone{i}");
        store.invalidate(key.into(), at, ttl).await.unwrap();
        store
            .invalidate_tag("ns".into(), format!("~gone{i}").into(), at, ttl)
            .await
            .unwrap();
        if (i + 1) % 20_000 == 0 {
            kept.push(store.bookkeeping_bytes());
        }
    }
    store.run_pending_tasks();
    assert!(
        live.iter().all(|k| store.get_now(k).is_some()),
        "{:?}",
        store.usage()
    );
    assert_eq!(store.usage().evictions, 0);
    // A quarter of the bound at most, and no more after 100,000 than after 20,000 (within
    // the few bytes of a tombstone, as moka settles its counts).
    assert!(
        kept.iter().all(|b| *b <= (4 << 20) / 4),
        "bytes kept: {kept:?}"
    );
    assert!(kept[4] <= kept[0] + 1024, "bytes kept: {kept:?}");
    // Every invalidation still refuses a fill that began before it, the first ones too.
    for i in [0, 99_999] {
        let key = format!("ns:gone{i}");
        store
            .put(key.clone().into(), tagged(&key, &[], old), ttl)
            .await
            .unwrap();
        assert!(store.get_now(&key).is_none(), "{key}");
        let key = format!("ns:other{i}");
        let tag = format!("~gone{i}");
        store
            .put(key.clone().into(), tagged(&key, &[&tag], old), ttl)
            .await
            .unwrap();
        assert!(store.get_now(&key).is_none(), "{key} tagged {tag}");
    }
}

#[tokio::test]
async fn tombstones_refuse_older_and_same_time_fills_and_a_key_s_invalidation_always_lands() {
    use std::time::UNIX_EPOCH;
    let store = MemoryStore::new(1 << 20);
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s);
    let dated = |s: u64, body: &'static str| {
        Arc::new(
            Entry::new("k", http::StatusCode::OK, Default::default(), body.into())
                .with_times(at(s), Duration::from_secs(60)),
        )
    };
    let ttl = Duration::from_secs(60);
    store.put("k".into(), dated(10, "v1"), ttl).await.unwrap();
    store.invalidate("k".into(), at(20), ttl).await.unwrap();
    assert!(store.get_now("k").is_none());
    // Began before, or at the same time as, the invalidation: refused.
    for s in [15, 20] {
        store.put("k".into(), dated(s, "late"), ttl).await.unwrap();
        assert!(store.get_now("k").is_none(), "a fill dated {s}");
    }
    // Began after: stored.
    store.put("k".into(), dated(25, "v2"), ttl).await.unwrap();
    assert_eq!(store.get_now("k").unwrap().body(), "v2");
    // An invalidation applied later lands even when dated earlier (its date came from
    // another clock): what was applied last wins.
    store.invalidate("k".into(), at(22), ttl).await.unwrap();
    assert!(store.get_now("k").is_none());
    // A fill that began after the invalidation's date still lands.
    store.put("k".into(), dated(23, "v3"), ttl).await.unwrap();
    assert_eq!(store.get_now("k").unwrap().body(), "v3");
}

#[tokio::test]
async fn a_tag_invalidation_drops_a_written_entry_dated_after_it() {
    let store = MemoryStore::default();
    let t0 = SystemTime::now();
    let later = t0 + Duration::from_secs(5);
    let written = Entry::clone(&tagged("wr:v1:written", &["t"], later)).with_written(true);
    store
        .put(
            "wr:v1:written".into(),
            Arc::new(written),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    store
        .put(
            "wr:v1:filled".into(),
            tagged("wr:v1:filled", &["t"], later),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let at = t0 + Duration::from_secs(1);
    store
        .invalidate_tag("wr".into(), "t".into(), at, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(store.get("wr:v1:written".into()).await.unwrap().is_none());
    assert!(store.get("wr:v1:filled".into()).await.unwrap().is_some());
}
