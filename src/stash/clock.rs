//! Time for the cache: [`Clock`], the system's, and a [`ManualClock`] for tests.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of the current time. Tests use [`ManualClock`] to move time without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// Whether a [`Stash`](crate::Stash) on a shared store with a clock of its own (Redis's
    /// `TIME`, see [`Store::time`](crate::Store::time)) follows the store's clock instead of
    /// this one, so that instances whose clocks disagree still order fills, invalidations and
    /// write-throughs alike. Default: yes. A [`ManualClock`], which a test moves by hand,
    /// says no.
    fn follows_store(&self) -> bool {
        true
    }
}

/// The system's clock, the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to. Clones share the same time.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_stash::{Clock, ManualClock, Stash};
///
/// let clock = ManualClock::default();
/// let stash = Stash::builder().clock(clock.clone()).build().unwrap();
/// let before = clock.now();
/// clock.advance(Duration::from_secs(60)); // entries age a minute, at once
/// assert_eq!(clock.now(), before + Duration::from_secs(60));
/// # let _ = stash;
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(SystemTime::now())
    }
}

impl ManualClock {
    /// A clock stopped at `now`.
    pub fn new(now: SystemTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(now)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A test's time is the test's: never corrected by a store's.
    fn follows_store(&self) -> bool {
        false
    }
}

/// The shared store's clock as this instance knows it: a sample of the store's time, carried
/// forward by the monotonic clock (so that a step of the system clock changes nothing), with
/// a bound on its error: half the sample's round trip, plus the drift since.
///
/// Every instance dates what it does by it: a fill by the earliest the store's time can be
/// when its request began, an invalidation or a write-through by the latest it can be when
/// it happened. Then whenever one thing truly happened before another, on any instance, its
/// date is the earlier (the intervals TrueTime uses, without the atomic clocks).
#[derive(Debug)]
pub(crate) struct StoreClock {
    origin: Instant,
    sample: Mutex<Option<Sample>>,
    /// Whether the task that keeps sampling runs.
    pub(crate) sampling: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The store's time (µs since the epoch) less the monotonic clock (µs since `origin`).
    offset: i64,
    /// The bound on `offset`'s error, µs, when measured.
    error: u64,
    /// When it was measured, µs since `origin`.
    measured: u64,
}

/// How fast two clocks may drift apart, in millionths: 200 ppm, ten times what a crystal
/// clock does, so that a second between samples widens the bound by 0.2 ms.
const DRIFT_PPM: u64 = 200;

/// The most a bound may be and still be used: wider (no sample for minutes, or a round trip
/// of a second) and the stash dates by the instance's clock and its margin instead.
pub(crate) const MAX_ERROR: Duration = Duration::from_millis(50);

/// What [`commit_wait`](super::Stash::commit_wait) waits past twice the error bound: room for
/// another instance's bound to be up to half of it wider (loopback bounds are tens of µs, but
/// a busy instance's sample may have taken a few hundred µs more).
pub(crate) const COMMIT_SLACK: Duration = Duration::from_micros(250);

impl StoreClock {
    pub(crate) fn new() -> Self {
        Self {
            origin: Instant::now(),
            sample: Mutex::new(None),
            sampling: AtomicBool::new(false),
        }
    }

    fn micros(d: Duration) -> u64 {
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
    }

    /// The store's time now and the bound on its error; `None` before the first sample, or
    /// when the bound is over [`MAX_ERROR`].
    pub(crate) fn read(&self) -> Option<(SystemTime, Duration)> {
        let sample = (*self.sample.lock().unwrap_or_else(|e| e.into_inner()))?;
        let mono = Self::micros(self.origin.elapsed());
        let error = sample
            .error
            .saturating_add(mono.saturating_sub(sample.measured) * DRIFT_PPM / 1_000_000);
        let error = Duration::from_micros(error);
        if error > MAX_ERROR {
            return None;
        }
        let micros = u64::try_from(i64::try_from(mono).ok()?.checked_add(sample.offset)?).ok()?;
        Some((
            UNIX_EPOCH.checked_add(Duration::from_micros(micros))?,
            error,
        ))
    }

    /// Takes a sample: `store` is what the store said between `sent` and `received`. Kept
    /// when its bound is tighter than the current one's (carried forward).
    pub(crate) fn record(&self, sent: Instant, store: SystemTime, received: Instant) {
        let Ok(since_epoch) = store.duration_since(UNIX_EPOCH) else {
            return;
        };
        let half = Self::micros(received.saturating_duration_since(sent)) / 2;
        // The store's clock counts whole microseconds.
        let error = half + 1;
        let mid = Self::micros(sent.saturating_duration_since(self.origin)) + half;
        let (Ok(store), Ok(mid)) = (i64::try_from(Self::micros(since_epoch)), i64::try_from(mid))
        else {
            return;
        };
        let now = Self::micros(self.origin.elapsed());
        let new = Sample {
            offset: store - mid,
            error,
            measured: now,
        };
        let mut current = self.sample.lock().unwrap_or_else(|e| e.into_inner());
        let keep = current.is_some_and(|c| {
            c.error
                .saturating_add(now.saturating_sub(c.measured) * DRIFT_PPM / 1_000_000)
                <= error
        });
        if !keep {
            *current = Some(new);
        }
    }
}

impl super::Stash {
    /// The time this stash dates entries and invalidations by: the shared store's clock (as
    /// sampled, carried forward by the monotonic clock) when it follows it (see
    /// [`Clock::follows_store`]), the stash's [`Clock`] otherwise.
    pub fn now(&self) -> SystemTime {
        if let Some((now, _)) = self.store_time() {
            return now;
        }
        self.inner.clock.now()
    }

    fn store_time(&self) -> Option<(SystemTime, Duration)> {
        self.inner.store_clock.as_ref()?.read()
    }

    /// The date of a fill whose request begins now: the earliest the store's time can be.
    /// Fills dated at or before an invalidation are refused.
    pub(crate) fn began(&self) -> SystemTime {
        self.keep_sampling();
        match self.store_time() {
            Some((now, error)) => now.checked_sub(error).unwrap_or(now),
            None => self.inner.clock.now(),
        }
    }

    /// The date of an invalidation or a write-through that happens now, and whether it is the
    /// store's: the latest the store's time can be, rounded up to a whole microsecond (as
    /// stores keep dates, so that a fill, whose date is rounded down, is refused only when its
    /// own microsecond is earlier); or without the store's time, the clock's plus the
    /// invalidation margin (which covers that rounding too).
    pub(crate) fn stamp(&self) -> (SystemTime, bool) {
        self.keep_sampling();
        match self.store_time() {
            Some((now, error)) => {
                let micros = crate::entry::micros_up(now + error);
                (UNIX_EPOCH + Duration::from_micros(micros), true)
            }
            // At least a millisecond: the margin for clocks that disagree.
            None => (
                self.inner.clock.now()
                    + self.inner.invalidation_margin.max(Duration::from_millis(1)),
                false,
            ),
        }
    }

    /// Waits until the store's time is surely past `at` (a [`stamp`](Self::stamp) of the
    /// store's time), by twice the bound on its error and [`COMMIT_SLACK`] besides: then an
    /// invalidation made after the caller returns, on any instance, is dated after `at`, and a
    /// fill that begins then, on an instance whose bound is at most half the slack wider than
    /// this one's (each instance samples the store's clock itself), is dated after it too
    /// (stored at once). Four bounds and the slack, a fraction of a millisecond on loopback;
    /// bounded by [`MAX_ERROR`] twice.
    pub(crate) async fn commit_wait(&self, at: SystemTime, store_time: bool) {
        if !store_time {
            return;
        }
        let deadline = Instant::now() + 2 * MAX_ERROR;
        while let Some((now, error)) = self.store_time() {
            let earliest = now.checked_sub(error).unwrap_or(now);
            let Ok(left) = (at + 2 * error + COMMIT_SLACK).duration_since(earliest) else {
                return;
            };
            if Instant::now() >= deadline {
                return;
            }
            // The timer counts whole milliseconds: the last one is waited out by yielding,
            // a fraction of a millisecond on an invalidation, which is rare next to reads.
            if left > Duration::from_millis(2) {
                tokio::time::sleep(left - Duration::from_millis(1)).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Starts the task that samples the store's clock, once, where the stash follows it and a
    /// runtime runs.
    pub(crate) fn keep_sampling(&self) {
        let Some(clock) = &self.inner.store_clock else {
            return;
        };
        if clock.sampling.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if clock
            .sampling
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        rt.spawn(sample(Arc::downgrade(&self.inner)));
    }
}

/// How often the store's clock is sampled: every 100 ms (a `TIME` call, 10 a second per
/// instance), or every 50 ms while the bound is wider than [`TIGHT`]. Between samples the
/// bound grows by the drift allowed ([`DRIFT_PPM`]): 20 µs in 100 ms, where a second would
/// add 200 µs, four times over, to every invalidation's commit wait.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// A bound tight enough to sample only every [`SAMPLE_EVERY`]: a millisecond.
const TIGHT: Duration = Duration::from_millis(1);

/// While the bound is loose, the first samples come this close together (then every 50 ms):
/// the first round trip usually opens a connection, and an instance that fills with a loose
/// bound dates its fills early, which the other instances' invalidations may then refuse.
const RETRY_SOON: (u32, Duration) = (10, Duration::from_millis(5));

/// Samples the store's clock while the stash lives.
async fn sample(inner: std::sync::Weak<super::Inner>) {
    let mut loose = 0;
    loop {
        let error = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let (Some(clock), Some(time)) = (&inner.store_clock, inner.store.time()) else {
                return;
            };
            let sent = Instant::now();
            if let Ok(Ok(store)) = tokio::time::timeout(SAMPLE_EVERY, time).await {
                clock.record(sent, store, Instant::now());
            }
            clock.read().map(|(_, error)| error)
        };
        // A loose bound (a slow first round trip) costs every invalidation its wait, and
        // fills near one: sample again soon until it is tight.
        let pause = if error.is_some_and(|e| e <= TIGHT) {
            loose = 0;
            SAMPLE_EVERY
        } else if loose < RETRY_SOON.0 {
            loose += 1;
            RETRY_SOON.1
        } else {
            Duration::from_millis(50)
        };
        tokio::time::sleep(pause).await;
    }
}
