//! The in-flight map: one leader per key, the others waiting for its outcome.

use crate::entry::Entry;
use bytes::Bytes;
use http::{header, HeaderMap, Response, StatusCode, Version};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::SystemTime;

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

/// How many waiters a finished flight wakes at once. Each waiter that takes its copy wakes
/// the next, in the order they came, so that the earliest request, which waited longest, is
/// answered first. Woken all at once, they would run in the order of the runtime's queues
/// (tokio runs the last woken first and spills a long local queue to the global one): the
/// first to come would often be answered last, and a burst's slowest requests would wait for
/// the whole fan-out on top of the handler. Several at a time keep a multi-threaded runtime's
/// workers busy.
pub(crate) const WAKE_AHEAD: usize = 32;

pub(crate) struct Flight {
    key: Arc<str>,
    /// The stash's invalidation epoch when the flight began: a request that comes after the
    /// epoch moved (an invalidation) never joins it, as its call may predate the change.
    epoch: u64,
    board: Mutex<Board>,
    /// The generation of the current leader; a claim moves it on by one.
    generation: AtomicU64,
}

/// A flight's outcome and its waiters, in the order they came.
struct Board {
    outcome: Outcome,
    /// How many outcomes were published.
    published: u64,
    /// The waiters still there, by ticket (their order of arrival), with their wakers while
    /// they wait: one place per waiter, however many came and went.
    slots: VecDeque<(u64, Option<Waker>)>,
    /// The next waiter's ticket.
    tickets: u64,
    /// The ticket the next wake of an ending flight looks from.
    next: u64,
}

impl Board {
    fn new() -> Self {
        Self {
            outcome: Outcome::Running,
            published: 0,
            slots: VecDeque::new(),
            tickets: 0,
            next: 0,
        }
    }

    /// A new waiter's ticket.
    fn join(&mut self) -> u64 {
        let ticket = self.tickets;
        self.tickets += 1;
        self.slots.push_back((ticket, None));
        ticket
    }

    /// Where the first waiter with `ticket` or a later one is.
    fn position(&self, ticket: u64) -> usize {
        self.slots.partition_point(|(t, _)| *t < ticket)
    }

    fn slot(&mut self, ticket: u64) -> &mut Option<Waker> {
        let i = self.position(ticket);
        debug_assert_eq!(self.slots[i].0, ticket, "a waiter's place");
        &mut self.slots[i].1
    }

    fn leave(&mut self, ticket: u64) {
        let i = self.position(ticket);
        debug_assert_eq!(self.slots[i].0, ticket, "a waiter's place");
        self.slots.remove(i);
    }

    /// Takes the waker of the earliest waiter not yet woken since the last outcome.
    fn next_parked(&mut self) -> Option<Waker> {
        let mut i = self.position(self.next);
        while let Some((ticket, slot)) = self.slots.get_mut(i) {
            i += 1;
            if let Some(waker) = slot.take() {
                self.next = *ticket + 1;
                return Some(waker);
            }
        }
        self.next = self.tickets;
        None
    }
}

fn is_final(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Done(_) | Outcome::Release)
}

impl Flight {
    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the lead after the leader of generation `gen` is gone: true for one claimant.
    fn claim(&self, gen: u64) -> bool {
        self.generation
            .compare_exchange(gen, gen + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Publishes `outcome`, giving the waiters to wake: for a final one the first few (the
    /// others are woken in turn), for a hand-over all of them, for one to claim it; and
    /// whether anyone waits (woken or not, a waiter not polled yet has no waker).
    #[must_use]
    fn publish(&self, outcome: Outcome) -> (Vec<Waker>, bool) {
        let mut board = self.board();
        let ahead = if is_final(&outcome) {
            WAKE_AHEAD
        } else {
            usize::MAX
        };
        board.outcome = outcome;
        board.published += 1;
        board.next = 0;
        let wake = std::iter::from_fn(|| board.next_parked())
            .take(ahead)
            .collect();
        (wake, !board.slots.is_empty())
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

    /// Leads the flight for `key`, or waits on the one in progress unless it began at
    /// another invalidation `epoch` (then this request leads a new flight, which takes the
    /// key: the old one ends with the waiters it has).
    pub(crate) fn join(self: &Arc<Self>, key: &Arc<str>, max_waiters: usize, epoch: u64) -> Join {
        let mut map = self.map();
        if let Some(flight) = map.get(key).filter(|f| f.epoch == epoch) {
            let mut board = flight.board();
            // A flight whose leader is gone and that no waiter claimed yet.
            if let Outcome::Retry(gen) = board.outcome {
                if flight.claim(gen) {
                    return Join::Lead(Leader::new(self, flight, gen + 1));
                }
            }
            if board.slots.len() >= max_waiters {
                return Join::Full;
            }
            // A finished flight still held (see `Leader::publish_held`): its answer is this
            // waiter's to take.
            let seen = board.published - u64::from(is_final(&board.outcome));
            return Join::Wait(Waiter {
                flights: self.clone(),
                flight: flight.clone(),
                ticket: board.join(),
                seen,
            });
        }
        let flight = Arc::new(Flight {
            key: key.clone(),
            epoch,
            board: Mutex::new(Board::new()),
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
        self.map().values().map(|f| f.board().slots.len()).sum()
    }
}

/// Takes `flight` out of the map, unless a newer flight for its key took its place.
fn forget(map: &mut HashMap<Arc<str>, Arc<Flight>>, flight: &Arc<Flight>) {
    if map.get(&flight.key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
        map.remove(&flight.key);
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

    /// Publishes the leader's answer and keeps the flight in the map until the returned
    /// guard is dropped: a request that comes meanwhile takes a copy at once. The leader's
    /// body holds it until it is dropped, by when a cache above has stored the answer, so
    /// that no request falls between the flight's end and the entry.
    pub(crate) fn publish_held(mut self, outcome: Outcome) -> Held {
        self.published = true;
        let (wake, _) = self.flight.publish(outcome);
        wake.into_iter().for_each(Waker::wake);
        Held {
            flights: self.flights.clone(),
            flight: self.flight.clone(),
        }
    }

    fn end(&mut self, outcome: Outcome) {
        if self.published {
            return;
        }
        self.published = true;
        let mut map = self.flights.map();
        let retry = matches!(outcome, Outcome::Retry(_));
        let (wake, waited) = self.flight.publish(outcome);
        // A flight handed over stays, for a waiter (or a newcomer) to claim; with nobody
        // waiting, it ends.
        if !retry || !waited {
            forget(&mut map, &self.flight);
        }
        drop(map);
        wake.into_iter().for_each(Waker::wake);
    }

    pub(crate) fn key(&self) -> &Arc<str> {
        &self.flight.key
    }
}

/// A finished flight kept in the map: see [`Leader::publish_held`].
pub(crate) struct Held {
    flights: Arc<Flights>,
    flight: Arc<Flight>,
}

impl Drop for Held {
    fn drop(&mut self) {
        forget(&mut self.flights.map(), &self.flight);
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
    flight: Arc<Flight>,
    /// Its place in the flight's order of arrival.
    ticket: u64,
    /// How many outcomes it has seen (those before it joined count as seen).
    seen: u64,
}

impl Waiter {
    /// The flight's next outcome: `Done`, `Release`, or a hand-over not yet seen.
    pub(crate) fn outcome(&mut self) -> impl Future<Output = Outcome> + '_ {
        std::future::poll_fn(move |cx| {
            let mut board = self.flight.board();
            if board.published == self.seen {
                match board.slot(self.ticket) {
                    Some(waker) => waker.clone_from(cx.waker()),
                    slot => *slot = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            self.seen = board.published;
            let outcome = board.outcome.clone();
            if !is_final(&outcome) {
                return Poll::Ready(outcome);
            }
            // Its turn came (or it came by itself): the next in line is woken.
            *board.slot(self.ticket) = None;
            let next = board.next_parked();
            drop(board);
            if let Some(waker) = next {
                waker.wake();
            }
            Poll::Ready(outcome)
        })
    }

    /// Claims the lead after the hand-over of generation `gen`; `None` when another waiter
    /// got it (this one waits on).
    pub(crate) fn claim(&mut self, gen: u64) -> Option<Leader> {
        if self.flight.claim(gen) {
            Some(Leader::new(&self.flights, &self.flight, gen + 1))
        } else {
            None
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let (next, orphan) = {
            let mut board = self.flight.board();
            board.leave(self.ticket);
            // Woken for an outcome it never took (its client went away, its wait timed out
            // just then): its turn passes to the next in line.
            let next = (is_final(&board.outcome) && board.published != self.seen)
                .then(|| board.next_parked())
                .flatten();
            let orphan = match board.outcome {
                Outcome::Retry(gen) if board.slots.is_empty() => Some(gen),
                _ => None,
            };
            (next, orphan)
        };
        // The last waiter of a flight whose leader is gone and that nobody claimed: the flight
        // ends here, or it would stay in the map with no one to finish it. Checked again under
        // the map's lock, which a newcomer joins under.
        if let Some(gen) = orphan {
            let mut map = self.flights.map();
            let board = self.flight.board();
            if board.slots.is_empty()
                && matches!(board.outcome, Outcome::Retry(g) if g == gen)
                && self.flight.generation.load(Ordering::Acquire) == gen
            {
                drop(board);
                forget(&mut map, &self.flight);
            }
        }
        if let Some(waker) = next {
            waker.wake();
        }
    }
}
