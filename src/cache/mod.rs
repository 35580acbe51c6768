//! [`CacheLayer`]: answer the routes you name from the cache.
//!
//! For each request, the layer matches the method and path against its [`Routes`](crate::Routes).
//! No match: the request goes to the service untouched. A match: the layer builds the key (see
//! [`key`](crate::key)), looks it up, and
//!
//! - on a fresh entry, answers from it at once: the stored status, headers and body (a slice of
//!   the stored buffer, never a copy), with `Age` and `Cache-Status: tower-stash; hit`; 304 Not
//!   Modified when `If-None-Match` matches the entry's `ETag` (derived from the body when the
//!   handler set none); no body for HEAD;
//! - otherwise, calls the service and streams its response to the client chunk by chunk while a
//!   copy is kept; when the body ends, the copy is stored, if the rules allow
//!   (`Cache-Status: tower-stash; fwd=miss; stored`).
//!
//! # What is never stored
//!
//! - a response with `Set-Cookie` (unless the policy stores a copy without it:
//!   `Policy::store_without_set_cookie`), or `Cache-Control: no-store`, `private` or
//!   `no-cache`;
//! - a response with `Vary` naming a header the policy does not key on (or `Vary: *`);
//! - a status outside the policy's list (default 200, 203, 204, 300, 301, 308, 404, 410), and
//!   never a 5xx, 206 or 304, nor a 412 or 416 (the answer to one request's own
//!   preconditions or range);
//! - a body that fails midway, is dropped before its end, ends short of (or past) its
//!   `Content-Length`, or grows past the size limit (it still streams to the client in
//!   full: never an error);
//! - the answer to a HEAD miss (it has no body: GET fills the entry HEAD reads);
//! - a response a handler opts out with [`CacheHint`], or tagged past the policy's
//!   [`max_tags`](crate::Policy::max_tags).
//!
//! Requests carrying `Authorization` or `Cookie` bypass the cache (no lookup, nothing stored)
//! unless the policy varies on that header, so a response meant for one user never reaches
//! another. So do requests carrying a header that commonly changes what an app answers
//! without being part of the URL (`X-Forwarded-Host`, `X-Forwarded-Scheme`,
//! `X-Forwarded-Proto`, `X-Forwarded-Port`, `X-Forwarded-Prefix`, `X-Host`,
//! `X-Original-Host`, `X-Original-URL`, `X-Rewrite-URL`, `X-HTTP-Method`,
//! `X-HTTP-Method-Override`, `X-Method-Override`, `Forwarded`: cache poisoning) unless the
//! policy varies on it, and GET requests with a body. Behind a proxy that sets one of these
//! headers on every request, key on it (`key_headers(["x-forwarded-host"])`), or the cache is
//! bypassed for every request (`Cache-Status: ...; fwd=bypass`, with detail
//! `unkeyed-forwarding-header`). A list of names always misses one: a policy's
//! [`allow_headers`](crate::Policy::allow_headers) makes every request carrying a header it
//! does not list (nor key) bypass (detail `unlisted-header`), and in HTTP mode removes such
//! headers from what the cache forwards instead. Methods other than GET and HEAD are cached
//! only by a policy that opts in.
//!
//! # Hosts
//!
//! An app that builds links, redirects or tenant lookups from the host it is asked for
//! answers differently per host: a cache that does not key the host lets one request's
//! `Host: evil.example` choose the page everyone else gets. So in application mode the host
//! a request names (its `Host`, or an HTTP/2 request's authority; normalised: lowercase,
//! no default port) is in its key by default: each host gets entries of its own, whatever
//! the app does with it, with nothing to configure. Invalidating a key (a rule's
//! `user:{id}`, [`Stash::invalidate_key`](crate::Stash::invalidate_key)) drops every host's
//! entry. A request whose absolute URI names another host than its `Host` bypasses
//! (`detail=host-mismatch`): the app may read either.
//!
//! Keying costs an entry per host name (`www.` and the bare domain are two) and, with
//! Redis, a tag index per entry (the key's family, which invalidation drops); and a
//! write-through's entry, stored under the key without a host, is read only by requests
//! naming no host. A policy that lists its hosts ([`Policy::hosts`](crate::Policy::hosts))
//! avoids all three: the listed hosts share entries (the host is not keyed), and requests
//! for any other host, or naming none, bypass (`detail=unknown-host`). Bypassing unknown
//! hosts by default was the other choice; it needs a list before any request is cached, so
//! keying is the default and listing the option. (HTTP mode keys `Host` through
//! `key_headers(["host"])`, as the proxy example does; gRPC routes key the call's message.)
//!
//! A failing store never fails a request: the error is counted and the service answers.
//!
//! # Cache-Status
//!
//! `hit` for an answer from the cache; `fwd=miss; stored` when the response is being stored
//! and its whole size is known to fit; `fwd=miss` when it is not stored, or is streaming (it is
//! stored when it ends within the limit, which the headers cannot tell yet); `fwd=bypass` for
//! requests with credentials. With [`StashBuilder::cache_status_detail`](crate::StashBuilder::cache_status_detail)
//! a `detail` says why (`set-cookie`, `cache-control`, `vary`, `status`, `too-large`,
//! `streaming`, `head`, `handler`, `hint`, `ttl`, `authorization`, `cookie`,
//! `unkeyed-forwarding-header`, `unlisted-header`, `host-mismatch`, `unknown-host`,
//! `request-body`, `too-many-tags`) and hits carry
//! their remaining `ttl`; with `cache_status_key` the key is shown.
//!
//! With stampede control: `hit; stale` for an expired entry answered inside the policy's
//! stale-while-revalidate window (one background refresh runs); `fwd=stale; fwd-status=500;
//! stale` when the service failed (an error, a 5xx, or no answer within the policy's
//! `upstream_timeout`) and the stale-if-error window allowed the stale entry; `fwd=miss;
//! collapsed` for a copy of another request's response and `hit; collapsed` for an entry
//! another instance stored while this one waited ([`SingleFlightLayer`](crate::SingleFlightLayer)).
//!
//! # Grace and early refresh
//!
//! A policy's [`stale_while_revalidate`](crate::Policy::stale_while_revalidate) and
//! [`stale_if_error`](crate::Policy::stale_if_error) windows keep entries in the store that
//! much past their TTL. A background refresh sends the request that found the entry stale to
//! the service (on tokio), once per key in the process, and with a shared store once across
//! instances (a lease). Fresh hits close to expiry refresh early with XFetch
//! ([`early_refresh`](crate::Policy::early_refresh)), from the time the response took to
//! produce, stored with the entry.
//!
//! # Limits
//!
//! - The layer matches the path it sees. Under axum's `Router::nest`, a layer inside the
//!   nested router sees the path without the prefix: give each nested router its own layer
//!   and stash namespace (or key template), or put the layer on the outer router.
//! - A miss forwards conditional requests (`If-None-Match`) to the service as they are; the
//!   derived `ETag` appears from the first hit on.
//! - A body with a declared `Content-Length` is stored once that many bytes have streamed;
//!   trailers sent after them are not stored.
//! - Hint headers (`x-stash-*`) are removed on the routes the layer caches; other routes pass
//!   through untouched.
//!
//! # Example
//!
//! ```
//! use axum::{routing::get, Router};
//! use std::time::Duration;
//! use tower::ServiceExt;
//! use tower_stash::{CacheLayer, Policy, Routes, Stash};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let stash = Stash::new();
//! let app = Router::new()
//!     .route("/users/{id}", get(|| async { "alice" }))
//!     .layer(CacheLayer::new(
//!         stash.clone(),
//!         Routes::new().get("/users/{id}", Policy::ttl(Duration::from_secs(3600)).key("user:{id}")),
//!     ));
//!
//! let req = || http::Request::get("/users/1").body(axum::body::Body::empty()).unwrap();
//! let first = app.clone().oneshot(req()).await.unwrap();
//! assert_eq!(first.headers()["cache-status"], "tower-stash; fwd=miss; stored");
//! axum::body::to_bytes(first.into_body(), usize::MAX).await.unwrap();
//!
//! let second = app.oneshot(req()).await.unwrap();
//! assert_eq!(second.headers()["cache-status"], "tower-stash; hit");
//! assert_eq!(stash.stats().hits, 1);
//! # }
//! ```

mod body;
mod fill;
mod future;
mod hit;
mod layer;
mod service;
mod stale;
mod vary;
mod writes;

pub use crate::plumbing::CacheHint;
pub use body::CacheBody;
pub use future::ResponseFuture;
pub use layer::CacheLayer;
pub use service::CacheService;

#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod poisoning_tests;
#[cfg(test)]
mod stale_tests;
#[cfg(test)]
mod status_tests;
#[cfg(test)]
mod storage_tests;
#[cfg(test)]
mod tests;
