//! [`InvalidateLayer`]: when data changes, every instance stops serving the old version.
//!
//! Rules per method and path pattern say what a request that changes data invalidates once
//! the service has answered it with a 2xx: keys (templates filled from the path parameters,
//! such as `user:{id}`; every variant of each key goes too) and tags. A non-2xx answer
//! invalidates nothing, except for a write-through rule, whose key is invalidated (a
//! rollback: no old value outlives a failed write).
//!
//! A write-through rule stores the response of the write as the entry of a read: the
//! response to `PUT /users/{id}` becomes what `GET /users/{id}` answers, with no call to the
//! service. The client gets its response once the invalidations and the write-through are
//! done (or have failed and are being retried), so a read that follows sees the new data.
//!
//! # Coherence
//!
//! - Invalidations leave a tombstone (for [`StashBuilder::tombstone_ttl`](crate::StashBuilder::tombstone_ttl)):
//!   a fill whose request began before the invalidation can never put the old value back,
//!   in memory or in Redis.
//! - Each instance's memory tier drops invalidated entries when the invalidation is published
//!   on Redis pub/sub; an instance whose subscription dropped flushes its memory tier when it
//!   is back, since it may have missed messages (meanwhile, its memory tier keeps serving,
//!   for at most the tier's `l1_max_ttl`).
//! - Tag indexes in Redis are sorted sets scored by expiry: entries leave them as they expire,
//!   and an index expires after its last entry. Only single-key commands are used, so it works
//!   on Redis Cluster.
//! - An invalidation that fails (Redis unreachable) is retried in the background until it
//!   succeeds; the instance's own memory copy is dropped at once.
//!
//! Application code can invalidate through the handle: [`Stash::invalidate_key`](crate::Stash::invalidate_key),
//! [`Stash::invalidate_tag`](crate::Stash::invalidate_tag).
//!
//! # Example
//!
//! ```
//! use axum::{routing::get, Router};
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_stash::{CacheLayer, Invalidate, InvalidateLayer, Policy, Routes, Rules, Stash};
//!
//! let stash = Stash::new();
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "alice" }).put(|| async { "alice v2" }))
//!     .layer(
//!         ServiceBuilder::new()
//!             .layer(CacheLayer::new(
//!                 stash.clone(),
//!                 Routes::new().get("/users/{id}", Policy::ttl(Duration::from_secs(3600)).key("user:{id}")),
//!             ))
//!             .layer(
//!                 InvalidateLayer::new(
//!                     stash.clone(),
//!                     Rules::new().put(
//!                         "/users/{id}",
//!                         Invalidate::write_through("user:{id}", Duration::from_secs(3600)),
//!                     ),
//!                 )
//!                 // PURGE with `x-stash-key` / `x-stash-tag`, for operators with the token.
//!                 .purge(|req| req.headers.get("authorization").is_some_and(|v| v == "Bearer ops")),
//!             ),
//!     );
//! # let _ = app;
//! ```

mod body;
mod future;
mod layer;
mod rules;
mod service;

pub use body::InvalidateBody;
pub use future::ResponseFuture;
pub use layer::InvalidateLayer;
pub use rules::{Invalidate, Rules};
pub use service::InvalidateService;

#[cfg(test)]
mod tests;
