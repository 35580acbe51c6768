use super::{Store, StoreError, StoreFuture, StoreUsage, WriteTicket, Writes};
use crate::Entry;
use bookkeeping::{Epochs, Members};
use dashmap::DashMap;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

mod bookkeeping;

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

/// A key's invalidation: its date, kept `keep`.
#[derive(Clone, Copy)]
struct Stone {
    at: SystemTime,
    keep: Duration,
}

struct StoneTtl;

impl moka::Expiry<Arc<str>, Stone> for StoneTtl {
    fn expire_after_create(&self, _: &Arc<str>, stone: &Stone, _: Instant) -> Option<Duration> {
        Some(stone.keep)
    }
    fn expire_after_update(
        &self,
        _: &Arc<str>,
        stone: &Stone,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(stone.keep)
    }
}

/// One read in this many also goes through moka, so that its frequency sketch sees hot entries.
const TOUCH_EVERY: u32 = 8;

/// Buckets of tag invalidation dates (16 bytes each): one per 256 bytes of the bound, from
/// 1,024 to 65,536 (1 MiB); a quarter as many for tombstones past their share.
fn tag_buckets(max_bytes: u64) -> usize {
    ((max_bytes / 256) as usize)
        .clamp(1 << 10, 1 << 16)
        .next_power_of_two()
}
/// The share of the byte bound the tombstones of keys may take, besides the entries: a
/// sixteenth (at least 64 KiB).
const STONE_SHARE: u64 = 16;

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
/// Invalidations cost what they name, and what they leave behind is bounded, whatever the
/// rate of writes: a tag's invalidation visits the entries carrying it (an index of tag
/// members, kept as entries come and go), not every entry; a key's tombstone (which refuses
/// fills that began before it) lives apart from the entries, in a sixteenth of the bound of
/// its own, so that no flood of writes pushes live entries out; tombstones past that share,
/// and tags' invalidation dates, are kept in fixed tables of buckets (a fill sharing a bucket
/// with a later invalidation is refused: a miss, never an old answer).
///
/// [moka]: https://docs.rs/moka
/// [dashmap]: https://docs.rs/dashmap
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<Arc<str>, Slot>,
    index: Arc<DashMap<Arc<str>, Indexed, foldhash::quality::RandomState>>,
    evictions: Arc<AtomicU64>,
    /// The keys of each tag's entries.
    members: Arc<Members>,
    /// The tombstones of keys invalidated, while they last.
    stones: Cache<Arc<str>, Stone>,
    /// Tombstones pushed out of `stones` by others, by bucket.
    key_epochs: Arc<Epochs>,
    /// When each (namespace, tag) was last invalidated, by bucket: a fill with that tag
    /// whose request began earlier is refused.
    tag_epochs: Arc<Epochs>,
    /// Serialise the check-then-insert of writes to one key (reads never take them).
    stripes: Arc<[std::sync::Mutex<()>; 16]>,
    stripes_hasher: foldhash::fast::FixedState,
    /// Invalidations applied: see [`Store::invalidations`].
    invalidations: Arc<AtomicU64>,
    /// The writes in progress per key (write-through): see [`Writes::begin_write`].
    writes: Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, KeyWrites>>>,
    /// Entries a tag invalidation examined (tests).
    #[cfg(test)]
    examined: Arc<AtomicU64>,
}

/// The writes in progress on one key.
struct KeyWrites {
    /// How many.
    running: u32,
    /// The id of the last to begin; 0 once an invalidation of the key came since.
    last: u64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .field("tombstones", &self.stones.entry_count())
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
    /// A store that holds at most `max_bytes` of entries (and a sixteenth of that of
    /// tombstones besides).
    pub fn new(max_bytes: u64) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let index: Arc<DashMap<Arc<str>, Indexed, foldhash::quality::RandomState>> = Arc::new(
            DashMap::with_hasher(foldhash::quality::RandomState::default()),
        );
        let members = Arc::new(Members::default());
        let counter = evictions.clone();
        let listener_index = Arc::downgrade(&index);
        let listener_members = Arc::downgrade(&members);
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
                // Drop the index's copy, unless a newer entry has replaced it there; and the
                // key from the members of the tags its entry no longer carries.
                let Some(index) = listener_index.upgrade() else {
                    return;
                };
                index.remove_if(&**key, |_, indexed| {
                    Arc::ptr_eq(&indexed.entry, &slot.entry)
                });
                if let Some(members) = listener_members.upgrade() {
                    let now = index.get(&**key).map(|i| i.entry.clone());
                    members.remove(&key, slot.entry.tags(), |tag| {
                        now.as_ref()
                            .is_some_and(|e| e.tags().iter().any(|t| t == tag))
                    });
                }
            })
            .build();
        let key_epochs = Arc::new(Epochs::new(tag_buckets(max_bytes) / 4));
        let overflow = Arc::downgrade(&key_epochs);
        let stones = Cache::builder()
            .max_capacity((max_bytes / STONE_SHARE).max(64 * 1024))
            .weigher(|key: &Arc<str>, _: &Stone| u32::try_from(key.len() + 64).unwrap_or(u32::MAX))
            .expire_after(StoneTtl)
            .eviction_listener(move |key: Arc<Arc<str>>, stone: Stone, cause| {
                // Pushed out by others: it keeps refusing, coarsely, for its remaining time.
                if cause == RemovalCause::Size {
                    if let Some(epochs) = overflow.upgrade() {
                        epochs.record(&[&key], stone.at, stone.keep);
                    }
                }
            })
            .build();
        Self {
            cache,
            index,
            evictions,
            members,
            stones,
            key_epochs,
            tag_epochs: Arc::new(Epochs::new(tag_buckets(max_bytes))),
            stripes: Arc::new(std::array::from_fn(|_| std::sync::Mutex::new(()))),
            stripes_hasher: foldhash::fast::FixedState::default(),
            writes: Arc::default(),
            invalidations: Arc::default(),
            #[cfg(test)]
            examined: Arc::default(),
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

    /// When `key` was invalidated, while its tombstone lasts (or, past the tombstones'
    /// share, when a key sharing its bucket was: a later date than its own, never none).
    pub(crate) fn tombstone_at(&self, key: &str) -> Option<SystemTime> {
        match self.stones.get(key) {
            Some(stone) => Some(stone.at),
            None => self.key_epochs.latest(&[key]),
        }
    }

    /// Runs moka's pending maintenance (evictions, expirations, counts), so that
    /// [`Store::usage`] is exact in tests; the cache does it by itself otherwise.
    #[cfg(test)]
    pub(crate) fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
        self.stones.run_pending_tasks();
    }

    /// Entries tag invalidations examined so far.
    #[cfg(test)]
    fn examined(&self) -> u64 {
        self.examined.load(Ordering::Relaxed)
    }

    /// The bytes the store keeps about invalidations: tombstones, tag members, buckets.
    #[cfg(test)]
    fn bookkeeping_bytes(&self) -> u64 {
        self.stones.run_pending_tasks();
        self.stones.weighted_size()
            + (self.members.bytes() + self.key_epochs.bytes() + self.tag_epochs.bytes()) as u64
    }

    /// Invalidates every entry of namespace `ns` tagged `tag` (the entries carrying it, not
    /// a scan of all), and refuses later fills with that tag whose request began before `at`.
    fn tombstone_tagged(&self, ns: &str, tag: &str, at: SystemTime, keep: Duration) {
        self.invalidations.fetch_add(1, Ordering::Release);
        self.tag_epochs.record(&[ns, tag], at, keep);
        let prefix = format!("{ns}:");
        for key in self.members.of(tag) {
            #[cfg(test)]
            self.examined.fetch_add(1, Ordering::Relaxed);
            let carries = key.starts_with(&prefix)
                && self
                    .index
                    .get(&key)
                    .is_some_and(|i| i.entry.tags().iter().any(|t| t == tag));
            if carries {
                self.tombstone(key, at, keep, false);
            }
        }
    }

    /// Drops `key`'s entry and leaves a tombstone dated `at`, which refuses fills that began
    /// before it: with `force`, whatever the key holds (a key's invalidation: the last one
    /// applied wins), otherwise unless it holds an entry stored after `at` (a tag's members).
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
        let _held = self.stripe(&key);
        let newer = !force
            && self.index.get(&*key).is_some_and(|i| {
                i.entry.stored_at() > at && !i.entry.is_written() && Instant::now() < i.deadline
            });
        if newer {
            return;
        }
        self.index.remove(&key);
        self.cache.invalidate(&key);
        if keep.is_zero() {
            return;
        }
        let at = match self.stones.get(&key) {
            Some(stone) if !force && stone.at > at => stone.at,
            _ => at,
        };
        self.stones.insert(key, Stone { at, keep });
    }

    /// The lock of `key`'s stripe.
    fn stripe(&self, key: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let stripe = (self.stripes_hasher.hash_one(key) as usize) % self.stripes.len();
        self.stripes[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `entry` unless the key holds one stored later (a fill whose request began
    /// before the stored entry's never replaces it), or a tombstone of the same time or later.
    /// The check and the insert are one step for a key (a striped lock that reads never
    /// take): an invalidation cannot slip in between and be overwritten.
    ///
    /// `tags_since`: when the entry's request (or write) began, for its tags' invalidations.
    fn insert_unless_newer(
        &self,
        key: Arc<str>,
        entry: Arc<Entry>,
        ttl: Duration,
        tags_since: SystemTime,
    ) {
        let _held = self.stripe(&key);
        let began = entry.stored_at();
        let newer = self
            .index
            .get(&*key)
            .is_some_and(|i| i.entry.stored_at() > began && Instant::now() < i.deadline);
        let invalidated = self.tombstone_at(&key).is_some_and(|at| began <= at);
        if newer || invalidated {
            return;
        }
        self.insert(key.clone(), entry.clone(), ttl);
        // A tag invalidation that came between the caller's check and the insert: it either
        // saw this key among its tag's members, or its date is seen here.
        if self.tag_invalidated_after(&key, &entry, tags_since) {
            self.index
                .remove_if(&*key, |_, i| Arc::ptr_eq(&i.entry, &entry));
            self.cache.invalidate(&key);
        }
    }

    /// Whether a tag of `entry` was invalidated at or after `began`.
    fn tag_invalidated_after(&self, key: &str, entry: &Entry, began: SystemTime) -> bool {
        let ns = key.split(':').next().unwrap_or(key);
        entry
            .tags()
            .iter()
            .any(|tag| self.tag_epochs.refuses(&[ns, tag], began))
    }

    /// Removes every entry but the tombstones (which keep refusing late fills).
    pub(crate) fn clear_entries(&self) {
        self.invalidations.fetch_add(1, Ordering::Release);
        let live: Vec<Arc<str>> = self.index.iter().map(|r| r.key().clone()).collect();
        for key in live {
            self.index.remove(&key);
            self.cache.invalidate(&key);
        }
    }

    /// Removes every entry, and every tombstone.
    pub fn clear(&self) {
        self.invalidations.fetch_add(1, Ordering::Release);
        self.index.clear();
        self.cache.invalidate_all();
        self.members.clear();
        self.stones.invalidate_all();
        self.key_epochs.clear();
        self.tag_epochs.clear();
    }

    fn insert(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) {
        let deadline = Instant::now() + ttl;
        self.members.add(&key, entry.tags());
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
    fn keys(&self, prefix: Arc<str>, limit: usize) -> StoreFuture<Vec<String>> {
        let keys = self
            .index
            .iter()
            .map(|r| r.key().clone())
            .filter(|k| k.starts_with(&*prefix))
            .take(limit)
            .map(|k| k.to_string())
            .collect();
        Box::pin(std::future::ready(Ok(keys)))
    }

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
        let began = entry.stored_at();
        if self.tag_invalidated_after(&key, &entry, began) {
            return Box::pin(std::future::ready(Ok(())));
        }
        self.insert_unless_newer(key, entry, ttl, began);
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete(&self, key: Arc<str>) -> StoreFuture<()> {
        self.index.remove(&key);
        self.cache.invalidate(&key);
        Box::pin(std::future::ready(Ok(())))
    }

    fn refuses(&self, key: &str, began: SystemTime) -> bool {
        self.tombstone_at(key).is_some_and(|at| began <= at)
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
                    let began = ticket.began().unwrap_or_else(|| entry.stored_at());
                    self.insert_unless_newer(key, entry, ttl, began);
                    true
                }
                _ => false,
            }
        };
        Box::pin(std::future::ready(Ok(clean)))
    }
}

#[cfg(test)]
mod tests;
