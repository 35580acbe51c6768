use super::body::FlightBody;
use super::flight::Join;
use super::future::ResponseFuture;
use super::layer::Shared;
use crate::plumbing::FlightKey;
use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body::Body;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// Coalesces concurrent identical requests: see [`SingleFlightLayer`](super::SingleFlightLayer).
pub struct SingleFlightService<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S: Clone> Clone for SingleFlightService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for SingleFlightService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleFlightService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> SingleFlightService<S> {
    /// Wraps `inner` with the settings and flights of `layer`.
    pub fn new(inner: S, layer: &super::SingleFlightLayer) -> Self {
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

    /// The key of a request: the cache's above, or this layer's own from its routes.
    fn flight_key<B>(&self, req: &Request<B>) -> Option<FlightKey> {
        if req.method() == Method::HEAD {
            // A HEAD answer has no body to share with GETs of the same key.
            return None;
        }
        if let Some(key) = req.extensions().get::<FlightKey>() {
            return Some(key.clone());
        }
        let routes = self.shared.routes.as_ref()?;
        let (policy, params) = routes.find(req.method(), req.uri().path())?;
        let h = req.headers();
        if (h.contains_key(header::AUTHORIZATION) && !policy.vary_authorization)
            || policy.cookie_bypasses(h)
            || h.keys().any(|n| {
                policy.unlisted(n)
                    || (crate::headers::is_rewrite_header(n) && !policy.keyed_headers.contains(n))
            })
            // Its answer may reflect parameters the key leaves out.
            || crate::key::has_unkeyed_query(req.uri().query(), &policy.query)
            || crate::plumbing::host_bypass(policy, req).is_some()
        {
            // One client's answer is never shared with another.
            return None;
        }
        if let Some(session) = &policy.session {
            // No session id: nothing to key on, so nothing to share.
            session.value(h)?;
        }
        let fields = if policy.grpc {
            // A call whose message is unread or undecodable goes alone.
            crate::plumbing::prepare(policy.fields.as_ref(), req).ok()?
        } else {
            None
        };
        let params = crate::key::Params::new(&params, fields.as_ref());
        let (full, stored) = crate::plumbing::key_strings(&self.shared.stash, policy, &params, req);
        let full: Arc<str> = full.into();
        Some(FlightKey {
            key: stored.map_or_else(|| full.clone(), Into::into),
            full,
            lease: false,
            policy: policy.clone(),
        })
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for SingleFlightService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<FlightBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if self.shared.routes.is_none()
            && req.extensions().get::<crate::plumbing::Cached>().is_none()
            && !self
                .shared
                .misplaced
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::error!(
                path = req.uri().path(),
                "SingleFlightLayer without routes saw a request no CacheLayer passed on: it coalesces nothing there; put it inside the cache (ServiceBuilder::new().layer(cache).layer(single_flight)), or give it routes (SingleFlightLayer::new(stash).routes(...))"
            );
        }
        let Some(key) = self.flight_key(&req) else {
            return ResponseFuture::passthrough(
                crate::plumbing::take_ready(&mut self.inner).call(req),
            );
        };
        let shared = self.shared.clone();
        match shared
            .flights
            .join(&key.key, shared.max_waiters, shared.stash.epoch())
        {
            Join::Lead(leader) => ResponseFuture::lead(
                shared,
                key,
                leader,
                crate::plumbing::take_ready(&mut self.inner),
                req,
            ),
            Join::Wait(waiter) => ResponseFuture::wait(
                shared,
                key,
                waiter,
                crate::plumbing::take_ready(&mut self.inner),
                req,
            ),
            Join::Full => {
                tracing::debug!(key = %key.full, "too many waiters: going to the service alone");
                ResponseFuture::alone(crate::plumbing::take_ready(&mut self.inner).call(req))
            }
        }
    }
}
