//! The body of a response the cache answers with.

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use std::task::Poll;

/// A body from the cache, before it takes the type of the service's bodies.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Stored {
    /// A stored body (a slice of the entry: no copy) and its trailers.
    pub(crate) fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            data: Some(data).filter(|d| !d.is_empty()),
            trailers,
        }
    }

    /// No body (HEAD, 304).
    pub(crate) fn empty() -> Self {
        Self::default()
    }

    /// The next frame: the data, then the trailers, then the end.
    pub(crate) fn next_frame<E>(&mut self) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    /// The length of the data left.
    pub(crate) fn len(&self) -> usize {
        self.data.as_ref().map_or(0, Bytes::len)
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
