use super::flight::{Copy, Held, Leader, Outcome};
use crate::plumbing::Stored;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

pin_project! {
    /// The response body of [`SingleFlightService`](super::SingleFlightService): the leader's
    /// body as it streams (copied for its waiters), or a waiter's copy.
    pub struct FlightBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Copy { stored: Stored, held: Option<Held> },
        // `held` keeps a finished flight joinable until the body is dropped.
        Inner { #[pin] body: B, tee: Option<Box<Tee>>, held: Option<Held> },
    }
}

impl<B> std::fmt::Debug for FlightBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Copy { .. } => f.debug_struct("FlightBody::Copy").finish(),
            Kind::Inner { tee, .. } => f
                .debug_struct("FlightBody::Inner")
                .field("leading", &tee.is_some())
                .finish(),
        }
    }
}

/// The leader's response, gathered for its waiters.
pub(crate) struct Tee {
    pub(crate) leader: Option<Leader>,
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) limit: usize,
    pub(crate) declared: Option<u64>,
    pub(crate) size: usize,
    pub(crate) chunks: Vec<Bytes>,
    pub(crate) trailers: Option<HeaderMap>,
    /// A gRPC answer: shared only if its trailers say `grpc-status: 0`.
    pub(crate) grpc: bool,
}

impl Tee {
    fn finish(mut self: Box<Self>) -> Option<Held> {
        if self.grpc && !crate::plumbing::trailers_ok(self.trailers.as_ref()) {
            // The call failed, maybe for reasons of its own: each waiter asks for itself.
            self.release();
            return None;
        }
        if !self.grpc && self.declared.is_some_and(|n| n != self.size as u64) {
            // Ended short of (or past) its `Content-Length`: truncated, never the answer.
            self.release();
            return None;
        }
        let mut buf = BytesMut::with_capacity(self.size);
        for c in &self.chunks {
            buf.extend_from_slice(c);
        }
        let copy = Copy {
            status: self.status,
            version: self.version,
            headers: std::mem::take(&mut self.headers),
            body: buf.freeze(),
            trailers: self.trailers.take(),
            from_entry: false,
        };
        let leader = self.leader.take()?;
        Some(leader.publish_held(Outcome::Done(Arc::new(copy))))
    }

    fn release(mut self: Box<Self>) {
        if let Some(leader) = self.leader.take() {
            leader.publish(Outcome::Release);
        }
    }
}

impl<B> FlightBody<B> {
    pub(crate) fn copy(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Copy {
                stored: Stored::new(data, trailers),
                held: None,
            },
        }
    }

    /// Keeps a finished flight joinable until this body is dropped (see
    /// `Leader::publish_held`).
    pub(crate) fn hold(mut self, flight: Held) -> Self {
        let (Kind::Copy { held, .. } | Kind::Inner { held, .. }) = &mut self.kind;
        *held = Some(flight);
        self
    }

    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner {
                body,
                tee: None,
                held: None,
            },
        }
    }
}

impl<B: Body<Data = Bytes>> FlightBody<B> {
    /// The leader's body, copied for its waiters; published when it ends.
    pub(crate) fn tee(body: B, tee: Tee) -> Self {
        let tee = Box::new(tee);
        if body.is_end_stream() {
            return Self {
                kind: Kind::Inner {
                    body,
                    tee: None,
                    held: tee.finish(),
                },
            };
        }
        Self {
            kind: Kind::Inner {
                body,
                tee: Some(tee),
                held: None,
            },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for FlightBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Copy { stored, .. } => stored.next_frame(),
            KindProj::Inner {
                mut body,
                tee,
                held,
            } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(t) = tee.as_mut() {
                            if let Some(d) = f.data_ref() {
                                t.size += d.len();
                                if t.size > t.limit {
                                    // Too large to hold for the waiters: they ask themselves.
                                    if let Some(t) = tee.take() {
                                        t.release();
                                    }
                                } else if !d.is_empty() {
                                    t.chunks.push(d.clone());
                                }
                            } else if let Some(tr) = f.trailers_ref() {
                                t.trailers = Some(tr.clone());
                            }
                        }
                        // Trailers are the last frame: hyper's HTTP/2 server polls no further.
                        let complete = f.is_trailers()
                            || tee
                                .as_ref()
                                .is_some_and(|t| !t.grpc && t.declared == Some(t.size as u64));
                        if body.is_end_stream() || complete {
                            if let Some(t) = tee.take() {
                                *held = t.finish();
                            }
                        }
                    }
                    // A failed body: the leader's drop hands over to a waiter.
                    Some(Err(_)) => *tee = None,
                    None => {
                        if let Some(t) = tee.take() {
                            *held = t.finish();
                        }
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Copy { stored, .. } => stored.is_end_stream(),
            Kind::Inner { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Copy { stored, .. } => stored.size_hint(),
            Kind::Inner { body, .. } => body.size_hint(),
        }
    }
}
