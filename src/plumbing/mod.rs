//! What the layers share, so that none reaches into another: the body of a stored response,
//! the clone-and-swap of a ready service, a request's keys, the rule of what may be stored
//! or shared ([`Exchange`]), the service's hints,
//! gRPC framing, leases, and the extensions by which a cache tells a single flight below it
//! which key a request fills.

mod grpc;
mod hint;
mod keys;
mod lease;
mod share;
mod stored;

pub use grpc::GrpcMessage;
pub(crate) use grpc::{is_grpc, prepare, status, trailers_ok};
pub use hint::CacheHint;
pub(crate) use keys::{
    base_key, base_key_parts, host_bypass, host_mismatch, key_strings, request_host,
};
pub(crate) use lease::{Lease, LeaseSlot};
pub(crate) use share::Exchange;
pub(crate) use stored::Stored;

use crate::policy::CompiledPolicy;
use http::{header, HeaderMap};
use std::sync::Arc;

/// The clone-and-swap of tower middleware: the service that `poll_ready` made ready goes to
/// the call, and a clone (which may not be ready) stays for the next `poll_ready`.
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// Whether every header the response varies on is keyed by the policy (`Vary: *` never is).
pub(crate) fn vary_is_keyed(headers: &HeaderMap, policy: &CompiledPolicy) -> bool {
    headers.get_all(header::VARY).iter().all(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .all(|name| {
                    policy
                        .keyed_headers
                        .iter()
                        .any(|h| h.as_str().eq_ignore_ascii_case(name))
                        || policy.session.as_ref().is_some_and(|s| s.varies_on(name))
                })
        })
    })
}

/// A request a [`CacheLayer`](crate::CacheLayer) passed on, whatever it decided: the layers
/// that need one outside them tell a wrong order by its absence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cached;

/// The key of a request, set by a [`CacheLayer`](crate::CacheLayer) on what it forwards.
#[derive(Debug, Clone)]
pub(crate) struct FlightKey {
    /// The key entries are stored under (hashed when long).
    pub(crate) key: Arc<str>,
    /// The full key.
    pub(crate) full: Arc<str>,
    /// Whether the leader takes a lease in a shared store (a cache above stores the answer,
    /// and nobody holds the lease yet).
    pub(crate) lease: bool,
    /// The route's policy: its body limit and keyed headers decide what may be shared.
    pub(crate) policy: Arc<CompiledPolicy>,
}

/// How a response came from single flight, for the cache above: a response extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Collapsed {
    /// A copy of the leader's response.
    Waited,
    /// A copy of the entry another instance stored.
    FromEntry,
    /// Went to the service alone past a bound: not stored, the leader stores.
    Alone,
}
