//! [`Guarded`]: a per-call timeout, a circuit breaker and a background probe around any store.

mod breaker;
mod probe;
#[cfg(test)]
mod tests;

use super::{
    BreakerState, Bus, BusEvent, Health, HealthCheck, HealthReport, Leases, Store, StoreError,
    StoreFuture, StoreUsage, WriteTicket, Writes,
};
use crate::Entry;
use breaker::{Breaker, Permit, Settings};
use bytes::Bytes;
use probe::probe;
use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// The least time a call off a hit's path (an invalidation, a message) is given.
const SLOW: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// Set while a call of many steps runs under [`Guarded`]: told of each step finished.
    static STEPS: Arc<Notify>;
}

/// Reports that a call of many steps (a tag invalidation walking its index in batches) has
/// finished one: under [`Guarded`], the call's timeout starts again, so that it bounds each
/// step rather than the whole call. Does nothing anywhere else.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn step_done() {
    let _ = STEPS.try_with(|steps| steps.notify_one());
}

/// A store behind a per-call timeout and a circuit breaker, so that a slow or absent store
/// costs a request at most the timeout, and then nothing at all; and a background probe, so
/// that [`health`](Self::health) is true even when no request comes.
///
/// - Every call is bounded by [`timeout`](Self::timeout) (default 10 ms); a call that takes
///   longer fails with a [`StoreError`].
/// - After [`failures`](Self::failures) failures or timeouts in a row (default 5), the breaker
///   opens: [`health`](Self::health) is [`Health::Degraded`] and every call fails at once,
///   without touching the store.
/// - While no call has ended for [`probe_interval`](Self::probe_interval) (default 1 s), a
///   background task pings the store ([`HealthCheck::ping`], under the same timeout) once per
///   interval; after a failure, again after a tenth of the interval. A ping counts as a call:
///   with the defaults, a store that dies while idle opens the breaker within about 1.5 s.
/// - After [`cool_down`](Self::cool_down) (default 1 s) the probe pings the open breaker's
///   store (half-open): success closes the breaker, failure opens it for another cool-down;
///   calls meanwhile fail at once, so no request pays for the probe. Without a probe (an
///   interval of zero, or no tokio runtime) the first call after the cool-down probes instead,
///   while the others still fail at once; a probing call dropped before it ends lets the next
///   call probe.
///
/// On a store of parts ([`Store::part_of`]: the masters of a Redis Cluster), each part has a
/// breaker of its own, with the same settings and a probe of its own (pinging that part), so
/// that a failing master costs only the keys it serves; the store is told when a part's
/// breaker opens ([`Store::part_failing`]: a cluster reads its slot map afresh, to find a
/// replica that took over). Calls that name no key (publishing, pings) go through the
/// breaker of the whole, which also refuses every part's calls while it is open.
///
/// The probe starts with the guard inside a tokio runtime, or with its first call through
/// [`Store`] in one, and ends when the last clone is dropped. Clones share the breaker and
/// its probe, so a clone kept aside reads the health of the one in use; a setter called on a
/// clone gives that clone a breaker of its own.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_stash::{BreakerState, Guarded, Health, MemoryStore};
///
/// let store = Guarded::new(MemoryStore::default())
///     .timeout(Duration::from_millis(5))
///     .failures(3)
///     .cool_down(Duration::from_millis(500))
///     .probe_interval(Duration::from_secs(2));
/// assert_eq!(store.health(), Health::Ok);
/// assert_eq!(store.breaker(), BreakerState::Closed);
/// assert_eq!(store.since_last_success(), None);
/// ```
pub struct Guarded<S> {
    inner: Arc<S>,
    breaker: Arc<Breaker>,
}

impl<S> Clone for Guarded<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = self.breaker.state().settings;
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker())
            .field("timeout", &settings.timeout)
            .field("probe_interval", &settings.probe_interval)
            .finish_non_exhaustive()
    }
}

impl<S> Guarded<S> {
    /// [`Health::Ok`] while calls go to the store, [`Health::Degraded`] while the breaker is
    /// open or half-open (on a store of parts, any part's).
    pub fn health(&self) -> Health {
        self.breaker().health()
    }

    /// The breaker's state; on a store of parts (a cluster), the worst of the whole's and the
    /// parts' (open, then half-open, then closed).
    pub fn breaker(&self) -> BreakerState {
        let rank = |state: BreakerState| match state {
            BreakerState::Open => 2,
            BreakerState::HalfOpen => 1,
            _ => 0,
        };
        let parts = self.breaker.parts();
        std::iter::once(self.breaker.phase())
            .chain(parts.iter().map(|b| b.phase()))
            .max_by_key(|state| rank(*state))
            .unwrap_or(BreakerState::Closed)
    }

    /// The parts of the store (cluster masters, by address) whose breaker is open or
    /// half-open now; empty for a store of one part. See [`Store::part_of`].
    pub fn failing_parts(&self) -> Vec<String> {
        let mut failing: Vec<String> = self
            .breaker
            .parts()
            .iter()
            .filter(|b| b.phase() != BreakerState::Closed)
            .filter_map(|b| b.part.as_deref().map(str::to_owned))
            .collect();
        failing.sort();
        failing
    }

    /// How long ago a call or a ping last succeeded (to any part); `None` before the first
    /// success.
    pub fn since_last_success(&self) -> Option<Duration> {
        self.report().since_last_success
    }

    /// The breaker's state (the worst, with parts) and the time since the last success: read
    /// from the parts' breakers here, so that a call to a part touches only its own.
    fn report(&self) -> HealthReport {
        let parts = self.breaker.parts();
        let last = std::iter::once(&self.breaker)
            .chain(&parts)
            .filter_map(|b| b.last_success())
            .max();
        let since = last.map(|at| tokio::time::Instant::now().saturating_duration_since(at));
        HealthReport::new(self.breaker(), since)
    }

    /// The guarded store.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Store> Guarded<S> {
    /// Guards `inner` with the defaults: a 10 ms timeout, open after 5 failures in a row, a
    /// probe after 1 s, a ping every second while idle.
    pub fn new(inner: S) -> Self {
        let this = Self {
            inner: Arc::new(inner),
            breaker: Breaker::new(Settings {
                timeout: Duration::from_millis(10),
                threshold: 5,
                cool_down: Duration::from_secs(1),
                probe_interval: Duration::from_secs(1),
            }),
        };
        this.start_probe();
        this
    }

    /// How long one call (or ping) may take (default 10 ms).
    pub fn timeout(self, timeout: Duration) -> Self {
        self.set(|s| s.timeout = timeout)
    }

    /// How many failures or timeouts in a row open the breaker (default 5; at least 1).
    pub fn failures(self, failures: u32) -> Self {
        self.set(|s| s.threshold = failures.max(1))
    }

    /// How long the breaker stays open before a probe (default 1 s).
    pub fn cool_down(self, cool_down: Duration) -> Self {
        self.set(|s| s.cool_down = cool_down)
    }

    /// How long the store may go without a call before the background probe pings it, and
    /// how often it pings then (default 1 s). [`Duration::ZERO`] turns the probe off: health
    /// then changes only with calls.
    pub fn probe_interval(self, interval: Duration) -> Self {
        self.set(|s| s.probe_interval = interval)
    }

    /// Changes a setting: on a fresh breaker if this one is shared with a clone already.
    fn set(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        if Arc::strong_count(&self.breaker) > 1 {
            let settings = self.breaker.state().settings;
            self.breaker = Breaker::new(settings);
        }
        change(&mut self.breaker.state().settings);
        self.breaker.forget_parts();
        // The probe looks at its schedule again.
        self.breaker.wake.notify_one();
        self.start_probe();
        self
    }

    /// Starts the background probe, once, if a tokio runtime is at hand.
    fn start_probe(&self) {
        let started = &self.breaker.probe_started;
        if started.load(Ordering::Acquire) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if started.swap(true, Ordering::AcqRel) {
            return;
        }
        rt.spawn(probe(
            Arc::downgrade(&self.inner),
            Arc::downgrade(&self.breaker),
            self.breaker.wake.clone(),
        ));
    }

    /// Starts the probe of a part's breaker, just created, if a tokio runtime is at hand.
    fn start_part_probe(&self, breaker: &Arc<Breaker>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if breaker.probe_started.swap(true, Ordering::AcqRel) {
            return;
        }
        rt.spawn(probe(
            Arc::downgrade(&self.inner),
            Arc::downgrade(breaker),
            breaker.wake.clone(),
        ));
    }

    /// Lets a call about `key` (or about no key) through the breaker of its part (or of the
    /// whole), or fails it at once.
    fn admit(
        &self,
        op: &'static str,
        key: Option<&str>,
    ) -> Result<(Admitted, Duration), StoreError> {
        let Some(part) = key.and_then(|key| self.inner.part_of(key)) else {
            let (permit, timeout) = self.breaker.admit()?;
            return Ok((Admitted::new(permit, None, op), timeout));
        };
        if self.breaker.refuses() {
            return Err(StoreError::circuit_open());
        }
        let (breaker, created) = self.breaker.part(&part);
        if created {
            self.start_part_probe(&breaker);
        }
        let (permit, timeout) = breaker.admit()?;
        let part = PartCall {
            part,
            store: self.inner.clone(),
        };
        Ok((Admitted::new(permit, Some(part), op), timeout))
    }

    /// Runs `call`, about `key`, under its part's breaker and the timeout.
    fn guard<T: Send + 'static>(
        &self,
        op: &'static str,
        key: &str,
        call: impl FnOnce(&S) -> StoreFuture<T>,
    ) -> StoreFuture<T> {
        self.guard_with(op, Some(key), Duration::ZERO, false, call)
    }

    /// Runs `call`, about no key, under the whole's breaker and the timeout.
    fn guard_whole<T: Send + 'static>(
        &self,
        op: &'static str,
        call: impl FnOnce(&S) -> StoreFuture<T>,
    ) -> StoreFuture<T> {
        self.guard_with(op, None, Duration::ZERO, false, call)
    }

    /// Invalidations are not on a hit's path and may touch many keys: they get at least 1 s.
    fn guard_slow<T: Send + 'static>(
        &self,
        op: &'static str,
        key: Option<&str>,
        call: impl FnOnce(&S) -> StoreFuture<T>,
    ) -> StoreFuture<T> {
        self.guard_with(op, key, SLOW, false, call)
    }

    /// A call of many steps (see [`step_done`]): the timeout, at least 1 s, bounds each
    /// step, not the whole call, which takes as many steps as it needs.
    fn guard_steps<T: Send + 'static>(
        &self,
        op: &'static str,
        call: impl FnOnce(&S) -> StoreFuture<T>,
    ) -> StoreFuture<T> {
        self.guard_with(op, None, SLOW, true, call)
    }

    /// Runs `call` under the breaker of `key`'s part (or the whole's) and the timeout (or
    /// `at_least`), for each of its steps when `stepped`.
    fn guard_with<T: Send + 'static>(
        &self,
        op: &'static str,
        key: Option<&str>,
        at_least: Duration,
        stepped: bool,
        call: impl FnOnce(&S) -> StoreFuture<T>,
    ) -> StoreFuture<T> {
        self.start_probe();
        let (permit, timeout) = match self.admit(op, key) {
            Ok(admitted) => admitted,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let timeout = timeout.max(at_least);
        if !stepped {
            use tracing::Instrument;
            let span = tracing::trace_span!("tower_stash.store", op);
            return Box::pin(guarded(call(&self.inner), timeout, permit).instrument(span));
        }
        let steps = Arc::new(Notify::new());
        let fut = STEPS.scope(steps.clone(), call(&self.inner));
        Box::pin(async move {
            let mut fut = std::pin::pin!(fut);
            let result = loop {
                // The call's end, else a step finished (the timeout starts again), else the
                // timeout.
                let mut step = std::pin::pin!(steps.notified());
                let mut expiry = std::pin::pin!(tokio::time::sleep(timeout));
                let next = std::future::poll_fn(|cx| {
                    if let Poll::Ready(result) = fut.as_mut().poll(cx) {
                        return Poll::Ready(Some(result));
                    }
                    if step.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    match expiry.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(StoreError::new(format!(
                            "no answer within {timeout:?} (in a call of many steps)"
                        ))))),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await;
                if let Some(result) = next {
                    break result;
                }
            };
            permit.finish(result.as_ref().err());
            result
        })
    }
}

/// A call let through the breaker of the whole, or of a part.
struct Admitted {
    permit: Permit,
    part: Option<PartCall>,
    /// What the call does (a label of `tower_stash_store_call_seconds`), and when it began.
    op: &'static str,
    started: std::time::Instant,
}

/// What a call to a part reports beyond its breaker.
struct PartCall {
    part: Arc<str>,
    store: Arc<dyn Store>,
}

impl Admitted {
    fn new(permit: Permit, part: Option<PartCall>, op: &'static str) -> Self {
        Self {
            permit,
            part,
            op,
            started: std::time::Instant::now(),
        }
    }

    /// Reports the call's outcome; a part whose breaker opened is reported to the store.
    fn finish(self, error: Option<&StoreError>) {
        let outcome = if error.is_none() { "ok" } else { "error" };
        metrics::histogram!("tower_stash_store_call_seconds", "op" => self.op, "outcome" => outcome)
            .record(self.started.elapsed().as_secs_f64());
        let opened = self.permit.finish(error);
        if let (Some(call), true) = (self.part, opened) {
            call.store.part_failing(&call.part);
        }
    }
}

async fn guarded<T>(
    fut: StoreFuture<T>,
    timeout: Duration,
    permit: Admitted,
) -> Result<T, StoreError> {
    let result = match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::new(format!("no answer within {timeout:?}"))),
    };
    permit.finish(result.as_ref().err());
    result
}

impl<S: Store> Store for Guarded<S> {
    fn get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        self.guard("get", &key.clone(), |s| s.get(key))
    }

    fn get_local(&self, key: &str) -> Option<Option<Arc<Entry>>> {
        self.inner.get_local(key)
    }

    fn get_sliding(&self, key: Arc<str>, idle: Duration) -> StoreFuture<Option<Arc<Entry>>> {
        self.guard("get", &key.clone(), |s| s.get_sliding(key, idle))
    }

    fn touch(&self, key: Arc<str>, idle: Duration) -> StoreFuture<()> {
        self.guard("touch", &key.clone(), |s| s.touch(key, idle))
    }

    fn get_shared(&self, key: Arc<str>, idle: Option<Duration>) -> StoreFuture<Option<Arc<Entry>>> {
        self.guard("get", &key.clone(), |s| s.get_shared(key, idle))
    }

    fn put(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) -> StoreFuture<()> {
        self.guard("put", &key.clone(), |s| s.put(key, entry, ttl))
    }

    fn delete(&self, key: Arc<str>) -> StoreFuture<()> {
        self.guard("delete", &key.clone(), |s| s.delete(key))
    }

    fn invalidate(&self, key: Arc<str>, at: SystemTime, keep: Duration) -> StoreFuture<()> {
        self.guard_slow("invalidate", Some(&key.clone()), |s| {
            s.invalidate(key, at, keep)
        })
    }

    fn invalidate_tag(
        &self,
        ns: Arc<str>,
        tag: Arc<str>,
        at: SystemTime,
        keep: Duration,
    ) -> StoreFuture<()> {
        self.guard_steps("invalidate_tag", |s| s.invalidate_tag(ns, tag, at, keep))
    }

    /// Where the guarded store has it: a call of steps (it walks a large family).
    fn invalidate_and_publish(
        &self,
        key: Arc<str>,
        ns: Arc<str>,
        family: Arc<str>,
        at: SystemTime,
        keep: Duration,
        message: Bytes,
    ) -> Option<StoreFuture<u64>> {
        let call = self
            .inner
            .invalidate_and_publish(key, ns, family, at, keep, message)?;
        Some(self.guard_steps("invalidate_and_publish", |_| call))
    }

    fn refuses(&self, key: &str, began: SystemTime) -> bool {
        self.inner.refuses(key, began)
    }

    /// A walk of many steps (a `SCAN` per step), each under the timeout.
    fn keys(&self, prefix: Arc<str>, limit: usize) -> StoreFuture<Vec<String>> {
        self.guard_steps("keys", |s| s.keys(prefix, limit))
    }

    /// The guarded store's clock, past the breaker: sampled in the background (bounded by
    /// its own timeout), it neither counts towards the store's health nor waits for it.
    fn time(&self) -> Option<StoreFuture<SystemTime>> {
        self.inner.time()
    }

    fn invalidations(&self) -> u64 {
        self.inner.invalidations()
    }

    fn clear_local(&self) {
        self.inner.clear_local();
    }

    fn usage(&self) -> StoreUsage {
        self.inner.usage()
    }

    /// The guarded store's bus, its calls guarded.
    fn bus(&self) -> Option<&dyn Bus> {
        self.inner.bus().map(|_| self as &dyn Bus)
    }

    /// The guarded store's leases, guarded.
    fn leases(&self) -> Option<&dyn Leases> {
        self.inner.leases().map(|_| self as &dyn Leases)
    }

    /// The guarded store's writes, guarded.
    fn writes(&self) -> Option<&dyn Writes> {
        self.inner.writes().map(|_| self as &dyn Writes)
    }

    /// Always: the breaker's health, and a guarded ping of the store.
    fn health_check(&self) -> Option<&dyn HealthCheck> {
        Some(self)
    }
}

/// The answer of an extension a store does not have (it changes for no store, but a guard
/// must answer something).
fn absent<T: Send + 'static>(value: T) -> StoreFuture<T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl<S: Store> Bus for Guarded<S> {
    fn publish(&self, message: Bytes) -> StoreFuture<u64> {
        self.guard_slow("publish", None, |s| {
            s.bus().map_or_else(|| absent(0), |b| b.publish(message))
        })
    }

    fn subscribe(&self, sink: Weak<dyn Fn(BusEvent) + Send + Sync>) -> bool {
        self.inner.bus().is_some_and(|b| b.subscribe(sink))
    }

    fn live(&self) -> bool {
        self.inner.bus().is_none_or(|b| b.live())
    }

    fn acknowledge(&self, id: Arc<str>) -> StoreFuture<()> {
        self.guard_slow("acknowledge", None, |s| {
            s.bus().map_or_else(|| absent(()), |b| b.acknowledge(id))
        })
    }

    fn pushed_acknowledgements(&self, id: Arc<str>, sent: u64) -> StoreFuture<u64> {
        match self.inner.bus() {
            Some(bus) => bus.pushed_acknowledgements(id, sent),
            None => Box::pin(std::future::pending()),
        }
    }

    fn acknowledgements(&self, id: Arc<str>) -> StoreFuture<u64> {
        self.guard_whole("acknowledgements", |s| {
            s.bus()
                .map_or_else(|| absent(0), |b| b.acknowledgements(id))
        })
    }
}

impl<S: Store> Leases for Guarded<S> {
    fn try_lease(&self, key: Arc<str>, token: Arc<str>, ttl: Duration) -> StoreFuture<bool> {
        self.guard("lease", &key.clone(), |s| {
            s.leases()
                .map_or_else(|| absent(true), |l| l.try_lease(key, token, ttl))
        })
    }

    fn release_lease(&self, key: Arc<str>, token: Arc<str>) -> StoreFuture<()> {
        self.guard("lease", &key.clone(), |s| {
            s.leases()
                .map_or_else(|| absent(()), |l| l.release_lease(key, token))
        })
    }

    fn lease_released(&self, key: Arc<str>) -> StoreFuture<()> {
        match self.inner.leases() {
            Some(leases) => leases.lease_released(key),
            None => Box::pin(std::future::pending()),
        }
    }
}

impl<S: Store> Writes for Guarded<S> {
    fn begin_write(&self, key: Arc<str>, keep: Duration) -> StoreFuture<WriteTicket> {
        self.guard("write", &key.clone(), |s| {
            s.writes().map_or_else(
                || absent(WriteTicket::untracked()),
                |w| w.begin_write(key, keep),
            )
        })
    }

    fn end_write(
        &self,
        key: Arc<str>,
        ticket: WriteTicket,
        entry: Option<(Arc<Entry>, Duration)>,
    ) -> StoreFuture<bool> {
        self.guard("write", &key.clone(), |s| {
            s.writes()
                .map_or_else(|| absent(false), |w| w.end_write(key, ticket, entry))
        })
    }
}

impl<S: Store> HealthCheck for Guarded<S> {
    /// The guarded store's check, past the breaker and the timeout: it connects afresh.
    fn check(&self, timeout: Duration) -> StoreFuture<String> {
        match self.inner.health_check() {
            Some(h) => h.check(timeout),
            None => absent("the store has nothing to check".to_owned()),
        }
    }

    /// Pings the guarded store (if it has a [`HealthCheck`]), under the breaker and the timeout.
    fn ping(&self) -> StoreFuture<()> {
        self.guard_whole("ping", |s| {
            s.health_check().map_or_else(|| absent(()), |h| h.ping())
        })
    }

    /// Pings one part of the guarded store, under that part's breaker and the timeout.
    fn ping_part(&self, part: &str) -> StoreFuture<()> {
        let (breaker, created) = self.breaker.part(&Arc::from(part));
        if created {
            self.start_part_probe(&breaker);
        }
        let (permit, timeout) = match breaker.admit() {
            Ok(admitted) => admitted,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let ping = match self.inner.health_check() {
            Some(h) => h.ping_part(part),
            None => absent(()),
        };
        let admitted = Admitted::new(permit, None, "ping");
        Box::pin(guarded(ping, timeout, admitted))
    }

    fn health(&self) -> Health {
        self.start_probe();
        Guarded::health(self)
    }

    fn health_report(&self) -> Option<HealthReport> {
        self.start_probe();
        Some(self.report())
    }
}
