use super::body::CacheBody;
use super::future::{Ctx, ResponseFuture};
use super::hit::{gateway_timeout, serve_fresh, usable, Found, HitRequest};
use super::layer::{CacheLayer, Shared};
use super::stale::{http_fallbacks, refresh, stale_hit};
use crate::entry::Entry;
use crate::policy::{CompiledPolicy, Routes};
use crate::Stash;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use http_body::Body;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// Answers the routes its [`CacheLayer`] names from the cache, and everything else from the
/// inner service, untouched.
pub struct CacheService<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
    /// The span of the request being called, from its routing to its response future.
    pub(crate) span: tracing::Span,
}

impl<S: Clone> Clone for CacheService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            span: tracing::Span::none(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("stash", &self.shared.stash)
            .finish_non_exhaustive()
    }
}

impl<S> CacheService<S> {
    /// Wraps `inner` with the routes and stash of `layer`.
    pub fn new(inner: S, layer: &CacheLayer) -> Self {
        tower_layer::Layer::layer(layer, inner)
    }

    /// A [`CacheLayer`] (see [`CacheLayer::new`]).
    #[track_caller]
    pub fn layer(stash: Stash, routes: Routes) -> CacheLayer {
        CacheLayer::new(stash, routes)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CacheService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let fut = self.call_cached(req);
        let span = std::mem::replace(&mut self.span, tracing::Span::none());
        fut.in_span(span)
    }
}

impl<S> CacheService<S> {
    fn call_cached<ReqB, ResB>(&mut self, req: Request<ReqB>) -> ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqB: Send + 'static,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Send + 'static,
    {
        let Some((policy, params)) = self.shared.routes.find(req.method(), req.uri().path()) else {
            // HTTP mode: a write to a URL the cache holds drops what it holds once it succeeds.
            if super::writes::is_unsafe(req.method()) {
                if let Some(write) = super::writes::Write::of(&self.shared, &req) {
                    return ResponseFuture::write(self.call_inner(req), write);
                }
            }
            return ResponseFuture::passthrough(self.call_inner(req));
        };
        let stash = &self.shared.stash;
        // One span per request on a cached route (debug level), with its route pattern, key
        // (hashed where it may hold a session), outcome and tier as they become known; it
        // covers the response future, so its time is the request's.
        let span = tracing::debug_span!(
            "tower_stash.request",
            route = policy.route.as_str(),
            key = tracing::field::Empty,
            outcome = tracing::field::Empty,
            tier = tracing::field::Empty,
        );
        self.span = span.clone();
        let _in = span.enter();
        let headers = req.headers();
        // Whether this request sees the Cache-Status key and detail (the app's predicate).
        let shown = stash.inner.status.shown(headers);
        // One pass over the header names (cheap comparisons) instead of hashed lookups.
        let (mut authorization, mut cookie, mut conditional) = (false, false, false);
        let (mut directives_sent, mut modified_since, mut ranged) = (false, false, false);
        let (mut body, mut rewrite, mut unlisted) = (false, None, false);
        for name in headers.keys() {
            if name == header::AUTHORIZATION {
                authorization = true;
            } else if name == header::COOKIE {
                cookie = true;
            } else if name == header::IF_NONE_MATCH {
                conditional = true;
            } else if name == header::IF_MODIFIED_SINCE {
                modified_since = true;
            } else if name == header::RANGE {
                ranged = true;
            } else if name == header::CACHE_CONTROL || name == header::PRAGMA {
                directives_sent = true;
            } else if name == header::CONTENT_LENGTH {
                body |= headers
                    .get_all(header::CONTENT_LENGTH)
                    .iter()
                    .any(|v| v.as_bytes() != b"0");
            } else if name == header::TRANSFER_ENCODING {
                body = true;
            } else if policy.unlisted(name) {
                // HTTP mode removes it from what it forwards; application mode bypasses.
                if !policy.http {
                    unlisted = true;
                }
            } else if crate::headers::is_rewrite_header(name)
                && !policy.keyed_headers.contains(name)
            {
                rewrite = Some(name);
            }
        }
        let mut fields = None;
        // The request's own Cache-Control, where the policy honours it.
        let directives = (directives_sent && policy.request_directives)
            .then(|| crate::http::RequestDirectives::parse(headers));
        let bypass = if directives.as_ref().is_some_and(|d| d.no_store) {
            Some("request-no-store")
        } else if authorization && !policy.vary_authorization && !policy.http {
            Some("authorization")
        } else if cookie && policy.cookie_bypasses(headers) {
            Some("cookie")
        } else if rewrite.is_some() {
            // A header that changes what many apps answer, which the key does not hold: a
            // response to it could poison the entry of every request without it.
            Some("unkeyed-forwarding-header")
        } else if unlisted {
            // A header the policy does not allow, which the app may read.
            Some("unlisted-header")
        } else if let Some(reason) = crate::plumbing::host_bypass(policy, &req) {
            // A host the policy does not serve, or two hosts at once.
            Some(reason)
        } else if body && (req.method() == Method::GET || req.method() == Method::HEAD) {
            // A GET with a body: the body is not in the key.
            Some("request-body")
        } else if policy
            .session
            .as_ref()
            .is_some_and(|s| s.value(headers).is_none())
        {
            // A session-scoped route: without one session id, nothing to key an entry on.
            Some("no-session")
        } else if policy.grpc {
            match crate::plumbing::prepare(policy.fields.as_ref(), &req) {
                Ok(f) => {
                    fields = f;
                    None
                }
                Err(reason) => Some(reason),
            }
        } else {
            None
        };
        let if_none_match = if conditional {
            headers.get(header::IF_NONE_MATCH)
        } else {
            None
        };
        let if_modified_since = if modified_since && policy.http {
            headers.get(header::IF_MODIFIED_SINCE)
        } else {
            None
        };
        let range = if ranged {
            served_range(policy, &req)
        } else {
            None
        };
        if let Some(reason) = bypass {
            stash.counters().bypass();
            stash
                .counters()
                .on_route(policy, crate::stash::Outcome::Bypass);
            tracing::trace!(route = %policy.route, reason, "cache bypassed");
            let stash = stash.clone();
            let hints = policy.hints;
            return ResponseFuture::bypass(self.call_inner(req), stash, reason, hints, shown);
        }
        let params = crate::key::Params::new(&params, fields.as_ref());
        let (mut full, mut stored) = self.shared.key_strings(policy, &params, &req);
        if !span.is_disabled() {
            // A session's key holds its id: only a digest of it.
            if policy.session.is_some() {
                let digest = blake3::hash(full.as_bytes()).to_hex();
                span.record("key", format!("#{}", &digest[..16]));
            } else {
                span.record("key", full.as_str());
            }
        }
        let head = req.method() == Method::HEAD;

        // A session's entry is never served from memory while invalidations from other
        // instances may be missed (a logout there must end it here): the shared store alone.
        let shared_only = policy.session.is_some() && !stash.store().bus_live();
        // The fast path: a store that answers at once (memory) needs no future and no Ctx.
        let mut local = if shared_only {
            None
        } else {
            stash.store().get_local(stored.as_deref().unwrap_or(&full))
        };
        let mut primary = None;
        // The request headers the URL's responses vary on: the variant's key holds them.
        let mut varied = Vec::new();
        if policy.http {
            // A URL whose responses vary: its key holds their record, the variant its own.
            if let Some(Some(record)) = &local {
                if let Some(names) = crate::http::record_names(record, &full) {
                    let mut vfull = full.clone();
                    crate::http::push_variant(&mut vfull, &names, headers);
                    let vstored = stash.hashed_key(&vfull);
                    local = stash
                        .store()
                        .get_local(vstored.as_deref().unwrap_or(&vfull));
                    let (pfull, pstored) = (
                        std::mem::replace(&mut full, vfull),
                        std::mem::replace(&mut stored, vstored),
                    );
                    let pkey: Arc<str> = pstored.map_or_else(|| pfull.as_str().into(), Into::into);
                    primary = Some((Arc::<str>::from(pfull), pkey));
                    varied = names;
                }
            }
        }
        let mut found = None;
        if let Some(Some(entry)) = &local {
            let now = stash.now();
            let kind = usable(entry, &full, policy, directives.as_ref(), now);
            if let Found::Fresh(remaining) = kind {
                let hit_req = HitRequest {
                    full: &full,
                    head,
                    if_none_match,
                    if_modified_since,
                    range,
                    shown,
                };
                let key = stored.as_deref().unwrap_or(&full);
                let (resp, early) =
                    serve_fresh(stash, policy, hit_req, Some(key), entry, remaining, now);
                stash.counters().tier_hit("memory");
                if early {
                    let mut ctx = self.ctx(policy, &params, &req, full, stored, None);
                    ctx.shown = shown;
                    // (A variant's refresh stores under the variant's key, the record kept.)
                    ctx.primary = primary;
                    ctx.varied = varied;
                    let entry = entry.clone();
                    refresh(self.take_inner(), req, ctx, &entry);
                }
                // The inner service stays ready for the next call.
                return ResponseFuture::hit(resp);
            }
            found = Some(kind);
        }
        if let Some(range) = range {
            // A part of a response: a stored partial one may hold it.
            let pfull = crate::http::partial_key(&full);
            let partial = stash.store().get_local(&stash.stored_key(&pfull));
            if let Some(Some(entry)) = partial {
                let now = stash.now();
                let kind = usable(&entry, &pfull, policy, directives.as_ref(), now);
                if let (Found::Fresh(remaining), Some(_)) =
                    (kind, crate::http::partial_covers(&entry, range))
                {
                    let hit_req = HitRequest {
                        full: &pfull,
                        head,
                        if_none_match,
                        if_modified_since,
                        range: Some(range),
                        shown,
                    };
                    // A part of the URL's entry: no idle time of its own, refreshed with it.
                    let (resp, _) =
                        serve_fresh(stash, policy, hit_req, None, &entry, remaining, now);
                    stash.counters().tier_hit("memory");
                    return ResponseFuture::hit(resp);
                }
            }
        }
        let mut ctx = self.ctx(policy, &params, &req, full, stored, None);
        ctx.shown = shown;
        ctx.primary = primary;
        ctx.varied = varied;
        if let (Some(Some(entry)), Some(kind)) = (&local, found) {
            if kind != Found::StaleWhileRevalidate {
                http_fallbacks(&mut ctx, entry, stash.now());
            }
        }
        if let Some(d) = directives {
            if d.only_if_cached && local.is_some() {
                // Nothing usable here, and the origin must not be asked.
                return ResponseFuture::hit(gateway_timeout(&ctx));
            }
            let forced = d.no_cache || found == Some(Found::Unusable);
            ctx.directives = Some(Box::new(d));
            if forced {
                // The request refuses what the cache holds: straight to the service (asking
                // whether the entry is still good, when it can be revalidated).
                stash.counters().miss();
                stash
                    .counters()
                    .on_route(policy, crate::stash::Outcome::Miss);
                let mut req = req;
                if let Some(entry) = &ctx.revalidate {
                    super::stale::conditional(&mut req, entry);
                }
                ctx.outgoing(&mut req, false);
                return ResponseFuture::miss(self.call_inner(req), ctx);
            }
        }
        match (local, found) {
            // A definite miss: straight to the service.
            (Some(None), _) => {
                stash.counters().miss();
                stash
                    .counters()
                    .on_route(policy, crate::stash::Outcome::Miss);
                let mut req = req;
                ctx.outgoing(&mut req, false);
                ResponseFuture::miss(self.call_inner(req), ctx)
            }
            (Some(Some(entry)), Some(Found::StaleWhileRevalidate)) => {
                let resp = stale_hit(&ctx, &entry, stash.now());
                refresh(self.take_inner(), req, ctx, &entry);
                ResponseFuture::hit(resp)
            }
            // Expired locally, or a store that must be asked (it may have a fresher entry).
            (local, _) => {
                if let Some(Some(entry)) = local {
                    // Kept in case the store has nothing better.
                    if found == Some(Found::StaleIfError) {
                        ctx.stale = Some(entry);
                    }
                }
                let lookup = match policy.sliding {
                    _ if shared_only => stash.store().get_shared(ctx.key.clone(), policy.sliding),
                    // Read and extended in one round trip.
                    Some(idle) => stash.store().get_sliding(ctx.key.clone(), idle),
                    None => stash.store().get(ctx.key.clone()),
                };
                ResponseFuture::lookup(lookup, self.take_inner(), req, ctx)
            }
        }
    }
}

/// HTTP mode: the `Range` a request asks to be answered from stored responses. HEAD ignores
/// `Range` (RFC 9110 section 14.2), and one with `If-Range` is for one version, which the
/// origin answers.
fn served_range<'r, B>(policy: &CompiledPolicy, req: &'r Request<B>) -> Option<&'r HeaderValue> {
    let headers = req.headers();
    if !policy.http || req.method() == Method::HEAD || headers.contains_key(header::IF_RANGE) {
        return None;
    }
    headers.get(header::RANGE)
}

impl<S> CacheService<S> {
    /// Calls the ready inner service and keeps a clone in its place (which may not be ready),
    /// marking the request as passed by a cache.
    fn call_inner<B>(&mut self, mut req: Request<B>) -> S::Future
    where
        S: Service<Request<B>> + Clone,
    {
        req.extensions_mut().insert(crate::plumbing::Cached);
        self.take_inner().call(req)
    }

    /// The ready inner service, a clone left in its place.
    fn take_inner(&mut self) -> S
    where
        S: Clone,
    {
        crate::plumbing::take_ready(&mut self.inner)
    }

    /// What a request that goes on past the fast path carries.
    fn ctx<B>(
        &self,
        policy: &Arc<CompiledPolicy>,
        params: &crate::key::Params<'_, '_, '_>,
        req: &Request<B>,
        full: String,
        stored: Option<String>,
        stale: Option<Arc<Entry>>,
    ) -> Box<Ctx> {
        let stash = &self.shared.stash;
        let mut tags: Vec<String> = policy
            .tags
            .iter()
            .map(|t| {
                let mut s = String::new();
                t.render_into(&mut s, |name| params.get(name));
                // Long ones hashed, as long keys are (and as invalidating them hashes them).
                stash.tag_name(&s).into_owned()
            })
            .collect();
        // A variant (a query or header keyed) is tagged with its base key, so that
        // invalidating the key drops every variant.
        let prefix = self.shared.stash.inner.prefix.len();
        let (base, route) = crate::plumbing::base_key_parts(policy, params, req);
        // HTTP mode: any answer may turn out to vary (its `Vary` gives it a variant's key), or
        // be a partial one under a key of its own: tagged too.
        if full.len() > prefix + base.len() || policy.http {
            tags.push(stash.family(&base));
        }
        if policy.host_keyed {
            // Also under the key without its host: invalidating the key template (a rule's
            // `user:{id}`) drops every host's entry, as a URL (with its host) drops one.
            tags.push(stash.family(&base[..route]));
        }
        let full: Arc<str> = full.into();
        let key: Arc<str> = stored.map_or_else(|| full.clone(), Into::into);
        let if_none_match = req.headers().get(header::IF_NONE_MATCH).cloned();
        let if_modified_since = req
            .headers()
            .get(header::IF_MODIFIED_SINCE)
            .filter(|_| policy.http)
            .cloned();
        let range = served_range(policy, req).cloned();
        Box::new(Ctx {
            shared: self.shared.clone(),
            policy: policy.clone(),
            head: req.method() == Method::HEAD,
            if_none_match,
            if_modified_since,
            range,
            full,
            key,
            tags,
            started: self.shared.stash.began(),
            stale,
            lease: None,
            directives: None,
            revalidate: None,
            request_headers: policy.http.then(|| Box::new(req.headers().clone())),
            primary: None,
            varied: Vec::new(),
            variants: None,
            unkeyed_query: crate::key::has_unkeyed_query(req.uri().query(), &policy.query),
            authorized: req.headers().contains_key(header::AUTHORIZATION)
                && !policy.vary_authorization,
            // Set by the caller, which computed it once for the request.
            shown: false,
        })
    }
}
