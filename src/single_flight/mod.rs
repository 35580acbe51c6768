//! [`SingleFlightLayer`]: concurrent identical requests cost one call to the service.
//!
//! When many requests for one key arrive together (a popular entry just expired, a cold
//! start), the first one, the *leader*, goes to the service; the others *wait* and get a copy
//! of its response: status, headers, body and trailers. With Redis under a
//! [`CacheLayer`](crate::CacheLayer), the leader first takes a lease on the key in Redis
//! (`SET NX PX` with a random token, released by a compare-and-delete script), so that across
//! instances too, one request calls the service; the other instances poll for the entry it
//! stores and serve it (`Cache-Status: ...; hit; collapsed`).
//!
//! Put it below a `CacheLayer` (inside it, in `ServiceBuilder` order after it): the cache keys
//! each miss and the layer coalesces the misses by that key. A copy is never stored again
//! (the leader's response is stored once) and is marked `Cache-Status: ...; fwd=miss;
//! collapsed`. Alone, with [`SingleFlightLayer::for_routes`], it keys requests itself and
//! deduplicates idempotent requests in flight, with no cache.
//!
//! # Bounds
//!
//! - Waiting is bounded: at most [`max_waiters`](SingleFlightLayer::max_waiters) per key and
//!   [`max_wait`](SingleFlightLayer::max_wait) each. A request past a bound goes to the
//!   service itself; its response is not stored.
//! - A leader that is gone before its response ends (its client hung up, it panicked, the
//!   service returned an error, its body failed) hands over: one waiter becomes the leader.
//!   A 5xx is handed to the waiters too, at once, though no one stores it (unless its
//!   headers make it one client's, or it says `no-cache`): a failure of that moment, not
//!   content, so that a failing service is not asked again by the whole burst. After three
//!   leaders in a row are gone without an answer, the waiters left stop queueing and each
//!   asks the service itself.
//! - Waiters get their copy when the leader's body has ended: a leader whose client reads
//!   slowly holds them up (to [`max_wait`](SingleFlightLayer::max_wait) at most).
//! - Waiters get their copies in the order they came: the flight wakes its first 32 waiters,
//!   and each that takes its copy (or goes away) wakes the next. The requests of a burst that
//!   waited longest are answered first, rather than in the order of the runtime's queues.
//!   A waiter woken whose task does not run for a while holds up no one while other wakes are
//!   under way; only with all 32 stalled do the waiters behind them wait, to their
//!   [`max_wait`](SingleFlightLayer::max_wait) at most, and then still get their copies.
//! - A response is shared only if the cache could store it and use it without asking the
//!   service (one rule for both): not one client's (`Set-Cookie`, `private`, `no-store`, an
//!   `Authorization` or query parameters the key leaves out, a header outside the policy's
//!   [`allow_headers`](crate::Policy::allow_headers)), not one to revalidate first
//!   (`no-cache`, or in HTTP mode no freshness, or stale on arrival), not a status the
//!   policy does not store (a 304, 206, 412 or 416 answers one client's conditions or
//!   range), not one its service opted out with [`CacheHint`](crate::CacheHint), not a body
//!   that ends short of its `Content-Length`, nor one over
//!   [`max_body_size`](SingleFlightLayer::max_body_size): each waiter then asks the
//!   service itself. A server error is the exception below.
//! - HEAD requests, and requests with `Authorization` or `Cookie` that the policy does not
//!   key on, are never coalesced.
//! - A lease expires after the stash's [`lease_ttl`](crate::StashBuilder::lease_ttl), so a
//!   dead leader never blocks other instances for longer. A leader whose lease expired
//!   before it stored cannot replace a newer entry: a fill never replaces an entry whose
//!   request began later.
//! - When Redis fails, leases are skipped (each instance leads for itself) and nobody waits.
//!
//! The waits use tokio's timer: the runtime needs its time driver (`#[tokio::main]` has it).
//!
//! # Example
//!
//! ```
//! use axum::{routing::get, Router};
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_stash::{CacheLayer, Policy, Routes, SingleFlightLayer, Stash};
//!
//! let stash = Stash::new();
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "alice" }))
//!     .layer(
//!         ServiceBuilder::new()
//!             .layer(CacheLayer::new(
//!                 stash.clone(),
//!                 Routes::new().get("/users/{id}", Policy::ttl(Duration::from_secs(3600))),
//!             ))
//!             .layer(SingleFlightLayer::new(stash.clone()).max_wait(Duration::from_secs(2))),
//!     );
//! # let _ = app;
//! ```

mod body;
mod flight;
mod future;
mod layer;
mod service;

pub use body::FlightBody;
pub use future::ResponseFuture;
pub use layer::SingleFlightLayer;
pub use service::SingleFlightService;

#[cfg(test)]
mod share_tests;
#[cfg(test)]
mod tests;
