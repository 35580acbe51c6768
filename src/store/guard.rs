//! [`Guarded`]: a per-call timeout and a circuit breaker around any store.

use super::{BusEvent, Health, Store, StoreError, StoreFuture, StoreUsage, WriteTicket};
use crate::Entry;
use bytes::Bytes;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

tokio::task_local! {
    /// Set while a call of many steps runs under [`Guarded`]: told of each step finished.
    static STEPS: Arc<tokio::sync::Notify>;
}

/// Reports that a call of many steps (a tag invalidation walking its index in batches) has
/// finished one: under [`Guarded`], the call's timeout starts again, so that it bounds each
/// step rather than the whole call. Does nothing anywhere else.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn step_done() {
    let _ = STEPS.try_with(|steps| steps.notify_one());
}

/// A store behind a per-call timeout and a circuit breaker, so that a slow or absent store
/// costs a request at most the timeout, and then nothing at all.
///
/// - Every call is bounded by [`timeout`](Self::timeout) (default 10 ms); a call that takes
///   longer fails with a [`StoreError`]. Invalidations get at least 1 s; a tag invalidation,
///   which walks the tag's entries in batches, gets it for each batch (each round trip), so
///   that a tag of any size can be invalidated while a store that stops answering is still
///   given up on within the timeout.
/// - After [`failures`](Self::failures) failures or timeouts in a row (default 5), the breaker
///   opens: [`health`](Self::health) is [`Health::Degraded`] and every call fails at once,
///   without touching the store.
/// - After [`cool_down`](Self::cool_down) (default 1 s), one call is let through as a probe
///   while the others still fail at once: its success closes the breaker, its failure opens it
///   for another cool-down. A probe that is dropped before it ends lets the next call probe.
///
/// Clones share the breaker, so a clone kept aside reads the health of the one in use.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_stash::{Guarded, Health, MemoryStore};
///
/// let store = Guarded::new(MemoryStore::default())
///     .timeout(Duration::from_millis(5))
///     .failures(3)
///     .cool_down(Duration::from_millis(500));
/// assert_eq!(store.health(), Health::Ok);
/// ```
pub struct Guarded<S> {
    inner: Arc<S>,
    breaker: Arc<Breaker>,
    timeout: Duration,
}

impl<S> Clone for Guarded<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            timeout: self.timeout,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("health", &self.health())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S> Guarded<S> {
    /// Guards `inner` with the defaults: a 10 ms timeout, open after 5 failures in a row, a
    /// probe after 1 s.
    pub fn new(inner: S) -> Self {
        Self {
            inner: Arc::new(inner),
            breaker: Arc::new(Breaker {
                threshold: 5,
                cool_down: Duration::from_secs(1),
                phase: Mutex::new(Phase::Closed { failures: 0 }),
            }),
            timeout: Duration::from_millis(10),
        }
    }

    /// How long one call may take (default 10 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many failures or timeouts in a row open the breaker (default 5; at least 1).
    pub fn failures(mut self, failures: u32) -> Self {
        self.breaker_mut().threshold = failures.max(1);
        self
    }

    /// How long the breaker stays open before a probe (default 1 s).
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.breaker_mut().cool_down = cool_down;
        self
    }

    /// [`Health::Ok`] while calls go to the store, [`Health::Degraded`] while the breaker is
    /// open or probing.
    pub fn health(&self) -> Health {
        match *self.breaker.phase() {
            Phase::Closed { .. } => Health::Ok,
            Phase::Open { .. } | Phase::Probing => Health::Degraded,
        }
    }

    /// The guarded store.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The breaker, to set up: a fresh one if it is shared with a clone already.
    fn breaker_mut(&mut self) -> &mut Breaker {
        if Arc::get_mut(&mut self.breaker).is_none() {
            let b = &*self.breaker;
            self.breaker = Arc::new(Breaker {
                threshold: b.threshold,
                cool_down: b.cool_down,
                phase: Mutex::new(Phase::Closed { failures: 0 }),
            });
        }
        Arc::get_mut(&mut self.breaker).expect("just made unique")
    }

    /// Runs `call` under the breaker and the timeout.
    fn guard<T: Send + 'static>(&self, call: impl FnOnce(&S) -> StoreFuture<T>) -> StoreFuture<T> {
        self.guard_for(self.timeout, call)
    }

    /// The timeout of invalidations, which are not on a hit's path: at least 1 s.
    fn slow_timeout(&self) -> Duration {
        self.timeout.max(Duration::from_secs(1))
    }

    /// A call off a hit's path (an invalidation, a message): [`slow_timeout`](Self::slow_timeout).
    fn guard_slow<T: Send + 'static>(
        &self,
        call: impl FnOnce(&S) -> StoreFuture<T>,
    ) -> StoreFuture<T> {
        self.guard_for(self.slow_timeout(), call)
    }

    /// A call of many steps (see [`step_done`]): the [slow timeout](Self::slow_timeout)
    /// bounds each step, not the whole call, which takes as many steps as it needs.
    fn guard_steps<T: Send + 'static>(
        &self,
        call: impl FnOnce(&S) -> StoreFuture<T>,
    ) -> StoreFuture<T> {
        let timeout = self.slow_timeout();
        let permit = match self.breaker.admit() {
            Ok(permit) => permit,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let steps = Arc::new(tokio::sync::Notify::new());
        let fut = STEPS.scope(steps.clone(), call(&self.inner));
        Box::pin(async move {
            tokio::pin!(fut);
            let result = loop {
                tokio::select! {
                    biased;
                    result = &mut fut => break result,
                    () = steps.notified() => {}
                    () = tokio::time::sleep(timeout) => {
                        break Err(StoreError::new(format!(
                            "no answer within {timeout:?} (in a call of many steps)"
                        )));
                    }
                }
            };
            permit.finish(result.is_ok());
            result
        })
    }

    fn guard_for<T: Send + 'static>(
        &self,
        timeout: Duration,
        call: impl FnOnce(&S) -> StoreFuture<T>,
    ) -> StoreFuture<T> {
        let permit = match self.breaker.admit() {
            Ok(permit) => permit,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let fut = call(&self.inner);
        Box::pin(guarded(fut, timeout, permit))
    }
}

async fn guarded<T>(
    fut: StoreFuture<T>,
    timeout: Duration,
    permit: Permit,
) -> Result<T, StoreError> {
    let result = match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::new(format!("no answer within {timeout:?}"))),
    };
    permit.finish(result.is_ok());
    result
}

impl<S: Store> Store for Guarded<S> {
    fn get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        self.guard(|s| s.get(key))
    }

    fn get_local(&self, key: &str) -> Option<Option<Arc<Entry>>> {
        self.inner.get_local(key)
    }

    fn get_sliding(&self, key: Arc<str>, idle: Duration) -> StoreFuture<Option<Arc<Entry>>> {
        self.guard(|s| s.get_sliding(key, idle))
    }

    fn touch(&self, key: Arc<str>, idle: Duration) -> StoreFuture<()> {
        self.guard(|s| s.touch(key, idle))
    }

    fn health(&self) -> Health {
        Guarded::health(self)
    }

    fn put(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) -> StoreFuture<()> {
        self.guard(|s| s.put(key, entry, ttl))
    }

    fn delete(&self, key: Arc<str>) -> StoreFuture<()> {
        self.guard(|s| s.delete(key))
    }

    fn begin_write(&self, key: Arc<str>, keep: Duration) -> StoreFuture<WriteTicket> {
        self.guard(|s| s.begin_write(key, keep))
    }

    fn end_write(
        &self,
        key: Arc<str>,
        ticket: WriteTicket,
        entry: Option<(Arc<Entry>, Duration)>,
    ) -> StoreFuture<bool> {
        self.guard(|s| s.end_write(key, ticket, entry))
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    fn invalidate(&self, key: Arc<str>, at: SystemTime, keep: Duration) -> StoreFuture<()> {
        self.guard_slow(|s| s.invalidate(key, at, keep))
    }

    fn invalidate_tag(
        &self,
        ns: Arc<str>,
        tag: Arc<str>,
        at: SystemTime,
        keep: Duration,
    ) -> StoreFuture<()> {
        self.guard_steps(|s| s.invalidate_tag(ns, tag, at, keep))
    }

    fn publish(&self, message: Bytes) -> StoreFuture<u64> {
        self.guard_slow(|s| s.publish(message))
    }

    fn acknowledge(&self, id: Arc<str>) -> StoreFuture<()> {
        self.guard_slow(|s| s.acknowledge(id))
    }

    fn acknowledgements(&self, id: Arc<str>) -> StoreFuture<u64> {
        self.guard(|s| s.acknowledgements(id))
    }

    fn subscribe(&self, sink: Weak<dyn Fn(BusEvent) + Send + Sync>) -> bool {
        self.inner.subscribe(sink)
    }

    fn try_lease(&self, key: Arc<str>, token: Arc<str>, ttl: Duration) -> StoreFuture<bool> {
        self.guard(|s| s.try_lease(key, token, ttl))
    }

    fn release_lease(&self, key: Arc<str>, token: Arc<str>) -> StoreFuture<()> {
        self.guard(|s| s.release_lease(key, token))
    }

    fn usage(&self) -> StoreUsage {
        self.inner.usage()
    }

    fn clear_local(&self) {
        self.inner.clear_local();
    }

    fn invalidations(&self) -> u64 {
        self.inner.invalidations()
    }

    fn get_shared(&self, key: Arc<str>, idle: Option<Duration>) -> StoreFuture<Option<Arc<Entry>>> {
        self.guard(|s| s.get_shared(key, idle))
    }

    fn bus_live(&self) -> bool {
        self.inner.bus_live()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Calls go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// Calls fail at once until `until`.
    Open { until: Instant },
    /// One probe call is in flight; the others fail at once.
    Probing,
}

#[derive(Debug)]
struct Breaker {
    threshold: u32,
    cool_down: Duration,
    phase: Mutex<Phase>,
}

impl Breaker {
    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a call through, or fails it at once while open.
    fn admit(self: &Arc<Self>) -> Result<Permit, StoreError> {
        let mut phase = self.phase();
        let probe = match *phase {
            Phase::Closed { .. } => false,
            Phase::Open { until } if Instant::now() >= until => {
                *phase = Phase::Probing;
                true
            }
            Phase::Open { .. } | Phase::Probing => {
                return Err(StoreError::new("circuit open: not calling the store"));
            }
        };
        Ok(Permit {
            breaker: Some(self.clone()),
            probe,
        })
    }

    fn record(&self, probe: bool, ok: bool) {
        let mut phase = self.phase();
        match (*phase, ok) {
            (Phase::Closed { .. }, true) => *phase = Phase::Closed { failures: 0 },
            // Any success shows the store answers again.
            (Phase::Open { .. } | Phase::Probing, true) => {
                tracing::info!("cache store answers again: circuit closed");
                *phase = Phase::Closed { failures: 0 };
            }
            (Phase::Closed { failures }, false) => {
                let failures = failures + 1;
                *phase = if failures >= self.threshold {
                    tracing::warn!(failures, cool_down = ?self.cool_down, "cache store failing: circuit open");
                    self.open()
                } else {
                    Phase::Closed { failures }
                };
            }
            (Phase::Probing, false) if probe => {
                tracing::debug!("cache store probe failed: circuit open again");
                *phase = self.open();
            }
            // A late failure of a call let through before the breaker opened.
            (Phase::Open { .. } | Phase::Probing, false) => {}
        }
    }

    fn open(&self) -> Phase {
        Phase::Open {
            until: Instant::now() + self.cool_down,
        }
    }

    /// A probe dropped before it ended: the next call probes.
    fn abandon_probe(&self) {
        let mut phase = self.phase();
        if *phase == Phase::Probing {
            *phase = Phase::Open {
                until: Instant::now(),
            };
        }
    }
}

/// A call let through; reports its outcome once, or, dropped unfinished, frees the probe.
struct Permit {
    breaker: Option<Arc<Breaker>>,
    probe: bool,
}

impl Permit {
    fn finish(mut self, ok: bool) {
        if let Some(breaker) = self.breaker.take() {
            breaker.record(self.probe, ok);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(breaker) = self.breaker.take() {
            if self.probe {
                breaker.abandon_probe();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A store whose calls fail, hang or succeed, as told; counts its calls.
    #[derive(Default)]
    struct Flaky {
        fail: AtomicBool,
        hang: AtomicBool,
        calls: AtomicUsize,
    }

    impl Flaky {
        fn answer(&self) -> StoreFuture<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.hang.load(Ordering::SeqCst) {
                Box::pin(std::future::pending())
            } else if self.fail.load(Ordering::SeqCst) {
                Box::pin(std::future::ready(Err(StoreError::new("down"))))
            } else {
                Box::pin(std::future::ready(Ok(())))
            }
        }
    }

    impl Store for Flaky {
        fn get(&self, _: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
            let f = self.answer();
            Box::pin(async move { f.await.map(|()| None) })
        }
        fn put(&self, _: Arc<str>, _: Arc<Entry>, _: Duration) -> StoreFuture<()> {
            self.answer()
        }
        fn delete(&self, _: Arc<str>) -> StoreFuture<()> {
            self.answer()
        }
    }

    fn guarded() -> (Guarded<Flaky>, Guarded<Flaky>) {
        let g = Guarded::new(Flaky::default())
            .timeout(Duration::from_millis(10))
            .failures(3)
            .cool_down(Duration::from_secs(1));
        (g.clone(), g)
    }

    fn calls(g: &Guarded<Flaky>) -> usize {
        g.get_ref().calls.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_probes_after_cool_down_and_closes() {
        let (g, watch) = guarded();
        g.get_ref().fail.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            assert!(g.delete("k".into()).await.is_err());
        }
        assert_eq!(watch.health(), Health::Degraded);
        assert_eq!(calls(&g), 3);
        // Open: fails at once, the store is not called.
        let started = Instant::now();
        for _ in 0..10 {
            assert!(g.get("k".into()).await.is_err());
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(calls(&g), 3);
        // After the cool-down one probe goes through; it fails: open again.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(g.get("k".into()).await.is_err());
        assert_eq!(calls(&g), 4);
        assert!(g.get("k".into()).await.is_err());
        assert_eq!(calls(&g), 4);
        // The store is back: the next probe closes the breaker.
        g.get_ref().fail.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(g.get("k".into()).await.is_ok());
        assert_eq!(watch.health(), Health::Ok);
        assert!(g
            .put("k".into(), entry(), Duration::from_secs(1))
            .await
            .is_ok());
        assert_eq!(calls(&g), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_count_as_failures_and_bound_each_call() {
        let (g, _) = guarded();
        g.get_ref().hang.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let started = Instant::now();
            let err = g.get("k".into()).await.unwrap_err();
            assert_eq!(started.elapsed(), Duration::from_millis(10));
            assert!(err.to_string().contains("no answer within"), "{err}");
        }
        assert_eq!(g.health(), Health::Degraded);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count_of_failures() {
        let (g, _) = guarded();
        for _ in 0..5 {
            g.get_ref().fail.store(true, Ordering::SeqCst);
            assert!(g.delete("k".into()).await.is_err());
            assert!(g.delete("k".into()).await.is_err());
            g.get_ref().fail.store(false, Ordering::SeqCst);
            assert!(g.delete("k".into()).await.is_ok());
        }
        assert_eq!(g.health(), Health::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_probe_at_a_time_and_a_dropped_probe_frees_the_slot() {
        let (g, _) = guarded();
        g.get_ref().fail.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let _ = g.delete("k".into()).await;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        g.get_ref().hang.store(true, Ordering::SeqCst);
        let probe = g.get("k".into());
        // The probe was admitted; another call meanwhile fails at once.
        assert!(g.get("k".into()).await.is_err());
        assert_eq!(calls(&g), 4);
        drop(probe);
        // The next call probes at once.
        g.get_ref().hang.store(false, Ordering::SeqCst);
        g.get_ref().fail.store(false, Ordering::SeqCst);
        assert!(g.get("k".into()).await.is_ok());
        assert_eq!(g.health(), Health::Ok);
    }

    /// A store whose tag invalidation takes `steps` steps of `each`, reporting each, and then
    /// hangs if `hang` (a store that stopped answering midway).
    struct Walker {
        steps: u32,
        each: Duration,
        hang: bool,
    }

    impl Store for Walker {
        fn get(&self, _: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
            Box::pin(std::future::ready(Ok(None)))
        }
        fn put(&self, _: Arc<str>, _: Arc<Entry>, _: Duration) -> StoreFuture<()> {
            Box::pin(std::future::ready(Ok(())))
        }
        fn delete(&self, _: Arc<str>) -> StoreFuture<()> {
            Box::pin(std::future::ready(Ok(())))
        }
        fn invalidate_tag(
            &self,
            _: Arc<str>,
            _: Arc<str>,
            _: SystemTime,
            _: Duration,
        ) -> StoreFuture<()> {
            let (steps, each, hang) = (self.steps, self.each, self.hang);
            Box::pin(async move {
                for _ in 0..steps {
                    tokio::time::sleep(each).await;
                    step_done();
                }
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok(())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tag_invalidation_is_timed_per_step_not_as_one_call() {
        let walk = |steps, each, hang| async move {
            let g = Guarded::new(Walker { steps, each, hang });
            let started = Instant::now();
            let done = g
                .invalidate_tag("ns".into(), "t".into(), SystemTime::now(), Duration::ZERO)
                .await;
            (done, started.elapsed(), g.health())
        };
        let step = Duration::from_millis(900);
        // Ten steps of 0.9 s each: 9 s in all, under a timeout of 1 s.
        let (done, took, health) = walk(10, step, false).await;
        assert!(done.is_ok(), "{done:?}");
        assert_eq!((took, health), (step * 10, Health::Ok));
        // A store that stops answering after three steps: given up 1 s after the last one.
        let (done, took, _) = walk(3, step, true).await;
        let err = done.unwrap_err();
        assert!(err.to_string().contains("no answer within 1s"), "{err}");
        assert_eq!(took, step * 3 + Duration::from_secs(1));
        // One step longer than the timeout.
        let (done, took, _) = walk(1, Duration::from_millis(1500), false).await;
        assert!(done.is_err());
        assert_eq!(took, Duration::from_secs(1));
    }

    fn entry() -> Arc<Entry> {
        Arc::new(Entry::new(
            "k",
            http::StatusCode::OK,
            Default::default(),
            bytes::Bytes::new(),
        ))
    }
}
