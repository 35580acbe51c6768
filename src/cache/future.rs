use super::body::CacheBody;
use super::fill::fresh_from_the_service;
use super::hit::{gateway_timeout, serve_fresh, status_value, usable, Found, HitRequest};
use super::layer::Shared;
use super::stale::{
    conditional, fallback, finish_in_background, http_fallbacks, refresh, stale_hit, stale_if_error,
};
use super::vary::follow_variant;
use crate::entry::Entry;
use crate::headers::CACHE_STATUS;
use crate::plumbing::{CacheHint, Stored};
use crate::plumbing::{FlightKey, Lease};
use crate::policy::CompiledPolicy;
use crate::store::StoreFuture;
use crate::Stash;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;
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
    /// HTTP mode: the request headers the URL's variant record names (lowercase), which the
    /// variant's key holds: forwarded even when the policy's allowlist does not name them.
    pub(crate) varied: Vec<String>,
    /// HTTP mode: the stored keys of the URL's variants, oldest first, one per line, as the
    /// record found said.
    pub(crate) variants: Option<Bytes>,
    /// HTTP mode: the expired entry being revalidated with a conditional request.
    pub(crate) revalidate: Option<Arc<Entry>>,
    /// Whether the request is shown the `Cache-Status` key, detail and ttl.
    pub(crate) shown: bool,
}

impl Ctx {
    pub(super) fn stash(&self) -> &Stash {
        &self.shared.stash
    }

    /// What a hit answering this request needs of it.
    pub(super) fn hit_request(&self) -> HitRequest<'_> {
        HitRequest {
            full: &self.full,
            head: self.head,
            if_none_match: self.if_none_match.as_ref(),
            if_modified_since: self.if_modified_since.as_ref(),
            range: self.range.as_ref(),
            shown: self.shown,
        }
    }

    /// Readies a request this cache forwards to fill its entry: in HTTP mode with an
    /// allowlist, only the keyed (a variant's selecting headers included), listed and
    /// always-allowed headers stay (the origin never sees a header that could shape an
    /// answer the key does not hold); and a
    /// [`SingleFlightLayer`](crate::SingleFlightLayer) below is told which key it fills,
    /// unless its answer may be its own: one that reflects parameters the key leaves out, or
    /// answers an `Authorization` the key does not hold, is never shared.
    pub(crate) fn outgoing<B>(&self, req: &mut Request<B>, leased: bool) {
        req.extensions_mut().insert(crate::plumbing::Cached);
        if self.policy.http && self.policy.allowed_headers.is_some() {
            let varied = |n: &http::HeaderName| self.varied.iter().any(|v| v == n.as_str());
            crate::headers::retain_listed(req.headers_mut(), |n| {
                self.policy.unlisted(n) && !varied(n)
            });
        }
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
        // The request's span (`tower_stash.request`), entered while polled.
        span: tracing::Span,
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
        Bypass {
            #[pin] fut: S::Future,
            stash: Stash,
            reason: &'static str,
            hints: bool,
            shown: bool,
        },
        Hit { resp: Option<Response<Stored>> },
        Lookup {
            lookup: StoreFuture<Option<Arc<Entry>>>,
            call: Option<Box<(S, Request<ReqB>)>>,
            ctx: Option<Box<Ctx>>,
        },
        // `at`: when the request went to the service (`tower_stash_upstream_seconds`).
        Miss { #[pin] fut: S::Future, ctx: Option<Box<Ctx>>, at: std::time::Instant },
        // A miss with a stale entry to fall back on and a limit on the wait for the service.
        MissTimed {
            fut: Option<Pin<Box<S::Future>>>,
            sleep: Pin<Box<tokio::time::Sleep>>,
            ctx: Option<Box<Ctx>>,
            at: std::time::Instant,
        },
        Done,
    }
}

impl<S, ReqB> ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    /// Runs in `span` (a request's on a cached route; none for a request no route caches).
    pub(crate) fn in_span(mut self, span: tracing::Span) -> Self {
        if !matches!(self.state, State::Passthrough { .. } | State::Write { .. }) {
            self.span = span;
        }
        self
    }

    pub(crate) fn passthrough(fut: S::Future) -> Self {
        Self {
            state: State::Passthrough { fut },
            span: tracing::Span::none(),
        }
    }

    pub(crate) fn write(fut: S::Future, write: Box<super::writes::Write>) -> Self {
        Self {
            state: State::Write {
                fut,
                write: Some(write),
            },
            span: tracing::Span::none(),
        }
    }

    pub(crate) fn bypass(
        fut: S::Future,
        stash: Stash,
        reason: &'static str,
        hints: bool,
        shown: bool,
    ) -> Self {
        Self {
            state: State::Bypass {
                fut,
                stash,
                reason,
                hints,
                shown,
            },
            span: tracing::Span::none(),
        }
    }

    pub(crate) fn hit(resp: Response<Stored>) -> Self {
        Self {
            state: State::Hit { resp: Some(resp) },
            span: tracing::Span::none(),
        }
    }

    pub(crate) fn miss(fut: S::Future, ctx: Box<Ctx>) -> Self {
        Self {
            state: State::miss(fut, ctx),
            span: tracing::Span::none(),
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
            span: tracing::Span::none(),
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
        let at = std::time::Instant::now();
        match ctx.policy.upstream_timeout.filter(|_| ctx.stale.is_some()) {
            Some(limit) => State::MissTimed {
                fut: Some(Box::pin(fut)),
                sleep: Box::pin(tokio::time::sleep(limit)),
                ctx: Some(ctx),
                at,
            },
            None => State::Miss {
                fut,
                ctx: Some(ctx),
                at,
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
        let this = self.project();
        let _in = this.span.enter();
        let mut state = this.state;
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
                StateProj::Bypass {
                    fut,
                    stash,
                    reason,
                    hints,
                    shown,
                } => {
                    let (mut parts, body) = ready!(fut.poll(cx))?.into_parts();
                    if *hints {
                        let _ = CacheHint::take(&mut parts);
                    }
                    let status = &stash.inner.status;
                    let value =
                        status_value(stash, &status.bypass, Some(reason), None, None, *shown);
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
                            ctx.stash().store_failed(
                                "cache lookup failed: asking the service",
                                &ctx.key,
                                &e,
                            );
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
                                let (resp, early) = serve_fresh(
                                    ctx.stash(),
                                    &ctx.policy,
                                    ctx.hit_request(),
                                    Some(&ctx.key),
                                    &entry,
                                    remaining,
                                    now,
                                );
                                ctx.stash().counters().tier_hit("shared");
                                if early {
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
                    ctx.stash()
                        .counters()
                        .on_route(&ctx.policy, crate::stash::Outcome::Miss);
                    forward(inner, req, ctx)
                }
                StateProj::Miss { fut, ctx, at } => {
                    let result = ready!(fut.poll(cx));
                    let ctx = ctx.take().expect("polled after completion");
                    upstream_time(&ctx, *at);
                    let resp = fallback(ctx, result, cx);
                    state.set(State::Done);
                    return Poll::Ready(resp);
                }
                StateProj::MissTimed {
                    fut,
                    sleep,
                    ctx,
                    at,
                } => {
                    let inner = fut.as_mut().expect("polled after completion");
                    if let Poll::Ready(result) = inner.as_mut().poll(cx) {
                        let ctx = ctx.take().expect("polled after completion");
                        upstream_time(&ctx, *at);
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

/// Records how long the service took to answer a miss (to its response head), by route.
fn upstream_time(ctx: &Ctx, at: std::time::Instant) {
    metrics::histogram!("tower_stash_upstream_seconds", "route" => ctx.policy.route_label.clone())
        .record(at.elapsed().as_secs_f64());
}

/// Sends `req` to the service for `ctx`'s key (single flight below keys on it).
fn forward<S, ReqB>(mut inner: S, mut req: Request<ReqB>, ctx: Box<Ctx>) -> State<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    if let Some(entry) = &ctx.revalidate {
        conditional(&mut req, entry);
    }
    ctx.outgoing(&mut req, false);
    State::miss(inner.call(req), ctx)
}
