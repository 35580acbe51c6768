//! HTTP caching semantics (RFC 9111) for policies in HTTP mode ([`Policy::http_mode`]), where
//! the origin's headers decide what is stored and for how long, as a shared cache must.
//!
//! What HTTP mode does:
//!
//! - Freshness from `s-maxage`, then `max-age`, then `Expires` minus `Date`; then the
//!   policy's [`status_ttl`](crate::Policy::status_ttl) for the status, if any; then
//!   heuristic freshness (10 % of the time since `Last-Modified`, at most a day) for the
//!   statuses RFC 9110 calls heuristically cacheable, except client errors: a 4xx (which an
//!   attacker may provoke) is stored only with an explicit lifetime, from the origin or the
//!   policy. A response with none of these is not stored, but for one that is only to be
//!   revalidated (`no-cache` with a validator), which also needs a reason to be stored
//!   (RFC 9111 section 3): a heuristically cacheable status (not a 4xx) or `public`. A
//!   `500`, `400` or `201` saying only `no-cache` and an `ETag` is not kept.
//! - Never stored: a `412` or `416` (the answer to one request's own preconditions or range:
//!   stored, it would answer every client so, a CPDoS), a `206` outside the partial store
//!   below, a `304`, and a body that ends short of (or past) its `Content-Length` (a
//!   connection closed early). Refreshes forward none of the client's conditions
//!   (`If-Match`, `If-None-Match`, `If-Modified-Since`, `If-Unmodified-Since`, `If-Range`)
//!   nor its `Range`.
//! - `Age`: the age a response arrives with (its `Age` header, or how far its `Date` lies in
//!   the past) counts toward its freshness and is sent on every hit; an `Age` that is not one
//!   plain number makes the response stale.
//! - Response directives: `no-store` and `private` are not stored; `no-cache` answers with a
//!   validator are stored and revalidated before every use, also after the origin's `304`
//!   (which confirms one use, never gives a lifetime); `must-revalidate`,
//!   `proxy-revalidate`, `s-maxage` and `no-cache` entries are never served stale, neither
//!   inside the origin's windows nor the policy's
//!   ([`stale_while_revalidate`](crate::Policy::stale_while_revalidate),
//!   [`stale_if_error`](crate::Policy::stale_if_error)); `stale-while-revalidate=N` and
//!   `stale-if-error=N` (RFC 5861) are honoured; `must-understand` stores only known
//!   statuses (and then despite `no-store`).
//! - Validation: expired entries with an `ETag` or `Last-Modified` are kept a day and
//!   revalidated with `If-None-Match` / `If-Modified-Since`; a `304` freshens the stored
//!   headers (never the validator or `Content-Length`, nor its own hop-by-hop headers), and
//!   is stored only under the rules a full answer meets. A `304` naming another entity tag
//!   than the entry's confirms nothing (RFC 9111 section 4.3.4): the entry is dropped, and
//!   the client gets it stale where it allows that, or else a `502`. An answer confirmed by
//!   a `304` says `Cache-Status: ...; fwd=stale; fwd-status=304`.
//! - A `304` is sent to a client only for a stored `2xx` its `If-None-Match` or
//!   `If-Modified-Since` matches (RFC 9110 section 13.2.1): a stored error is answered
//!   whole.
//! - Hints: the service's [`CacheHint`](crate::CacheHint) and `x-stash-*` headers are
//!   ignored (and forwarded to the client as any other header) unless the policy obeys them
//!   ([`Policy::hints`](crate::Policy::hints)): an origin speaks with `Cache-Control`, and
//!   one not in your hands must not stretch a `max-age=0` to a year.
//! - When the origin cannot be reached (an error, 502, 504), an expired entry that allows it
//!   is answered stale; other 5xx only inside `stale-if-error`.
//! - `Vary`: each variant has a key of its own (a record under the URL's key names the
//!   headers; credentials hashed; `Accept-Language`, `-Encoding`, `-Charset` normalised);
//!   `Vary: *` is never stored. At most [`max_variants`](crate::Policy::max_variants) variants
//!   of one URL are kept (32 by default): storing one more drops the one stored longest ago.
//! - Requests: `If-Modified-Since` and one byte `Range` (without `If-Range`) are answered from
//!   stored responses: a complete one, or a stored partial one that holds the bytes asked
//!   for; the `Authorization` rule of RFC 9111 section 3.5; request directives
//!   (`no-store`, `no-cache`, `max-age`, `min-fresh`, `max-stale`, `only-if-cached`, and
//!   `Pragma: no-cache`): see [`RequestDirectives`]. A fresh entry whose response said
//!   `immutable` (RFC 8246) is served despite a reload's `max-age` (`max-age=0`): the origin
//!   promised it will not change while fresh. A forced reload (`no-cache`, `Pragma:
//!   no-cache`) and `min-fresh` are still honoured. In application mode they are ignored
//!   unless the policy opts in ([`Policy::request_directives`]): no client can force misses
//!   onto the database.
//! - What reaches the origin: with [`Policy::allow_headers`], a cacheable request (one the
//!   cache may store the answer to) is forwarded with its keyed headers, the listed ones and
//!   those that always pass (`Host`, the cache's own directives, conditions and ranges,
//!   `Authorization`) only, as a CDN's origin-request policy does: no other header can shape
//!   an answer stored for others, whatever its name. `Vary` still picks variants by the
//!   client's own headers. Requests the cache bypasses or passes through are forwarded
//!   whole. Without a list, every header is forwarded, and requests carrying a header known
//!   to rewrite what origins answer (`X-Forwarded-Host`, `X-Forwarded-Proto`, `Forwarded`,
//!   `X-HTTP-Method-Override`, ...: see [`cache`](crate::cache)) bypass.
//! - Writes (RFC 9111 section 4.4): a successful (2xx, 3xx) unsafe request (POST, PUT,
//!   DELETE, PATCH, ...) drops every entry of its target URL, and of a same-origin
//!   `Location` or `Content-Location` in its answer, that an HTTP-mode GET route caches,
//!   before the answer goes on (waiting at most 2 s; a store that cannot be reached retries
//!   in the background). A failed write, or a location on another host, drops nothing.
//!   Entries of application-mode routes are left to [`Rules`](crate::Rules), and a write
//!   whose method has a cached route of its own invalidates nothing.
//! - Partial content: a `206` answering a `Range` request, of one range with a known
//!   complete length (`Content-Range: bytes 4-8/10`) and no `Vary`, is stored under a key
//!   of its own, which only `Range` requests covered by it look up. It is kept in this
//!   instance's memory tier only ([`Store::put_local`](crate::Store::put_local)): other
//!   instances, and stores without a memory tier, forward such requests. The policy's
//!   statuses must include 206 (HTTP mode's default does). It is never the complete
//!   response; invalidating the URL drops it too.
//! - A 304 is never stored; `Set-Cookie` answers are not stored either (a shared cache that
//!   stores them hands one client's cookie to others).
//!
//! Not done: storing POST answers by `Content-Location`; combining stored partial responses
//! (or completing one with a request for the rest); choosing a variant by `Accept-Language`
//! quality values.
//!
//! [`Policy::http_mode`]: crate::Policy::http_mode
//! [`Policy::request_directives`]: crate::Policy::request_directives
//! [`Policy::allow_headers`]: crate::Policy::allow_headers

pub use crate::headers::strip_hop_by_hop;

use http::header::{self, HeaderMap};
use http::StatusCode;
use std::time::{Duration, SystemTime};

/// How long HTTP mode keeps an expired entry that has a validator (`ETag`, `Last-Modified`),
/// to revalidate it with a conditional request instead of fetching it whole.
pub(crate) const REVALIDATE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The internal header of a variant record: the request headers a URL's responses vary on.
pub(crate) const VARY_RECORD: &str = "tower-stash-vary";

/// The header names a variant record stored under the URL key `full` lists, if `entry` is
/// one.
pub(crate) fn record_names(entry: &crate::Entry, full: &str) -> Option<Vec<String>> {
    let value = entry.headers().get(VARY_RECORD)?;
    if entry.key() != record_key(full) {
        return None;
    }
    let names = value.to_str().ok()?;
    Some(names.split(',').map(|n| n.trim().to_owned()).collect())
}

/// The key of the variant record stored under a URL's key (it never equals an entry's key).
pub(crate) fn record_key(full: &str) -> String {
    format!("{full}|#vary")
}

/// The header names of a `Vary` (lowercased, sorted, deduplicated); `None` for `Vary: *`,
/// and an empty list when there is no `Vary`.
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for v in headers.get_all(header::VARY) {
        let v = v.to_str().ok()?;
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            names.push(name.to_ascii_lowercase());
        }
    }
    names.sort();
    names.dedup();
    Some(names)
}

/// Appends a variant's secondary key: each named request header's values, normalised
/// (lines combined, spaces around commas dropped; `Accept-Language`, `Accept-Encoding` and
/// `Accept-Charset` items lowercased and sorted), escaped.
pub(crate) fn push_variant(out: &mut String, names: &[String], request: &HeaderMap) {
    for name in names {
        out.push_str("|~");
        crate::key::escape_into(out, name.as_bytes());
        let values: Vec<String> = request
            .get_all(name.as_str())
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split(',')
                    .map(|item| item.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect::<Vec<_>>()
            })
            .filter(|v| !v.is_empty())
            .collect();
        // Language tags and codings are case-insensitive lists (of equal preference unless
        // weighted): one order, one case.
        let mut values = values;
        if matches!(
            name.as_str(),
            "accept-language" | "accept-encoding" | "accept-charset"
        ) {
            for v in &mut values {
                v.make_ascii_lowercase();
            }
            values.sort();
        }
        if request.contains_key(name.as_str()) {
            out.push('=');
            let joined = values.join(",");
            if matches!(
                name.as_str(),
                "authorization" | "cookie" | "proxy-authorization"
            ) {
                // Never a secret in a key: its 128-bit hash.
                out.push('#');
                crate::key::push_hex(out, &blake3::hash(joined.as_bytes()).as_bytes()[..16]);
            } else {
                crate::key::escape_into(out, joined.as_bytes());
            }
        }
    }
}

/// Whether a shared cache may answer with this stored response once stale, when the origin
/// cannot be reached or fails (RFC 9111 section 4.2.4): not with `must-revalidate`,
/// `proxy-revalidate`, `s-maxage` or `no-cache`.
pub(crate) fn may_serve_stale(headers: &HeaderMap) -> bool {
    !crate::headers::has_directive(
        headers,
        &[
            "must-revalidate",
            "proxy-revalidate",
            "s-maxage",
            "no-cache",
        ],
    )
}

/// The stale windows a stored response grants itself: `stale-while-revalidate=N` and
/// `stale-if-error=N` (RFC 5861), none when it may not be served stale at all.
pub(crate) fn stale_windows(headers: &HeaderMap) -> (Duration, Duration) {
    if !may_serve_stale(headers) {
        return (Duration::ZERO, Duration::ZERO);
    }
    let (mut swr, mut sie) = (Duration::ZERO, Duration::ZERO);
    for (name, value) in directives(headers) {
        let secs = || {
            Duration::from_secs(
                seconds(&value)
                    .unwrap_or(0)
                    .min(REVALIDATE_WINDOW.as_secs()),
            )
        };
        match name.as_str() {
            "stale-while-revalidate" => swr = secs(),
            "stale-if-error" => sie = secs(),
            _ => {}
        }
    }
    (swr, sie)
}

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
    let Some(since) = ims
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    http_date(headers, header::LAST_MODIFIED)
        .or_else(|| http_date(headers, header::DATE))
        .is_some_and(|modified| modified <= since)
}

/// The key a URL's stored partial response (a `206`) lives under: never a complete
/// response's.
pub(crate) fn partial_key(full: &str) -> String {
    format!("{full}|#partial")
}

/// A `Content-Range: bytes first-last/complete` of one range (a known complete length).
pub(crate) fn content_range(headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let mut values = headers.get_all(header::CONTENT_RANGE).iter();
    let v = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (range, complete) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, complete): (u64, u64, u64) = (
        first.trim().parse().ok()?,
        last.trim().parse().ok()?,
        complete.trim().parse().ok()?,
    );
    (first <= last && last < complete).then_some((first, last, complete))
}

/// The bytes a `Range` asks of a stored partial response, which holds them all.
pub(crate) struct Part {
    /// The first and last byte asked for, in the complete response.
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// The complete response's length.
    pub(crate) complete: u64,
    /// Where the stored body starts in the complete response.
    pub(crate) first: u64,
}

/// The part of a stored partial response (its status `206`, its `Content-Range`, its body)
/// that answers `range`, when it holds all of it.
pub(crate) fn partial_covers(entry: &crate::Entry, range: &http::HeaderValue) -> Option<Part> {
    if entry.status() != StatusCode::PARTIAL_CONTENT {
        return None;
    }
    let (first, last, complete) = content_range(entry.headers())?;
    if entry.body().len() as u64 != last - first + 1 {
        return None;
    }
    let (start, end) = byte_range(range, complete)?;
    (first <= start && end <= last).then_some(Part {
        start,
        end,
        complete,
        first,
    })
}

/// The byte range a `Range: bytes=...` header asks of a body `len` long: one range only
/// (`a-b`, `a-`, `-n`), clamped to the body; `None` for anything else (several ranges, other
/// units, unsatisfiable), which is answered with the whole body.
pub(crate) fn byte_range(range: &http::HeaderValue, len: u64) -> Option<(u64, u64)> {
    let spec = range.to_str().ok()?.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let (start, end) = if first.is_empty() {
        let n: u64 = last.parse().ok()?;
        if n == 0 {
            return None;
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            len - 1
        } else {
            last.parse::<u64>().ok()?.min(len - 1)
        };
        (start, end)
    };
    (start <= end && start < len).then_some((start, end))
}

/// The directives of a response's `Cache-Control` that HTTP mode reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ResponseDirectives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
}

/// The directives of a request's `Cache-Control` (and `Pragma: no-cache`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestDirectives {
    /// Store nothing of this exchange.
    pub no_store: bool,
    /// Do not answer from the cache without asking the origin.
    pub no_cache: bool,
    /// Only an entry at most this old (seconds).
    pub max_age: Option<u64>,
    /// Only an entry fresh for at least this long still (seconds).
    pub min_fresh: Option<u64>,
    /// A stale entry will do: up to this long past expiry (`None` inside: any).
    pub max_stale: Option<Option<u64>>,
    /// Answer from the cache or with 504, never from the origin.
    pub only_if_cached: bool,
}

/// `name` or `name=value` items of every `Cache-Control` header value, lowercased names.
fn directives(headers: &HeaderMap) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| {
            let item = item.trim();
            if item.is_empty() {
                return None;
            }
            Some(match item.split_once('=') {
                Some((name, value)) => (
                    name.trim().to_ascii_lowercase(),
                    Some(value.trim().trim_matches('"').to_owned()),
                ),
                None => (item.to_ascii_lowercase(), None),
            })
        })
}

/// A delta-seconds value; an invalid one is `None` (the directive is then treated as absent
/// for freshness, or as zero where that is safer: see the callers).
fn seconds(value: &Option<String>) -> Option<u64> {
    let v = value.as_deref()?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Overflowing values mean "a very long time" (RFC 9111 section 1.2.2).
    Some(v.parse().unwrap_or(u64::from(u32::MAX)))
}

impl ResponseDirectives {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for (name, value) in directives(headers) {
            match name.as_str() {
                "no-store" => d.no_store = true,
                // `no-cache="field"` names fields; a cache may treat it as plain no-cache.
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                // A duplicate or an invalid value: the most restrictive reading (zero).
                "max-age" => {
                    d.max_age = Some(match (d.max_age, seconds(&value)) {
                        (None, Some(s)) => s,
                        _ => 0,
                    })
                }
                "s-maxage" => {
                    d.s_maxage = Some(match (d.s_maxage, seconds(&value)) {
                        (None, Some(s)) => s,
                        _ => 0,
                    })
                }
                _ => {}
            }
        }
        d
    }
}

impl RequestDirectives {
    /// The request's directives; `Pragma: no-cache` counts as `no-cache` when the request has
    /// no `Cache-Control`.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for (name, value) in directives(headers) {
            match name.as_str() {
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "max-age" => d.max_age = Some(seconds(&value).unwrap_or(0)),
                "min-fresh" => d.min_fresh = Some(seconds(&value).unwrap_or(u64::MAX)),
                "max-stale" => {
                    d.max_stale = Some(value.as_ref().map(|_| seconds(&value).unwrap_or(0)))
                }
                "only-if-cached" => d.only_if_cached = true,
                _ => {}
            }
        }
        if !headers.contains_key(header::CACHE_CONTROL)
            && headers.get_all(header::PRAGMA).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache"))
            })
        {
            d.no_cache = true;
        }
        d
    }

    /// Whether a request with these directives may be answered by an entry `age` old with
    /// `remaining` freshness (zero when expired, `past` beyond expiry).
    pub(crate) fn accepts(&self, age: Duration, remaining: Duration, past: Duration) -> bool {
        if self.no_cache {
            return false;
        }
        if self.max_age.is_some_and(|m| age.as_secs() > m) {
            return false;
        }
        if let Some(min) = self.min_fresh {
            if remaining.as_secs() < min || (remaining.is_zero() && min > 0) {
                return false;
            }
        }
        if remaining.is_zero() {
            return match self.max_stale {
                None => false,
                Some(None) => true,
                Some(Some(limit)) => past.as_secs() <= limit,
            };
        }
        true
    }
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
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

/// The `Age` header's value: zero when absent, an error when it is not one plain number.
fn age(headers: &HeaderMap) -> Result<Duration, ()> {
    let mut values = headers.get_all(header::AGE).iter();
    let Some(first) = values.next() else {
        return Ok(Duration::ZERO);
    };
    if values.next().is_some() {
        return Err(());
    }
    let v = first.to_str().map_err(drop)?.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    Ok(Duration::from_secs(
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
    // The age on arrival: the `Age` header, or how far `Date` lies in the past. An `Age`
    // that is not one plain number (several, negative, a fraction, with parameters) makes
    // the response stale: its age cannot be known.
    let age_value = match age(headers) {
        Ok(age) => age,
        Err(()) => return Some((lifetime, lifetime)),
    };
    let apparent = date
        .and_then(|d| now.duration_since(d).ok())
        .unwrap_or_default();
    Some((lifetime, age_value.max(apparent)))
}

#[cfg(test)]
mod tests;
