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

use bytes::Bytes;
use http::HeaderMap;
use std::fmt;
use std::sync::Arc;

/// The request body of a unary gRPC call, read whole by [`GrpcLayer`]: a request extension.
#[derive(Clone, Debug)]
pub struct GrpcMessage {
    body: Bytes,
}

impl GrpcMessage {
    pub(crate) fn new(body: Bytes) -> Self {
        Self { body }
    }

    /// The whole request body: length-prefixed messages, as sent.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The message, when the body is exactly one uncompressed length-prefixed message (as
    /// every unary call without request compression is).
    pub fn message(&self) -> Option<&[u8]> {
        let b = &self.body[..];
        if b.len() < 5 || b[0] != 0 {
            return None;
        }
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        (b.len() - 5 == len).then(|| &b[5..])
    }

    /// Appends the key component of the call: the method's path (two methods keyed by one
    /// template never share entries) and a 128-bit digest of the body.
    pub(crate) fn push_key(&self, out: &mut String, path: &str) {
        out.push_str("|#call=");
        crate::key::escape_path_into(out, path);
        out.push('#');
        crate::key::push_hex(out, &blake3::hash(&self.body).as_bytes()[..16]);
    }
}

/// Whether `headers` announce a gRPC message (`application/grpc`, `application/grpc+proto`,
/// ...; not gRPC-Web, whose trailers travel in the body).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| is_grpc_content_type(v.as_bytes()))
}

fn is_grpc_content_type(v: &[u8]) -> bool {
    let rest = match v.strip_prefix(b"application/grpc") {
        Some(rest) => rest,
        None => return false,
    };
    rest.is_empty() || rest[0] == b'+' || rest[0] == b';'
}

/// The `grpc-status` of a header or trailer map, if present.
pub(crate) fn status(map: &HeaderMap) -> Option<&[u8]> {
    map.get("grpc-status").map(|v| v.as_bytes())
}

/// Whether trailers say the call succeeded (`grpc-status: 0`).
pub(crate) fn trailers_ok(trailers: Option<&HeaderMap>) -> bool {
    trailers.and_then(status) == Some(b"0")
}

/// Named fields of a decoded request message, for key templates, tags and invalidation rules
/// (`user:{id}`): a decoder of `M` and one function per field.
///
/// A message that does not decode makes the call bypass the cache (or, in a rule, skip the
/// templates that need it, with an error logged).
///
/// ```
/// use tower_stash::grpc::Fields;
///
/// struct GetUser { id: u64, region: String }
/// # fn decode(_: &[u8]) -> Option<GetUser> { None }
/// let fields = Fields::decode_with(decode)
///     .field("id", |m: &GetUser| m.id)
///     .field("region", |m: &GetUser| m.region.clone());
/// # let _ = fields;
/// ```
pub struct Fields<M> {
    decode: DecodeFn<M>,
    fields: Vec<(String, FieldFn<M>)>,
}

type DecodeFn<M> = Arc<dyn Fn(&[u8]) -> Option<M> + Send + Sync>;
type FieldFn<M> = Arc<dyn Fn(&M) -> String + Send + Sync>;
type ExtractFn = Arc<dyn Fn(&[u8]) -> Option<Vec<String>> + Send + Sync>;

impl<M> Clone for Fields<M> {
    fn clone(&self) -> Self {
        Self {
            decode: self.decode.clone(),
            fields: self.fields.clone(),
        }
    }
}

impl<M> fmt::Debug for Fields<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.fields.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Fields").field("names", &names).finish()
    }
}

impl<M: 'static> Fields<M> {
    /// Fields of messages decoded by `decode` (the message bytes, without the gRPC frame).
    pub fn decode_with<D>(decode: D) -> Self
    where
        D: Fn(&[u8]) -> Option<M> + Send + Sync + 'static,
    {
        Self {
            decode: Arc::new(decode),
            fields: Vec::new(),
        }
    }

    /// Fields of a prost message.
    #[cfg(feature = "prost")]
    pub fn prost() -> Self
    where
        M: prost::Message + Default,
    {
        Self::decode_with(|bytes| M::decode(bytes).ok())
    }

    /// Names a field: `{name}` in templates is `value` of the decoded message, escaped as any
    /// key component.
    pub fn field<F, T>(mut self, name: impl Into<String>, value: F) -> Self
    where
        F: Fn(&M) -> T + Send + Sync + 'static,
        T: fmt::Display,
    {
        self.fields
            .push((name.into(), Arc::new(move |m| value(m).to_string())));
        self
    }
}

/// [`Fields`] with the message type erased, as policies and rules hold them.
#[derive(Clone)]
pub(crate) struct MessageFields {
    pub(crate) names: Vec<String>,
    extract: ExtractFn,
}

impl<M: 'static> From<Fields<M>> for MessageFields {
    fn from(f: Fields<M>) -> Self {
        let names = f.fields.iter().map(|(n, _)| n.clone()).collect();
        let Fields { decode, fields } = f;
        Self {
            names,
            extract: Arc::new(move |bytes| {
                let m = decode(bytes)?;
                Some(fields.iter().map(|(_, f)| f(&m)).collect())
            }),
        }
    }
}

impl MessageFields {
    /// The fields of `msg`, each value escaped so that the key builder's decoding gives its
    /// bytes back, or `None` when the body is not one message of the expected type.
    pub(crate) fn values(&self, msg: &GrpcMessage) -> Option<FieldValues> {
        let values = (self.extract)(msg.message()?)?;
        Some(FieldValues(
            self.names
                .iter()
                .cloned()
                .zip(values.into_iter().map(|v| {
                    percent_encoding::utf8_percent_encode(&v, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                }))
                .collect(),
        ))
    }
}

impl fmt::Debug for MessageFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fields")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl PartialEq for MessageFields {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names && Arc::ptr_eq(&self.extract, &other.extract)
    }
}

impl Eq for MessageFields {}

/// The named field values of one message (escaped: see [`MessageFields::values`]).
#[derive(Debug, Default)]
pub(crate) struct FieldValues(Vec<(String, String)>);

impl FieldValues {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a call to a gRPC route cannot use the cache, if it cannot; else its field values.
pub(crate) fn prepare<B>(
    fields: Option<&MessageFields>,
    req: &http::Request<B>,
) -> Result<Option<FieldValues>, &'static str> {
    if !is_grpc(req.headers()) {
        return Err("not-grpc");
    }
    let Some(msg) = req.extensions().get::<GrpcMessage>() else {
        // No GrpcLayer outside, or a body over its limit: the key cannot hold the question.
        return Err("grpc-message-unread");
    };
    match fields {
        None => Ok(None),
        Some(f) => f.values(msg).map(Some).ok_or("grpc-message-undecodable"),
    }
}

#[cfg(test)]
mod tests;
