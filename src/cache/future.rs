use super::body::{CacheBody, Capture, Stored};
use super::hint::CacheHint;
use super::layer::Shared;
use crate::entry::Entry;
use crate::headers::{self, CACHE_STATUS};
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
    pub(crate) tags: Vec<String>,
}

impl Ctx {
    fn stash(&self) -> &Stash {
        &self.shared.stash
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
        Bypass { #[pin] fut: S::Future, stash: Stash, reason: &'static str },
        Hit { resp: Option<Response<Stored>> },
        Lookup {
            lookup: StoreFuture<Option<Arc<Entry>>>,
            call: Option<Box<(S, Request<ReqB>)>>,
            ctx: Option<Box<Ctx>>,
        },
        Miss { #[pin] fut: S::Future, ctx: Option<Box<Ctx>> },
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
            state: State::Miss {
                fut,
                ctx: Some(ctx),
            },
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
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    type Output = Result<Response<CacheBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Passthrough { fut } => {
                    return fut.poll(cx).map_ok(|r| r.map(CacheBody::inner));
                }
                StateProj::Bypass { fut, stash, reason } => {
                    let (mut parts, body) = ready!(fut.poll(cx))?.into_parts();
                    let _ = CacheHint::take(&mut parts);
                    let value =
                        status_value(stash, &stash.inner.status.bypass, Some(reason), None, None);
                    parts.headers.insert(CACHE_STATUS, value);
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
                    let ctx = ctx.take().expect("polled after completion");
                    let now = ctx.stash().now();
                    if let Some(entry) = found.filter(|e| fresh(e, &ctx.full, now)) {
                        ctx.stash().counters().hit();
                        let req = HitRequest {
                            full: &ctx.full,
                            head: ctx.head,
                            if_none_match: ctx.if_none_match.as_ref(),
                        };
                        let resp = hit(ctx.stash(), req, &entry, now).map(CacheBody::stored);
                        state.set(State::Done);
                        return Poll::Ready(Ok(resp));
                    }
                    ctx.stash().counters().miss();
                    let (mut inner, req) = *call.take().expect("polled after completion");
                    State::Miss {
                        fut: inner.call(req),
                        ctx: Some(ctx),
                    }
                }
                StateProj::Miss { fut, ctx } => {
                    let resp = ready!(fut.poll(cx))?;
                    let ctx = ctx.take().expect("polled after completion");
                    let resp = miss(ctx, resp, cx);
                    state.set(State::Done);
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            };
            state.set(next);
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
}

/// The response for a fresh entry: its status, headers and body (a slice, no copy), with
/// `Age` and `Cache-Status`; 304 when `If-None-Match` matches; no body for HEAD.
pub(crate) fn hit(
    stash: &Stash,
    req: HitRequest<'_>,
    entry: &Entry,
    now: SystemTime,
) -> Response<Stored> {
    let status = if stash.inner.status.plain() {
        stash.inner.status.hit.clone()
    } else {
        status_value(
            stash,
            &stash.inner.status.hit,
            None,
            Some(entry.remaining(now)),
            Some(req.full),
        )
    };
    let age = age_value(entry.age(now));
    let not_modified = req.if_none_match.is_some_and(|inm| {
        headers::is_wildcard(inm)
            || entry
                .headers()
                .get(header::ETAG)
                .is_some_and(|etag| headers::none_match(inm, etag))
    });
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
    let body = if req.head {
        Stored::empty()
    } else {
        Stored::new(entry.body().clone(), entry.trailers().cloned())
    };
    let mut headers = entry.headers().clone();
    set(&mut headers, header::AGE, age);
    set(&mut headers, CACHE_STATUS, status);
    let mut resp = Response::new(body);
    *resp.status_mut() = entry.status();
    *resp.headers_mut() = headers;
    resp
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

/// Is `entry` a fresh entry for the full key `full`?
pub(crate) fn fresh(entry: &Entry, full: &str, now: SystemTime) -> bool {
    entry.key() == full && now < entry.expires_at()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Why a response from the service cannot be stored, or for how long it can.
fn decide<B: Body>(
    ctx: &Ctx,
    parts: &Parts,
    hint: &CacheHint,
    body: &B,
) -> Result<Duration, &'static str> {
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
    if !policy.statuses.contains(&parts.status.as_u16()) || parts.status.is_server_error() {
        return Err("status");
    }
    if parts.headers.contains_key(header::SET_COOKIE) {
        return Err("set-cookie");
    }
    if headers::has_directive(&parts.headers, &["no-store", "private", "no-cache"]) {
        return Err("cache-control");
    }
    for value in parts.headers.get_all(header::VARY) {
        let Ok(value) = value.to_str() else {
            return Err("vary");
        };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !policy
                .vary_headers
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(name))
            {
                return Err("vary");
            }
        }
    }
    let declared = content_length(&parts.headers);
    let limit = policy.max_body_size as u64;
    if declared.is_some_and(|n| n > limit) || body.size_hint().lower() > limit {
        return Err("too-large");
    }
    let ttl = hint.ttl.unwrap_or(policy.ttl).min(crate::entry::MAX_TTL);
    if ttl.is_zero() {
        return Err("ttl");
    }
    Ok(ttl)
}

/// The service's response, on its way to the client, with a copy kept to be stored if the rules
/// allow it.
fn miss<B: Body<Data = Bytes>>(
    ctx: Box<Ctx>,
    resp: Response<B>,
    cx: &mut Context<'_>,
) -> Response<CacheBody<B>> {
    let (mut parts, body) = resp.into_parts();
    let mut hint = CacheHint::take(&mut parts);
    let stash = ctx.stash().clone();
    let decision = decide(&ctx, &parts, &hint, &body);
    let status = match decision {
        // `stored` only when the whole body is known to fit; a streaming body is stored when
        // it ends, if it stays within the limit, which these headers cannot yet tell.
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
        Ok(ttl) => {
            let mut stored = parts.headers.clone();
            headers::strip_hop_by_hop(&mut stored);
            let Ctx {
                key,
                full,
                mut tags,
                policy,
                ..
            } = *ctx;
            tags.append(&mut hint.tags);
            let capture = Capture {
                stored_at: stash.now(),
                stash,
                key,
                full_key: full,
                status: parts.status,
                headers: stored,
                ttl,
                tags,
                limit: policy.max_body_size,
                declared: content_length(&parts.headers),
                etag: policy.etag,
                size: 0,
                chunks: Vec::new(),
                trailers: None,
            };
            CacheBody::tee(body, capture, cx)
        }
        Err(_) => CacheBody::inner(body),
    };
    parts.headers.insert(CACHE_STATUS, status);
    Response::from_parts(parts, body)
}
