//! What every stored entry's headers carry, whoever stores it: a fill of the cache or a
//! write-through.

use super::Stash;
use crate::headers;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};

/// Completes the headers of an entry about to be stored: a derived `ETag` (when `etag` and
/// none is set), the `Content-Length`, and the `age` and `cache-status` slots a hit fills in,
/// so that its copy of these headers never has to grow.
pub(crate) fn complete_headers(
    headers: &mut HeaderMap,
    status: StatusCode,
    body: &Bytes,
    etag: bool,
    stash: &Stash,
) {
    if etag && !headers.contains_key(header::ETAG) {
        headers.insert(header::ETAG, headers::derived_etag(body));
    }
    if status != StatusCode::NO_CONTENT && !headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    // `Age` and `Cache-Status` first: a hit finds their slots without hashing their names
    // (see the cache's hit).
    let mut ordered = HeaderMap::with_capacity(headers.len() + 2);
    ordered.insert(header::AGE, HeaderValue::from_static("0"));
    ordered.insert(headers::CACHE_STATUS, stash.inner.status.hit.clone());
    let mut current = None;
    for (name, value) in headers.drain() {
        if let Some(name) = name {
            current = Some(name);
        }
        let Some(name) = &current else { continue };
        if name != header::AGE && name != headers::CACHE_STATUS {
            ordered.append(name.clone(), value);
        }
    }
    *headers = ordered;
}

impl Stash {
    /// Counts what became of storing an entry under `key`, and logs a failure: the one record
    /// of a write, whoever stored it (a fill, a revalidated entry).
    pub(crate) fn record_put(&self, key: &str, result: Result<(), crate::StoreError>) {
        match result {
            Ok(()) => {
                self.stored();
                tracing::debug!(%key, "stored");
            }
            Err(e) => {
                self.counters().store_error();
                tracing::warn!(%key, error = %e, "storing the entry failed");
            }
        }
    }
}
