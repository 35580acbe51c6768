//! The one rule of what may be stored for others, or handed to the requests that waited for
//! an answer: the cache stores by it, single flight shares by it.

use super::CacheHint;
use crate::headers;
use crate::policy::CompiledPolicy;
use http::{header, HeaderMap, StatusCode};
use std::time::{Duration, SystemTime};

/// An answer, and what of its request matters to whether others may have it.
pub(crate) struct Exchange<'a> {
    pub(crate) policy: &'a CompiledPolicy,
    pub(crate) status: StatusCode,
    pub(crate) headers: &'a HeaderMap,
    /// The request had query parameters the key leaves out: its answer may reflect them.
    pub(crate) unkeyed_query: bool,
    /// The request carried an `Authorization` the key does not hold (HTTP mode stores its
    /// answer only if the origin says it may be shared: RFC 9111 section 3.5).
    pub(crate) authorized: bool,
}

impl Exchange<'_> {
    /// Why this answer may not be stored under the request's key, whatever its body: its
    /// status, then its headers.
    pub(crate) fn storable(&self) -> Result<(), &'static str> {
        let (policy, status) = (self.policy, self.status);
        // The request's own preconditions or range failed: its answer is about that
        // request, never the URL's (a CDN poisoned with a 416 answers every client 416).
        if matches!(status.as_u16(), 412 | 416) {
            return Err("precondition");
        }
        // HTTP mode stores what the origin gives freshness to, errors included.
        if !policy.statuses.contains(&status.as_u16()) || (status.is_server_error() && !policy.http)
        {
            return Err("status");
        }
        if policy.grpc && (super::status(self.headers).is_some() || !super::is_grpc(self.headers)) {
            // A trailers-only answer is an error (or empty); a non-gRPC answer is not the
            // call's.
            return Err("grpc-status");
        }
        self.headers_ok()
    }

    /// Why answers with these headers, to this request, may not be stored for others: the
    /// rules that hold for a full answer and for the headers a `304` freshens alike.
    pub(crate) fn headers_ok(&self) -> Result<(), &'static str> {
        let (policy, h) = (self.policy, self.headers);
        if self.unkeyed_query {
            return Err("unkeyed-query");
        }
        if h.contains_key(header::SET_COOKIE) && !policy.without_set_cookie {
            return Err("set-cookie");
        }
        if policy.http
            && self.authorized
            && !headers::has_directive(h, &["public", "must-revalidate", "s-maxage"])
        {
            return Err("authorization");
        }
        // `must-understand`: stored only with a status this cache knows, and then despite
        // `no-store` (RFC 9111 section 5.2.2.3).
        let must_understand = policy.http && headers::has_directive(h, &["must-understand"]);
        if must_understand && !crate::http::understood(self.status) {
            return Err("must-understand");
        }
        let refused: &[&str] = if policy.session.is_some() {
            // A session-scoped entry is that session's own: `private` is what it should say.
            &["no-store", "no-cache"]
        } else if must_understand {
            &["private"]
        } else if policy.http && crate::http::has_validator(h) {
            // `no-cache`: stored, and revalidated before every use.
            &["no-store", "private"]
        } else {
            &["no-store", "private", "no-cache"]
        };
        if headers::has_directive(h, refused) {
            return Err("cache-control");
        }
        if policy.http {
            // Variants get keys of their own; `Vary: *` can never be matched.
            if crate::http::vary_names(h).is_none() {
                return Err("vary");
            }
        } else if !super::vary_is_keyed(h, policy) {
            return Err("vary");
        }
        Ok(())
    }

    /// How long the answer may be used without asking the origin, from when it was
    /// produced, and how old it was on arrival at `now`. In HTTP mode the origin decides
    /// (the policy's ttl caps it; `no-cache` makes it zero, to be revalidated on every use);
    /// without explicit freshness, a heuristic one or a status TTL, it is stored only to be
    /// revalidated, and only with a validator and a reason to store it (RFC 9111 section 3:
    /// a heuristically cacheable status or `public`). The lifetime may not exceed the age:
    /// stale on arrival. `hint` is what the service said, where the policy obeys it.
    pub(crate) fn lifetime(
        &self,
        hint: &CacheHint,
        now: SystemTime,
    ) -> Result<(Duration, Duration), &'static str> {
        let policy = self.policy;
        if !policy.http {
            let ttl = hint.ttl.or_else(|| policy.status_ttl(self.status));
            let ttl = ttl.unwrap_or(policy.ttl).min(crate::entry::MAX_TTL);
            return Ok((ttl, Duration::ZERO));
        }
        let no_cache = headers::has_directive(self.headers, &["no-cache"]);
        let fallback = policy.status_ttl(self.status);
        let revalidate_only = no_cache
            && crate::http::has_validator(self.headers)
            && crate::http::reason_to_store(self.status, self.headers);
        let Some((lifetime, age)) =
            crate::http::freshness(self.status, self.headers, now, fallback)
                .or(revalidate_only.then_some((Duration::ZERO, Duration::ZERO)))
        else {
            return Err("no-freshness");
        };
        let lifetime = if no_cache {
            Duration::ZERO
        } else {
            hint.ttl.unwrap_or(lifetime).min(policy.ttl)
        };
        Ok((lifetime, age))
    }

    /// Why the answer may not be handed to other requests that waited for it: only what
    /// the cache could store, and use without asking the origin (fresh on arrival, no
    /// `no-cache`), one client's range or conditions apart, nothing a `Vary` the key does
    /// not hold picks, and nothing its service kept out of the cache.
    ///
    /// One exception: a server error (5xx) of that moment, which no one stores, is handed
    /// to the requests already waiting when its headers allow it (no `Set-Cookie`,
    /// `private`, `no-store`, `no-cache`, `Vary` outside the key), so that a failing
    /// service is not asked again by the whole burst. (A gRPC error may be the call's own:
    /// never.)
    pub(crate) fn shareable(&self, hint: &CacheHint, now: SystemTime) -> Result<(), &'static str> {
        if hint.skip {
            return Err("handler");
        }
        if hint.invalid {
            return Err("hint");
        }
        // A 304 or a 206 answers one client's conditions or range.
        if matches!(self.status.as_u16(), 304 | 206) {
            return Err("status");
        }
        if self.status.is_server_error() && !self.policy.grpc {
            self.headers_ok()?;
            if headers::has_directive(self.headers, &["no-cache"]) {
                return Err("cache-control");
            }
            if !super::vary_is_keyed(self.headers, self.policy) {
                return Err("vary");
            }
            return Ok(());
        }
        self.storable()?;
        if !super::vary_is_keyed(self.headers, self.policy) {
            return Err("vary");
        }
        let (lifetime, age) = self.lifetime(hint, now)?;
        if lifetime <= age {
            return Err("stale-on-arrival");
        }
        Ok(())
    }
}
