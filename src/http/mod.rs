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
//!   the past, whichever is more) counts toward its freshness and is sent on every hit. As
//!   RFC 9111 section 5.1 says, a list's first member counts (`Age: 0, 7200` is 0; two lines,
//!   the first), parameters aside (`7200;foo=bar` is 7200), and an invalid value (not a
//!   non-negative integer: `abc`, `-1`, `1.5`) is ignored, not taken as stale.
//! - Targeted fields (RFC 9213): a response's `CDN-Cache-Control`, or first a field naming
//!   this cache ([`Policy::targeted_field`], such as `Stash-Cache-Control`), when present,
//!   a valid Structured Field Dictionary and not empty, decides instead of `Cache-Control`
//!   and `Expires`: its `max-age`, `s-maxage`, `no-store`, `no-cache`, `private`,
//!   `must-revalidate` and the rest, as they would there (`CDN-Cache-Control: max-age=3600`
//!   with `Cache-Control: no-store` is stored an hour; `CDN-Cache-Control: private` is not
//!   stored whatever `Cache-Control` says). An invalid one (`max-age =1`, `max-age="1"`,
//!   `&&&`) is ignored. The fields reach the client as they came (they concern other caches
//!   too). [`Policy::cdn_cache_control`]`(false)` ignores `CDN-Cache-Control`.
//! - Dates (`Date`, `Expires`, `Last-Modified`, `If-Modified-Since`) are read in the three
//!   formats of RFC 9110 section 5.6.7, the names of days, months and `GMT` in any case;
//!   nothing else (`UTC`, another zone, a two-digit year outside RFC 850, a missing comma,
//!   runs of spaces, dashes, a one-digit hour) and no field given twice. As `Expires`, a date
//!   that cannot be read means already expired (RFC 9111 section 5.3).
//! - Interim (1xx) answers are never stored: only a final answer is (see the proxy example
//!   for forwarding them).
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
//!   whose method has a cached route of its own invalidates nothing. A write costs what it
//!   names: the entries of its URLs (their variants, found by the URL's tag), not a scan of
//!   the cache, and what it leaves behind (tombstones, tag dates) is bounded, so a flood of
//!   POSTs neither slows down nor pushes live entries out (`benches/post_flood.rs`).
//! - Partial content: a `206` answering a `Range` request, of one range with a known
//!   complete length (`Content-Range: bytes 4-8/10`) and no `Vary`, is stored under a key
//!   of its own, which only `Range` requests covered by it look up. It is kept in this
//!   instance's memory tier only ([`Store::put_local`](crate::Store::put_local)): other
//!   instances, and stores without a memory tier, forward such requests. The policy's
//!   statuses must include 206 (HTTP mode's default does). It is never the complete
//!   response; invalidating the URL drops it too.
//! - A 304 is never stored; `Set-Cookie` answers are not stored either (a shared cache that
//!   stores them hands one client's cookie to others), unless the policy asks for a copy
//!   without the cookie (`Policy::store_without_set_cookie`).
//!
//! Not done: storing POST answers by `Content-Location`; combining stored partial responses
//! (or completing one with a request for the rest); choosing a variant by `Accept-Language`
//! quality values.
//!
//! [`Policy::http_mode`]: crate::Policy::http_mode
//! [`Policy::request_directives`]: crate::Policy::request_directives
//! [`Policy::allow_headers`]: crate::Policy::allow_headers
//! [`Policy::targeted_field`]: crate::Policy::targeted_field
//! [`Policy::cdn_cache_control`]: crate::Policy::cdn_cache_control

mod date;
mod directives;
mod freshness;
mod ranges;
mod targeted;
mod variants;

pub use crate::headers::strip_hop_by_hop;
pub use directives::RequestDirectives;
pub(crate) use directives::{may_serve_stale, stale_windows};
pub(crate) use freshness::{
    freshen, freshness, has_validator, not_modified_since, reason_to_store, understood,
};
pub(crate) use ranges::{byte_range, content_range, partial_covers, partial_key};
pub(crate) use targeted::effective;
pub(crate) use variants::{push_variant, record_key, record_names, vary_names, VARY_RECORD};

use std::time::Duration;

/// How long HTTP mode keeps an expired entry that has a validator (`ETag`, `Last-Modified`),
/// to revalidate it with a conditional request instead of fetching it whole.
pub(crate) const REVALIDATE_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod tests;
