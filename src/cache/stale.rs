use super::body::CacheBody;
use super::fill::{exchange, miss};
use super::future::Ctx;
use super::hit::{hit, mark, status_value};
use crate::entry::Entry;
use crate::headers::CACHE_STATUS;
use crate::plumbing::Stored;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tower_service::Service;

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
    let headers = crate::http::effective(entry.headers(), &ctx.policy.targeted);
    if crate::http::may_serve_stale(&headers) {
        ctx.stale = Some(entry.clone());
    }
}

/// The service's answer, or the stale entry when the service failed and one is in hand.
pub(super) fn fallback<B, E>(
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
            if !confirms(&entry, &parts.headers) {
                return Ok(unconfirmed(&ctx, &entry).map(CacheBody::stored));
            }
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
pub(super) fn revalidated(ctx: &Ctx, entry: &Entry, not_modified: &HeaderMap) -> Response<Stored> {
    let stash = ctx.stash().clone();
    let now = stash.now();
    let headers = crate::http::freshen(entry.headers(), not_modified);
    // Decided by a targeted field (CDN-Cache-Control) where it has one.
    let view = crate::http::effective(&headers, &ctx.policy.targeted);
    // The merged answer is stored only under the rules a full answer would meet.
    let storable = exchange(ctx, entry.status(), &view).headers_ok().is_ok();
    let fallback = ctx.policy.status_ttl(entry.status());
    let (mut lifetime, mut age) = crate::http::freshness(entry.status(), &view, now, fallback)
        .unwrap_or((Duration::ZERO, Duration::ZERO));
    lifetime = lifetime.min(ctx.policy.ttl);
    if crate::headers::has_directive(&view, &["no-cache"]) {
        // Confirmed for this use only: the next is revalidated too, whatever heuristic
        // lifetime its `Last-Modified` would give.
        lifetime = Duration::ZERO;
    }
    if lifetime <= age {
        // Still no freshness (no-cache, max-age=0): kept already expired (dated a
        // millisecond early), to be revalidated again before the next use.
        age += Duration::from_millis(1);
        lifetime = age;
    }
    let stored_at = ctx.started.checked_sub(age).unwrap_or(ctx.started);
    let ttl = lifetime;
    let confirmed = |headers| {
        let fresh = Entry::new(entry.key(), entry.status(), headers, entry.body().clone())
            .with_times(stored_at, ttl)
            .with_grace(ctx.policy.grace())
            .with_recompute_time(entry.recompute_time())
            .with_trailers(entry.trailers().cloned())
            .with_tags(entry.tags().to_vec());
        Arc::new(fresh)
    };
    // A cookie the 304 set is this client's (see `Policy::store_without_set_cookie`).
    let stored = (storable && headers.contains_key(header::SET_COOKIE)).then(|| {
        let mut headers = headers.clone();
        headers.remove(header::SET_COOKIE);
        confirmed(headers)
    });
    let fresh = confirmed(headers);
    let keep = ttl
        .saturating_add(ctx.policy.grace())
        .min(crate::entry::MAX_TTL);
    // (The memory store inserts when `put` is called: only then.)
    let runtime = tokio::runtime::Handle::try_current()
        .ok()
        .filter(|_| storable);
    if let Some(rt) = runtime {
        let stored = stored.unwrap_or_else(|| fresh.clone());
        let put = stash.store().put(ctx.key.clone(), stored, keep);
        let key = ctx.key.clone();
        let stash = stash.clone();
        rt.spawn(async move { stash.record_put(&key, put.await) });
    }
    let req = ctx.hit_request();
    let remaining = fresh.remaining(now);
    let mut resp = hit(&stash, req, &fresh, remaining, fresh.age(now));
    // Forwarded to the origin, which confirmed the stored answer (RFC 9211): not a hit.
    let plain = format!("{}; fwd=stale; fwd-status=304", stash.inner.status.name);
    let plain = HeaderValue::try_from(plain).expect("a token and digits make a header value");
    mark(ctx, &mut resp, &plain, "revalidated");
    resp
}

/// Whether a `304` answers for `entry` (RFC 9111 section 4.3.4): an entity tag in it must be
/// the stored one's (a 304 for another representation confirms nothing stored here).
pub(super) fn confirms(entry: &Entry, not_modified: &HeaderMap) -> bool {
    let Some(etag) = not_modified.get(header::ETAG) else {
        return true;
    };
    let opaque = |v: &HeaderValue| {
        let v = v.as_bytes().trim_ascii();
        v.strip_prefix(b"W/").unwrap_or(v).to_vec()
    };
    entry
        .headers()
        .get(header::ETAG)
        .is_some_and(|stored| opaque(stored) == opaque(etag))
}

/// A `304` for another representation than the entry's: the entry is dropped (the next
/// request fetches the resource whole), and this client gets the stale entry where it may
/// be served stale, or else a `502` (the origin's answer cannot complete its request).
pub(super) fn unconfirmed(ctx: &Ctx, entry: &Entry) -> Response<Stored> {
    let stash = ctx.stash();
    let delete = stash.store().delete(ctx.key.clone());
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = delete.await;
        });
    }
    tracing::debug!(key = %ctx.full, "a 304 named another entity tag: the entry is dropped");
    if ctx.stale.is_some() {
        return stale_if_error(
            ctx,
            entry,
            Some(StatusCode::NOT_MODIFIED),
            "validator-mismatch",
        );
    }
    let mut resp = Response::new(Stored::empty());
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    mark(
        ctx,
        &mut resp,
        &stash.inner.status.miss,
        "validator-mismatch",
    );
    resp
}

/// Whether an origin's 5xx may be answered with the stale `entry`. In application mode the
/// policy decided when it kept the entry; in HTTP mode only inside the origin's
/// `stale-if-error` window, or when the origin could not be reached at all (502, 504).
pub(super) fn stale_for_status(ctx: &Ctx, entry: &Entry, status: StatusCode) -> bool {
    if !ctx.policy.http || matches!(status.as_u16(), 502 | 504) {
        return true;
    }
    let past = ctx
        .stash()
        .now()
        .duration_since(entry.fresh_until())
        .unwrap_or_default();
    past < super::hit::stale_windows(&ctx.policy, entry).1
}

/// The stale entry answered at once while it is refreshed (stale-while-revalidate).
pub(crate) fn stale_hit(ctx: &Ctx, entry: &Entry, now: SystemTime) -> Response<Stored> {
    let stash = ctx.stash();
    stash.counters().stale();
    stash
        .counters()
        .on_route(&ctx.policy, super::super::stash::Outcome::Stale);
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
pub(super) fn stale_if_error(
    ctx: &Ctx,
    entry: &Entry,
    upstream: Option<StatusCode>,
    why: &str,
) -> Response<Stored> {
    let stash = ctx.stash();
    stash.counters().stale();
    stash
        .counters()
        .on_route(&ctx.policy, crate::stash::Outcome::Stale);
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
    let status = status_value(stash, &plain, Some(why), None, Some(&ctx.full), ctx.shown);
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
        // and the client's validators, preconditions and range go (a 304, 412, 416 or 206
        // stores nothing under the URL).
        if req.method() == http::Method::HEAD {
            *req.method_mut() = http::Method::GET;
        }
        for name in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
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
        ctx.outgoing(&mut req, true);
        let mut inner = inner;
        ctx.started = stash.began();
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
pub(super) fn finish_in_background<F, B, E>(fut: Pin<Box<F>>, mut ctx: Box<Ctx>)
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

pub(super) async fn miss_async<B: Body<Data = Bytes>>(
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
pub(super) async fn drain<B: Body<Data = Bytes>>(resp: Response<CacheBody<B>>) {
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(resp.into_body());
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
}
