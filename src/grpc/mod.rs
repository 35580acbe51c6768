//! Unary gRPC calls (tonic servers): keys from the request message, entries only for
//! `grpc-status: 0`, trailers stored and replayed.
//!
//! A gRPC call is an HTTP/2 `POST` to `/package.Service/Method` whose request *body* holds the
//! question and whose *trailers* hold the answer's status. A cache that keys on the URL alone
//! would give one caller's answer to another's question; one that looks at the HTTP status
//! alone would store errors (every gRPC error is an HTTP 200). This module closes both gaps:
//!
//! - [`GrpcLayer`], the outermost layer, reads the request body of the methods it is told
//!   about (up to [`max_message_size`](GrpcLayer::max_message_size), 64 KiB by default) and
//!   hands it on unchanged, with a [`GrpcMessage`] request extension. Larger bodies, and every
//!   other method (streaming ones included), stream through untouched.
//! - [`Routes::grpc`](crate::Routes::grpc) routes a method (its exact path) to a
//!   [`Policy`](crate::Policy): the key is the method's path, or the policy's template,
//!   followed by the method's path and a 128-bit digest of the request body, so two different
//!   messages (or two methods keyed by one template) never share an entry. Templates and tags may name
//!   fields of the decoded message ([`Fields`]). The `grpc-accept-encoding` and
//!   `grpc-encoding` headers are always keyed (a compressed answer only goes to clients that
//!   accept it), `authorization` metadata
//!   bypasses unless keyed, and a call whose message was not read (no `GrpcLayer`, or a body
//!   over the limit) or cannot be decoded bypasses the cache.
//! - Only answers with `grpc-status: 0` in their trailers are stored; trailers-only errors and
//!   non-zero statuses never are. The stored trailers (custom metadata included) are replayed
//!   on every hit. A [`SingleFlightLayer`](crate::SingleFlightLayer) shares only successful
//!   answers: after an error (maybe the leader's own deadline), each waiter calls for itself.
//!   Stale-if-error covers service errors and timeouts, not gRPC statuses.
//! - [`Rules::grpc`](crate::Rules::grpc) invalidates unless the call failed (a non-zero
//!   status; an unknown outcome invalidates too), with templates that read the message:
//!   `UpdateUser { id }` drops every `GetUser` entry of that `id`. Write-through is not for
//!   gRPC rules. When a rule cannot read the message (too large, no `GrpcLayer`), the
//!   templates naming its fields are skipped with an error logged: give such rules a tag
//!   without fields as a fallback.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_stash::grpc::{Fields, GrpcLayer};
//! use tower_stash::{CacheLayer, Invalidate, InvalidateLayer, Policy, Routes, Rules, Stash};
//!
//! // The messages, as prost generates them. With the `prost` feature, `Fields::prost()`
//! // decodes any prost message; here, a decoder of our own.
//! struct GetUser { id: u64 }
//! struct UpdateUser { id: u64 }
//! fn id_of(bytes: &[u8]) -> Option<u64> {
//!     // Field 1, a varint below 128, first.
//!     match bytes {
//!         [0x08, id, ..] if *id < 0x80 => Some(u64::from(*id)),
//!         _ => None,
//!     }
//! }
//!
//! let routes = Routes::new().grpc(
//!     "/users.UserService/GetUser",
//!     Policy::ttl(Duration::from_secs(60)).key("user:{id}").fields(
//!         Fields::decode_with(|b| id_of(b).map(|id| GetUser { id })).field("id", |m: &GetUser| m.id),
//!     ),
//! );
//! let rules = Rules::new().grpc(
//!     "/users.UserService/UpdateUser",
//!     Invalidate::keys(["user:{id}"]).fields(
//!         Fields::decode_with(|b| id_of(b).map(|id| UpdateUser { id }))
//!             .field("id", |m: &UpdateUser| m.id),
//!     ),
//! );
//! let stash = Stash::builder().build().unwrap();
//! // Outermost first: the body is read before the rules and the cache look at it.
//! let layers = tower::ServiceBuilder::new()
//!     .layer(GrpcLayer::new().routes(&routes).rules(&rules))
//!     .layer(InvalidateLayer::new(stash.clone(), rules))
//!     .layer(CacheLayer::new(stash, routes));
//! # let _ = layers;
//! // With tonic: `Server::builder().layer(layers).add_service(...)`.
//! ```

mod body;
mod future;
mod layer;
mod service;

pub use body::GrpcRequestBody;
pub use future::ResponseFuture;
pub use layer::{GrpcLayer, DEFAULT_MAX_MESSAGE_SIZE};
pub use service::GrpcService;

pub use crate::key::fields::Fields;
pub use crate::plumbing::GrpcMessage;

#[cfg(test)]
mod tests;
