//! gRPC framing as every layer reads it: the message the gRPC layer hands on, whether a
//! request or response is gRPC, and its status.

use crate::key::{FieldValues, MessageFields};
use bytes::Bytes;
use http::HeaderMap;

/// The request body of a unary gRPC call, read whole by [`GrpcLayer`](crate::grpc::GrpcLayer): a request extension.
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
        Some(f) => msg
            .message()
            .and_then(|m| f.values(m))
            .map(Some)
            .ok_or("grpc-message-undecodable"),
    }
}
