use super::body::InvalidateBody;
use super::future::ResponseFuture;
use super::layer::Shared;
use super::rules::Work;
use crate::{Stash, WriteTicket};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// Invalidates after the requests its rules name: see [`InvalidateLayer`](super::InvalidateLayer).
pub struct InvalidateService<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S: Clone> Clone for InvalidateService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for InvalidateService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidateService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> InvalidateService<S> {
    /// Wraps `inner` with the rules and stash of `layer`.
    pub fn new(inner: S, layer: &super::InvalidateLayer) -> Self {
        tower_layer::Layer::layer(layer, inner)
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for InvalidateService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    type Response = Response<InvalidateBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if req.method().as_str() == "PURGE" {
            if let Some(authorize) = self.shared.purge.clone() {
                let (parts, _) = req.into_parts();
                let stash = self.shared.stash.clone();
                return ResponseFuture::boxed(async move {
                    Ok(purge(&stash, &parts, &*authorize).await)
                });
            }
        }
        let Some(work) = self.shared.rules.find(&req) else {
            return ResponseFuture::passthrough(self.call_inner(req));
        };
        let fut = self.call_inner(req);
        let stash = self.shared.stash.clone();
        ResponseFuture::boxed(async move {
            // A write-through is followed from before the service sees the request: a write
            // that overlaps another ends as an invalidation.
            let ticket = match &work.write_through {
                Some(wt) => match &wt.variant {
                    Some(variant) => stash.begin_write(&wt.key, variant).await,
                    None => WriteTicket::untracked(),
                },
                None => WriteTicket::untracked(),
            };
            let mut pending = Unfinished {
                stash: stash.clone(),
                work: Some((work, ticket)),
            };
            let result = fut.await;
            let (work, ticket) = pending.work.take().expect("taken once");
            // Once the service has answered, the invalidations run to their end even if the
            // client goes away meanwhile (its response future dropped).
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => match rt
                    .spawn(async move { after(&stash, work, ticket, result).await })
                    .await
                {
                    Ok(done) => done,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                },
                Err(_) => after(&stash, work, ticket, result).await,
            }
        })
    }
}

/// A write whose request was dropped before the service answered (the client went away):
/// the data may or may not have changed, so everything its rule names is invalidated.
struct Unfinished {
    stash: Stash,
    work: Option<(Work, WriteTicket)>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some((work, ticket)) = self.work.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let stash = self.stash.clone();
        rt.spawn(async move {
            if let Some(wt) = &work.write_through {
                stash.abandon_write(&wt.key, wt.variant(), ticket).await;
            }
            for key in &work.keys {
                let _ = stash.invalidate_key(key).await;
            }
            for tag in &work.tags {
                let _ = stash.invalidate_tag(tag).await;
            }
        });
    }
}

impl<S> InvalidateService<S> {
    fn call_inner<R>(&mut self, req: R) -> S::Future
    where
        S: Service<R> + Clone,
    {
        crate::plumbing::take_ready(&mut self.inner).call(req)
    }
}

/// The largest response a write-through stores.
const WRITE_THROUGH_LIMIT: usize = 1024 * 1024;

/// Applies `work` once the service has answered.
async fn after<B, E>(
    stash: &Stash,
    work: Work,
    ticket: WriteTicket,
    result: Result<Response<B>, E>,
) -> Result<Response<InvalidateBody<B>>, E>
where
    B: Body<Data = Bytes>,
{
    use http_body_util::BodyExt;
    let resp = match result {
        // A gRPC error may come with no body at all (trailers-only): its status in the head.
        Ok(resp)
            if resp.status().is_success()
                && !(work.grpc
                    && crate::plumbing::status(resp.headers()).is_some_and(|s| s != b"0")) =>
        {
            resp
        }
        // A failed write changes nothing, but a write-through's key goes: the data may or may
        // not have changed (a rollback).
        failed => {
            if let Some(wt) = &work.write_through {
                stash.abandon_write(&wt.key, wt.variant(), ticket).await;
            }
            return failed.map(|r| r.map(InvalidateBody::inner));
        }
    };
    let resp = match &work.write_through {
        None if !work.grpc => resp.map(InvalidateBody::inner),
        None => {
            // A gRPC call failed if its trailers say so: read the (unary) answer. When the
            // outcome is unknown (the body failed, no trailers), the data may have changed:
            // invalidate, as dropping too much only costs a miss.
            let (parts, body) = resp.into_parts();
            match body.collect().await {
                Err(e) => Response::from_parts(parts, InvalidateBody::failed(e)),
                Ok(collected) => {
                    let trailers = collected.trailers().cloned();
                    let failed = trailers
                        .as_ref()
                        .and_then(crate::plumbing::status)
                        .is_some_and(|s| s != b"0");
                    let resp = Response::from_parts(
                        parts,
                        InvalidateBody::full(collected.to_bytes(), trailers),
                    );
                    if failed {
                        return Ok(resp);
                    }
                    resp
                }
            }
        }
        Some(wt) => {
            let (key, variant) = (&wt.key, wt.variant());
            let (parts, body) = resp.into_parts();
            match body.collect().await {
                Err(e) => {
                    stash.abandon_write(key, variant, ticket).await;
                    Response::from_parts(parts, InvalidateBody::failed(e))
                }
                Ok(collected) => {
                    let trailers = collected.trailers().cloned();
                    let data = collected.to_bytes();
                    // Only a full response is what the read answers: a 201, 202 or 204 is not.
                    let grpc_ok = !work.grpc || crate::plumbing::trailers_ok(trailers.as_ref());
                    if !grpc_ok {
                        stash.abandon_write(key, variant, ticket).await;
                        return Ok(Response::from_parts(
                            parts,
                            InvalidateBody::full(data, trailers),
                        ));
                    }
                    let storable = wt.variant.is_some()
                        && matches!(parts.status.as_u16(), 200 | 203)
                        && data.len() <= WRITE_THROUGH_LIMIT
                        && !parts.headers.contains_key(http::header::SET_COOKIE)
                        && !crate::headers::has_directive(&parts.headers, &["no-store", "private"]);
                    if storable {
                        let _ = stash
                            .write_through(
                                key,
                                variant,
                                ticket,
                                &parts,
                                data.clone(),
                                trailers.clone(),
                                wt.ttl,
                                &work.entry_tags,
                            )
                            .await;
                    } else {
                        stash.abandon_write(key, variant, ticket).await;
                    }
                    Response::from_parts(parts, InvalidateBody::full(data, trailers))
                }
            }
        }
    };
    for key in &work.keys {
        let _ = stash.invalidate_key(key).await;
    }
    for tag in &work.tags {
        let _ = stash.invalidate_tag(tag).await;
    }
    Ok(resp)
}

/// A PURGE request: authorised, it invalidates the keys and tags its headers name.
async fn purge<B: Body>(
    stash: &Stash,
    parts: &http::request::Parts,
    authorize: &super::layer::Authorize,
) -> Response<InvalidateBody<B>> {
    let answer = |status: StatusCode, text: &'static str| {
        let mut resp = Response::new(InvalidateBody::full(
            Bytes::from_static(text.as_bytes()),
            None,
        ));
        *resp.status_mut() = status;
        resp
    };
    if !authorize(parts) {
        tracing::warn!(uri = %parts.uri, "unauthorised PURGE refused");
        return answer(StatusCode::FORBIDDEN, "forbidden\n");
    }
    let values = |name: &'static str| -> Vec<String> {
        parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let (keys, tags) = (values("x-stash-key"), values("x-stash-tag"));
    if keys.is_empty() && tags.is_empty() {
        return answer(
            StatusCode::BAD_REQUEST,
            "name what to purge: x-stash-key and/or x-stash-tag headers\n",
        );
    }
    let mut ok = true;
    for key in &keys {
        ok &= stash.invalidate_key(key).await.is_ok();
    }
    for tag in &tags {
        ok &= stash.invalidate_tag(tag).await.is_ok();
    }
    if ok {
        answer(StatusCode::OK, "purged\n")
    } else {
        answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store failed: the purge is retried in the background\n",
        )
    }
}
