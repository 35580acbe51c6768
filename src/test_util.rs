//! Test support for the unit tests: what a client got, a counting upstream, bounded waits and a
//! failing store.

use crate::{Entry, Store, StoreError, StoreFuture};
use axum::response::IntoResponse;
use axum::routing::MethodRouter;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt};

/// A shared store that is always down: every call fails.
pub(crate) struct Down;

impl Store for Down {
    fn get(&self, _: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        Box::pin(async { Err(StoreError::new("down")) })
    }
    fn put(&self, _: Arc<str>, _: Arc<Entry>, _: Duration) -> StoreFuture<()> {
        Box::pin(async { Err(StoreError::new("down")) })
    }
    fn delete(&self, _: Arc<str>) -> StoreFuture<()> {
        Box::pin(async { Err(StoreError::new("down")) })
    }
    fn invalidate_tag(
        &self,
        _: Arc<str>,
        _: Arc<str>,
        _: SystemTime,
        _: Duration,
    ) -> StoreFuture<()> {
        Box::pin(async { Err(StoreError::new("down")) })
    }
}

/// Waits for `fut`, failing the test after 10 seconds.
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until `cond` holds, checking every millisecond, for at most 10 seconds.
pub(crate) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
}

/// What a client got: a response read to its end.
#[derive(Debug)]
pub(crate) struct Got {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
}

impl Got {
    /// Reads `resp` to the end of its body.
    pub(crate) async fn read<B>(resp: Response<B>) -> Self
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Debug,
    {
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.unwrap();
        Self {
            status: parts.status,
            headers: parts.headers,
            trailers: collected.trailers().cloned(),
            body: collected.to_bytes(),
        }
    }

    /// The body as UTF-8 text.
    pub(crate) fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// The `Cache-Status` header, or "" where there is none.
    pub(crate) fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or_default()
    }

    /// Whether it was served from the cache: `Cache-Status` says `hit`.
    pub(crate) fn is_hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }

    /// The header `name` as text, if there is one.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// Sends `req` through `svc` once and reads the whole response.
pub(crate) async fn send<S, R, B>(svc: S, req: R) -> Got
where
    S: Service<R, Response = Response<B>>,
    S::Error: Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: Debug,
{
    Got::read(svc.oneshot(req).await.unwrap()).await
}

/// The body [`Upstream`] answers with.
pub(crate) type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A whole body of `bytes`.
pub(crate) fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// Counts calls, and holds each one at a gate while the gate is closed.
#[derive(Clone)]
pub(crate) struct Counter {
    calls: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    permits: Arc<Semaphore>,
}

impl Default for Counter {
    /// A counter whose gate is open.
    fn default() -> Self {
        Self {
            calls: Arc::default(),
            closed: Arc::default(),
            permits: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Counter {
    /// A counter whose gate is closed until [`open`](Self::open).
    pub(crate) fn closed() -> Self {
        let counter = Self::default();
        counter.close();
        counter
    }

    /// Closes the gate: the calls from now on wait for [`open`](Self::open).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Lets the calls waiting at the gate, and all later ones, through.
    pub(crate) fn open(&self) {
        self.permits.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// Counts a call, waits while the gate is closed, and returns the call's number (from 1).
    pub(crate) async fn enter(&self) -> usize {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.closed.load(Ordering::SeqCst) {
            self.permits.acquire().await.unwrap().forget();
        }
        n
    }

    /// How many calls were counted.
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// An axum GET handler that enters this counter, then answers `answer(call number)`.
    pub(crate) fn get<R>(
        &self,
        answer: impl Fn(usize) -> R + Clone + Send + Sync + 'static,
    ) -> MethodRouter
    where
        R: IntoResponse + 'static,
    {
        let counter = self.clone();
        axum::routing::get(move || {
            let (counter, answer) = (counter.clone(), answer.clone());
            async move { answer(counter.enter().await) }
        })
    }
}

type Respond = dyn Fn(&Request<Bytes>, usize) -> Response<TestBody> + Send + Sync;

/// A counting upstream service: reads each request's body, records the request, and answers
/// with `respond(request, call number)`.
#[derive(Clone)]
pub(crate) struct Upstream {
    counter: Counter,
    respond: Arc<Mutex<Arc<Respond>>>,
    requests: Arc<Mutex<Vec<Request<Bytes>>>>,
    delay: Duration,
}

impl Upstream {
    /// An upstream answering each request with `respond(request, call number)`.
    pub(crate) fn new(
        respond: impl Fn(&Request<Bytes>, usize) -> Response<TestBody> + Send + Sync + 'static,
    ) -> Self {
        Self {
            counter: Counter::default(),
            respond: Arc::new(Mutex::new(Arc::new(respond))),
            requests: Arc::default(),
            delay: Duration::ZERO,
        }
    }

    /// Answers 200 with the path, query and call number: every call is told apart.
    pub(crate) fn echo() -> Self {
        Self::new(|req, n| Response::new(full(format!("{} #{n}", req.uri()))))
    }

    /// The same upstream, waiting `delay` before it reads each request.
    pub(crate) fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Answers the calls from now on with `respond`.
    pub(crate) fn answer(
        &self,
        respond: impl Fn(&Request<Bytes>, usize) -> Response<TestBody> + Send + Sync + 'static,
    ) {
        *self.respond.lock().unwrap() = Arc::new(respond);
    }

    /// How many calls it got.
    pub(crate) fn calls(&self) -> usize {
        self.counter.calls()
    }

    /// The requests it has read, in the order it read them.
    pub(crate) fn requests(&self) -> Vec<Request<Bytes>> {
        self.requests.lock().unwrap().clone()
    }
}

impl<B> Service<Request<B>> for Upstream
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Debug,
{
    type Response = Response<TestBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<TestBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let n = this.counter.enter().await;
            if !this.delay.is_zero() {
                tokio::time::sleep(this.delay).await;
            }
            let (parts, body) = req.into_parts();
            let req = Request::from_parts(parts, body.collect().await.unwrap().to_bytes());
            this.requests.lock().unwrap().push(req.clone());
            let respond = this.respond.lock().unwrap().clone();
            Ok(respond(&req, n))
        })
    }
}

/// The messages of the error-level events `run` logs (on this thread: run it on a
/// current-thread runtime inside).
pub(crate) fn logged_errors(run: impl FnOnce()) -> Vec<String> {
    logged(tracing::Level::ERROR, run).1
}

/// What `run` returns, and the messages of the events it logged at warn level or above.
pub(crate) fn logged_warnings<T>(run: impl FnOnce() -> T) -> (T, Vec<String>) {
    logged(tracing::Level::WARN, run)
}

/// What `run` returns, and the messages of the events it logged at `level` or above.
fn logged<T>(level: tracing::Level, run: impl FnOnce() -> T) -> (T, Vec<String>) {
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata};
    struct Events(Arc<Mutex<Vec<String>>>, Level);
    struct Message(String);
    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }
    impl tracing::Subscriber for Events {
        fn enabled(&self, meta: &Metadata<'_>) -> bool {
            *meta.level() <= self.1
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0.lock().unwrap().push(message.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
    let events = Arc::new(Mutex::new(Vec::new()));
    let out = tracing::subscriber::with_default(Events(events.clone(), level), run);
    let events = events.lock().unwrap().clone();
    (out, events)
}
