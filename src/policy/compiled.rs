//! Policies as requests meet them: compiled once, matched by path.

use crate::key::{QueryKey, Template};
use http::{HeaderName, Method};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

impl CompiledPolicy {
    /// Whether the request's `Cookie` makes it bypass the cache: it carries a cookie the
    /// policy neither keys nor ignores (an empty pair is no cookie).
    pub(crate) fn cookie_bypasses(&self, headers: &http::HeaderMap) -> bool {
        if self.vary_cookie {
            return false;
        }
        headers.get_all(http::header::COOKIE).iter().any(|v| {
            v.as_bytes().split(|b| *b == b';').any(|pair| {
                let pair = pair.trim_ascii();
                let name = pair
                    .split(|b| *b == b'=')
                    .next()
                    .unwrap_or(pair)
                    .trim_ascii();
                !pair.is_empty()
                    && !self
                        .ignored_cookies
                        .iter()
                        .any(|ignored| ignored.as_bytes() == name)
            })
        })
    }

    /// The lifetime the policy gives answers of `status`, if it names one.
    pub(crate) fn status_ttl(&self, status: http::StatusCode) -> Option<Duration> {
        let status = status.as_u16();
        self.status_ttls
            .iter()
            .find_map(|(s, ttl)| (*s == status).then_some(*ttl))
    }
}

/// A policy resolved against its base and checked.
#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    pub(crate) route: String,
    /// `route`, as a metric label (shared, never copied per request).
    pub(crate) route_label: metrics::SharedString,
    /// The named policy this route's is based on ([`Policy::named`](crate::Policy::named)),
    /// or `none`, as a metric label.
    pub(crate) policy_label: metrics::SharedString,
    /// Requests on this route by outcome (hit, miss, stale, bypass), for
    /// [`Stash::route_stats`](crate::Stash::route_stats).
    pub(crate) counts: [std::sync::atomic::AtomicU64; 4],
    pub(crate) ttl: Duration,
    pub(crate) key: Option<Template>,
    pub(crate) query: QueryKey,
    pub(crate) keyed_headers: Vec<HeaderName>,
    /// HTTP mode with `Host` keyed: it goes in the base key (next to the path), so that
    /// invalidating a URL on one host never drops another's. (In application mode a keyed
    /// `Host` is a variant, which invalidating the key template drops with the others.)
    pub(crate) host_keyed: bool,
    /// The keyed headers but `Host`, appended after the query.
    pub(crate) key_headers: Vec<HeaderName>,
    pub(crate) vary_authorization: bool,
    pub(crate) vary_cookie: bool,
    /// Cookies that never make a request bypass ([`Policy::ignore_cookies`](super::Policy::ignore_cookies)).
    pub(crate) ignored_cookies: Vec<String>,
    pub(crate) statuses: Vec<u16>,
    /// Statuses stored for a lifetime of their own ([`Policy::status_ttl`]).
    pub(crate) status_ttls: Vec<(u16, Duration)>,
    pub(crate) max_body_size: usize,
    pub(crate) tags: Vec<Template>,
    pub(crate) etag: bool,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    /// XFetch's beta; zero is off.
    pub(crate) beta: f64,
    pub(crate) ttl_jitter: Duration,
    pub(crate) upstream_timeout: Option<Duration>,
    /// The gRPC message fields templates may name.
    pub(crate) fields: Option<crate::key::MessageFields>,
    /// A gRPC route: keyed by the message, stored only with `grpc-status: 0`.
    pub(crate) grpc: bool,
    /// Sliding expiry's idle time (the `ttl` is then the absolute cap).
    pub(crate) sliding: Option<Duration>,
    /// Where the session id the key holds comes from.
    pub(crate) session: Option<SessionKey>,
    /// HTTP mode: the origin's headers decide (RFC 9111).
    pub(crate) http: bool,
    /// Whether requests' `Cache-Control` is honoured.
    pub(crate) request_directives: bool,
    /// HTTP mode: the `Vary` variants of one URL kept at most.
    pub(crate) max_variants: usize,
    /// The request headers, besides the keyed ones, allowed through ([`Policy::allow_headers`]).
    pub(crate) allowed_headers: Option<Vec<HeaderName>>,
    /// Whether the service's [`CacheHint`](crate::CacheHint)s are obeyed.
    pub(crate) hints: bool,
    /// Whether `Set-Cookie` answers are stored without it ([`Policy::store_without_set_cookie`]).
    pub(crate) without_set_cookie: bool,
    /// HTTP mode: the targeted cache-control fields obeyed (RFC 9213), first first.
    pub(crate) targeted: Vec<HeaderName>,
    /// Application mode: the hosts answered alike, normalised; others bypass.
    pub(crate) hosts: Option<Vec<String>>,
    /// Application mode without such a list: the host a request names goes in its key.
    pub(crate) key_host: bool,
    /// The tags one entry may carry at most.
    pub(crate) max_tags: usize,
}

impl CompiledPolicy {
    /// Whether a request header outside the policy's allowlist (when it has one) is `name`:
    /// neither listed, keyed, nor one that always passes.
    pub(crate) fn unlisted(&self, name: &HeaderName) -> bool {
        self.allowed_headers.as_ref().is_some_and(|allowed| {
            !allowed.contains(name)
                && !self.keyed_headers.contains(name)
                && !crate::headers::always_allowed(name)
        })
    }
}

/// A compiled [`Session`](super::Session).
#[derive(Debug)]
pub(crate) enum SessionKey {
    Cookie(String),
    Header(HeaderName),
}

impl SessionKey {
    /// Whether `Vary: name` is answered by keying the session: the session's header, or
    /// `Cookie` for a session cookie.
    pub(crate) fn varies_on(&self, name: &str) -> bool {
        match self {
            SessionKey::Cookie(_) => name.eq_ignore_ascii_case("cookie"),
            SessionKey::Header(h) => name.eq_ignore_ascii_case(h.as_str()),
        }
    }

    /// The session id of a request: `None` when it has none, or several different ones.
    pub(crate) fn value<'h>(&self, headers: &'h http::HeaderMap) -> Option<&'h [u8]> {
        let mut found: Option<&[u8]> = None;
        let mut add = |v: &'h [u8]| match found {
            Some(f) if f != v => Err(()),
            _ => {
                found = Some(v);
                Ok(())
            }
        };
        match self {
            SessionKey::Header(name) => {
                for v in headers.get_all(name) {
                    add(v.as_bytes()).ok()?;
                }
            }
            SessionKey::Cookie(name) => {
                for v in headers.get_all(http::header::COOKIE) {
                    for pair in v.as_bytes().split(|b| *b == b';') {
                        let pair = pair.trim_ascii();
                        if let Some(value) = pair
                            .strip_prefix(name.as_bytes())
                            .and_then(|rest| rest.strip_prefix(b"="))
                        {
                            add(value).ok()?;
                        }
                    }
                }
            }
        }
        found.filter(|v| !v.is_empty())
    }
}

impl CompiledPolicy {
    /// How long past expiry entries are kept, to be served stale.
    pub(crate) fn grace(&self) -> Duration {
        let keep = if self.http {
            crate::http::REVALIDATE_WINDOW
        } else {
            Duration::ZERO
        };
        self.stale_while_revalidate
            .max(self.stale_if_error)
            .max(keep)
    }
}

/// Path patterns to what each of their methods maps to, through one matchit router: what
/// routes and invalidation rules both compile into.
pub(crate) struct MethodTable<T> {
    router: matchit::Router<usize>,
    slots: Vec<Vec<(Method, T)>>,
    by_path: HashMap<String, usize>,
}

impl<T> fmt::Debug for MethodTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodTable")
            .field("patterns", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl<T> MethodTable<T> {
    pub(crate) fn new() -> Self {
        Self {
            router: matchit::Router::new(),
            slots: Vec::new(),
            by_path: HashMap::new(),
        }
    }

    /// Maps `method` on the pattern `path` to `value`; what is wrong otherwise (an invalid
    /// pattern, or the pair given twice: `what` names the pair, "route" or "rule").
    pub(crate) fn insert(
        &mut self,
        method: &Method,
        path: &str,
        value: T,
        what: &str,
    ) -> Result<(), String> {
        let idx = match self.by_path.get(path) {
            Some(&idx) => idx,
            None => {
                self.router
                    .insert(path, self.slots.len())
                    .map_err(|e| format!("invalid path pattern: {e}"))?;
                self.by_path.insert(path.to_owned(), self.slots.len());
                self.slots.push(Vec::new());
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[idx];
        if slot.iter().any(|(m, _)| m == method) {
            return Err(format!("the {what} is given twice"));
        }
        slot.push((method.clone(), value));
        Ok(())
    }

    /// What `method` on `path` maps to, with the path parameters.
    pub(crate) fn find<'p>(
        &self,
        method: &Method,
        path: &'p str,
    ) -> Option<(&T, matchit::Params<'_, 'p>)> {
        let m = self.router.at(path).ok()?;
        let value = self.slots[*m.value]
            .iter()
            .find(|(mm, _)| mm == method)
            .map(|(_, v)| v)?;
        Some((value, m.params))
    }

    /// Every method and what it maps to.
    pub(crate) fn values(&self) -> impl Iterator<Item = (&Method, &T)> {
        self.slots.iter().flatten().map(|(m, v)| (m, v))
    }
}

/// The compiled routes: path pattern and method to policy.
#[derive(Debug)]
pub(crate) struct RouteTable {
    pub(super) table: MethodTable<Arc<CompiledPolicy>>,
    /// Some GET route is in HTTP mode: writes may invalidate.
    pub(super) http: bool,
}

impl RouteTable {
    /// Every route's policy.
    pub(crate) fn policies(&self) -> impl Iterator<Item = &Arc<CompiledPolicy>> {
        self.table.values().map(|(_, p)| p)
    }

    /// Whether some GET route is in HTTP mode.
    pub(crate) fn has_http(&self) -> bool {
        self.http
    }

    /// The policy for `method` on `path`, with the path parameters. HEAD uses GET's policy.
    pub(crate) fn find<'p>(
        &self,
        method: &Method,
        path: &'p str,
    ) -> Option<(&Arc<CompiledPolicy>, matchit::Params<'_, 'p>)> {
        let want = if *method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.table.find(want, path)
    }
}
