//! The in-flight map: one leader per key, the others waiting for its outcome.

use crate::entry::Entry;
use bytes::Bytes;
use http::{header, HeaderMap, Response, StatusCode, Version};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::watch;

/// A whole response, shared by a leader with its waiters.
#[derive(Debug)]
pub(crate) struct Copy {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) from_entry: bool,
}

impl Copy {
    /// A copy of a stored entry, as another instance's leader stored it.
    pub(crate) fn of_entry(entry: &Entry, now: SystemTime) -> Self {
        let mut headers = entry.headers().clone();
        headers.remove(crate::headers::CACHE_STATUS);
        headers.insert(header::AGE, entry.age(now).into());
        Self {
            status: entry.status(),
            version: Version::HTTP_11,
            headers,
            body: entry.body().clone(),
            trailers: entry.trailers().cloned(),
            from_entry: true,
        }
    }

    /// The response for a waiter (the body type is chosen by the caller).
    pub(crate) fn response<B>(&self, body: B) -> Response<B> {
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        *resp.version_mut() = self.version;
        *resp.headers_mut() = self.headers.clone();
        resp
    }
}

/// How a flight ended, as its waiters see it.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Running,
    /// The leader's whole response.
    Done(Arc<Copy>),
    /// The leader of this generation is gone (dropped, panicked, failed): the first waiter
    /// to claim the flight leads it next; the others wait on.
    Retry(u64),
    /// The response is not to be shared (too large, or for one client only): each waiter
    /// asks the service itself.
    Release,
}

pub(crate) struct Flight {
    key: Arc<str>,
    tx: watch::Sender<Outcome>,
    waiters: AtomicUsize,
    /// The generation of the current leader; a claim moves it on by one.
    generation: AtomicU64,
}

impl Flight {
    /// Claims the lead after the leader of generation `gen` is gone: true for one claimant.
    fn claim(&self, gen: u64) -> bool {
        self.generation
            .compare_exchange(gen, gen + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// What joining a key's flight gives.
pub(crate) enum Join {
    Lead(Leader),
    Wait(Waiter),
    /// Too many waiters already: go alone.
    Full,
}

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<Arc<str>, Arc<Flight>>>,
}

impl Flights {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Flight>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leads the flight for `key`, or waits on the one in progress.
    pub(crate) fn join(self: &Arc<Self>, key: &Arc<str>, max_waiters: usize) -> Join {
        let mut map = self.map();
        if let Some(flight) = map.get(key) {
            // A flight whose leader is gone and that no waiter claimed yet.
            let orphan = match &*flight.tx.borrow() {
                Outcome::Retry(gen) => Some(*gen),
                _ => None,
            };
            if let Some(gen) = orphan {
                if flight.claim(gen) {
                    return Join::Lead(Leader::new(self, flight, gen + 1));
                }
            }
            if flight.waiters.load(Ordering::Relaxed) >= max_waiters {
                return Join::Full;
            }
            flight.waiters.fetch_add(1, Ordering::Relaxed);
            return Join::Wait(Waiter {
                flights: self.clone(),
                rx: flight.tx.subscribe(),
                flight: flight.clone(),
                skip: None,
            });
        }
        let flight = Arc::new(Flight {
            key: key.clone(),
            tx: watch::channel(Outcome::Running).0,
            waiters: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
        });
        map.insert(key.clone(), flight.clone());
        Join::Lead(Leader::new(self, &flight, 0))
    }

    /// How many keys are in flight.
    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }

    /// How many requests wait, over all keys.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.map()
            .values()
            .map(|f| f.waiters.load(Ordering::Relaxed))
            .sum()
    }
}

/// The one request of a flight that calls the service. Dropped without publishing (its
/// client went away, it panicked, the service failed), it hands over to one waiter.
pub(crate) struct Leader {
    flights: Arc<Flights>,
    flight: Arc<Flight>,
    generation: u64,
    published: bool,
}

impl Leader {
    fn new(flights: &Arc<Flights>, flight: &Arc<Flight>, generation: u64) -> Self {
        Self {
            flights: flights.clone(),
            flight: flight.clone(),
            generation,
            published: false,
        }
    }

    /// Ends the flight with `outcome`: it leaves the map first, so later requests start a
    /// flight of their own (or find the stored entry).
    pub(crate) fn publish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome) {
        if self.published {
            return;
        }
        self.published = true;
        let mut map = self.flights.map();
        let retry = matches!(outcome, Outcome::Retry(_));
        // A flight handed over stays, for a waiter (or a newcomer) to claim; with nobody
        // waiting, it ends.
        if !retry || self.flight.waiters.load(Ordering::Relaxed) == 0 {
            let key = &self.flight.key;
            if map.get(key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                map.remove(key);
            }
        }
        self.flight.tx.send_replace(outcome);
    }

    pub(crate) fn key(&self) -> &Arc<str> {
        &self.flight.key
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.end(Outcome::Retry(self.generation));
    }
}

/// A request waiting on another's flight.
pub(crate) struct Waiter {
    flights: Arc<Flights>,
    rx: watch::Receiver<Outcome>,
    flight: Arc<Flight>,
    /// A hand-over this waiter lost the claim of.
    skip: Option<u64>,
}

impl Waiter {
    /// The flight's next outcome: `Done`, `Release`, or a hand-over not yet seen.
    pub(crate) async fn outcome(&mut self) -> Outcome {
        let skip = self.skip;
        let seen = self.rx.wait_for(|o| match o {
            Outcome::Running => false,
            Outcome::Retry(gen) => Some(*gen) != skip,
            _ => true,
        });
        match seen.await {
            Ok(o) => o.clone(),
            Err(_) => Outcome::Release,
        }
    }

    /// Claims the lead after the hand-over of generation `gen`; `None` when another waiter
    /// got it (this one waits on).
    pub(crate) fn claim(&mut self, gen: u64) -> Option<Leader> {
        self.skip = Some(gen);
        if self.flight.claim(gen) {
            Some(Leader::new(&self.flights, &self.flight, gen + 1))
        } else {
            None
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let left = self.flight.waiters.fetch_sub(1, Ordering::AcqRel) - 1;
        if left > 0 {
            return;
        }
        // The last waiter of a flight whose leader is gone and that nobody claimed: the flight
        // ends here, or it would stay in the map with no one to finish it.
        let mut map = self.flights.map();
        let orphan = match &*self.flight.tx.borrow() {
            Outcome::Retry(gen) => Some(*gen),
            _ => None,
        };
        if let Some(gen) = orphan {
            let key = &self.flight.key;
            if self.flight.waiters.load(Ordering::Acquire) == 0
                && self.flight.generation.load(Ordering::Acquire) == gen
                && map.get(key).is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(key);
            }
        }
    }
}
