use super::body::GrpcRequestBody;
use super::GrpcMessage;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, Request};
use http_body::Body;
use pin_project_lite::pin_project;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower_service::Service;

pin_project! {
    /// The response future of [`GrpcService`](super::GrpcService): reads the body, then
    /// awaits the inner service.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<GrpcRequestBody<B>>>,
        B: Body,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<GrpcRequestBody<B>>>,
        B: Body,
    {
        Read { read: Option<Box<Reading<S, B>>> },
        Ready { ready: Option<Box<(S, Request<GrpcRequestBody<B>>)>> },
        Call { #[pin] fut: S::Future },
    }
}

struct Reading<S, B: Body> {
    inner: S,
    parts: Parts,
    body: Pin<Box<B>>,
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    size: usize,
    limit: usize,
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<GrpcRequestBody<B>>>,
    B: Body,
{
    pub(crate) fn call(fut: S::Future) -> Self {
        Self {
            state: State::Call { fut },
        }
    }

    pub(crate) fn read(inner: S, parts: Parts, body: B, limit: usize) -> Self {
        Self {
            state: State::Read {
                read: Some(Box::new(Reading {
                    inner,
                    parts,
                    body: Box::pin(body),
                    chunks: VecDeque::new(),
                    trailers: None,
                    size: 0,
                    limit,
                })),
            },
        }
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<GrpcRequestBody<B>>>,
    B: Body,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// How reading a body ended.
enum Read<E> {
    Whole,
    OverLimit,
    Failed(E),
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<GrpcRequestBody<B>>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let read = match state.as_mut().project() {
                StateProj::Call { fut } => return fut.poll(cx),
                StateProj::Ready { ready } => {
                    let (svc, _) = &mut **ready.as_mut().expect("polled after completion");
                    ready!(svc.poll_ready(cx))?;
                    let (mut svc, req) = *ready.take().expect("polled after completion");
                    let fut = svc.call(req);
                    state.set(State::Call { fut });
                    continue;
                }
                StateProj::Read { read } => read,
            };
            let r = read.as_mut().expect("polled after completion");
            let end = loop {
                match ready!(r.body.as_mut().poll_frame(cx)) {
                    None => break Read::Whole,
                    Some(Err(e)) => break Read::Failed(e),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            r.size += data.len();
                            if !data.is_empty() {
                                r.chunks.push_back(data);
                            }
                            if r.size > r.limit {
                                break Read::OverLimit;
                            }
                        }
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                r.trailers = Some(t);
                            }
                        }
                    },
                }
            };
            let Reading {
                inner,
                mut parts,
                body,
                mut chunks,
                trailers,
                size,
                ..
            } = *read.take().expect("read once");
            let body = match end {
                Read::Whole => {
                    let data = if chunks.len() == 1 {
                        chunks.pop_front().expect("one chunk")
                    } else {
                        let mut buf = BytesMut::with_capacity(size);
                        for c in &chunks {
                            buf.extend_from_slice(c);
                        }
                        buf.freeze()
                    };
                    parts.extensions.insert(GrpcMessage::new(data.clone()));
                    GrpcRequestBody::full(data, trailers)
                }
                Read::OverLimit => {
                    tracing::debug!(
                        path = parts.uri.path(),
                        "gRPC request over the size limit: not read"
                    );
                    GrpcRequestBody::prefixed(chunks, Some(body), None)
                }
                Read::Failed(e) => GrpcRequestBody::prefixed(chunks, None, Some(e)),
            };
            state.set(State::Ready {
                ready: Some(Box::new((inner, Request::from_parts(parts, body)))),
            });
        }
    }
}
