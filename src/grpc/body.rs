use crate::plumbing::Stored;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project! {
    /// The request body [`GrpcService`](super::GrpcService) hands on: the client's body as it
    /// came, or the copy it read (the same bytes and trailers).
    pub struct GrpcRequestBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        // Not read: the client's body.
        Plain { #[pin] body: B },
        // Read whole.
        Full { stored: Stored },
        // Read in part (over the limit, or failed): what was read, then the rest.
        Prefixed { prefix: VecDeque<Bytes>, rest: Option<Pin<Box<B>>>, error: Option<B::Error> },
    }
}

impl<B: Body> GrpcRequestBody<B> {
    pub(crate) fn plain(body: B) -> Self {
        Self {
            kind: Kind::Plain { body },
        }
    }

    pub(crate) fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Full {
                stored: Stored::new(data, trailers),
            },
        }
    }

    /// What was read, then `rest` (over the limit), or then `error` (the read failed).
    pub(crate) fn prefixed(
        prefix: VecDeque<Bytes>,
        rest: Option<Pin<Box<B>>>,
        error: Option<B::Error>,
    ) -> Self {
        Self {
            kind: Kind::Prefixed {
                prefix,
                rest,
                error,
            },
        }
    }
}

impl<B: Body> fmt::Debug for GrpcRequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcRequestBody").finish_non_exhaustive()
    }
}

impl<B> Body for GrpcRequestBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Plain { body } => body.poll_frame(cx),
            KindProj::Full { stored } => stored.next_frame(),
            KindProj::Prefixed {
                prefix,
                rest,
                error,
            } => {
                if let Some(d) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                if let Some(e) = error.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                match rest {
                    Some(rest) => rest.as_mut().poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain { body } => body.is_end_stream(),
            Kind::Full { stored } => stored.is_end_stream(),
            Kind::Prefixed {
                prefix,
                rest,
                error,
            } => {
                prefix.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain { body } => body.size_hint(),
            Kind::Full { stored } => stored.size_hint(),
            Kind::Prefixed { prefix, rest, .. } => {
                let read: u64 = prefix.iter().map(|d| d.len() as u64).sum();
                let mut hint = rest.as_ref().map(|r| r.size_hint()).unwrap_or_default();
                hint.set_lower(hint.lower().saturating_add(read));
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
        }
    }
}
