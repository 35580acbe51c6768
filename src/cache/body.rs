use crate::entry::Entry;
use crate::plumbing::Stored;
use crate::stash::complete_headers;
use crate::Stash;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

pin_project! {
    /// The response body of [`CacheService`](super::CacheService): a stored body on a hit, or the
    /// service's body as it streams (copied on the side, up to the size limit, to be stored when
    /// it ends).
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Full { stored: Stored },
        Stream { #[pin] body: B, capture: Option<Box<Capture>> },
    }
}

impl<B> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full { stored } => f
                .debug_struct("CacheBody::Full")
                .field("len", &stored.len())
                .finish(),
            Kind::Stream { capture, .. } => f
                .debug_struct("CacheBody::Stream")
                .field("capturing", &capture.is_some())
                .finish(),
        }
    }
}

impl<B> CacheBody<B> {
    /// A body from the cache.
    pub(crate) fn stored(stored: Stored) -> Self {
        Self {
            kind: Kind::Full { stored },
        }
    }

    /// The service's body, passed on as it is.
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Stream {
                body,
                capture: None,
            },
        }
    }
}

impl<B: Body<Data = Bytes>> CacheBody<B> {
    /// The service's body, copied to `capture` as it streams. A body that is already over
    /// (hyper may never poll it) is stored at once.
    pub(crate) fn tee(body: B, capture: Capture, cx: &mut Context<'_>) -> Self {
        if body.is_end_stream() {
            capture.finish(cx);
            return Self::inner(body);
        }
        Self {
            kind: Kind::Stream {
                body,
                capture: Some(Box::new(capture)),
            },
        }
    }
}

impl<B> Body for CacheBody<B>
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
            KindProj::Full { stored } => stored.next_frame(),
            KindProj::Stream { mut body, capture } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(c) = capture.as_mut() {
                            if let Some(d) = f.data_ref() {
                                if !c.push(d) {
                                    *capture = None;
                                }
                            } else if let Some(t) = f.trailers_ref() {
                                c.trailers = Some(t.clone());
                            }
                        }
                        // hyper stops polling once a body reports its end, or once the
                        // declared `Content-Length` is written: store then, not at `None`.
                        // Trailers are the last frame: hyper's HTTP/2 server polls no further.
                        // A gRPC answer is complete only with its trailers.
                        let complete = f.is_trailers()
                            || capture
                                .as_ref()
                                .is_some_and(|c| !c.grpc && c.declared == Some(c.size as u64));
                        if body.is_end_stream() || complete {
                            if let Some(c) = capture.take() {
                                c.finish(cx);
                            }
                        }
                    }
                    Some(Err(_)) => {
                        if let Some(c) = capture.take() {
                            tracing::debug!(key = %c.key, "body failed midway: not stored");
                        }
                    }
                    None => {
                        if let Some(c) = capture.take() {
                            c.finish(cx);
                        }
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { stored } => stored.is_end_stream(),
            Kind::Stream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { stored } => stored.size_hint(),
            Kind::Stream { body, .. } => body.size_hint(),
        }
    }
}

/// The copy of a streaming response, stored when its body ends.
pub(crate) struct Capture {
    pub(crate) stash: Stash,
    pub(crate) key: Arc<str>,
    pub(crate) full_key: Arc<str>,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) ttl: Duration,
    pub(crate) tags: Vec<String>,
    pub(crate) limit: usize,
    /// The declared `Content-Length`, if any.
    pub(crate) declared: Option<u64>,
    pub(crate) etag: bool,
    /// A gRPC answer: stored only if its trailers say `grpc-status: 0`.
    pub(crate) grpc: bool,
    /// Sliding expiry's idle time.
    pub(crate) sliding: Option<Duration>,
    /// Stored in this instance's memory tier only (a partial response).
    pub(crate) local: bool,
    /// The lease on the key, released once the entry is stored.
    pub(crate) lease: Option<crate::plumbing::Lease>,
    /// When the request went to the service, less the age the answer arrived with.
    pub(crate) stored_at: SystemTime,
    /// When the request went to the service.
    pub(crate) started: SystemTime,
    /// How long past its TTL the entry is kept to be served stale.
    pub(crate) grace: Duration,
    pub(crate) size: usize,
    pub(crate) chunks: Vec<Bytes>,
    pub(crate) trailers: Option<HeaderMap>,
}

impl Capture {
    /// Keeps a chunk (a reference-counted clone, not a copy); false once over the limit.
    fn push(&mut self, chunk: &Bytes) -> bool {
        self.size += chunk.len();
        if self.size > self.limit {
            tracing::debug!(key = %self.key, limit = self.limit, "body over the size limit: not stored");
            return false;
        }
        if !chunk.is_empty() {
            self.chunks.push(chunk.clone());
        }
        true
    }

    /// Builds the entry and stores it: polled once here (the memory store finishes at once, so
    /// the next request hits), and spawned if the store needs longer.
    fn finish(self, cx: &mut Context<'_>) {
        let Capture {
            stash,
            key,
            full_key,
            status,
            mut headers,
            ttl,
            tags,
            etag,
            stored_at,
            started,
            grace,
            size,
            chunks,
            trailers,
            lease,
            grpc,
            sliding,
            local,
            declared,
            ..
        } = self;
        // A tombstone refuses a fill whose request began before its invalidation only while
        // it lasts: a fill older than that (a slow service or client) may predate one.
        let took = stash.now().duration_since(started).unwrap_or_default();
        if took >= stash.inner.tombstone_ttl {
            tracing::debug!(%key, ?took, "the request began longer ago than a tombstone lasts: not stored");
            return;
        }
        if declared.is_some_and(|n| n != size as u64) && !grpc {
            // Ended cleanly, but short of (or past) its `Content-Length`: truncated by a
            // connection closed early, never the whole answer.
            tracing::debug!(%key, ?declared, size, "the body is not the length it declared: not stored");
            drop(lease);
            return;
        }
        if grpc && !crate::plumbing::trailers_ok(trailers.as_ref()) {
            tracing::debug!(%key, "gRPC call failed (grpc-status in its trailers): not stored");
            // The lease goes with it: another request may try.
            drop(lease);
            return;
        }
        // Always one exact copy: a chunk may be a slice of a larger buffer (a read buffer),
        // which the entry would otherwise keep alive while weighing only the slice.
        let mut buf = BytesMut::with_capacity(size);
        for c in &chunks {
            buf.extend_from_slice(c);
        }
        let body = buf.freeze();
        complete_headers(&mut headers, status, &body, etag, &stash);
        if grpc {
            // The length of a gRPC answer is its messages'; its trailers follow them.
            headers.remove(http::header::CONTENT_LENGTH);
        }
        let took = stash.now().duration_since(stored_at).unwrap_or_default();
        let entry = Entry::new(&*full_key, status, headers, body)
            .with_times(stored_at, ttl)
            .with_grace(grace)
            .with_recompute_time(took)
            .with_trailers(trailers)
            .with_sliding(sliding)
            .with_tags(tags);
        let keep = ttl.saturating_add(grace).min(crate::entry::MAX_TTL);
        let entry = Arc::new(entry);
        let mut put = if local {
            // Read from this instance's memory only: kept there only.
            match stash.store().put_local(key.clone(), entry, keep) {
                Some(put) => put,
                None => return,
            }
        } else {
            stash.store().put(key.clone(), entry, keep)
        };
        match put.as_mut().poll(cx) {
            Poll::Ready(result) => {
                stash.record_put(&key, result);
                drop(lease);
            }
            Poll::Pending => match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        stash.record_put(&key, put.await);
                        if let Some(lease) = lease {
                            lease.release().await;
                        }
                    });
                }
                Err(_) => {
                    stash.counters().store_error();
                    tracing::warn!(%key, "no tokio runtime to finish storing the entry");
                }
            },
        }
    }
}
