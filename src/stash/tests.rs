//! Unit tests of what the stash decides on its own.

use super::invalidate::{Invalidation, Pending, PENDING_MAX};
use super::*;
use crate::store::bus::{parse_bus_message, BusWhat};
use crate::store::{Bus, BusEvent, StoreFuture};
use crate::test_util::Down;
use crate::{BreakerState, Entry, Guarded, Health, MemoryStore, TieredStore};
use bytes::Bytes;
use std::sync::Weak;
use std::time::SystemTime;
use std::time::{Duration, UNIX_EPOCH};

/// A memory store with a bus that keeps what is published; every message reaches one
/// subscriber, which acknowledges it at once.
struct Recorder {
    memory: MemoryStore,
    sent: Arc<Mutex<Vec<Bytes>>>,
}

impl Recorder {
    fn new() -> (Self, Arc<Mutex<Vec<Bytes>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let memory = MemoryStore::default();
        (
            Self {
                memory,
                sent: sent.clone(),
            },
            sent,
        )
    }
}

impl Store for Recorder {
    fn get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        self.memory.get(key)
    }
    fn put(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) -> StoreFuture<()> {
        self.memory.put(key, entry, ttl)
    }
    fn delete(&self, key: Arc<str>) -> StoreFuture<()> {
        self.memory.delete(key)
    }
    fn bus(&self) -> Option<&dyn Bus> {
        Some(self)
    }
}

impl Bus for Recorder {
    fn publish(&self, message: Bytes) -> StoreFuture<u64> {
        self.sent.lock().unwrap().push(message);
        Box::pin(std::future::ready(Ok(1)))
    }
    fn subscribe(&self, _: Weak<dyn Fn(BusEvent) + Send + Sync>) -> bool {
        false
    }
    fn acknowledgements(&self, _: Arc<str>) -> StoreFuture<u64> {
        Box::pin(std::future::ready(Ok(1)))
    }
}

/// A time on a whole millisecond.
fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

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

#[test]
fn pending_invalidations_are_retried_oldest_first_each_once() {
    let (key, tag) = (
        |k: &str| Invalidation::Key(k.into()),
        |t: &str| Invalidation::Tag(t.into()),
    );
    let mut pending = Pending::default();
    assert_eq!(pending.push(key("a")), 0);
    pending.push(tag("a"));
    pending.push(key("a"));
    pending.push(key("b"));
    assert_eq!(pending.len(), 3);
    assert_eq!(pending.take(), [key("a"), tag("a"), key("b")]);
    assert!(pending.is_empty());
    // Taken for a retry, it may wait again.
    assert_eq!(pending.push(key("a")), 0);
    assert_eq!(pending.len(), 1);
}

#[tokio::test]
async fn invalidations_are_published_dated_with_their_family_and_namespace() {
    let (store, sent) = Recorder::new();
    let clock = ManualClock::new(at(1_700_000_000_000));
    let stash = Stash::builder()
        .store(store)
        .namespace("shop")
        .clock(clock.clone())
        .invalidation_margin(Duration::from_millis(50))
        .tombstone_ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    stash.invalidate_key("user:42").await.unwrap();
    stash.invalidate_tag("users").await.unwrap();
    let read: Vec<_> = sent
        .lock()
        .unwrap()
        .iter()
        .map(|m| parse_bus_message(m).expect("a bus message"))
        .collect();
    assert_eq!(read.len(), 2);
    for message in &read {
        assert_eq!(
            message.at,
            at(1_700_000_000_050),
            "dated now plus the margin"
        );
        assert_eq!(message.keep, Duration::from_secs(30));
    }
    assert_ne!(read[0].id, read[1].id);
    assert_eq!(
        read[0].what,
        BusWhat::Key {
            key: "shop:v1:user:42".into(),
            ns: "shop".into(),
            family: family_tag("user:42"),
        }
    );
    assert_eq!(
        read[1].what,
        BusWhat::Tag {
            ns: "shop".into(),
            tag: "users".into(),
        }
    );
}

#[tokio::test]
async fn a_key_s_invalidation_takes_its_variants_by_their_family_tag() {
    let stash = Stash::new();
    assert_eq!(family_tag("user:42"), "~user:42");
    let variant: Arc<str> = "stash:v1:user:42?lang=fr".into();
    let other: Arc<str> = "stash:v1:user:43?lang=fr".into();
    for (key, base) in [(&variant, "user:42"), (&other, "user:43")] {
        let entry = Entry::new(&**key, http::StatusCode::OK, Default::default(), "x".into())
            .with_times(SystemTime::now(), Duration::from_secs(60))
            .with_tags(vec![family_tag(base)]);
        let put = stash
            .store()
            .put(key.clone(), Arc::new(entry), Duration::from_secs(60));
        put.await.unwrap();
    }
    stash.invalidate_key("user:42").await.unwrap();
    assert_eq!(stash.store().get_local(&variant), Some(None));
    assert!(stash.store().get_local(&other).unwrap().is_some());
}

#[tokio::test]
async fn the_epoch_moves_with_every_invalidation_begun_or_applied_and_nothing_else() {
    let stash = Stash::new();
    let before = stash.epoch();
    stash.invalidate_key("k").await.unwrap();
    let after_own = stash.epoch();
    assert!(after_own > before);
    // One the store applied alone (heard on the bus, say) moves it too.
    let other = stash.store().invalidate(
        "stash:v1:other".into(),
        SystemTime::now(),
        Duration::from_secs(1),
    );
    other.await.unwrap();
    let after_heard = stash.epoch();
    assert!(after_heard > after_own);
    // Reads and fills do not.
    let _ = stash.store().get("stash:v1:k".into()).await;
    let entry = Entry::new(
        "stash:v1:new",
        http::StatusCode::OK,
        Default::default(),
        "x".into(),
    )
    .with_times(SystemTime::now(), Duration::from_secs(60));
    let put = stash.store().put(
        "stash:v1:new".into(),
        Arc::new(entry),
        Duration::from_secs(60),
    );
    put.await.unwrap();
    assert_eq!(stash.epoch(), after_heard);
}

#[test]
fn long_keys_are_stored_under_a_hash_behind_the_same_prefix() {
    let stash = Stash::builder()
        .namespace("shop")
        .max_key_len(64)
        .build()
        .unwrap();
    let short = "shop:v1:user:42";
    assert_eq!(stash.hashed_key(short), None);
    assert_eq!(&*stash.stored_key(short), short);
    let long = format!("shop:v1:search:{}", "q".repeat(100));
    let hashed = stash.hashed_key(&long).unwrap();
    assert!(hashed.starts_with("shop:v1:#"), "{hashed}");
    assert_eq!(hashed.len(), "shop:v1:".len() + 33);
    assert_eq!(&*stash.stored_key(&long), hashed);
    assert_eq!(
        stash.hashed_key(&long),
        Some(hashed.clone()),
        "the same every time"
    );
    assert_ne!(stash.hashed_key(&format!("{long}x")), Some(hashed));
}

#[test]
fn each_wrong_setting_is_named_by_its_field() {
    let err = |b: StashBuilder| b.build().unwrap_err().to_string();
    for (builder, field) in [
        (Stash::builder().namespace(""), "stash.namespace"),
        (Stash::builder().namespace("a b"), "stash.namespace"),
        (Stash::builder().namespace("a/b"), "stash.namespace"),
        // `stash:v1:` and a hash of 33 bytes do not fit in 41.
        (Stash::builder().max_key_len(41), "stash.max_key_len"),
        (
            Stash::builder().cache_status_name("a b"),
            "stash.cache_status_name",
        ),
        (
            Stash::builder().cache_status_name(""),
            "stash.cache_status_name",
        ),
        (
            Stash::builder().tombstone_ttl(Duration::ZERO),
            "stash.tombstone_ttl",
        ),
        (
            Stash::builder().lease_ttl(Duration::ZERO),
            "stash.lease_ttl",
        ),
    ] {
        let message = err(builder);
        assert!(message.contains(field), "{field}: {message}");
    }
    // Every mistake at once, not only the first.
    let all = err(Stash::builder()
        .namespace("a b")
        .cache_status_name("")
        .lease_ttl(Duration::ZERO));
    for field in [
        "stash.namespace",
        "stash.cache_status_name",
        "stash.lease_ttl",
    ] {
        assert!(all.contains(field), "{field}: {all}");
    }
    assert!(Stash::builder().max_key_len(42).build().is_ok());
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_store_and_a_redis_url_are_one_too_many() {
    let err = Stash::builder()
        .store(MemoryStore::default())
        .redis("redis://127.0.0.1:1")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("stash.redis"), "{err}");
}

#[test]
fn cache_status_values_carry_the_cache_s_name() {
    let stash = Stash::builder().cache_status_name("edge").build().unwrap();
    let status = &stash.inner.status;
    assert_eq!(status.hit, "edge; hit");
    assert_eq!(status.stored, "edge; fwd=miss; stored");
    assert_eq!(status.miss, "edge; fwd=miss");
    assert_eq!(status.bypass, "edge; fwd=bypass");
    assert_eq!(status.stale, "edge; hit; stale");
    assert_eq!(status.collapsed_hit, "edge; hit; collapsed");
    assert_eq!(status.collapsed_miss, "edge; fwd=miss; collapsed");
    assert!(status.plain());
    let detailed = Stash::builder().cache_status_detail(true).build().unwrap();
    assert!(!detailed.inner.status.plain());
}

#[tokio::test]
async fn a_write_alone_is_stored_and_overlapping_writes_invalidate_the_key() {
    let clock = ManualClock::new(at(1_700_000_000_000));
    let stash = Stash::builder().clock(clock.clone()).build().unwrap();
    let (parts, ()) = http::Response::builder()
        .header("x-stash-ttl", "5")
        .header("content-length", "999")
        .header("connection", "close")
        .body(())
        .unwrap()
        .into_parts();
    let ttl = Duration::from_secs(60);
    let key = "stash:v1:user:1";

    let ticket = stash.begin_write("user:1", "").await;
    assert!(ticket.alone());
    stash
        .write_through("user:1", "", ticket, &parts, "new".into(), None, ttl, &[])
        .await
        .unwrap();
    let entry = stash.store().get_local(key).unwrap().expect("stored");
    assert_eq!(entry.body(), "new");
    // Dated after the margin: a read that began before the write cannot replace it.
    assert_eq!(entry.stored_at(), at(1_700_000_000_050));
    let headers = entry.headers();
    assert!(headers.get("x-stash-ttl").is_none(), "hints are not stored");
    assert!(
        headers.get("connection").is_none(),
        "nor hop-by-hop headers"
    );
    assert_eq!(headers["content-length"], "3", "its own length");
    assert!(headers.contains_key("etag"));
    assert_eq!(headers["cache-status"], "tower-stash; hit");
    assert_eq!(stash.stats().stores, 1);

    // Two writes at once: which reached the data last is unknown, so the key goes.
    let first = stash.begin_write("user:1", "").await;
    let second = stash.begin_write("user:1", "").await;
    assert!(!second.alone());
    stash
        .write_through("user:1", "", first, &parts, "a".into(), None, ttl, &[])
        .await
        .unwrap();
    assert_eq!(stash.store().get_local(key), Some(None));
    stash.abandon_write("user:1", "", second).await;
    assert_eq!(stash.store().get_local(key), Some(None));
    assert_eq!(stash.stats().stores, 1);
}

#[test]
fn one_refresh_per_key_and_none_just_after_one_failed() {
    let stash = Stash::new();
    let key: Arc<str> = "stash:v1:k".into();
    let first = stash
        .begin_refresh(key.clone())
        .expect("nothing refreshes it yet");
    assert!(stash.begin_refresh(key.clone()).is_none(), "one at a time");
    assert!(stash.begin_refresh("stash:v1:other".into()).is_some());
    drop(first);
    assert!(
        stash.begin_refresh(key.clone()).is_some(),
        "the guard unmarks it"
    );
    stash.refresh_failed(key.clone());
    assert!(
        stash.begin_refresh(key).is_none(),
        "backing off after a failure"
    );
}

#[test]
fn stats_read_the_counters_and_the_store_s_health() {
    let stash = Stash::new();
    let counters = stash.counters();
    counters.hit();
    counters.hit();
    counters.miss();
    counters.store_error();
    stash.stored();
    let stats = stash.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.stores, stats.store_errors),
        (2, 1, 1, 1)
    );
    assert!((stats.hit_rate() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!((stats.health, stats.breaker), (Health::Ok, None));
    // A guarded store reports its breaker.
    let guarded = Stash::builder()
        .store(Guarded::new(MemoryStore::default()))
        .build()
        .unwrap();
    let stats = guarded.stats();
    assert_eq!(stats.breaker, Some(BreakerState::Closed));
    assert_eq!(stats.health, Health::Ok);
}

/// A store with a clock whose `TIME` takes `slow` (blocking, so that the round trip the
/// stash measures is long) for the first `slow_calls` calls, then answers at once.
struct SlowClock {
    memory: MemoryStore,
    calls: Arc<std::sync::atomic::AtomicU32>,
    slow_calls: u32,
}

impl Store for SlowClock {
    fn get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        self.memory.get(key)
    }
    fn put(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) -> StoreFuture<()> {
        self.memory.put(key, entry, ttl)
    }
    fn delete(&self, key: Arc<str>) -> StoreFuture<()> {
        self.memory.delete(key)
    }
    fn time(&self) -> Option<StoreFuture<SystemTime>> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let slow = n < self.slow_calls;
        Some(Box::pin(async move {
            if slow {
                // A round trip of 3 ms: a bound of 1.5 ms, looser than a millisecond.
                std::thread::sleep(Duration::from_millis(3));
            }
            Ok(SystemTime::now())
        }))
    }
}

/// A loose first sample (a round trip that opened a connection, a busy moment) is followed
/// by the next within 5 ms, ten times at most, then every 50 ms; a tight one by the next in
/// 100 ms.
#[tokio::test(start_paused = true)]
async fn a_loose_bound_is_sampled_again_soon_then_less_often() {
    use std::sync::atomic::Ordering::SeqCst;
    let calls_after = |slow_calls| async move {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let store = SlowClock {
            memory: MemoryStore::default(),
            calls: calls.clone(),
            slow_calls,
        };
        let stash = Stash::builder().store(store).build().unwrap();
        // The builder asked once whether the store has a clock.
        calls.store(0, SeqCst);
        stash.began();
        let mut seen = Vec::new();
        let start = tokio::time::Instant::now();
        for ms in [1, 22, 56, 149, 277] {
            tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
            seen.push(calls.load(SeqCst));
        }
        seen
    };
    // Loose once: again 5 ms later (not 50), then (tight, unless the machine held this
    // thread up for over 2 ms) every 100 ms.
    let seen = calls_after(1).await;
    assert_eq!(seen[0], 1);
    assert!(seen[1] >= 2, "{seen:?}");
    // Always loose (each sample takes 3 ms, whatever the machine's speed): ten more 5 ms
    // apart (the last at 50 ms), then every 50 ms.
    assert_eq!(calls_after(u32::MAX).await, [1, 5, 11, 12, 15]);
}
