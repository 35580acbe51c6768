//! Single flight in process: one fetch per key at a time; the others wait for its value.
//!
//! A waiter map, as moka's `get_with` keeps: the leader's [`Leader`] guard removes its flight
//! when dropped (its future cancelled, or a panic), and tells the waiters to try again, so a
//! lost leader never strands them. A flight that began before an invalidation is never joined.
//!
//! Fetches that fail are not shared (an error is the caller's own), so the waiters of a failed
//! flight queue behind a new leader. After [`MAX_FAILURES`] flights of a key failed in a row,
//! each within [`FAILURE_MEMORY`] of the last, callers stop queueing and each fetches alone
//! (as the single-flight layer's waiters do after three lost leaders): a burst waits for three
//! failures at most, not one per caller.

use crate::Clock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// After this many failed flights of a key in a row, callers fetch alone.
pub(super) const MAX_FAILURES: u32 = 3;
/// How long a failed flight counts towards [`MAX_FAILURES`] (by the stash's [`Clock`]).
const FAILURE_MEMORY: Duration = Duration::from_secs(1);
/// Past this many flights (running, or failed and remembered), forgotten failures are dropped;
/// then again past twice as many as were left.
pub(super) const MAP_TIDY: usize = 4096;

/// What a flight came to.
pub(super) enum Outcome<T> {
    Running,
    /// The value, or `None`: not found.
    Done(Option<Arc<T>>),
    /// The fetch failed or was abandoned: the waiters try again.
    Failed,
}

impl<T> Clone for Outcome<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Running => Self::Running,
            Self::Done(v) => Self::Done(v.clone()),
            Self::Failed => Self::Failed,
        }
    }
}

struct Flight<T> {
    id: u64,
    epoch: u64,
    outcome: watch::Receiver<Outcome<T>>,
    /// Failed flights of the key in a row, this one's too once it failed, and when it did.
    failures: u32,
    failed_at: Option<SystemTime>,
}

impl<T> Flight<T> {
    /// The failures in a row a new flight of the key inherits at `now`: none when this one
    /// is not a failure, or one too old to count.
    fn failures(&self, now: SystemTime) -> u32 {
        match self.failed_at {
            Some(at) if now.duration_since(at).unwrap_or_default() < FAILURE_MEMORY => {
                self.failures
            }
            _ => 0,
        }
    }
}

/// The flights of one [`Values`](super::Values) handle, by stored key.
pub(super) struct Flights<T> {
    map: Mutex<HashMap<Arc<str>, Flight<T>>>,
    next: AtomicU64,
    /// How many flights have landed (finished with a value or a not-found).
    landed: AtomicU64,
    /// The stash's clock, which dates failures (a test's moves only when told).
    clock: Arc<dyn Clock>,
    /// The map's size past which forgotten failures are dropped.
    tidy_at: AtomicUsize,
}

impl<T> Flights<T> {
    pub(super) fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            map: Mutex::default(),
            next: AtomicU64::new(0),
            landed: AtomicU64::new(0),
            clock,
            tidy_at: AtomicUsize::new(MAP_TIDY),
        }
    }
}

pub(super) enum Role<T> {
    Lead(Leader<T>),
    Follow(watch::Receiver<Outcome<T>>),
    /// The key's last flights failed: fetch alone, share nothing.
    Alone,
}

impl<T> Flights<T> {
    /// Joins the flight of `key` if one runs that began at `epoch`; else leads a new one, or
    /// goes alone after [`MAX_FAILURES`] failed flights in a row.
    pub(super) fn join(self: &Arc<Self>, key: &Arc<str>, epoch: u64) -> Role<T> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut failures = 0;
        if let Some(flight) = map.get(key) {
            let running = matches!(*flight.outcome.borrow(), Outcome::Running);
            if running && flight.epoch == epoch {
                return Role::Follow(flight.outcome.clone());
            }
            if !running {
                failures = flight.failures(self.clock.now());
                if failures >= MAX_FAILURES {
                    return Role::Alone;
                }
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(Outcome::Running);
        let flight = Flight {
            id,
            epoch,
            outcome: rx,
            failures,
            failed_at: None,
        };
        map.insert(key.clone(), flight);
        Role::Lead(Leader {
            flights: self.clone(),
            key: key.clone(),
            id,
            tx,
        })
    }

    /// A fetch alone found the key: its failures are forgotten.
    pub(super) fn succeeded(&self, key: &Arc<str>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|f| f.failed_at.is_some()) {
            map.remove(key);
        }
    }

    /// A fetch alone failed: the key's failures go on in a row, counted from now.
    pub(super) fn failed(&self, key: &Arc<str>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = map.get_mut(key).filter(|f| f.failed_at.is_some()) {
            flight.failed_at = Some(self.clock.now());
        }
    }

    /// How many flights have landed: a caller that looked the key up before a flight landed
    /// looks again before it fetches.
    pub(super) fn landed(&self) -> u64 {
        self.landed.load(Ordering::Acquire)
    }

    /// How many keys the map holds, failures remembered included.
    #[cfg(test)]
    pub(super) fn remembered(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// How many flights are in the map, failed ones remembered aside (tests: none once every
    /// call is over).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|f| f.failed_at.is_none()).count()
    }
}

/// The one caller fetching a key. Dropped without [`finish`](Self::finish), it tells the
/// waiters to try again.
pub(super) struct Leader<T> {
    flights: Arc<Flights<T>>,
    key: Arc<str>,
    id: u64,
    tx: watch::Sender<Outcome<T>>,
}

impl<T> Leader<T> {
    /// Hands `value` to the waiters.
    pub(super) fn finish(self, value: Option<Arc<T>>) {
        self.flights.landed.fetch_add(1, Ordering::Release);
        self.tx.send_replace(Outcome::Done(value));
    }

    /// Ends the flight without a value and without counting a failure (another instance
    /// refreshes the key): the waiters look again.
    pub(super) fn step_down(self) {
        {
            let mut map = self.flights.map.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&self.key).is_some_and(|f| f.id == self.id) {
                map.remove(&self.key);
            }
        }
        // Dropped now: the flight is out of the map, so nothing counts it.
        self.tx.send_replace(Outcome::Failed);
    }
}

impl<T> Drop for Leader<T> {
    fn drop(&mut self) {
        // The map first: a caller that finds the flight over must find its failure counted
        // (else it would begin the count anew).
        let failed = matches!(*self.tx.borrow(), Outcome::Running);
        {
            let mut map = self.flights.map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(flight) = map.get_mut(&self.key).filter(|f| f.id == self.id) {
                if failed {
                    // Remembered a while: the next flights know how many failed before them.
                    let now = self.flights.clock.now();
                    flight.failures += 1;
                    flight.failed_at = Some(now);
                    let tidy_at = &self.flights.tidy_at;
                    if map.len() > tidy_at.load(Ordering::Relaxed) {
                        map.retain(|_, f| f.failed_at.is_none() || f.failures(now) > 0);
                        tidy_at.store((map.len() * 2).max(MAP_TIDY), Ordering::Relaxed);
                    }
                } else {
                    map.remove(&self.key);
                }
            }
        }
        if failed {
            self.tx.send_replace(Outcome::Failed);
        }
    }
}

/// Waits for the leader: its outcome, or [`Outcome::Failed`] if it went away.
pub(super) async fn wait<T>(mut rx: watch::Receiver<Outcome<T>>) -> Outcome<T> {
    match rx.wait_for(|o| !matches!(o, Outcome::Running)).await {
        Ok(o) => o.clone(),
        Err(_) => Outcome::Failed,
    }
}
