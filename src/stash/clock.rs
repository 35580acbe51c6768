//! Time for the cache: [`Clock`], the system's, and a [`ManualClock`] for tests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A source of the current time. Tests use [`ManualClock`] to move time without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
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
}
