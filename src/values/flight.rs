//! Single flight in process: one fetch per key at a time; the others wait for its value.
//!
//! A waiter map, as moka's `get_with` keeps: the leader's [`Leader`] guard removes its flight
//! when dropped (its future cancelled, or a panic), and tells the waiters to try again, so a
//! lost leader never strands them. A flight that began before an invalidation is never joined.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

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
}

/// The flights of one [`Values`](super::Values) handle, by stored key.
pub(super) struct Flights<T> {
    map: Mutex<HashMap<Arc<str>, Flight<T>>>,
    next: AtomicU64,
    /// How many flights have landed (finished with a value or a not-found).
    landed: AtomicU64,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
            next: AtomicU64::new(0),
            landed: AtomicU64::new(0),
        }
    }
}

pub(super) enum Role<T> {
    Lead(Leader<T>),
    Follow(watch::Receiver<Outcome<T>>),
}

impl<T> Flights<T> {
    /// Joins the flight of `key` if one runs that began at `epoch`; else leads a new one.
    pub(super) fn join(self: &Arc<Self>, key: &Arc<str>, epoch: u64) -> Role<T> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = map.get(key) {
            if flight.epoch == epoch && matches!(*flight.outcome.borrow(), Outcome::Running) {
                return Role::Follow(flight.outcome.clone());
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(Outcome::Running);
        map.insert(
            key.clone(),
            Flight {
                id,
                epoch,
                outcome: rx,
            },
        );
        Role::Lead(Leader {
            flights: self.clone(),
            key: key.clone(),
            id,
            tx,
        })
    }

    /// How many flights have landed: a caller that looked the key up before a flight landed
    /// looks again before it fetches.
    pub(super) fn landed(&self) -> u64 {
        self.landed.load(Ordering::Acquire)
    }

    /// How many flights are in the map (tests: none once every call is over).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
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
}

impl<T> Drop for Leader<T> {
    fn drop(&mut self) {
        {
            let mut map = self.flights.map.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&self.key).is_some_and(|f| f.id == self.id) {
                map.remove(&self.key);
            }
        }
        self.tx.send_if_modified(|o| {
            let running = matches!(o, Outcome::Running);
            if running {
                *o = Outcome::Failed;
            }
            running
        });
    }
}

/// Waits for the leader: its outcome, or [`Outcome::Failed`] if it went away.
pub(super) async fn wait<T>(mut rx: watch::Receiver<Outcome<T>>) -> Outcome<T> {
    match rx.wait_for(|o| !matches!(o, Outcome::Running)).await {
        Ok(o) => o.clone(),
        Err(_) => Outcome::Failed,
    }
}
