//! Freshness: how long a response may be used, how old it arrives, what a `304` brings.

use super::directives::ResponseDirectives;
use http::header::{self, HeaderMap};
use http::StatusCode;
use std::time::{Duration, SystemTime};

/// Whether a response has a validator a conditional request can use.
pub(crate) fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// The headers a `304 Not Modified` brings to a stored response (RFC 9111 section 3.2): all
/// of them, but those that describe the stored body itself (its length, encoding, range,
/// digest and entity tag), and the cache's own.
pub(crate) fn freshen(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut headers = stored.clone();
    let keep = [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
        header::TRANSFER_ENCODING,
        header::AGE,
        // The validator the entry was confirmed with, and a digest of its body.
        header::ETAG,
        http::HeaderName::from_static("content-md5"),
    ];
    // Hop-by-hop headers (and those `Connection` names) concern the connection the 304
    // came on, never the stored response.
    let mut not_modified = not_modified.clone();
    crate::headers::strip_hop_by_hop(&mut not_modified);
    let mut replaced = std::collections::HashSet::new();
    for (name, value) in &not_modified {
        if keep.contains(name) || name.as_str() == "cache-status" {
            continue;
        }
        if replaced.insert(name.clone()) {
            headers.remove(name);
        }
        headers.append(name.clone(), value.clone());
    }
    headers
}

/// Whether a stored response was not modified since `ims` (its `Last-Modified`, or else its
/// `Date`, at or before it).
pub(crate) fn not_modified_since(headers: &HeaderMap, ims: &http::HeaderValue) -> bool {
    let Some(since) = ims.to_str().ok().and_then(super::date::parse) else {
        return false;
    };
    http_date(headers, header::LAST_MODIFIED)
        .or_else(|| http_date(headers, header::DATE))
        .is_some_and(|modified| modified <= since)
}

/// Whether `status` is one this cache knows the meaning of (registered by RFC 9110 and its
/// companions).
pub(crate) fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=208 | 226 | 300..=308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451 | 500..=508
            | 510 | 511
    )
}

/// Whether a response without a lifetime of its own (explicit, heuristic or from the
/// policy) may still be stored, to be revalidated before every use (RFC 9111 section 3): its
/// status is heuristically cacheable (client errors apart: an attacker may provoke them), or
/// it says `public`.
pub(crate) fn reason_to_store(status: StatusCode, headers: &HeaderMap) -> bool {
    (heuristically_cacheable(status) && !status.is_client_error())
        || crate::headers::has_directive(headers, &["public"])
}

/// Whether RFC 9110 lets a cache give `status` a heuristic freshness.
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        // None, or several lines: not one date.
        return None;
    };
    super::date::parse(value.to_str().ok()?)
}

/// The `Age` a response arrived with (RFC 9111 section 5.1): the first member of its list,
/// parameters aside; `None` when absent or invalid (not a non-negative integer), which is
/// ignored, not taken as stale.
fn age(headers: &HeaderMap) -> Option<Duration> {
    let first = headers.get(header::AGE)?.to_str().ok()?;
    let member = first.split(',').next()?;
    let v = member.split(';').next()?.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Overflowing values mean "a very long time" (RFC 9111 section 1.2.2).
    Some(Duration::from_secs(
        v.parse().unwrap_or(u64::from(u32::MAX)),
    ))
}

/// How long a response is fresh from when the origin produced it, and how old it already
/// is on arrival at `now`, or `None` when it gives no freshness at all.
///
/// `fallback` (a policy's [`status_ttl`](crate::Policy::status_ttl)) is the lifetime of a
/// response without explicit freshness (`s-maxage`, `max-age`, `Expires`), in place of a
/// heuristic one. A 4xx never gets heuristic freshness: an error an attacker can provoke
/// (an oversized header, a method override the origin honours) is stored only when the
/// origin or the policy gives it an explicit lifetime.
pub(crate) fn freshness(
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
    fallback: Option<Duration>,
) -> Option<(Duration, Duration)> {
    let cc = ResponseDirectives::parse(headers);
    let date = http_date(headers, header::DATE);
    let lifetime = if let Some(s) = cc.s_maxage {
        Duration::from_secs(s)
    } else if let Some(s) = cc.max_age {
        Duration::from_secs(s)
    } else if headers.contains_key(header::EXPIRES) {
        // An invalid Expires means already expired.
        match (http_date(headers, header::EXPIRES), date.or(Some(now))) {
            (Some(expires), Some(base)) => expires.duration_since(base).unwrap_or_default(),
            _ => Duration::ZERO,
        }
    } else if let Some(ttl) = fallback {
        ttl
    } else if !status.is_client_error() && (heuristically_cacheable(status) || cc.public) {
        let modified = http_date(headers, header::LAST_MODIFIED)?;
        let since = date.unwrap_or(now).duration_since(modified).ok()?;
        (since / 10).min(Duration::from_secs(24 * 3600))
    } else {
        return None;
    };
    // The age on arrival: the `Age` header (an invalid one ignored), or how far `Date` lies
    // in the past, whichever is more.
    let age_value = age(headers).unwrap_or_default();
    let apparent = date
        .and_then(|d| now.duration_since(d).ok())
        .unwrap_or_default();
    Some((lifetime, age_value.max(apparent)))
}
