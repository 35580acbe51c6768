use super::future::Ctx;
use crate::entry::Entry;
use crate::headers::{self, CACHE_STATUS};
use crate::plumbing::Stored;
use crate::policy::CompiledPolicy;
use crate::Stash;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use std::time::{Duration, SystemTime};

/// What an entry found for a request is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// Fresh for this much longer.
    Fresh(Duration),
    /// Expired, inside the stale-while-revalidate window.
    StaleWhileRevalidate,
    /// Expired, inside the stale-if-error window only.
    StaleIfError,
    /// Another request's entry (a hashed key's other owner), or too old to serve.
    Unusable,
}

pub(crate) fn classify(
    entry: &Entry,
    full: &str,
    policy: &CompiledPolicy,
    now: SystemTime,
) -> Found {
    if entry.key() != full {
        return Found::Unusable;
    }
    // Fresh strictly before `expires_at` (or a sliding entry's idle deadline).
    let past = match entry.fresh_until().duration_since(now) {
        Ok(remaining) if !remaining.is_zero() => return Found::Fresh(remaining),
        Ok(_) => Duration::ZERO,
        Err(e) => e.duration(),
    };
    let (swr, sie) = stale_windows(policy, entry);
    if past < swr {
        Found::StaleWhileRevalidate
    } else if past < sie {
        Found::StaleIfError
    } else {
        Found::Unusable
    }
}

/// How long past its expiry an entry may be answered while it is refreshed, and when the
/// service fails: the policy's windows, and in HTTP mode the origin's own too (RFC 5861);
/// none at all for an entry the origin forbids to serve stale (`must-revalidate`,
/// `proxy-revalidate`, `s-maxage`, `no-cache`), whatever the policy says.
pub(crate) fn stale_windows(policy: &CompiledPolicy, entry: &Entry) -> (Duration, Duration) {
    if !policy.http {
        return (policy.stale_while_revalidate, policy.stale_if_error);
    }
    let headers = crate::http::effective(entry.headers(), &policy.targeted);
    if !crate::http::may_serve_stale(&headers) {
        return (Duration::ZERO, Duration::ZERO);
    }
    let (swr, sie) = crate::http::stale_windows(&headers);
    (
        swr.max(policy.stale_while_revalidate),
        sie.max(policy.stale_if_error),
    )
}

/// What `entry` is to a request for `full`: [`classify`], then [`as_directed`] by the
/// request's directives, if the policy honours them.
pub(crate) fn usable(
    entry: &Entry,
    full: &str,
    policy: &CompiledPolicy,
    directives: Option<&crate::http::RequestDirectives>,
    now: SystemTime,
) -> Found {
    let kind = classify(entry, full, policy, now);
    match directives {
        Some(d) => as_directed(d, policy, entry, full, kind, now),
        None => kind,
    }
}

/// What an entry is to a request with `Cache-Control` directives: still fresh only if they
/// accept its age and freshness; an expired one is served (as a hit) within `max-stale`,
/// unless the entry says it must be revalidated.
pub(super) fn as_directed(
    d: &crate::http::RequestDirectives,
    policy: &CompiledPolicy,
    entry: &Entry,
    full: &str,
    kind: Found,
    now: SystemTime,
) -> Found {
    let age = now.duration_since(entry.stored_at()).unwrap_or_default();
    let headers = crate::http::effective(entry.headers(), &policy.targeted);
    match kind {
        Found::Fresh(remaining) if d.accepts(age, remaining, Duration::ZERO) => kind,
        // `immutable` (RFC 8246): the origin promised this body will not change while fresh,
        // so a reload's `max-age` need not reach it. A forced reload (`no-cache`) still does,
        // and `min-fresh` still counts.
        Found::Fresh(remaining)
            if !d.no_cache
                && headers::has_directive(&headers, &["immutable"])
                && crate::http::RequestDirectives {
                    max_age: None,
                    ..d.clone()
                }
                .accepts(age, remaining, Duration::ZERO) =>
        {
            kind
        }
        Found::Fresh(_) => Found::Unusable,
        Found::Unusable if entry.key() == full && !entry.is_tombstone() => {
            let past = now.duration_since(entry.fresh_until()).unwrap_or_default();
            let revalidate = headers::has_directive(
                &headers,
                &[
                    "must-revalidate",
                    "proxy-revalidate",
                    "no-cache",
                    "s-maxage",
                ],
            );
            if !revalidate && d.accepts(age, Duration::ZERO, past) {
                // Served as it is: the request said a stale answer will do.
                Found::Fresh(Duration::from_millis(1))
            } else {
                Found::Unusable
            }
        }
        other => other,
    }
}

/// Sets `resp`'s `Cache-Status` to `plain` with `detail` (shown when the stash says so).
pub(super) fn mark(ctx: &Ctx, resp: &mut Response<Stored>, plain: &HeaderValue, detail: &str) {
    let value = status_value(
        ctx.stash(),
        plain,
        Some(detail),
        None,
        Some(&ctx.full),
        ctx.shown,
    );
    resp.headers_mut().insert(CACHE_STATUS, value);
}

/// `504 Gateway Timeout`: an `only-if-cached` request the cache cannot answer.
pub(crate) fn gateway_timeout(ctx: &Ctx) -> Response<Stored> {
    let stash = ctx.stash();
    let mut resp = Response::new(Stored::empty());
    *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    mark(ctx, &mut resp, &stash.inner.status.miss, "only-if-cached");
    resp
}

/// The `Age` of a fresh entry with `remaining` to live: its TTL minus that (no clock read),
/// or for a sliding entry (whose `remaining` is up to its idle time) the time since it was
/// stored.
/// A fresh entry's answer to a request: the one place a fresh hit is served, from the
/// service's fast path and after a store lookup alike. Counts the hit; for the key's own entry
/// (`key`), resets its idle time (sliding expiry) and says whether to refresh it early.
pub(super) fn serve_fresh(
    stash: &Stash,
    policy: &CompiledPolicy,
    req: HitRequest<'_>,
    key: Option<&str>,
    entry: &Entry,
    remaining: Duration,
    now: SystemTime,
) -> (Response<Stored>, bool) {
    stash.counters().hit();
    stash
        .counters()
        .on_route(policy, crate::stash::Outcome::Hit);
    let resp = hit(
        stash,
        req,
        entry,
        remaining,
        fresh_age(entry, remaining, now),
    );
    let early = key.is_some_and(|key| {
        stash.touch_sliding(key, entry, now);
        stash.refresh_early(entry, remaining, policy.beta)
    });
    (resp, early)
}

/// The `Age` of a fresh hit: the time since the entry was stored, to the nearest second (a
/// client that waited 3 s on a timer that fired a millisecond early sees 3, not 2), and below
/// the lifetime while the entry is fresh.
fn fresh_age(entry: &Entry, remaining: Duration, now: SystemTime) -> u64 {
    let age = match entry.sliding() {
        None => entry.ttl().saturating_sub(remaining),
        Some(_) => now.duration_since(entry.stored_at()).unwrap_or_default(),
    };
    let rounded = age.saturating_add(Duration::from_millis(500)).as_secs();
    rounded
        .min(entry.ttl().as_secs().saturating_sub(1))
        .max(age.as_secs())
}

/// A `Cache-Status` value: the ready-made `plain` one, or one with `ttl`, `key` and `detail`
/// when the stash shows them to this request (`shown`).
pub(super) fn status_value(
    stash: &Stash,
    plain: &HeaderValue,
    detail: Option<&str>,
    ttl: Option<Duration>,
    key: Option<&str>,
    shown: bool,
) -> HeaderValue {
    if !shown {
        return plain.clone();
    }
    let cfg = &stash.inner.status;
    let ttl = ttl.filter(|_| cfg.show_detail);
    let detail = detail.filter(|_| cfg.show_detail).or_else(|| {
        (cfg.show_detail && stash.health() == crate::Health::Degraded).then_some("store-degraded")
    });
    let key = key.filter(|_| cfg.show_key);
    if ttl.is_none() && detail.is_none() && key.is_none() {
        return plain.clone();
    }
    let mut s = String::from_utf8_lossy(plain.as_bytes()).into_owned();
    if let Some(ttl) = ttl {
        s.push_str(&format!("; ttl={}", ttl.as_secs()));
    }
    if let Some(key) = key {
        // An sf-string: `"` and `\` escaped; keys are printable ASCII by construction.
        s.push_str("; key=\"");
        for c in key.chars() {
            if c == '"' || c == '\\' {
                s.push('\\');
            }
            s.push(c);
        }
        s.push('"');
    }
    if let Some(detail) = detail {
        s.push_str("; detail=");
        s.push_str(detail);
    }
    HeaderValue::try_from(s).unwrap_or_else(|_| plain.clone())
}

/// What a hit needs to know of its request.
pub(crate) struct HitRequest<'a> {
    pub(crate) full: &'a str,
    pub(crate) head: bool,
    pub(crate) if_none_match: Option<&'a HeaderValue>,
    pub(crate) if_modified_since: Option<&'a HeaderValue>,
    /// HTTP mode: a `Range` to answer with `206` from a complete stored `200`.
    pub(crate) range: Option<&'a HeaderValue>,
    /// Whether the request is shown the `Cache-Status` key, detail and ttl.
    pub(crate) shown: bool,
}

/// The response for a fresh entry: its status, headers and body (a slice, no copy), with
/// `Age` and `Cache-Status`; 304 when `If-None-Match` matches; no body for HEAD.
pub(crate) fn hit(
    stash: &Stash,
    req: HitRequest<'_>,
    entry: &Entry,
    remaining: Duration,
    age: u64,
) -> Response<Stored> {
    let status = if stash.inner.status.plain() {
        stash.inner.status.hit.clone()
    } else {
        status_value(
            stash,
            &stash.inner.status.hit,
            None,
            Some(remaining),
            Some(req.full),
            req.shown,
        )
    };
    let age = age_value(age);
    // A 304 stands for a 200 (RFC 9110 section 13.2.1): a stored error is answered whole.
    let conditions = (req.if_none_match, req.if_modified_since);
    let not_modified = entry.status().is_success()
        && match conditions {
            (Some(inm), _) => {
                headers::is_wildcard(inm)
                    || entry
                        .headers()
                        .get(header::ETAG)
                        .is_some_and(|etag| headers::none_match(inm, etag))
            }
            // Only without If-None-Match (RFC 9110 section 13.2.2): not modified since.
            (None, Some(ims)) => crate::http::not_modified_since(entry.headers(), ims),
            (None, None) => false,
        };
    if not_modified {
        let mut resp = Response::new(Stored::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        let h = resp.headers_mut();
        for name in [
            header::ETAG,
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
        ] {
            for v in entry.headers().get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        h.insert(header::AGE, age);
        h.insert(CACHE_STATUS, status);
        return resp;
    }
    let mut len = entry.body().len() as u64;
    // Where the stored body starts in the complete one (a stored partial response's first
    // byte).
    let mut offset = 0;
    let range = match req.range {
        Some(r) if entry.status() == StatusCode::OK => crate::http::byte_range(r, len),
        Some(r) => crate::http::partial_covers(entry, r).map(|part| {
            (offset, len) = (part.first, part.complete);
            (part.start, part.end)
        }),
        None => None,
    };
    let body = if req.head {
        Stored::empty()
    } else if let Some((start, end)) = range {
        let (start, end) = ((start - offset) as usize, (end - offset) as usize);
        Stored::new(entry.body().slice(start..=end), None)
    } else {
        Stored::new(entry.body().clone(), entry.trailers().cloned())
    };
    let mut headers = entry.headers().clone();
    set_age_and_status(&mut headers, age, status);
    let mut resp = Response::new(body);
    *resp.status_mut() = entry.status();
    if let Some((start, end)) = range {
        // The part asked for, of the stored response (complete, or partial and holding it).
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
            headers.insert(header::CONTENT_RANGE, v);
        }
    }
    *resp.headers_mut() = headers;
    resp
}

/// Sets `Age` and `Cache-Status`: in their slots when they come first (as entries this crate
/// stores have them), found without hashing a name; as [`set`] does otherwise.
pub(super) fn set_age_and_status(headers: &mut HeaderMap, age: HeaderValue, status: HeaderValue) {
    let mut slots = headers.iter_mut();
    if let (Some((first, a)), Some((second, s))) = (slots.next(), slots.next()) {
        if first == header::AGE && second == CACHE_STATUS {
            *a = age;
            *s = status;
            return;
        }
    }
    set(headers, header::AGE, age);
    set(headers, CACHE_STATUS, status);
}

/// Sets `name` to `value`: in place when the stored headers have the slot (entries stored by
/// this crate do), by inserting otherwise.
pub(super) fn set(headers: &mut HeaderMap, name: http::HeaderName, value: HeaderValue) {
    match headers.get_mut(&name) {
        Some(slot) => *slot = value,
        None => {
            headers.insert(name, value);
        }
    }
}

/// The `Age` header for `secs`: made once for the first hour, so most hits allocate nothing.
pub(super) fn age_value(secs: u64) -> HeaderValue {
    static AGES: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let ages = AGES.get_or_init(|| (0..3600u64).map(HeaderValue::from).collect());
    usize::try_from(secs)
        .ok()
        .and_then(|i| ages.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}
