//! [`Guarded`]: a per-call timeout, a circuit breaker and a background probe around any store.

use super::{
    BreakerState, Bus, BusEvent, Health, HealthCheck, HealthReport, Leases, Store, StoreError,
    StoreFuture, StoreUsage, WriteTicket, Writes,
};
use crate::Entry;
use bytes::Bytes;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::time::Instant;

/// After a failure, the probe pings again after this fraction of its interval, so that a dead
/// store reaches the failure threshold in a fraction of a second, not `failures` seconds.
const CONFIRM: u32 = 10;
/// The least the probe waits after a ping, whatever the settings (a zero cool-down, a tiny
/// interval), so that it never spins on a store that answers at once.
const MIN_GAP: Duration = Duration::from_millis(1);

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
    /// open or half-open.
    pub fn health(&self) -> Health {
        self.breaker().health()
    }

    /// The breaker's state.
    pub fn breaker(&self) -> BreakerState {
        self.breaker.state().phase.into()
    }

    /// How long ago a call or a ping last succeeded; `None` before the first success.
    pub fn since_last_success(&self) -> Option<Duration> {
        self.breaker.report().since_last_success
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

    /// Runs `call` under the breaker and the timeout.
    fn guard<T: Send + 'static>(&self, call: impl FnOnce(&S) -> StoreFuture<T>) -> StoreFuture<T> {
        self.guard_for(Duration::ZERO, call)
    }

    /// Invalidations are not on a hit's path and may touch many keys: they get at least 1 s.
    fn guard_slow<T: Send + 'static>(
        &self,
        call: impl FnOnce(&S) -> StoreFuture<T>,
    ) -> StoreFuture<T> {
        self.guard_for(SLOW, call)
    }

    /// A call of many steps (see [`step_done`]): the timeout, at least 1 s, bounds each
    /// step, not the whole call, which takes as many steps as it needs.
    fn guard_steps<T: Send + 'static>(
        &self,
        call: impl FnOnce(&S) -> StoreFuture<T>,
    ) -> StoreFuture<T> {
        self.guard_with(SLOW, true, call)
    }

    /// Runs `call` under the breaker and the timeout, or `at_least`.
    fn guard_for<T: Send + 'static>(
        &self,
        at_least: Duration,
        call: impl FnOnce(&S) -> StoreFuture<T>,
    ) -> StoreFuture<T> {
        self.guard_with(at_least, false, call)
    }

    /// Runs `call` under the breaker and the timeout (or `at_least`), for each of its steps
    /// when `stepped`.
    fn guard_with<T: Send + 'static>(
        &self,
        at_least: Duration,
        stepped: bool,
        call: impl FnOnce(&S) -> StoreFuture<T>,
    ) -> StoreFuture<T> {
        self.start_probe();
        let (permit, timeout) = match self.breaker.admit() {
            Ok(admitted) => admitted,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let timeout = timeout.max(at_least);
        if !stepped {
            return Box::pin(guarded(call(&self.inner), timeout, permit));
        }
        let steps = Arc::new(Notify::new());
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

/// The background probe of one breaker: pings the store while no call ends, until the
/// breaker is dropped.
async fn probe<S: Store>(store: Weak<S>, breaker: Weak<Breaker>, wake: Arc<Notify>) {
    let _running = Running(breaker.clone());
    loop {
        let Some(next) = breaker.upgrade().map(|b| b.probe_next()) else {
            return;
        };
        match next {
            Next::Wait(due) => {
                // Woken early by a failure, a changed setting, or the breaker's drop.
                let woken = wake.notified();
                match due {
                    Some(due) => tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        () = woken => {}
                    },
                    None => woken.await,
                }
            }
            Next::Ping(permit, timeout) => {
                let Some(store) = store.upgrade() else {
                    return;
                };
                let ping = match store.health_check() {
                    Some(check) => check.ping(),
                    None => Box::pin(std::future::ready(Ok(()))),
                };
                drop(store);
                let ok = matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(())));
                if !ok {
                    tracing::debug!("cache store probe: no answer to a ping");
                }
                permit.finish(ok);
            }
        }
    }
}

/// Marks the probe stopped if its task is dropped (its runtime shut down), so that the next
/// call starts another.
struct Running(Weak<Breaker>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(breaker) = self.0.upgrade() {
            breaker.probe_started.store(false, Ordering::Release);
        }
    }
}

/// What the probe does next.
enum Next {
    /// Nothing until then (or, `None`, until woken: the probe is off).
    Wait(Option<Instant>),
    /// Ping the store, within the timeout.
    Ping(Permit, Duration),
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

    fn get_shared(&self, key: Arc<str>, idle: Option<Duration>) -> StoreFuture<Option<Arc<Entry>>> {
        self.guard(|s| s.get_shared(key, idle))
    }

    fn put(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) -> StoreFuture<()> {
        self.guard(|s| s.put(key, entry, ttl))
    }

    fn delete(&self, key: Arc<str>) -> StoreFuture<()> {
        self.guard(|s| s.delete(key))
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
        self.guard_slow(|s| s.bus().map_or_else(|| absent(0), |b| b.publish(message)))
    }

    fn subscribe(&self, sink: Weak<dyn Fn(BusEvent) + Send + Sync>) -> bool {
        self.inner.bus().is_some_and(|b| b.subscribe(sink))
    }

    fn live(&self) -> bool {
        self.inner.bus().is_none_or(|b| b.live())
    }

    fn acknowledge(&self, id: Arc<str>) -> StoreFuture<()> {
        self.guard_slow(|s| s.bus().map_or_else(|| absent(()), |b| b.acknowledge(id)))
    }

    fn acknowledgements(&self, id: Arc<str>) -> StoreFuture<u64> {
        self.guard(|s| {
            s.bus()
                .map_or_else(|| absent(0), |b| b.acknowledgements(id))
        })
    }
}

impl<S: Store> Leases for Guarded<S> {
    fn try_lease(&self, key: Arc<str>, token: Arc<str>, ttl: Duration) -> StoreFuture<bool> {
        self.guard(|s| {
            s.leases()
                .map_or_else(|| absent(true), |l| l.try_lease(key, token, ttl))
        })
    }

    fn release_lease(&self, key: Arc<str>, token: Arc<str>) -> StoreFuture<()> {
        self.guard(|s| {
            s.leases()
                .map_or_else(|| absent(()), |l| l.release_lease(key, token))
        })
    }
}

impl<S: Store> Writes for Guarded<S> {
    fn begin_write(&self, key: Arc<str>, keep: Duration) -> StoreFuture<WriteTicket> {
        self.guard(|s| {
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
        self.guard(|s| {
            s.writes()
                .map_or_else(|| absent(false), |w| w.end_write(key, ticket, entry))
        })
    }
}

impl<S: Store> HealthCheck for Guarded<S> {
    /// Pings the guarded store (if it has a [`HealthCheck`]), under the breaker and the timeout.
    fn ping(&self) -> StoreFuture<()> {
        self.guard(|s| s.health_check().map_or_else(|| absent(()), |h| h.ping()))
    }

    fn health(&self) -> Health {
        self.start_probe();
        Guarded::health(self)
    }

    fn health_report(&self) -> Option<HealthReport> {
        self.start_probe();
        Some(self.breaker.report())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Calls go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// Calls fail at once until `until`.
    Open { until: Instant },
    /// One probe (a ping or a call) is in flight; the calls fail at once.
    Probing,
}

impl From<Phase> for BreakerState {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Closed { .. } => Self::Closed,
            Phase::Open { .. } => Self::Open,
            Phase::Probing => Self::HalfOpen,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    timeout: Duration,
    threshold: u32,
    cool_down: Duration,
    probe_interval: Duration,
}

#[derive(Debug)]
struct State {
    settings: Settings,
    phase: Phase,
    /// When a call or a ping last ended, failed or not.
    last_end: Option<Instant>,
    /// When one last succeeded.
    last_success: Option<Instant>,
}

#[derive(Debug)]
struct Breaker {
    state: Mutex<State>,
    /// Wakes the probe: a failure, a changed setting, the breaker's drop.
    wake: Arc<Notify>,
    /// Whether a probe task runs for this breaker.
    probe_started: AtomicBool,
}

impl Drop for Breaker {
    fn drop(&mut self) {
        // The probe sees the breaker gone and ends.
        self.wake.notify_one();
    }
}

impl Breaker {
    fn new(settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                settings,
                phase: Phase::Closed { failures: 0 },
                last_end: None,
                last_success: None,
            }),
            wake: Arc::new(Notify::new()),
            probe_started: AtomicBool::new(false),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn report(&self) -> HealthReport {
        let state = self.state();
        let since = state
            .last_success
            .map(|at| Instant::now().saturating_duration_since(at));
        HealthReport::new(state.phase.into(), since)
    }

    /// Whether the background probe, not a call, half-opens the breaker.
    fn probe_on(&self, state: &State) -> bool {
        !state.settings.probe_interval.is_zero() && self.probe_started.load(Ordering::Acquire)
    }

    /// Lets a call through (with its timeout), or fails it at once while open.
    fn admit(self: &Arc<Self>) -> Result<(Permit, Duration), StoreError> {
        let mut state = self.state();
        let probe = match state.phase {
            Phase::Closed { .. } => false,
            Phase::Open { until } if Instant::now() >= until && !self.probe_on(&state) => {
                state.phase = Phase::Probing;
                true
            }
            Phase::Open { .. } | Phase::Probing => {
                return Err(StoreError::new("circuit open: not calling the store"));
            }
        };
        let permit = Permit {
            breaker: Some(self.clone()),
            probe,
        };
        Ok((permit, state.settings.timeout))
    }

    /// The probe's next step: wait, or ping now (half-opening an open breaker).
    fn probe_next(self: &Arc<Self>) -> Next {
        let mut state = self.state();
        let settings = state.settings;
        let interval = settings.probe_interval;
        if interval.is_zero() {
            return Next::Wait(None);
        }
        let now = Instant::now();
        let after_last = |wait: Duration| state.last_end.map_or(now, |at| at + wait.max(MIN_GAP));
        let due = match state.phase {
            Phase::Closed { failures: 0 } => after_last(interval),
            Phase::Closed { .. } => after_last(interval / CONFIRM),
            Phase::Open { until } => until.max(after_last(Duration::ZERO)),
            // A call probes (it was let through before the probe started).
            Phase::Probing => now + (interval / CONFIRM).max(MIN_GAP),
        };
        if now < due {
            return Next::Wait(Some(due));
        }
        let probe = matches!(state.phase, Phase::Open { .. });
        if probe {
            state.phase = Phase::Probing;
        }
        let permit = Permit {
            breaker: Some(self.clone()),
            probe,
        };
        Next::Ping(permit, settings.timeout)
    }

    fn record(&self, probe: bool, ok: bool) {
        let mut state = self.state();
        let now = Instant::now();
        state.last_end = Some(now);
        if ok {
            state.last_success = Some(now);
        }
        let Settings {
            threshold,
            cool_down,
            ..
        } = state.settings;
        let open = Phase::Open {
            until: now + cool_down,
        };
        match (state.phase, ok) {
            (Phase::Closed { .. }, true) => state.phase = Phase::Closed { failures: 0 },
            // Any success shows the store answers again.
            (Phase::Open { .. } | Phase::Probing, true) => {
                tracing::info!("cache store answers again: circuit closed");
                state.phase = Phase::Closed { failures: 0 };
            }
            (Phase::Closed { failures }, false) => {
                let failures = failures + 1;
                state.phase = if failures >= threshold {
                    tracing::warn!(failures, ?cool_down, "cache store failing: circuit open");
                    open
                } else {
                    Phase::Closed { failures }
                };
            }
            (Phase::Probing, false) if probe => {
                tracing::debug!("cache store probe failed: circuit open again");
                state.phase = open;
            }
            // A late failure of a call let through before the breaker opened.
            (Phase::Open { .. } | Phase::Probing, false) => {}
        }
        drop(state);
        if !ok {
            // The probe confirms a failure sooner, or waits for the cool-down.
            self.wake.notify_one();
        }
    }

    /// A probe dropped before it ended: the next call (or the probe) probes.
    fn abandon_probe(&self) {
        let mut state = self.state();
        if state.phase == Phase::Probing {
            state.phase = Phase::Open {
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

    /// A store whose calls and pings fail, hang or succeed, as told; counts its calls and its
    /// pings apart.
    #[derive(Default)]
    struct Flaky {
        fail: AtomicBool,
        hang: AtomicBool,
        calls: AtomicUsize,
        pings: AtomicUsize,
    }

    impl Flaky {
        fn answer(&self) -> StoreFuture<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.outcome()
        }

        fn outcome(&self) -> StoreFuture<()> {
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
        fn health_check(&self) -> Option<&dyn HealthCheck> {
            Some(self)
        }
    }

    impl HealthCheck for Flaky {
        fn ping(&self) -> StoreFuture<()> {
            self.pings.fetch_add(1, Ordering::SeqCst);
            self.outcome()
        }
    }

    /// A guard whose breaker only calls move (no background probe).
    fn guarded() -> (Guarded<Flaky>, Guarded<Flaky>) {
        let g = Guarded::new(Flaky::default())
            .timeout(Duration::from_millis(10))
            .failures(3)
            .cool_down(Duration::from_secs(1))
            .probe_interval(Duration::ZERO);
        (g.clone(), g)
    }

    fn pings(g: &Guarded<Flaky>) -> usize {
        g.get_ref().pings.load(Ordering::SeqCst)
    }

    fn set_down(g: &Guarded<Flaky>, down: bool) {
        g.get_ref().fail.store(down, Ordering::SeqCst);
    }

    /// Moves paused time on in 1 ms steps (the probe runs between them) until `cond` holds,
    /// and says how long that took; fails the test past `limit`. Timers fire on whole
    /// milliseconds, rounded up: each wait of the probe can take a millisecond more.
    async fn virtual_time_until(what: &str, limit: Duration, cond: impl Fn() -> bool) -> Duration {
        let started = Instant::now();
        while !cond() {
            let took = started.elapsed();
            assert!(took <= limit, "{what}: not within {limit:?}");
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        started.elapsed()
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

    /// `took` is `expected`, give or take the timers' rounding.
    fn around(took: Duration, expected: Duration) -> bool {
        took >= expected && took <= expected + Duration::from_millis(10)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_store_is_degraded_within_2_s_of_dying_and_ok_within_3_s_of_its_return() {
        // The defaults, and no call at all: only the probe can tell. The store dies and comes
        // back at several points of the probe's cycle.
        let (mut worst_down, mut worst_up) = (Duration::ZERO, Duration::ZERO);
        for offset_ms in [0, 1, 100, 250, 500, 750, 999] {
            let offset = Duration::from_millis(offset_ms);
            let g = Guarded::new(Flaky::default());
            virtual_time_until("the first ping", Duration::ZERO, || pings(&g) == 1).await;
            assert_eq!(g.since_last_success(), Some(Duration::ZERO));
            tokio::time::advance(offset).await;

            set_down(&g, true);
            let down = virtual_time_until("degraded", Duration::from_secs(2), || {
                g.health() == Health::Degraded
            })
            .await;
            assert_eq!(g.breaker(), BreakerState::Open);
            assert!(g.since_last_success().unwrap() >= down + offset);
            worst_down = worst_down.max(down);

            tokio::time::advance(offset).await;
            set_down(&g, false);
            let up =
                virtual_time_until("ok", Duration::from_secs(3), || g.health() == Health::Ok).await;
            assert_eq!(g.breaker(), BreakerState::Closed);
            assert_eq!(g.since_last_success(), Some(Duration::ZERO));
            worst_up = worst_up.max(up);
            assert_eq!(calls(&g), 0, "no call: the probe pinged");
        }
        // Pinged 1 s after the last answer, then every 100 ms: open at the 5th failure.
        assert!(
            around(worst_down, Duration::from_millis(1400)),
            "{worst_down:?}"
        );
        // Pinged once per cool-down while open.
        assert!(worst_up <= Duration::from_millis(1010), "{worst_up:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_pings_only_while_no_call_ends() {
        let g = Guarded::new(Flaky::default());
        virtual_time_until("the first ping", Duration::ZERO, || pings(&g) == 1).await;
        // A call every 500 ms: the probe keeps quiet.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(500)).await;
            assert!(g.get("k".into()).await.is_ok());
        }
        assert_eq!(pings(&g), 1);
        // Idle: a ping a second after the last call, then every second.
        let quiet = Instant::now();
        virtual_time_until("3 pings", Duration::from_millis(3010), || pings(&g) == 4).await;
        assert!(around(quiet.elapsed(), Duration::from_secs(3)));
        // A failed call is confirmed by a ping 100 ms later, and the next 100 ms after that.
        set_down(&g, true);
        assert!(g.get("k".into()).await.is_err());
        let failed = Instant::now();
        virtual_time_until("2 more pings", Duration::from_millis(210), || {
            pings(&g) == 6
        })
        .await;
        assert!(around(failed.elapsed(), Duration::from_millis(200)));
        assert_eq!(g.breaker(), BreakerState::Closed, "3 failures of 5");
        virtual_time_until("open", Duration::from_millis(210), || {
            g.breaker() == BreakerState::Open
        })
        .await;
        assert_eq!(calls(&g), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn while_open_calls_fail_at_once_and_the_probe_half_opens_and_closes() {
        let g = Guarded::new(Flaky::default()).failures(3);
        set_down(&g, true);
        for _ in 0..3 {
            assert!(g.get("k".into()).await.is_err());
        }
        assert_eq!(g.breaker(), BreakerState::Open);
        let opened = Instant::now();
        // Past the cool-down a call still fails at once: the probe, not a request, finds out.
        g.get_ref().hang.store(true, Ordering::SeqCst);
        let before = pings(&g);
        virtual_time_until("a ping", Duration::from_millis(1010), || pings(&g) > before).await;
        assert!(around(opened.elapsed(), Duration::from_secs(1)));
        assert_eq!(g.breaker(), BreakerState::HalfOpen, "the ping hangs");
        assert_eq!(g.health(), Health::Degraded);
        assert!(g.get("k".into()).await.is_err());
        assert_eq!(calls(&g), 3);
        // The hanging ping times out: open for another cool-down.
        virtual_time_until("open again", Duration::from_millis(20), || {
            g.breaker() == BreakerState::Open
        })
        .await;
        g.get_ref().hang.store(false, Ordering::SeqCst);
        set_down(&g, false);
        let up = virtual_time_until("closed", Duration::from_millis(1010), || {
            g.breaker() == BreakerState::Closed
        })
        .await;
        assert!(around(up, Duration::from_secs(1)));
        assert_eq!(calls(&g), 3);
        assert!(g.get("k".into()).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_report_gives_the_breaker_and_the_time_since_the_last_success() {
        let (g, _) = guarded();
        let report = |g: &Guarded<Flaky>| HealthCheck::health_report(g).unwrap();
        assert_eq!(report(&g), HealthReport::new(BreakerState::Closed, None));
        assert!(g.get("k".into()).await.is_ok());
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(g.since_last_success(), Some(Duration::from_millis(300)));
        set_down(&g, true);
        for _ in 0..3 {
            assert!(g.get("k".into()).await.is_err());
        }
        tokio::time::advance(Duration::from_millis(200)).await;
        let r = report(&g);
        assert_eq!(r.breaker, BreakerState::Open);
        assert_eq!(r.since_last_success, Some(Duration::from_millis(500)));
        assert_eq!(r.health(), Health::Degraded);
        // A memory store has no breaker to report.
        assert!(crate::MemoryStore::default().health_check().is_none());
    }

    #[test]
    fn the_probe_starts_with_the_first_call_in_a_runtime_and_ends_with_the_last_clone() {
        // Built outside a runtime: no probe yet.
        let g = Guarded::new(Flaky::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let alive = || {
                tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks()
            };
            tokio::time::advance(Duration::from_secs(5)).await;
            assert_eq!((pings(&g), alive()), (0, 0));
            // A health read through `HealthCheck` is a first use.
            assert_eq!(HealthCheck::health(&g), Health::Ok);
            virtual_time_until("the first ping", Duration::ZERO, || pings(&g) == 1).await;
            assert_eq!(alive(), 1);
            let clone = g.clone();
            drop(g);
            virtual_time_until("a ping", Duration::from_millis(1010), || pings(&clone) == 2).await;
            drop(clone);
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(alive(), 0, "the probe ended with the last clone");
        });
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_waits_at_least_a_millisecond_after_each_ping() {
        // The settings would have it ping again at once, for ever.
        let breaker = Breaker::new(Settings {
            timeout: Duration::from_millis(10),
            threshold: 1,
            cool_down: Duration::ZERO,
            probe_interval: Duration::from_nanos(1),
        });
        for ok in [true, false, false, true] {
            let Next::Ping(permit, _) = breaker.probe_next() else {
                panic!("a ping is due");
            };
            permit.finish(ok);
            let Next::Wait(Some(due)) = breaker.probe_next() else {
                panic!("a ping again at once");
            };
            assert_eq!(due - Instant::now(), MIN_GAP);
            tokio::time::advance(MIN_GAP).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_interval_turns_the_probe_off() {
        let g = Guarded::new(Flaky::default()).probe_interval(Duration::ZERO);
        set_down(&g, true);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!((pings(&g), g.health()), (0, Health::Ok));
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
            let g = Guarded::new(Walker { steps, each, hang }).probe_interval(Duration::ZERO);
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
