use super::body::{CacheBody, Capture};
use super::hint::CacheHint;
use super::layer::Shared;
use crate::entry::Entry;
use crate::headers::{self, CACHE_STATUS};
use crate::plumbing::{vary_is_keyed, Stored};
use crate::plumbing::{Collapsed, FlightKey, Lease, LeaseSlot};
use crate::policy::CompiledPolicy;
use crate::store::StoreFuture;
use crate::Stash;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::response::Parts;
use http::{Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};
use tower_service::Service;

/// What a cached request carries from `call` to its response.
pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) policy: Arc<CompiledPolicy>,
    pub(crate) full: Arc<str>,
    pub(crate) key: Arc<str>,
    pub(crate) head: bool,
    pub(crate) if_none_match: Option<HeaderValue>,
    /// The client's `If-Modified-Since` (HTTP mode answers it from the entry).
    pub(crate) if_modified_since: Option<HeaderValue>,
    /// The client's `Range` (HTTP mode answers it from a complete entry).
    pub(crate) range: Option<HeaderValue>,
    pub(crate) tags: Vec<String>,
    /// When the request went to the service: the entry's `stored_at`.
    pub(crate) started: SystemTime,
    /// An expired entry to answer with if the service fails (stale-if-error).
    pub(crate) stale: Option<Arc<Entry>>,
    /// The lease a background refresh holds, released once the entry is stored.
    pub(crate) lease: Option<Lease>,
    /// The request's `Cache-Control`, where the policy honours it.
    pub(crate) directives: Option<Box<crate::http::RequestDirectives>>,
    /// The request has query parameters the key leaves out: its answer is not stored (it
    /// may reflect them, and would then poison the entry every request shares).
    pub(crate) unkeyed_query: bool,
    /// The request carried `Authorization` (HTTP mode stores its answer only if the origin
    /// says it may be shared: RFC 9111 section 3.5).
    pub(crate) authorized: bool,
    /// HTTP mode: the request's headers (a response's `Vary` picks its secondary key from
    /// them), and the URL's keys (full, stored) when `full` and `key` are a variant's.
    pub(crate) request_headers: Option<Box<HeaderMap>>,
    pub(crate) primary: Option<(Arc<str>, Arc<str>)>,
    /// HTTP mode: the stored keys of the URL's variants, oldest first, one per line, as the
    /// record found said.
    pub(crate) variants: Option<Bytes>,
    /// HTTP mode: the expired entry being revalidated with a conditional request.
    pub(crate) revalidate: Option<Arc<Entry>>,
}

impl Ctx {
    fn stash(&self) -> &Stash {
        &self.shared.stash
    }

    /// What a hit answering this request needs of it.
    fn hit_request(&self) -> HitRequest<'_> {
        HitRequest {
            full: &self.full,
            head: self.head,
            if_none_match: self.if_none_match.as_ref(),
            if_modified_since: self.if_modified_since.as_ref(),
            range: self.range.as_ref(),
        }
    }

    /// Tells a [`SingleFlightLayer`](crate::SingleFlightLayer) below which key this request
    /// fills, unless its answer may be its own: one that reflects parameters the key leaves
    /// out, or answers an `Authorization` the key does not hold, is never shared.
    pub(crate) fn attach_flight<B>(&self, req: &mut Request<B>, leased: bool) {
        if !self.authorized && !self.unkeyed_query {
            req.extensions_mut().insert(self.flight_key(leased));
        }
    }

    /// The request extension that tells a [`SingleFlightLayer`](crate::SingleFlightLayer)
    /// below which key this request fills.
    pub(crate) fn flight_key(&self, leased: bool) -> FlightKey {
        FlightKey {
            key: self.key.clone(),
            full: self.full.clone(),
            lease: !leased,
            policy: self.policy.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`CacheService`](super::CacheService).
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Passthrough { #[pin] fut: S::Future },
        // HTTP mode, an unsafe request: its answer waits for the invalidations it causes.
        Write { #[pin] fut: S::Future, write: Option<Box<super::writes::Write>> },
        Invalidating {
            resp: Option<S::Response>,
            wait: Pin<Box<dyn Future<Output = ()> + Send>>,
        },
        Bypass { #[pin] fut: S::Future, stash: Stash, reason: &'static str },
        Hit { resp: Option<Response<Stored>> },
        Lookup {
            lookup: StoreFuture<Option<Arc<Entry>>>,
            call: Option<Box<(S, Request<ReqB>)>>,
            ctx: Option<Box<Ctx>>,
        },
        Miss { #[pin] fut: S::Future, ctx: Option<Box<Ctx>> },
        // A miss with a stale entry to fall back on and a limit on the wait for the service.
        MissTimed {
            fut: Option<Pin<Box<S::Future>>>,
            sleep: Pin<Box<tokio::time::Sleep>>,
            ctx: Option<Box<Ctx>>,
        },
        Done,
    }
}

impl<S, ReqB> ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    pub(crate) fn passthrough(fut: S::Future) -> Self {
        Self {
            state: State::Passthrough { fut },
        }
    }

    pub(crate) fn write(fut: S::Future, write: Box<super::writes::Write>) -> Self {
        Self {
            state: State::Write {
                fut,
                write: Some(write),
            },
        }
    }

    pub(crate) fn bypass(fut: S::Future, stash: Stash, reason: &'static str) -> Self {
        Self {
            state: State::Bypass { fut, stash, reason },
        }
    }

    pub(crate) fn hit(resp: Response<Stored>) -> Self {
        Self {
            state: State::Hit { resp: Some(resp) },
        }
    }

    pub(crate) fn miss(fut: S::Future, ctx: Box<Ctx>) -> Self {
        Self {
            state: State::miss(fut, ctx),
        }
    }

    pub(crate) fn lookup(
        lookup: StoreFuture<Option<Arc<Entry>>>,
        inner: S,
        req: Request<ReqB>,
        ctx: Box<Ctx>,
    ) -> Self {
        Self {
            state: State::Lookup {
                lookup,
                call: Some(Box::new((inner, req))),
                ctx: Some(ctx),
            },
        }
    }
}

impl<S, ReqB> State<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    /// The service's answer is awaited; with a stale entry and an upstream timeout, only so
    /// long.
    fn miss(fut: S::Future, ctx: Box<Ctx>) -> Self {
        match ctx.policy.upstream_timeout.filter(|_| ctx.stale.is_some()) {
            Some(limit) => State::MissTimed {
                fut: Some(Box::pin(fut)),
                sleep: Box::pin(tokio::time::sleep(limit)),
                ctx: Some(ctx),
            },
            None => State::Miss {
                fut,
                ctx: Some(ctx),
            },
        }
    }
}

impl<S, ReqB> std::fmt::Debug for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    type Output = Result<Response<CacheBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Passthrough { fut } => {
                    return fut.poll(cx).map_ok(|r| r.map(CacheBody::inner));
                }
                StateProj::Write { fut, write } => {
                    let resp = ready!(fut.poll(cx))?;
                    let write = write.take().expect("polled after completion");
                    match write.invalidations(resp.status(), resp.headers()) {
                        Some(wait) => State::Invalidating {
                            resp: Some(resp),
                            wait,
                        },
                        None => {
                            state.set(State::Done);
                            return Poll::Ready(Ok(resp.map(CacheBody::inner)));
                        }
                    }
                }
                StateProj::Invalidating { resp, wait } => {
                    ready!(wait.as_mut().poll(cx));
                    let resp = resp.take().expect("polled after completion");
                    state.set(State::Done);
                    return Poll::Ready(Ok(resp.map(CacheBody::inner)));
                }
                StateProj::Bypass { fut, stash, reason } => {
                    let (mut parts, body) = ready!(fut.poll(cx))?.into_parts();
                    let _ = CacheHint::take(&mut parts);
                    let value =
                        status_value(stash, &stash.inner.status.bypass, Some(reason), None, None);
                    parts.headers.insert(CACHE_STATUS, value);
                    fresh_from_the_service(&mut parts.headers);
                    return Poll::Ready(Ok(Response::from_parts(parts, CacheBody::inner(body))));
                }
                StateProj::Hit { resp } => {
                    let resp = resp.take().expect("polled after completion");
                    return Poll::Ready(Ok(resp.map(CacheBody::stored)));
                }
                StateProj::Lookup { lookup, call, ctx } => {
                    let found = match ready!(lookup.as_mut().poll(cx)) {
                        Ok(found) => found,
                        Err(e) => {
                            let ctx = ctx.as_ref().expect("polled after completion");
                            ctx.stash().counters().store_error();
                            tracing::warn!(key = %ctx.key, error = %e, "cache lookup failed: asking the service");
                            None
                        }
                    };
                    // HTTP mode: the URL's key held the record of what its responses vary on;
                    // the variant is looked up next.
                    if let (Some(entry), Some(c)) = (&found, ctx.as_mut()) {
                        if let Some(next) = follow_variant(c, entry) {
                            *lookup = next;
                            continue;
                        }
                    }
                    let mut ctx = ctx.take().expect("polled after completion");
                    let (inner, req) = *call.take().expect("polled after completion");
                    let now = ctx.stash().now();
                    if let Some(entry) = found {
                        let directives = ctx.directives.as_deref();
                        match usable(&entry, &ctx.full, &ctx.policy, directives, now) {
                            Found::Fresh(remaining) => {
                                ctx.stash().counters().hit();
                                let hit_req = ctx.hit_request();
                                let age = fresh_age(&entry, remaining, now);
                                let resp = hit(ctx.stash(), hit_req, &entry, remaining, age);
                                touch(ctx.stash(), &ctx.key, &entry, now);
                                if refresh_early(ctx.stash(), &ctx.policy, &entry, remaining) {
                                    refresh(inner, req, ctx, &entry);
                                }
                                state.set(State::Done);
                                return Poll::Ready(Ok(resp.map(CacheBody::stored)));
                            }
                            Found::StaleWhileRevalidate => {
                                let resp = stale_hit(&ctx, &entry, now);
                                refresh(inner, req, ctx, &entry);
                                state.set(State::Done);
                                return Poll::Ready(Ok(resp.map(CacheBody::stored)));
                            }
                            Found::StaleIfError => {
                                http_fallbacks(&mut ctx, &entry, now);
                                ctx.stale = Some(entry)
                            }
                            Found::Unusable => http_fallbacks(&mut ctx, &entry, now),
                        }
                    }
                    if ctx.directives.as_ref().is_some_and(|d| d.only_if_cached) {
                        state.set(State::Done);
                        let resp = gateway_timeout(&ctx);
                        return Poll::Ready(Ok(resp.map(CacheBody::stored)));
                    }
                    ctx.stash().counters().miss();
                    forward(inner, req, ctx)
                }
                StateProj::Miss { fut, ctx } => {
                    let result = ready!(fut.poll(cx));
                    let ctx = ctx.take().expect("polled after completion");
                    let resp = fallback(ctx, result, cx);
                    state.set(State::Done);
                    return Poll::Ready(resp);
                }
                StateProj::MissTimed { fut, sleep, ctx } => {
                    let inner = fut.as_mut().expect("polled after completion");
                    if let Poll::Ready(result) = inner.as_mut().poll(cx) {
                        let ctx = ctx.take().expect("polled after completion");
                        let resp = fallback(ctx, result, cx);
                        state.set(State::Done);
                        return Poll::Ready(resp);
                    }
                    ready!(sleep.as_mut().poll(cx));
                    // The service is too slow: answer stale now, and store its answer when
                    // it comes.
                    let ctx = ctx.take().expect("polled after completion");
                    let fut = fut.take().expect("polled after completion");
                    let entry = ctx.stale.clone().expect("a timed miss has a stale entry");
                    let resp = stale_if_error(&ctx, &entry, None, "timeout");
                    finish_in_background(fut, ctx);
                    state.set(State::Done);
                    return Poll::Ready(Ok(resp.map(CacheBody::stored)));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            };
            state.set(next);
        }
    }
}

/// Sends `req` to the service for `ctx`'s key (single flight below keys on it).
fn forward<S, ReqB>(mut inner: S, mut req: Request<ReqB>, ctx: Box<Ctx>) -> State<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    if let Some(entry) = &ctx.revalidate {
        conditional(&mut req, entry);
    }
    ctx.attach_flight(&mut req, false);
    State::miss(inner.call(req), ctx)
}

/// Makes `req` a conditional request on `entry`'s validators (its own conditions are
/// answered by the cache, from the entry, once the origin has spoken).
pub(crate) fn conditional<B>(req: &mut Request<B>, entry: &Entry) {
    let h = req.headers_mut();
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
    ] {
        h.remove(name);
    }
    if let Some(etag) = entry.headers().get(header::ETAG) {
        h.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = entry.headers().get(header::LAST_MODIFIED) {
        h.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
}

/// HTTP mode: when `entry` is the variant record of the URL being looked up, points `ctx` at
/// the request's variant and returns its lookup.
fn follow_variant(ctx: &mut Ctx, entry: &Entry) -> Option<StoreFuture<Option<Arc<Entry>>>> {
    if !ctx.policy.http || ctx.primary.is_some() {
        return None;
    }
    let names = crate::http::record_names(entry, &ctx.full)?;
    let request = ctx.request_headers.as_ref()?;
    let mut vfull = ctx.full.to_string();
    crate::http::push_variant(&mut vfull, &names, request);
    let vkey = ctx.stash().stored_key(&vfull);
    let primary = (
        std::mem::replace(&mut ctx.full, vfull.into()),
        std::mem::replace(&mut ctx.key, vkey.clone()),
    );
    ctx.primary = Some(primary);
    ctx.variants = Some(entry.body().clone());
    Some(ctx.stash().store().get(vkey))
}

/// What storing a variant takes: its full and stored keys, the record to store under the
/// URL's key and for how long, and the stored keys of the variants it pushes out of the
/// policy's bound (the oldest).
struct Variant {
    full: Arc<str>,
    key: Arc<str>,
    record: Arc<Entry>,
    record_keep: Duration,
    evicted: Vec<String>,
}

/// HTTP mode, a response with `Vary` to be kept `keep`: see [`Variant`].
fn variant_keys(ctx: &Ctx, headers: &HeaderMap, keep: Duration) -> Option<Variant> {
    let request = ctx.request_headers.as_ref()?;
    let names = crate::http::vary_names(headers)?;
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| !ctx.policy.vary_headers.iter().any(|h| h.as_str() == n))
        .collect();
    if names.is_empty() {
        return None;
    }
    let (pfull, pkey) = ctx
        .primary
        .clone()
        .unwrap_or_else(|| (ctx.full.clone(), ctx.key.clone()));
    let mut vfull = pfull.to_string();
    crate::http::push_variant(&mut vfull, &names, request);
    let vkey = ctx.stash().stored_key(&vfull);
    let mut record_headers = HeaderMap::new();
    record_headers.insert(
        crate::http::VARY_RECORD,
        HeaderValue::from_str(&names.join(", ")).ok()?,
    );
    // The variants kept, oldest first: this one moves to the end; past the bound, the oldest
    // go. The list is the record's as it is now, in this instance's memory (read and written
    // back with no wait between: concurrent answers for other variants add to it instead of
    // replacing it), or else as the request found it. (Instances storing variants of one URL
    // at once may each write their own list: the bound then holds per instance, and a
    // variant left out of the list expires with its TTL.)
    let now = ctx.stash().now();
    let current = ctx
        .stash()
        .store()
        .get_local(&pkey)
        .flatten()
        .filter(|r| crate::http::record_names(r, &pfull).is_some());
    // The record outlives every variant it lists.
    let record_keep = current
        .as_ref()
        .and_then(|r| r.fresh_until().duration_since(now).ok())
        .map_or(keep, |left| left.max(keep));
    let seen = match &current {
        Some(record) => record.body().as_ref(),
        None => ctx.variants.as_deref().unwrap_or_default(),
    };
    let mut kept: Vec<&str> = std::str::from_utf8(seen)
        .unwrap_or_default()
        .lines()
        .filter(|k| !k.is_empty() && *k != &*vkey)
        .collect();
    let excess = (kept.len() + 1).saturating_sub(ctx.policy.max_variants);
    let evicted: Vec<String> = kept.drain(..excess).map(str::to_owned).collect();
    kept.push(&vkey);
    let body = Bytes::from(kept.join("\n"));
    let record = Entry::new(
        crate::http::record_key(&pfull),
        StatusCode::OK,
        record_headers,
        body,
    )
    .with_times(now, record_keep);
    Some(Variant {
        full: vfull.into(),
        key: vkey,
        record: Arc::new(record),
        record_keep,
        evicted,
    })
}

/// HTTP mode, with an expired entry still kept: revalidate it when it has a validator, and
/// answer with it if the origin cannot be reached or fails, unless it forbids stale use.
pub(crate) fn http_fallbacks(ctx: &mut Ctx, entry: &Arc<Entry>, now: SystemTime) {
    if !ctx.policy.http
        || entry.key() != &*ctx.full
        || entry.is_tombstone()
        || now >= entry.stale_until()
    {
        return;
    }
    if crate::http::has_validator(entry.headers()) {
        ctx.revalidate = Some(entry.clone());
    }
    if crate::http::may_serve_stale(entry.headers()) {
        ctx.stale = Some(entry.clone());
    }
}

/// The service's answer, or the stale entry when the service failed and one is in hand.
fn fallback<B, E>(
    ctx: Box<Ctx>,
    result: Result<Response<B>, E>,
    cx: &mut Context<'_>,
) -> Result<Response<CacheBody<B>>, E>
where
    B: Body<Data = Bytes>,
{
    if let (Ok(resp), Some(entry)) = (&result, &ctx.revalidate) {
        if resp.status() == StatusCode::NOT_MODIFIED {
            let entry = entry.clone();
            let (parts, _) = result.ok().expect("matched Ok").into_parts();
            return Ok(revalidated(&ctx, &entry, &parts.headers).map(CacheBody::stored));
        }
    }
    match (result, ctx.stale.clone()) {
        (Ok(resp), Some(entry))
            if resp.status().is_server_error() && stale_for_status(&ctx, &entry, resp.status()) =>
        {
            let status = resp.status();
            drop(resp);
            Ok(stale_if_error(&ctx, &entry, Some(status), "server-error").map(CacheBody::stored))
        }
        (Err(_), Some(entry)) => {
            Ok(stale_if_error(&ctx, &entry, None, "error").map(CacheBody::stored))
        }
        (Ok(resp), _) => Ok(miss(ctx, resp, cx)),
        (Err(e), None) => Err(e),
    }
}

/// The stored entry, confirmed by the origin's `304`: its headers freshened, stored again for
/// its new freshness, and answered (200, or 304 to a matching `If-None-Match`).
fn revalidated(ctx: &Ctx, entry: &Entry, not_modified: &HeaderMap) -> Response<Stored> {
    let stash = ctx.stash().clone();
    let now = stash.now();
    let headers = crate::http::freshen(entry.headers(), not_modified);
    // The merged answer is stored only under the rules a full answer would meet.
    let storable = shared_by_headers(ctx, entry.status(), &headers).is_ok();
    let fallback = ctx.policy.status_ttl(entry.status());
    let (lifetime, age) = crate::http::freshness(entry.status(), &headers, now, fallback)
        .unwrap_or((Duration::ZERO, Duration::ZERO));
    let lifetime = lifetime.min(ctx.policy.ttl);
    let stored_at = ctx.started.checked_sub(age).unwrap_or(ctx.started);
    // Still no freshness (no-cache, max-age=0): kept to be revalidated again.
    let ttl = lifetime.max(Duration::from_millis(1));
    let fresh = Entry::new(entry.key(), entry.status(), headers, entry.body().clone())
        .with_times(stored_at, ttl)
        .with_grace(ctx.policy.grace())
        .with_recompute_time(entry.recompute_time())
        .with_trailers(entry.trailers().cloned())
        .with_tags(entry.tags().to_vec());
    let fresh = Arc::new(fresh);
    let keep = ttl
        .saturating_add(ctx.policy.grace())
        .min(crate::entry::MAX_TTL);
    // (The memory store inserts when `put` is called: only then.)
    let runtime = tokio::runtime::Handle::try_current()
        .ok()
        .filter(|_| storable);
    if let Some(rt) = runtime {
        let put = stash.store().put(ctx.key.clone(), fresh.clone(), keep);
        let key = ctx.key.clone();
        let stash = stash.clone();
        rt.spawn(async move {
            match put.await {
                Ok(()) => stash.stored(),
                Err(e) => {
                    stash.counters().store_error();
                    tracing::warn!(%key, error = %e, "storing the revalidated entry failed");
                }
            }
        });
    }
    let req = ctx.hit_request();
    let remaining = fresh.remaining(now);
    let mut resp = hit(&stash, req, &fresh, remaining, fresh.age(now));
    mark(ctx, &mut resp, &stash.inner.status.stale, "revalidated");
    resp
}

/// Whether an origin's 5xx may be answered with the stale `entry`. In application mode the
/// policy decided when it kept the entry; in HTTP mode only inside the origin's
/// `stale-if-error` window, or when the origin could not be reached at all (502, 504).
fn stale_for_status(ctx: &Ctx, entry: &Entry, status: StatusCode) -> bool {
    if !ctx.policy.http || matches!(status.as_u16(), 502 | 504) {
        return true;
    }
    let past = ctx
        .stash()
        .now()
        .duration_since(entry.fresh_until())
        .unwrap_or_default();
    let sie = crate::http::stale_windows(entry.headers())
        .1
        .max(ctx.policy.stale_if_error);
    past < sie
}

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
    let (swr, sie) = if policy.http {
        // HTTP mode: the origin's own windows too (RFC 5861), unless it forbids stale use.
        let (swr, sie) = crate::http::stale_windows(entry.headers());
        (
            swr.max(policy.stale_while_revalidate),
            sie.max(policy.stale_if_error),
        )
    } else {
        (policy.stale_while_revalidate, policy.stale_if_error)
    };
    if past < swr {
        Found::StaleWhileRevalidate
    } else if past < sie {
        Found::StaleIfError
    } else {
        Found::Unusable
    }
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
        Some(d) => as_directed(d, entry, full, kind, now),
        None => kind,
    }
}

/// What an entry is to a request with `Cache-Control` directives: still fresh only if they
/// accept its age and freshness; an expired one is served (as a hit) within `max-stale`,
/// unless the entry says it must be revalidated.
fn as_directed(
    d: &crate::http::RequestDirectives,
    entry: &Entry,
    full: &str,
    kind: Found,
    now: SystemTime,
) -> Found {
    let age = now.duration_since(entry.stored_at()).unwrap_or_default();
    match kind {
        Found::Fresh(remaining) if d.accepts(age, remaining, Duration::ZERO) => kind,
        // `immutable` (RFC 8246): the origin promised this body will not change while fresh,
        // so a reload's `max-age` need not reach it. A forced reload (`no-cache`) still does,
        // and `min-fresh` still counts.
        Found::Fresh(remaining)
            if !d.no_cache
                && headers::has_directive(entry.headers(), &["immutable"])
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
                entry.headers(),
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
fn mark(ctx: &Ctx, resp: &mut Response<Stored>, plain: &HeaderValue, detail: &str) {
    let value = status_value(ctx.stash(), plain, Some(detail), None, Some(&ctx.full));
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
pub(crate) fn fresh_age(entry: &Entry, remaining: Duration, now: SystemTime) -> u64 {
    match entry.sliding() {
        None => entry.ttl().saturating_sub(remaining).as_secs(),
        Some(_) => entry.age(now),
    }
}

/// Records a hit on a sliding entry: its idle time starts again. A store shared with other
/// instances (Redis behind the memory tier) hears of it once every eighth of the idle time
/// while hits go on, in the background.
pub(crate) fn touch(stash: &Stash, key: &str, entry: &Entry, now: SystemTime) {
    let Some(idle) = entry.sliding() else {
        return;
    };
    entry.touch(now);
    let store = stash.store();
    if !store.is_shared() || !entry.extend_due(now, idle / 8) {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let extend = store.touch(key.into(), idle);
        rt.spawn(async move {
            if let Err(e) = extend.await {
                tracing::debug!(error = %e, "extending a sliding entry in the store failed");
            }
        });
    }
}

/// Whether a fresh hit should refresh the entry early (XFetch): when
/// `now - delta * beta * ln(rand()) >= expiry`, with `delta` the entry's recompute time.
pub(crate) fn refresh_early(
    stash: &Stash,
    policy: &CompiledPolicy,
    entry: &Entry,
    remaining: Duration,
) -> bool {
    let delta = entry.recompute_time().as_secs_f64();
    if policy.beta <= 0.0 || delta <= 0.0 {
        return false;
    }
    let remaining = remaining.as_secs_f64();
    // The chance is exp(-remaining / (beta * delta)): below one in a million past 14 of
    // those, so most hits skip the random number and the logarithm.
    if remaining > 14.0 * policy.beta * delta {
        return false;
    }
    xfetch(remaining, delta, policy.beta, stash.random())
}

/// XFetch's test with `remaining = expiry - now` and `r` uniform in `[0, 1)`.
pub(crate) fn xfetch(remaining: f64, delta: f64, beta: f64, r: f64) -> bool {
    // `1 - r` is in (0, 1]: its logarithm is finite.
    -delta * beta * (1.0 - r).ln() >= remaining
}

/// The stale entry answered at once while it is refreshed (stale-while-revalidate).
pub(crate) fn stale_hit(ctx: &Ctx, entry: &Entry, now: SystemTime) -> Response<Stored> {
    let stash = ctx.stash();
    stash.counters().stale();
    let req = ctx.hit_request();
    let mut resp = hit(stash, req, entry, Duration::ZERO, entry.age(now));
    mark(
        ctx,
        &mut resp,
        &stash.inner.status.stale,
        "stale-while-revalidate",
    );
    resp
}

/// The stale entry answered because the service failed (stale-if-error).
fn stale_if_error(
    ctx: &Ctx,
    entry: &Entry,
    upstream: Option<StatusCode>,
    why: &str,
) -> Response<Stored> {
    let stash = ctx.stash();
    stash.counters().stale();
    tracing::debug!(key = %ctx.full, why, "the service failed: answering with the stale entry");
    let now = stash.now();
    let req = ctx.hit_request();
    let mut resp = hit(stash, req, entry, Duration::ZERO, entry.age(now));
    let name = &stash.inner.status.name;
    let mut s = format!("{name}; fwd=stale");
    if let Some(status) = upstream {
        s.push_str(&format!("; fwd-status={}", status.as_u16()));
    }
    s.push_str("; stale");
    let plain = HeaderValue::try_from(s).expect("a token and digits make a header value");
    let status = status_value(stash, &plain, Some(why), None, Some(&ctx.full));
    resp.headers_mut().insert(CACHE_STATUS, status);
    resp
}

/// Refreshes `ctx`'s entry in the background with `req`, once per key: at most one refresh
/// per key runs in this process, and with a shared store, one across instances (a lease).
pub(crate) fn refresh<S, ReqB, ResB>(inner: S, req: Request<ReqB>, ctx: Box<Ctx>, seen: &Entry)
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    let stash = ctx.stash().clone();
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(refreshing) = stash.begin_refresh(ctx.key.clone()) else {
        return;
    };
    let seen = seen.stored_at();
    rt.spawn(async move {
        let _refreshing = refreshing;
        // Another instance may have refreshed it already: then this one only copies it.
        if stash.store().is_shared() {
            if let Ok(Some(entry)) = stash.store().get(ctx.key.clone()).await {
                if entry.key() == &*ctx.full && entry.stored_at() > seen {
                    return;
                }
            }
        }
        let Some(lease) = crate::plumbing::Lease::take(&stash, &ctx.key).await else {
            tracing::debug!(key = %ctx.full, "another instance is refreshing");
            return;
        };
        // The holder before may have stored a fresh entry and released just now.
        if stash.store().is_shared() {
            if let Ok(Some(entry)) = stash.store().get(ctx.key.clone()).await {
                if entry.key() == &*ctx.full && entry.stored_at() > seen {
                    lease.release().await;
                    return;
                }
            }
        }
        let lease = lease.kept();
        stash.counters().refresh();
        tracing::debug!(key = %ctx.full, "refreshing in the background");
        let mut req = req;
        // The refresh must bring a whole response to store: a HEAD (no body) becomes a GET,
        // and the client's validators go (a 304 stores nothing).
        if req.method() == http::Method::HEAD {
            *req.method_mut() = http::Method::GET;
        }
        for name in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::RANGE,
            header::IF_RANGE,
        ] {
            req.headers_mut().remove(name);
        }
        let mut ctx = ctx;
        if ctx.unkeyed_query {
            // The refresh asks with the keyed parameters only: its answer can then be stored.
            let query = crate::key::keyed_query(req.uri().query(), &ctx.policy.query);
            let path = req.uri().path().to_owned();
            let pq = if query.is_empty() {
                path
            } else {
                format!("{path}?{query}")
            };
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = pq.parse().ok();
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
                ctx.unkeyed_query = false;
            }
        }
        ctx.attach_flight(&mut req, true);
        let mut inner = inner;
        ctx.started = stash.now();
        ctx.stale = None;
        ctx.head = false;
        ctx.if_none_match = None;
        ctx.if_modified_since = None;
        ctx.range = None;
        // Released once the fresh entry is stored, or at once if nothing is.
        ctx.lease = Some(lease);
        let statuses_ok = |s: StatusCode| ctx.policy.statuses.contains(&s.as_u16());
        match inner.call(req).await {
            Ok(resp) if statuses_ok(resp.status()) => drain(miss_async(ctx, resp).await).await,
            Ok(resp) => {
                tracing::debug!(key = %ctx.full, status = %resp.status(), "refresh failed");
                stash.refresh_failed(ctx.key.clone());
            }
            Err(_) => {
                tracing::debug!(key = %ctx.full, "refresh failed: service error");
                stash.refresh_failed(ctx.key.clone());
            }
        }
    });
}

/// Completes a miss whose client was already answered: the response is stored if it may be.
fn finish_in_background<F, B, E>(fut: Pin<Box<F>>, mut ctx: Box<Ctx>)
where
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
    E: Send + 'static,
{
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    ctx.stale = None;
    rt.spawn(async move {
        if let Ok(resp) = fut.await {
            if !resp.status().is_server_error() {
                drain(miss_async(ctx, resp).await).await;
            }
        }
    });
}

async fn miss_async<B: Body<Data = Bytes>>(
    ctx: Box<Ctx>,
    resp: Response<B>,
) -> Response<CacheBody<B>> {
    let mut once = Some((ctx, resp));
    std::future::poll_fn(move |cx| {
        let (ctx, resp) = once.take().expect("polled once");
        Poll::Ready(miss(ctx, resp, cx))
    })
    .await
}

/// Reads a body to its end (which stores the copy), bounded by nothing but the body itself.
async fn drain<B: Body<Data = Bytes>>(resp: Response<CacheBody<B>>) {
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(resp.into_body());
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
}

/// A `Cache-Status` value: the ready-made `plain` one, or one with `ttl`, `key` and `detail`
/// when the stash shows them.
fn status_value(
    stash: &Stash,
    plain: &HeaderValue,
    detail: Option<&str>,
    ttl: Option<Duration>,
    key: Option<&str>,
) -> HeaderValue {
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
        )
    };
    let age = age_value(age);
    let not_modified = match (req.if_none_match, req.if_modified_since) {
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
fn set_age_and_status(headers: &mut HeaderMap, age: HeaderValue, status: HeaderValue) {
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
fn set(headers: &mut HeaderMap, name: http::HeaderName, value: HeaderValue) {
    match headers.get_mut(&name) {
        Some(slot) => *slot = value,
        None => {
            headers.insert(name, value);
        }
    }
}

/// The `Age` header for `secs`: made once for the first hour, so most hits allocate nothing.
fn age_value(secs: u64) -> HeaderValue {
    static AGES: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let ages = AGES.get_or_init(|| (0..3600u64).map(HeaderValue::from).collect());
    usize::try_from(secs)
        .ok()
        .and_then(|i| ages.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

/// Why answers with these headers, to this request, may not be stored for others: the rules
/// that hold for a full answer and for the headers a `304` freshens alike.
fn shared_by_headers(ctx: &Ctx, status: StatusCode, h: &HeaderMap) -> Result<(), &'static str> {
    let policy = &ctx.policy;
    if ctx.unkeyed_query {
        return Err("unkeyed-query");
    }
    if h.contains_key(header::SET_COOKIE) {
        return Err("set-cookie");
    }
    if policy.http
        && ctx.authorized
        && !headers::has_directive(h, &["public", "must-revalidate", "s-maxage"])
    {
        return Err("authorization");
    }
    // `must-understand`: stored only with a status this cache knows, and then despite
    // `no-store` (RFC 9111 section 5.2.2.3).
    let must_understand = policy.http && headers::has_directive(h, &["must-understand"]);
    if must_understand && !crate::http::understood(status) {
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
    } else if !vary_is_keyed(h, policy) {
        return Err("vary");
    }
    Ok(())
}

/// Why a response from the service cannot be stored, or for how long it can (from when
/// it was produced) and how old it was on arrival.
fn decide<B: Body>(
    ctx: &Ctx,
    parts: &Parts,
    hint: &CacheHint,
    body: &B,
) -> Result<(Duration, Duration), &'static str> {
    let policy = &ctx.policy;
    if ctx.head {
        return Err("head");
    }
    if hint.skip {
        return Err("handler");
    }
    if hint.invalid {
        return Err("hint");
    }
    if parts.extensions.get::<Collapsed>().is_some() {
        // A copy of another request's response: that request stores it.
        return Err("collapsed");
    }
    // A 206 to a `Range` is stored in HTTP mode, under a key of its own (never the complete
    // response's), when it is one range of a known length and varies on nothing.
    let partial = parts.status == StatusCode::PARTIAL_CONTENT;
    if partial
        && !(policy.http
            && policy.statuses.contains(&206)
            && ctx.range.is_some()
            && ctx.primary.is_none()
            && crate::http::content_range(&parts.headers).is_some()
            // Read from memory only: a store without a memory tier keeps none.
            && ctx.stash().store().get_local(&ctx.key).is_some()
            && crate::http::vary_names(&parts.headers).is_some_and(|v| v.is_empty()))
    {
        return Err("status");
    }
    // HTTP mode stores what the origin gives freshness to, errors included.
    if !policy.statuses.contains(&parts.status.as_u16())
        || (parts.status.is_server_error() && !policy.http)
    {
        return Err("status");
    }
    if policy.grpc
        && (crate::plumbing::status(&parts.headers).is_some()
            || !crate::plumbing::is_grpc(&parts.headers))
    {
        // A trailers-only answer is an error (or empty); a non-gRPC answer is not the call's.
        return Err("grpc-status");
    }
    shared_by_headers(ctx, parts.status, &parts.headers)?;
    let validator = crate::http::has_validator(&parts.headers);
    let declared = headers::content_length(&parts.headers);
    let limit = policy.max_body_size as u64;
    if declared.is_some_and(|n| n > limit) || body.size_hint().lower() > limit {
        return Err("too-large");
    }
    let (mut ttl, age) = if policy.http {
        // The origin decides (the policy's ttl caps it), counting the age it arrives with.
        let now = ctx.stash().now();
        let no_cache = headers::has_directive(&parts.headers, &["no-cache"]);
        let fallback = policy.status_ttl(parts.status);
        let Some((lifetime, age)) =
            crate::http::freshness(parts.status, &parts.headers, now, fallback)
                // `no-cache` with a validator: stored to be revalidated on every use.
                .or((no_cache && validator).then_some((Duration::ZERO, Duration::ZERO)))
        else {
            return Err("no-freshness");
        };
        let mut lifetime = hint.ttl.unwrap_or(lifetime).min(policy.ttl);
        if no_cache {
            lifetime = Duration::ZERO;
        }
        if lifetime <= age {
            if !validator {
                return Err("stale-on-arrival");
            }
            // Kept already expired (dated a millisecond early), to be revalidated with a
            // conditional request before any use.
            let age = age + Duration::from_millis(1);
            (age, age)
        } else {
            (lifetime, age)
        }
    } else {
        let ttl = hint.ttl.or_else(|| policy.status_ttl(parts.status));
        (
            ttl.unwrap_or(policy.ttl).min(crate::entry::MAX_TTL),
            Duration::ZERO,
        )
    };
    // Jitter spreads the policy's own TTL, never one the handler or a status TTL set.
    if !policy.ttl_jitter.is_zero()
        && hint.ttl.is_none()
        && policy.status_ttl(parts.status).is_none()
    {
        ttl = ttl.saturating_sub(policy.ttl_jitter.mul_f64(ctx.stash().random()));
    }
    if ttl.is_zero() {
        return Err("ttl");
    }
    Ok((ttl, age))
}

/// The service's response, on its way to the client, with a copy kept to be stored if the rules
/// allow it.
fn miss<B: Body<Data = Bytes>>(
    mut ctx: Box<Ctx>,
    resp: Response<B>,
    cx: &mut Context<'_>,
) -> Response<CacheBody<B>> {
    let (mut parts, body) = resp.into_parts();
    let mut hint = CacheHint::take(&mut parts);
    let lease = parts
        .extensions
        .remove::<LeaseSlot>()
        .and_then(|slot| slot.take())
        .or_else(|| ctx.lease.take());
    let stash = ctx.stash().clone();
    let decision = decide(&ctx, &parts, &hint, &body);
    let collapsed = parts.extensions.get::<Collapsed>().copied();
    let status = match decision {
        Err(_) if collapsed == Some(Collapsed::Alone) => status_value(
            &stash,
            &stash.inner.status.miss,
            Some("single-flight-bound"),
            None,
            Some(&ctx.full),
        ),
        Err(_) if collapsed.is_some() => {
            let plain = match collapsed {
                Some(Collapsed::FromEntry) => &stash.inner.status.collapsed_hit,
                _ => &stash.inner.status.collapsed_miss,
            };
            status_value(&stash, plain, None, None, Some(&ctx.full))
        }
        // `stored` only when the whole body is known to fit; a streaming body is stored when
        // it ends, if it stays within the limit, which these headers cannot yet tell.
        // A gRPC answer is stored only if its trailers, still to come, say it succeeded.
        Ok(_) if ctx.policy.grpc => status_value(
            &stash,
            &stash.inner.status.miss,
            Some("grpc-pending"),
            None,
            Some(&ctx.full),
        ),
        Ok(_) if body.size_hint().exact().is_some() => status_value(
            &stash,
            &stash.inner.status.stored,
            None,
            None,
            Some(&ctx.full),
        ),
        Ok(_) => status_value(
            &stash,
            &stash.inner.status.miss,
            Some("streaming"),
            None,
            Some(&ctx.full),
        ),
        Err(reason) => {
            tracing::debug!(route = %ctx.policy.route, key = %ctx.full, reason, "response not stored");
            status_value(
                &stash,
                &stash.inner.status.miss,
                Some(reason),
                None,
                Some(&ctx.full),
            )
        }
    };
    let body = match decision {
        Ok((ttl, age)) => {
            let mut stored = parts.headers.clone();
            headers::strip_hop_by_hop(&mut stored);
            let partial = parts.status == StatusCode::PARTIAL_CONTENT;
            let keep = ttl
                .saturating_add(ctx.policy.grace())
                .min(crate::entry::MAX_TTL);
            let variant = if partial {
                None
            } else {
                variant_keys(&ctx, &parts.headers, keep)
            };
            let Ctx {
                mut key,
                mut full,
                mut tags,
                policy,
                started,
                primary,
                ..
            } = *ctx;
            if let Some(variant) = variant {
                // The URL's key holds the record of what its responses vary on (this
                // request's key may already be a variant's); the response goes under its
                // variant's key.
                let url_key = primary.map_or_else(|| key.clone(), |(_, k)| k);
                let put = stash
                    .store()
                    .put(url_key, variant.record, variant.record_keep);
                let drops: Vec<_> = variant
                    .evicted
                    .into_iter()
                    .map(|k| stash.store().delete(k.into()))
                    .collect();
                // Memory stores on the call; a shared store needs its future run.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = put.await;
                        for drop in drops {
                            let _ = drop.await;
                        }
                    });
                }
                full = variant.full;
                key = variant.key;
            }
            if partial {
                // Its own key, which only a `Range` request looks up.
                let pfull = crate::http::partial_key(&full);
                key = stash.stored_key(&pfull);
                full = pfull.into();
            }
            tags.append(&mut hint.tags);
            let capture = Capture {
                // Dated when the origin produced it: the age it arrived with counts.
                stored_at: started.checked_sub(age).unwrap_or(started),
                started,
                grace: policy.grace(),
                stash,
                key,
                full_key: full,
                status: parts.status,
                headers: stored,
                ttl,
                tags,
                limit: policy.max_body_size,
                declared: headers::content_length(&parts.headers),
                etag: policy.etag,
                grpc: policy.grpc,
                sliding: policy.sliding,
                local: partial,
                lease,
                size: 0,
                chunks: Vec::new(),
                trailers: None,
            };
            CacheBody::tee(body, capture, cx)
        }
        Err(_) => CacheBody::inner(body),
    };
    parts.headers.insert(CACHE_STATUS, status);
    fresh_from_the_service(&mut parts.headers);
    Response::from_parts(parts, body)
}

/// Every answer on a cached route carries `Age`: zero for one fresh from the service (unless
/// the service, itself behind a cache, says otherwise).
fn fresh_from_the_service(headers: &mut HeaderMap) {
    headers
        .entry(header::AGE)
        .or_insert(HeaderValue::from_static("0"));
}
