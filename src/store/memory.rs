use super::{Store, StoreError, StoreFuture, StoreUsage, WriteTicket, Writes};
use crate::Entry;
use dashmap::DashMap;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[derive(Clone)]
struct Slot {
    entry: Arc<Entry>,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<Arc<str>, Slot> for PerEntryTtl {
    fn expire_after_create(&self, _: &Arc<str>, slot: &Slot, _: Instant) -> Option<Duration> {
        Some(slot.ttl)
    }
    fn expire_after_update(
        &self,
        _: &Arc<str>,
        slot: &Slot,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.ttl)
    }
}

/// One read in this many also goes through moka, so that its frequency sketch sees hot entries.
const TOUCH_EVERY: u32 = 8;

/// An index entry: the entry and when moka expires it, so that the index never serves an
/// entry past the TTL it was stored with, even before moka's housekeeping removes it.
#[derive(Clone)]
struct Indexed {
    entry: Arc<Entry>,
    deadline: Instant,
}

thread_local! {
    static READS: Cell<u32> = const { Cell::new(0) };
}

/// An in-memory store on [moka], bounded in bytes, with a TTL per entry. The default store.
///
/// The bound weighs each entry's key, headers, body and trailers ([`Entry::weight`]); when it is
/// reached, moka evicts the entries least likely to be used again (TinyLFU). An entry larger
/// than the whole bound is never kept.
///
/// Reads are served from a concurrent index ([dashmap]) of the entries moka holds: moka's own
/// read path records every access for its eviction policy, which costs a hot route more than
/// the rest of a hit together. Moka stays the owner: it bounds, expires and evicts, and every
/// entry it drops leaves the index through its eviction listener. One read in eight per thread
/// also goes through moka, so that hot entries stay hot in its frequency sketch.
///
/// [moka]: https://docs.rs/moka
/// [dashmap]: https://docs.rs/dashmap
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<Arc<str>, Slot>,
    index: Arc<DashMap<Arc<str>, Indexed, foldhash::quality::RandomState>>,
    evictions: Arc<AtomicU64>,
    /// When each (namespace, tag) was last invalidated, and until when that matters: a fill
    /// with that tag whose request began earlier is refused.
    epochs: Arc<std::sync::Mutex<TagEpochs>>,
    /// Serialise the check-then-insert of writes to one key (reads never take them).
    stripes: Arc<[std::sync::Mutex<()>; 16]>,
    stripes_hasher: foldhash::fast::FixedState,
    /// Invalidations applied: see [`Store::invalidations`].
    invalidations: Arc<AtomicU64>,
    /// The writes in progress per key (write-through): see [`Writes::begin_write`].
    writes: Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, KeyWrites>>>,
}

/// The writes in progress on one key.
struct KeyWrites {
    /// How many.
    running: u32,
    /// The id of the last to begin; 0 once an invalidation of the key came since.
    last: u64,
}

type TagEpochs = std::collections::HashMap<(String, String), (SystemTime, Instant)>;

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl Default for MemoryStore {
    /// A store bounded at 64 MiB.
    fn default() -> Self {
        Self::new(64 * 1024 * 1024)
    }
}

impl MemoryStore {
    /// A store that holds at most `max_bytes` of entries.
    pub fn new(max_bytes: u64) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let index: Arc<DashMap<Arc<str>, Indexed, foldhash::quality::RandomState>> = Arc::new(
            DashMap::with_hasher(foldhash::quality::RandomState::default()),
        );
        let counter = evictions.clone();
        let listener_index = Arc::downgrade(&index);
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &Arc<str>, slot: &Slot| {
                u32::try_from(key.len() + slot.entry.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_listener(move |key: Arc<Arc<str>>, slot: Slot, cause| {
                if cause == RemovalCause::Size {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                // Drop the index's copy, unless a newer entry has replaced it there.
                if let Some(index) = listener_index.upgrade() {
                    index.remove_if(&**key, |_, indexed| {
                        Arc::ptr_eq(&indexed.entry, &slot.entry)
                    });
                }
            })
            .build();
        Self {
            cache,
            index,
            evictions,
            epochs: Arc::default(),
            stripes: Arc::new(std::array::from_fn(|_| std::sync::Mutex::new(()))),
            stripes_hasher: foldhash::fast::FixedState::default(),
            writes: Arc::default(),
            invalidations: Arc::default(),
        }
    }

    /// Looks up `key` at once. The [`Store`] methods wrap this for the async interface.
    pub fn get_now(&self, key: &str) -> Option<Arc<Entry>> {
        // Clone out and release the shard's read guard before calling moka: its housekeeping
        // may run inline and its eviction listener writes to this index.
        let indexed = self.index.get(key).map(|r| r.value().clone());
        if let Some(Indexed { entry, deadline }) = indexed {
            if Instant::now() < deadline {
                if entry.is_tombstone() {
                    return None;
                }
                let touch = READS.with(|n| {
                    let next = n.get().wrapping_add(1);
                    n.set(next);
                    next % TOUCH_EVERY == 0
                });
                if touch {
                    let _ = self.cache.get(key);
                }
                return Some(entry);
            }
        }
        // Not indexed (a put raced another), or past its deadline: moka has the answer.
        self.cache
            .get(key)
            .map(|slot| slot.entry)
            .filter(|e| !e.is_tombstone())
    }

    /// When `key` was invalidated, while its tombstone lasts.
    pub(crate) fn tombstone_at(&self, key: &str) -> Option<std::time::SystemTime> {
        let indexed = self.index.get(key).map(|r| r.value().clone())?;
        (indexed.entry.is_tombstone() && Instant::now() < indexed.deadline)
            .then(|| indexed.entry.stored_at())
    }

    /// Runs moka's pending maintenance (evictions, expirations, counts), so that
    /// [`Store::usage`] is exact in tests; the cache does it by itself otherwise.
    #[cfg(test)]
    pub(crate) fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// Invalidates every entry of namespace `ns` tagged `tag` (a scan of the entries held),
    /// and refuses later fills with that tag whose request began before `at`.
    fn tombstone_tagged(&self, ns: &str, tag: &str, at: SystemTime, keep: Duration) {
        self.invalidations.fetch_add(1, Ordering::Release);
        {
            let mut epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if epochs.len() >= 4096 {
                epochs.retain(|_, (_, until)| *until > now);
            }
            let slot = epochs
                .entry((ns.to_string(), tag.to_string()))
                .or_insert((at, now + keep));
            if slot.0 < at {
                *slot = (at, now + keep);
            }
        }
        let prefix = format!("{ns}:");
        let tagged: Vec<Arc<str>> = self
            .index
            .iter()
            .filter(|r| {
                r.key().starts_with(&prefix)
                    && !r.value().entry.is_tombstone()
                    && r.value().entry.tags().iter().any(|t| t == tag)
            })
            .map(|r| r.key().clone())
            .collect();
        for key in tagged {
            self.tombstone(key, at, keep, false);
        }
    }

    /// Leaves a tombstone dated `at` in `key`'s place: with `force`, whatever the key holds
    /// (a key's invalidation: the last one applied wins), otherwise unless it holds an entry
    /// stored after `at` (a tag's members).
    fn tombstone(&self, key: Arc<str>, at: SystemTime, keep: Duration, force: bool) {
        self.invalidations.fetch_add(1, Ordering::Release);
        // A write in progress on the key overlapped an invalidation: it must not store.
        if let Some(w) = self
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&key)
        {
            w.last = 0;
        }
        if keep.is_zero() {
            self.index.remove(&key);
            self.cache.invalidate(&key);
        } else {
            let stone = Arc::new(Entry::tombstone(&*key, at));
            self.insert_unless_newer(key, stone, keep, force);
        }
    }

    /// Stores `entry` unless the key holds one stored later (a fill whose request began
    /// before the stored entry's never replaces it), or a tombstone of the same time. The
    /// check and the insert are one step for a key (a striped lock that reads never take):
    /// an invalidation cannot slip in between and be overwritten.
    fn insert_unless_newer(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration, force: bool) {
        use std::hash::BuildHasher;
        let stripe = (self.stripes_hasher.hash_one(&*key) as usize) % self.stripes.len();
        let _held = self.stripes[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let newer = !force
            && self.index.get(&*key).is_some_and(|i| {
                let (was, now) = (i.entry.stored_at(), entry.stored_at());
                (was > now || (was == now && i.entry.is_tombstone())) && Instant::now() < i.deadline
            });
        if !newer {
            self.insert(key, entry, ttl);
        }
    }

    /// Whether a tag of `entry` was invalidated at or after its request began.
    fn tag_invalidated_after(&self, key: &str, entry: &Entry) -> bool {
        if entry.tags().is_empty() {
            return false;
        }
        let epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
        if epochs.is_empty() {
            return false;
        }
        let ns = key.split(':').next().unwrap_or(key);
        let now = Instant::now();
        entry.tags().iter().any(|tag| {
            epochs
                .get(&(ns.to_string(), tag.clone()))
                .is_some_and(|(at, until)| *until > now && *at >= entry.stored_at())
        })
    }

    /// Removes every entry but the tombstones (which keep refusing late fills).
    pub(crate) fn clear_entries(&self) {
        self.invalidations.fetch_add(1, Ordering::Release);
        let live: Vec<Arc<str>> = self
            .index
            .iter()
            .filter(|r| !r.value().entry.is_tombstone())
            .map(|r| r.key().clone())
            .collect();
        for key in live {
            self.index.remove(&key);
            self.cache.invalidate(&key);
        }
    }

    /// Removes every entry.
    pub fn clear(&self) {
        self.invalidations.fetch_add(1, Ordering::Release);
        self.index.clear();
        self.cache.invalidate_all();
    }

    fn insert(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) {
        let deadline = Instant::now() + ttl;
        self.index.insert(
            key.clone(),
            Indexed {
                entry: entry.clone(),
                deadline,
            },
        );
        self.cache.insert(key, Slot { entry, ttl });
    }
}

impl Store for MemoryStore {
    fn get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        let found = self.get_now(&key);
        Box::pin(std::future::ready(Ok(found)))
    }

    fn get_local(&self, key: &str) -> Option<Option<Arc<Entry>>> {
        Some(self.get_now(key))
    }

    fn put_local(
        &self,
        key: Arc<str>,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Option<StoreFuture<()>> {
        Some(self.put(key, entry, ttl))
    }

    fn put(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) -> StoreFuture<()> {
        if ttl.is_zero() {
            return Box::pin(std::future::ready(Err(StoreError::new(
                "refusing to store an entry with a zero TTL",
            ))));
        }
        if self.tag_invalidated_after(&key, &entry) {
            return Box::pin(std::future::ready(Ok(())));
        }
        self.insert_unless_newer(key, entry, ttl, false);
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete(&self, key: Arc<str>) -> StoreFuture<()> {
        self.index.remove(&key);
        self.cache.invalidate(&key);
        Box::pin(std::future::ready(Ok(())))
    }

    fn invalidate(&self, key: Arc<str>, at: SystemTime, keep: Duration) -> StoreFuture<()> {
        self.tombstone(key, at, keep, true);
        Box::pin(std::future::ready(Ok(())))
    }

    fn invalidate_tag(
        &self,
        ns: Arc<str>,
        tag: Arc<str>,
        at: SystemTime,
        keep: Duration,
    ) -> StoreFuture<()> {
        self.tombstone_tagged(&ns, &tag, at, keep);
        Box::pin(std::future::ready(Ok(())))
    }

    fn invalidations(&self) -> u64 {
        self.invalidations.load(Ordering::Acquire)
    }

    /// Exact counts: runs moka's pending maintenance first.
    fn usage(&self) -> StoreUsage {
        self.cache.run_pending_tasks();
        StoreUsage {
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    fn writes(&self) -> Option<&dyn Writes> {
        Some(self)
    }
}

impl Writes for MemoryStore {
    fn begin_write(&self, key: Arc<str>, _keep: Duration) -> StoreFuture<WriteTicket> {
        let id = fastrand::u64(1..);
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let w = writes.entry(key).or_insert(KeyWrites {
            running: 0,
            last: 0,
        });
        let alone = w.running == 0;
        w.running += 1;
        w.last = id;
        Box::pin(std::future::ready(Ok(WriteTicket::new(id, alone))))
    }

    /// Ends the write at once (the future only reports), so that a write dropped midway can
    /// end from `Drop`.
    fn end_write(
        &self,
        key: Arc<str>,
        ticket: WriteTicket,
        entry: Option<(Arc<Entry>, Duration)>,
    ) -> StoreFuture<bool> {
        let clean = {
            let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            let clean = match writes.get_mut(&key) {
                Some(w) if ticket.id() != 0 => {
                    w.running = w.running.saturating_sub(1);
                    let clean = ticket.alone() && w.last == ticket.id();
                    if w.running == 0 {
                        writes.remove(&key);
                    }
                    clean
                }
                _ => false,
            };
            // Stored under the lock: an invalidation cannot come between the check and
            // the insert and be overwritten.
            match entry {
                Some((entry, ttl)) if clean && !ttl.is_zero() => {
                    self.insert_unless_newer(key, entry, ttl, false);
                    true
                }
                _ => false,
            }
        };
        Box::pin(std::future::ready(Ok(clean)))
    }
}

#[cfg(test)]
mod tests {
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
}
