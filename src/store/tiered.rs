//! [`TieredStore`]: a [`MemoryStore`] in front of a shared store.

use super::{
    Bus, BusEvent, HealthCheck, Leases, MemoryStore, Store, StoreFuture, StoreUsage, WriteTicket,
    Writes,
};
use crate::Entry;
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Two tiers: L1, a [`MemoryStore`] in this instance, in front of L2, a store every instance
/// shares (a [`Guarded`](crate::Guarded) `RedisStore`).
///
/// - A lookup reads L1, then L2; an entry found in L2 is copied into L1 for what remains of its
///   TTL, capped by [`l1_max_ttl`](Self::l1_max_ttl). An L1 hit is answered at once, with no
///   future ([`Store::get_local`]), so a hot key costs what a memory hit costs.
/// - A fill writes L1 (at once), then L2; when L2 fails the error is returned (the cache counts
///   it) but L1 keeps the entry. A delete removes the key from both.
/// - [`usage`](Store::usage) is L1's.
///
/// L1 keeps an entry at most [`l1_max_ttl`](Self::l1_max_ttl) (default 60 s). Invalidations
/// made by other instances reach it through L2's bus ([`Bus::live`]); while the bus is down,
/// L2 answers every lookup and L1 serves only when L2 fails too (Redis unreachable: an outage
/// costs hit rate, not the tier), and L1 is flushed when the bus is back.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_stash::{MemoryStore, Stash, TieredStore};
///
/// // Any store can be L2; here another memory store stands in for Redis.
/// let store = TieredStore::new(MemoryStore::new(16 << 20), MemoryStore::new(256 << 20))
///     .l1_max_ttl(Duration::from_secs(10));
/// let stash = Stash::builder().store(store).build().unwrap();
/// # let _ = stash;
/// ```
pub struct TieredStore<S> {
    l1: MemoryStore,
    l2: Arc<S>,
    l1_max_ttl: Duration,
    /// Applies invalidations heard on L2's bus to L1; the subscription ends when it is dropped.
    _sink: Option<Arc<dyn Fn(BusEvent) + Send + Sync>>,
    /// The L2 reads in flight: see [`Reads`].
    reads: Reads,
}

/// The answer of an L2 read, shared by the callers that wait for it.
type Answer = Arc<tokio::sync::OnceCell<Result<Option<Arc<Entry>>, super::StoreError>>>;

/// The L2 reads in flight, by key, with L1's count of invalidations when each began: a read
/// of a key that another read is fetching, with no invalidation applied here in between,
/// shares its answer, so a burst of requests for one key asks L2 once. (An invalidation, this
/// instance's or one heard on the bus, is applied to L1 before its caller returns: a read
/// that begins after it never shares one that began before.)
type Reads = Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, (u64, Answer)>>>;

impl<S> Clone for TieredStore<S> {
    fn clone(&self) -> Self {
        Self {
            l1: self.l1.clone(),
            l2: self.l2.clone(),
            l1_max_ttl: self.l1_max_ttl,
            _sink: self._sink.clone(),
            reads: self.reads.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for TieredStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStore")
            .field("l1", &self.l1)
            .field("l2", &self.l2)
            .field("l1_max_ttl", &self.l1_max_ttl)
            .finish()
    }
}

impl<S: Store> TieredStore<S> {
    /// `l1` in front of `l2`, with L1 keeping entries at most 60 s. When `l2` has a bus
    /// (Redis pub/sub), this instance's L1 drops what other instances invalidate, and is
    /// flushed whenever messages may have been missed.
    pub fn new(l1: MemoryStore, l2: S) -> Self {
        let l2 = Arc::new(l2);
        let (memory, shared) = (l1.clone(), l2.clone());
        let sink: Arc<dyn Fn(BusEvent) + Send + Sync> = Arc::new(move |event| {
            // The publisher waits (briefly) until every subscriber has applied it.
            if let Some(id) = super::bus::apply_to_l1(&memory, event) {
                if let (Some(bus), Ok(rt)) = (shared.bus(), tokio::runtime::Handle::try_current()) {
                    rt.spawn(bus.acknowledge(id.into()));
                }
            }
        });
        let subscribed = l2
            .bus()
            .is_some_and(|bus| bus.subscribe(Arc::downgrade(&sink)));
        Self {
            l1,
            l2,
            l1_max_ttl: Duration::from_secs(60),
            _sink: subscribed.then_some(sink),
            reads: Reads::default(),
        }
    }
}

impl<S> TieredStore<S> {
    /// The longest L1 keeps an entry (default 60 s), however long its TTL.
    pub fn l1_max_ttl(mut self, ttl: Duration) -> Self {
        self.l1_max_ttl = ttl;
        self
    }

    /// The memory tier.
    pub fn l1(&self) -> &MemoryStore {
        &self.l1
    }

    /// The shared tier.
    pub fn l2(&self) -> &S {
        &self.l2
    }

    /// Whether L2's bus brings other instances' invalidations now (always, without a bus).
    fn heard(&self) -> bool
    where
        S: Store,
    {
        self.l2.bus().is_none_or(|bus| bus.live())
    }

    /// Copies `entry` into L1 for what remains of its TTL and grace, capped.
    fn fill_l1(&self, key: Arc<str>, entry: Arc<Entry>) {
        let ttl = entry
            .stale_until()
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(self.l1_max_ttl);
        if !ttl.is_zero() {
            // The memory store inserts at once; its future only reports.
            drop(self.l1.put(key, entry, ttl));
        }
    }

    /// An L2 `get` of `key`, shared with the one in flight for it, if any began after the
    /// last invalidation applied here (see [`Reads`]).
    fn shared_get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>>
    where
        S: Store + 'static,
    {
        let epoch = self.l1.invalidations();
        let answer = {
            let mut reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
            match reads.get(&key) {
                Some((began, answer)) if *began == epoch => answer.clone(),
                _ => {
                    let answer = Answer::default();
                    reads.insert(key.clone(), (epoch, answer.clone()));
                    answer
                }
            }
        };
        /// Forgets the read once it is answered, or once no one waits for it any more.
        struct Done(Reads, Arc<str>, Answer);
        impl Drop for Done {
            fn drop(&mut self) {
                let mut reads = self.0.lock().unwrap_or_else(|e| e.into_inner());
                // Three holders at most when no other reader waits: the map, this guard and
                // the dropped read's own handle (each other reader holds two more).
                if reads.get(&self.1).is_some_and(|(_, a)| {
                    Arc::ptr_eq(a, &self.2) && (a.initialized() || Arc::strong_count(a) <= 3)
                }) {
                    reads.remove(&self.1);
                }
            }
        }
        let l2 = self.l2.clone();
        let done = Done(self.reads.clone(), key.clone(), answer.clone());
        Box::pin(async move {
            // The first caller reads; should it give up, the next one in line does.
            let result = answer.get_or_init(|| l2.get(key)).await.clone();
            drop(done);
            result
        })
    }

    /// L1's entry while it is fresh, or what `l2` reads, copied into L1.
    fn read(
        &self,
        key: Arc<str>,
        l2: impl FnOnce(&Self, Arc<str>) -> StoreFuture<Option<Arc<Entry>>>,
    ) -> StoreFuture<Option<Arc<Entry>>>
    where
        S: Store,
    {
        let local = self.l1.get_now(&key);
        // While the bus is down, L1 may hold what another instance invalidated: L2 answers,
        // and L1 only stands in when L2 fails too (an outage costs hit rate, not the tier).
        let heard = self.heard();
        if let Some(entry) = &local {
            if heard && SystemTime::now() < entry.fresh_until() {
                return Box::pin(std::future::ready(Ok(local)));
            }
        }
        let l2 = l2(self, key.clone());
        let this = self.clone();
        Box::pin(async move {
            let mut l2 = l2.await;
            // An entry this instance invalidated, still in L2 (the invalidation is being
            // retried after a failure): never served again.
            if let Ok(Some(entry)) = &l2 {
                if this
                    .l1
                    .tombstone_at(&key)
                    .is_some_and(|at| entry.stored_at() < at)
                {
                    l2 = Ok(None);
                }
            }
            match (l2, local) {
                (Ok(Some(entry)), local)
                    if !heard
                        || local
                            .as_ref()
                            .is_none_or(|l| entry.stored_at() >= l.stored_at()) =>
                {
                    this.fill_l1(key, entry.clone());
                    Ok(Some(entry))
                }
                (Ok(None), _) if !heard => Ok(None),
                // An expired copy kept for stale answers; never a sliding entry past its idle
                // time (Redis, which saw every use, has let it go).
                (Ok(_), Some(local)) | (Err(_), Some(local))
                    if local.sliding().is_none() || SystemTime::now() < local.fresh_until() =>
                {
                    Ok(Some(local))
                }
                (Ok(_), Some(_)) => Ok(None),
                (Err(e), Some(_)) => Err(e),
                (result, None) => result,
            }
        })
    }
}

impl<S: Store> Store for TieredStore<S> {
    /// L1's entry while it is fresh; otherwise L2's, copied into L1. An expired L1 entry
    /// (kept to be served stale) is returned when L2 has nothing newer or fails.
    fn get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        self.read(key, |this, key| this.shared_get(key))
    }

    /// As [`get`](Self::get), L2 reading with [`Store::get_sliding`].
    fn get_sliding(&self, key: Arc<str>, idle: Duration) -> StoreFuture<Option<Arc<Entry>>> {
        self.read(key, |this, key| this.l2.get_sliding(key, idle))
    }

    /// Extends L2's copy (L1 keeps sliding entries until their cap).
    fn touch(&self, key: Arc<str>, idle: Duration) -> StoreFuture<()> {
        self.l2.touch(key, idle)
    }

    /// L1's entry when it has one; otherwise `None`, so that the cache asks [`get`](Self::get)
    /// (which asks L2).
    fn get_local(&self, key: &str) -> Option<Option<Arc<Entry>>> {
        // Nothing at once while the bus is down: `get` asks L2 first then.
        if !self.heard() {
            return None;
        }
        self.l1.get_now(key).map(Some)
    }

    fn put_local(
        &self,
        key: Arc<str>,
        entry: Arc<Entry>,
        ttl: Duration,
    ) -> Option<StoreFuture<()>> {
        let ttl = ttl.min(self.l1_max_ttl);
        (!ttl.is_zero()).then(|| self.l1.put(key, entry, ttl))
    }

    fn put(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) -> StoreFuture<()> {
        let l1_ttl = ttl.min(self.l1_max_ttl);
        if !l1_ttl.is_zero() {
            drop(self.l1.put(key.clone(), entry.clone(), l1_ttl));
        }
        self.l2.put(key, entry, ttl)
    }

    /// L2 alone, not copied into L1.
    fn get_shared(&self, key: Arc<str>, idle: Option<Duration>) -> StoreFuture<Option<Arc<Entry>>> {
        self.l2.get_shared(key, idle)
    }

    fn delete(&self, key: Arc<str>) -> StoreFuture<()> {
        drop(self.l1.delete(key.clone()));
        self.l2.delete(key)
    }

    fn usage(&self) -> StoreUsage {
        self.l1.usage()
    }

    /// L1's: every invalidation, local or heard on the bus, reaches it.
    /// L1's tombstones: this instance's invalidations and those heard on the bus.
    fn refuses(&self, key: &str, began: SystemTime) -> bool {
        self.l1.refuses(key, began)
    }

    /// L1's and L2's, without repeats.
    fn keys(&self, prefix: Arc<str>, limit: usize) -> StoreFuture<Vec<String>> {
        let local = self.l1.keys(prefix.clone(), limit);
        let shared = self.l2.keys(prefix, limit);
        Box::pin(async move {
            let mut keys = local.await?;
            let mut seen: std::collections::HashSet<String> = keys.iter().cloned().collect();
            for key in shared.await? {
                if keys.len() >= limit {
                    break;
                }
                if seen.insert(key.clone()) {
                    keys.push(key);
                }
            }
            Ok(keys)
        })
    }

    /// L2's part.
    fn part_of(&self, key: &str) -> Option<Arc<str>> {
        self.l2.part_of(key)
    }

    fn part_failing(&self, part: &str) {
        self.l2.part_failing(part);
    }

    /// L2's clock, which every instance shares.
    fn time(&self) -> Option<StoreFuture<SystemTime>> {
        self.l2.time()
    }

    fn invalidations(&self) -> u64 {
        self.l1.invalidations()
    }

    /// Drops L1's entries (its tombstones stay).
    fn clear_local(&self) {
        self.l1.clear_entries();
    }

    fn invalidate(&self, key: Arc<str>, at: SystemTime, keep: Duration) -> StoreFuture<()> {
        drop(
            self.l1
                .invalidate(key.clone(), at, keep.min(self.l1_max_ttl)),
        );
        self.l2.invalidate(key, at, keep)
    }

    fn invalidate_tag(
        &self,
        ns: Arc<str>,
        tag: Arc<str>,
        at: SystemTime,
        keep: Duration,
    ) -> StoreFuture<()> {
        drop(
            self.l1
                .invalidate_tag(ns.clone(), tag.clone(), at, keep.min(self.l1_max_ttl)),
        );
        self.l2.invalidate_tag(ns, tag, at, keep)
    }

    /// L1 at once as [`invalidate`](Store::invalidate) and
    /// [`invalidate_tag`](Store::invalidate_tag) do, where L2 does it all.
    fn invalidate_and_publish(
        &self,
        key: Arc<str>,
        ns: Arc<str>,
        family: Arc<str>,
        at: SystemTime,
        keep: Duration,
        message: Bytes,
    ) -> Option<StoreFuture<u64>> {
        let l2 = self.l2.invalidate_and_publish(
            key.clone(),
            ns.clone(),
            family.clone(),
            at,
            keep,
            message,
        )?;
        let l1_keep = keep.min(self.l1_max_ttl);
        drop(self.l1.invalidate(key, at, l1_keep));
        drop(self.l1.invalidate_tag(ns, family, at, l1_keep));
        Some(l2)
    }

    /// L2's bus: invalidations other instances hear, and the acknowledgements of this
    /// instance's.
    fn bus(&self) -> Option<&dyn Bus> {
        self.l2.bus()
    }

    /// L2's leases, which every instance shares.
    fn leases(&self) -> Option<&dyn Leases> {
        self.l2.leases()
    }

    /// Writes are followed in L2, which every instance shares.
    fn writes(&self) -> Option<&dyn Writes> {
        self.l2.writes().map(|_| self as &dyn Writes)
    }

    /// L2's: L1 is always there.
    fn health_check(&self) -> Option<&dyn HealthCheck> {
        self.l2.health_check()
    }
}

impl<S: Store> Writes for TieredStore<S> {
    /// Followed in L2.
    fn begin_write(&self, key: Arc<str>, keep: Duration) -> StoreFuture<WriteTicket> {
        match self.l2.writes() {
            Some(writes) => writes.begin_write(key, keep),
            None => Box::pin(std::future::ready(Ok(WriteTicket::untracked()))),
        }
    }

    /// L2 decides; L1 takes the entry only when L2 stored it.
    fn end_write(
        &self,
        key: Arc<str>,
        ticket: WriteTicket,
        entry: Option<(Arc<Entry>, Duration)>,
    ) -> StoreFuture<bool> {
        let Some(writes) = self.l2.writes() else {
            return Box::pin(std::future::ready(Ok(false)));
        };
        let local = entry.clone();
        let l2 = writes.end_write(key.clone(), ticket, entry);
        let this = self.clone();
        Box::pin(async move {
            let stored = l2.await?;
            if let Some((entry, ttl)) = local.filter(|_| stored) {
                let ttl = ttl.min(this.l1_max_ttl);
                if !ttl.is_zero() {
                    drop(this.l1.put(key, entry, ttl));
                }
            }
            Ok(stored)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Down;
    use http::StatusCode;

    fn entry(ttl: Duration) -> Arc<Entry> {
        Arc::new(
            Entry::new("k", StatusCode::OK, Default::default(), "body".into())
                .with_times(SystemTime::now(), ttl),
        )
    }

    /// A shared tier whose reads wait for the test's word, counted.
    #[derive(Clone)]
    struct Gated {
        inner: MemoryStore,
        reads: Arc<std::sync::atomic::AtomicUsize>,
        open: Arc<tokio::sync::Semaphore>,
    }

    impl Default for Gated {
        fn default() -> Self {
            Self {
                inner: MemoryStore::default(),
                reads: Arc::default(),
                open: Arc::new(tokio::sync::Semaphore::new(0)),
            }
        }
    }

    impl Store for Gated {
        fn get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (inner, open) = (self.inner.clone(), self.open.clone());
            Box::pin(async move {
                let _pass = open.acquire().await.unwrap();
                inner.get(key).await
            })
        }
        fn put(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) -> StoreFuture<()> {
            self.inner.put(key, entry, ttl)
        }
        fn delete(&self, key: Arc<str>) -> StoreFuture<()> {
            self.inner.delete(key)
        }
    }

    #[tokio::test]
    async fn a_burst_of_reads_of_one_key_asks_l2_once_but_never_across_an_invalidation() {
        let l2 = Gated::default();
        let hour = Duration::from_secs(3600);
        l2.inner.put("k".into(), entry(hour), hour).await.unwrap();
        let tiered = TieredStore::new(MemoryStore::default(), l2.clone());
        let reads = |n: usize| -> Vec<_> {
            (0..n)
                .map(|_| tokio::spawn(tiered.get("k".into())))
                .collect()
        };
        let first = reads(50);
        // Until the first read of L2 is in, started reads join it.
        tokio::task::yield_now().await;
        let wait_for_reads = |n: usize| {
            let counted = l2.reads.clone();
            async move {
                while counted.load(std::sync::atomic::Ordering::SeqCst) < n {
                    tokio::task::yield_now().await;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait_for_reads(1))
            .await
            .unwrap();
        // An invalidation applied here: a read that begins now never shares the one before.
        drop(
            tiered
                .l1()
                .invalidate("other".into(), SystemTime::now(), hour),
        );
        let after = reads(1);
        tokio::time::timeout(Duration::from_secs(10), wait_for_reads(2))
            .await
            .unwrap();
        l2.open.add_permits(100);
        for read in first.into_iter().chain(after) {
            let got = tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(got.unwrap().body(), "body");
        }
        assert_eq!(l2.reads.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(
            tiered.reads.lock().unwrap().is_empty(),
            "nothing left in flight"
        );
    }

    #[test]
    fn signals_on_the_bus_are_neither_applied_nor_acknowledged() {
        use super::super::bus::apply_to_l1;
        let l1 = MemoryStore::default();
        let event = |m: &str| BusEvent::Message(bytes::Bytes::copy_from_slice(m.as_bytes()));
        // An acknowledgement and a lease released: signals; acknowledging them would go
        // round for ever.
        assert_eq!(
            apply_to_l1(&l1, event("a\t0\t0\t00000000000000a1\t2")),
            None
        );
        assert_eq!(apply_to_l1(&l1, event("r\t0\t0\t-\tns:v1:k")), None);
        // A kind this version does not know is acknowledged (its publisher waits).
        assert_eq!(
            apply_to_l1(&l1, event("x\t0\t0\t00000000000000b2\tf")),
            Some("00000000000000b2".to_owned())
        );
    }

    #[tokio::test]
    async fn an_l2_hit_fills_l1_for_the_remaining_ttl_capped() {
        let l2 = MemoryStore::default();
        let hour = Duration::from_secs(3600);
        l2.put("k".into(), entry(hour), hour).await.unwrap();
        let store = TieredStore::new(MemoryStore::default(), l2).l1_max_ttl(Duration::from_secs(5));
        assert_eq!(store.get_local("k"), None, "L1 is empty: ask get");
        let got = store.get("k".into()).await.unwrap().unwrap();
        assert_eq!(got.body(), "body");
        assert!(store.get_local("k").unwrap().is_some(), "L1 was filled");

        // An entry already expired is answered but not copied.
        let stale = Arc::new(
            Entry::new("old", StatusCode::OK, Default::default(), "x".into()).with_times(
                SystemTime::now() - Duration::from_secs(10),
                Duration::from_secs(5),
            ),
        );
        store.l2().put("old".into(), stale, hour).await.unwrap();
        assert!(store.get("old".into()).await.unwrap().is_some());
        assert_eq!(store.get_local("old"), None);
    }

    #[tokio::test]
    async fn l1_never_outlives_the_cap() {
        let store = TieredStore::new(MemoryStore::default(), MemoryStore::default())
            .l1_max_ttl(Duration::from_millis(50));
        let hour = Duration::from_secs(3600);
        store.put("k".into(), entry(hour), hour).await.unwrap();
        assert!(store.l1().get_now("k").is_some());
        assert!(store.l2().get_now("k").is_some());
        // moka reads its own clock: poll in real time, bounded. `usage` runs moka's
        // maintenance, which drops the expired entry.
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while store.l1().usage().entries > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        waited.await.expect("L1 kept the entry past its cap");
        assert!(store.l1().get_now("k").is_none());
        assert!(store.l2().get_now("k").is_some());
    }

    #[tokio::test]
    async fn a_failing_l2_fails_the_call_but_l1_keeps_the_entry() {
        let store = TieredStore::new(MemoryStore::default(), Down);
        let hour = Duration::from_secs(3600);
        assert!(store.put("k".into(), entry(hour), hour).await.is_err());
        assert!(store.get_local("k").unwrap().is_some());
        assert!(store.get("k".into()).await.unwrap().is_some());
        assert!(store.get("other".into()).await.is_err());
        assert!(store.delete("k".into()).await.is_err());
        assert_eq!(store.get_local("k"), None);
        assert_eq!(store.usage().entries, 0);
    }
}
