use super::body::GrpcRequestBody;
use super::future::ResponseFuture;
use super::layer::{GrpcLayer, Methods};
use bytes::Bytes;
use http::{Method, Request};
use http_body::Body;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// Reads the request body of the unary gRPC methods its [`GrpcLayer`] names, and hands every
/// request on with its body unchanged: see the [module docs](crate::grpc).
pub struct GrpcService<S> {
    pub(crate) inner: S,
    pub(crate) methods: Arc<Methods>,
    pub(crate) limit: usize,
}

impl<S: Clone> Clone for GrpcService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            methods: self.methods.clone(),
            limit: self.limit,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for GrpcService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcService")
            .field("inner", &self.inner)
            .field("methods", &self.methods.paths)
            .field("max_message_size", &self.limit)
            .finish()
    }
}

impl<S> GrpcService<S> {
    /// Wraps `inner`, reading the bodies of the methods `layer` names.
    pub fn new(inner: S, layer: &GrpcLayer) -> Self {
        tower_layer::Layer::layer(layer, inner)
    }

    /// A [`GrpcLayer`] (see [`GrpcLayer::new`]).
    pub fn layer() -> GrpcLayer {
        GrpcLayer::new()
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

impl<S, B> Service<Request<B>> for GrpcService<S>
where
    S: Service<Request<GrpcRequestBody<B>>> + Clone,
    B: Body<Data = Bytes>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let read = req.method() == Method::POST
            && self.methods.contains(req.uri().path())
            && crate::plumbing::is_grpc(req.headers())
            && req.body().size_hint().lower() <= self.limit as u64;
        if !read {
            let mut inner = crate::plumbing::take_ready(&mut self.inner);
            return ResponseFuture::call(inner.call(req.map(GrpcRequestBody::plain)));
        }
        // The ready service stays for the next call: a clone is made ready once the body is
        // read, so no capacity it reserved (a concurrency slot) waits on a slow upload.
        let (parts, body) = req.into_parts();
        ResponseFuture::read(self.inner.clone(), parts, body, self.limit)
    }
}
