use super::body::InvalidateBody;
use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pin_project! {
    /// The response future of [`InvalidateService`](super::InvalidateService).
    pub struct ResponseFuture<F, B: http_body::Body, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B: http_body::Body, E> {
        Passthrough { #[pin] fut: F },
        Work { fut: BoxFuture<Result<Response<InvalidateBody<B>>, E>> },
    }
}

impl<F, B: http_body::Body, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B: http_body::Body, E> ResponseFuture<F, B, E> {
    pub(crate) fn passthrough(fut: F) -> Self {
        Self {
            kind: Kind::Passthrough { fut },
        }
    }

    pub(crate) fn boxed(
        fut: impl Future<Output = Result<Response<InvalidateBody<B>>, E>> + Send + 'static,
    ) -> Self {
        Self {
            kind: Kind::Work { fut: Box::pin(fut) },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<InvalidateBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { fut } => fut.poll(cx).map_ok(|r| r.map(InvalidateBody::inner)),
            KindProj::Work { fut } => fut.as_mut().poll(cx),
        }
    }
}
