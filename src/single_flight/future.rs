use super::body::{FlightBody, Tee};
use super::flight::{Copy, Leader, Outcome, Waiter};
use super::layer::Shared;
use crate::entry::Entry;
use crate::plumbing::{CacheHint, Collapsed, Exchange, FlightKey, Lease, LeaseSlot};
use crate::policy::CompiledPolicy;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How many leaders a flight may have: after that many are gone without an answer, the
/// waiters left go to the service themselves.
const MAX_HANDOVERS: u64 = 3;

/// What a waiter ends with.
enum Joined {
    Copy(Arc<Copy>),
    /// Took over, with the deadline of the wait so far.
    Lead(Leader, Instant),
    Alone(&'static str),
}

/// What a leader's lease attempt ends with.
enum Leased {
    Lease(Lease),
    /// Another instance stored the entry meanwhile.
    Entry(Arc<Entry>),
    /// Another instance held the lease past the wait: lead without one.
    Timeout,
}

pin_project! {
    /// The response future of [`SingleFlightService`](super::SingleFlightService).
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Passthrough { #[pin] fut: S::Future },
        Alone { #[pin] fut: S::Future },
        Joining {
            join: BoxFuture<Joined>,
            shared: Arc<Shared>,
            key: FlightKey,
            call: Option<Box<(S, Request<ReqB>)>>,
        },
        Leasing {
            lease: BoxFuture<Leased>,
            shared: Arc<Shared>,
            policy: Arc<CompiledPolicy>,
            leader: Option<Leader>,
            call: Option<Box<(S, Request<ReqB>)>>,
        },
        Lead {
            #[pin] fut: S::Future,
            shared: Arc<Shared>,
            policy: Arc<CompiledPolicy>,
            leader: Option<Leader>,
            lease: Option<Lease>,
        },
        Done,
    }
}

impl<S, ReqB> std::fmt::Debug for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqB> ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    pub(crate) fn passthrough(fut: S::Future) -> Self {
        Self {
            state: State::Passthrough { fut },
        }
    }

    pub(crate) fn alone(fut: S::Future) -> Self {
        Self {
            state: State::Alone { fut },
        }
    }

    pub(crate) fn lead(
        shared: Arc<Shared>,
        key: FlightKey,
        leader: Leader,
        inner: S,
        req: Request<ReqB>,
    ) -> Self {
        let deadline = Instant::now() + shared.max_wait;
        Self {
            state: State::lead(shared, &key, leader, inner, req, deadline),
        }
    }

    pub(crate) fn wait(
        shared: Arc<Shared>,
        key: FlightKey,
        waiter: Waiter,
        inner: S,
        req: Request<ReqB>,
    ) -> Self {
        Self {
            state: State::Joining {
                join: Box::pin(wait(shared.clone(), waiter)),
                shared,
                key,
                call: Some(Box::new((inner, req))),
            },
        }
    }
}

impl<S, ReqB> State<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    /// The leader calls the service; first, with a cache above on a shared store, it takes
    /// the lease for the key (or waits for the instance that has it).
    fn lead(
        shared: Arc<Shared>,
        key: &FlightKey,
        leader: Leader,
        mut inner: S,
        req: Request<ReqB>,
        deadline: Instant,
    ) -> Self {
        if key.lease && shared.stash.store().is_shared() {
            State::Leasing {
                lease: Box::pin(lease_or_entry(
                    shared.clone(),
                    key.key.clone(),
                    key.full.clone(),
                    deadline,
                )),
                shared,
                policy: key.policy.clone(),
                leader: Some(leader),
                call: Some(Box::new((inner, req))),
            }
        } else {
            State::Lead {
                fut: inner.call(req),
                shared,
                policy: key.policy.clone(),
                leader: Some(leader),
                lease: None,
            }
        }
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    type Output = Result<Response<FlightBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Passthrough { fut } => {
                    return fut.poll(cx).map_ok(|r| r.map(FlightBody::inner));
                }
                StateProj::Alone { fut } => {
                    let mut resp = ready!(fut.poll(cx))?.map(FlightBody::inner);
                    resp.extensions_mut().insert(Collapsed::Alone);
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Joining {
                    join,
                    shared,
                    key,
                    call,
                } => {
                    let joined = ready!(join.as_mut().poll(cx));
                    let (mut inner, req) = *call.take().expect("polled after completion");
                    match joined {
                        Joined::Copy(copy) => {
                            let resp = copied(shared, &copy);
                            state.set(State::Done);
                            return Poll::Ready(Ok(resp));
                        }
                        Joined::Lead(leader, deadline) => {
                            tracing::debug!(key = %key.full, "taking over from a leader that is gone");
                            // Still bounded by the wait this request began with.
                            State::lead(shared.clone(), key, leader, inner, req, deadline)
                        }
                        Joined::Alone(why) => {
                            tracing::debug!(key = %key.full, why, "going to the service alone");
                            State::Alone {
                                fut: inner.call(req),
                            }
                        }
                    }
                }
                StateProj::Leasing {
                    lease,
                    shared,
                    policy,
                    leader,
                    call,
                } => {
                    let leased = ready!(lease.as_mut().poll(cx));
                    let leader = leader.take().expect("polled after completion");
                    let (mut inner, req) = *call.take().expect("polled after completion");
                    match leased {
                        Leased::Entry(entry) => {
                            let copy = Arc::new(Copy::of_entry(&entry, shared.stash.now()));
                            // Joinable until this copy is stored by the cache above.
                            let held = leader.publish_held(Outcome::Done(copy.clone()));
                            let resp = copied(shared, &copy).map(|b| b.hold(held));
                            state.set(State::Done);
                            return Poll::Ready(Ok(resp));
                        }
                        Leased::Lease(lease) => State::Lead {
                            fut: inner.call(req),
                            shared: shared.clone(),
                            policy: policy.clone(),
                            leader: Some(leader),
                            lease: Some(lease),
                        },
                        Leased::Timeout => State::Lead {
                            fut: inner.call(req),
                            shared: shared.clone(),
                            policy: policy.clone(),
                            leader: Some(leader),
                            lease: None,
                        },
                    }
                }
                StateProj::Lead {
                    fut,
                    shared,
                    policy,
                    leader,
                    lease,
                } => {
                    let result = ready!(fut.poll(cx));
                    let leader = leader.take().expect("polled after completion");
                    let resp = match result {
                        Ok(resp) => resp,
                        Err(e) => {
                            // The leader's drop hands over to one waiter.
                            drop(leader);
                            state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    };
                    let (mut parts, body) = resp.into_parts();
                    if let Some(lease) = lease.take() {
                        // Released by the cache once it has stored the response.
                        parts.extensions.insert(LeaseSlot::new(lease));
                    }
                    // The route's limit, when larger: the cache stores such bodies, and its
                    // waiters would otherwise all call the service at once.
                    let limit = shared.max_body_size.max(policy.max_body_size);
                    // Only what the cache could store, and use without asking the service
                    // (the rule the cache stores by): one client's answer is never another's.
                    let hint = if policy.hints {
                        CacheHint::peek(&parts.headers, &parts.extensions)
                    } else {
                        CacheHint::default()
                    };
                    let view = crate::http::effective(&parts.headers, &policy.targeted);
                    let exchange = Exchange {
                        policy,
                        status: parts.status,
                        headers: &view,
                        // Such requests never join a flight (see `flight_key`).
                        unkeyed_query: false,
                        authorized: false,
                    };
                    let shared_rule = exchange.shareable(&hint, shared.stash.now());
                    if let Err(reason) = shared_rule {
                        tracing::debug!(key = %leader.key(), reason, "response not shared");
                    }
                    let shareable = shared_rule.is_ok() && body.size_hint().lower() <= limit as u64;
                    let body = if shareable {
                        let tee = Tee {
                            leader: Some(leader),
                            status: parts.status,
                            version: parts.version,
                            // The leader's cookie is its own (shared only where the
                            // policy stores a copy without it).
                            headers: {
                                let mut h = parts.headers.clone();
                                h.remove(http::header::SET_COOKIE);
                                h
                            },
                            limit,
                            declared: crate::headers::content_length(&parts.headers),
                            size: 0,
                            chunks: Vec::new(),
                            trailers: None,
                            grpc: policy.grpc,
                        };
                        FlightBody::tee(body, tee)
                    } else {
                        tracing::debug!(key = %leader.key(), "response not shared: waiters ask the service");
                        leader.publish(Outcome::Release);
                        FlightBody::inner(body)
                    };
                    state.set(State::Done);
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            };
            state.set(next);
        }
    }
}

/// A waiter's copy of the leader's response.
fn copied<B>(shared: &Shared, copy: &Copy) -> Response<FlightBody<B>> {
    shared.stash.counters().collapsed();
    let mut resp = copy.response(FlightBody::copy(copy.body.clone(), copy.trailers.clone()));
    resp.extensions_mut().insert(if copy.from_entry {
        Collapsed::FromEntry
    } else {
        Collapsed::Waited
    });
    resp
}

/// Waits for the flight's outcome; takes over when its leader is gone.
async fn wait(shared: Arc<Shared>, mut waiter: Waiter) -> Joined {
    let deadline = Instant::now() + shared.max_wait;
    loop {
        let outcome = match tokio::time::timeout_at(deadline, waiter.outcome()).await {
            Ok(outcome) => outcome,
            Err(_) => return Joined::Alone("timeout"),
        };
        match outcome {
            Outcome::Done(copy) => return Joined::Copy(copy),
            Outcome::Release => return Joined::Alone("not shared"),
            // Leaders that keep failing (errors, panics): the waiters stop queueing behind
            // them one at a time, and each asks the service itself.
            Outcome::Retry(gen) if gen + 1 >= MAX_HANDOVERS => {
                return Joined::Alone("leaders keep failing")
            }
            Outcome::Retry(gen) => {
                if let Some(leader) = waiter.claim(gen) {
                    return Joined::Lead(leader, deadline);
                }
            }
            Outcome::Running => {}
        }
    }
}

/// Takes the key's lease in the shared store; while another instance holds it, waits for its
/// release (announced on the store's bus when someone waits for it) and then reads the entry
/// it stored, or takes the lease in turn; polls meanwhile (every 2 ms at first, backing off
/// to 50 ms), as the only way where no announcement comes, until `deadline`.
async fn lease_or_entry(
    shared: Arc<Shared>,
    key: Arc<str>,
    full: Arc<str>,
    deadline: Instant,
) -> Leased {
    let stash = &shared.stash;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(lease) = Lease::take(stash, &key).await {
            // The holder before may have stored the entry and released just now.
            if let Some(entry) = fresh_entry(&shared, &key, &full).await {
                lease.release().await;
                return Leased::Entry(entry);
            }
            return Leased::Lease(lease.kept());
        }
        if Instant::now() + pause > deadline {
            tracing::debug!(key = %full, "another instance kept the lease too long: going on");
            return Leased::Timeout;
        }
        let released = stash
            .store()
            .leases()
            .map(|leases| leases.lease_released(key.clone()));
        match released {
            Some(released) => {
                crate::concurrently::first(released, tokio::time::sleep(pause)).await;
            }
            None => tokio::time::sleep(pause).await,
        }
        pause = (pause * 2).min(Duration::from_millis(50));
        if let Some(entry) = fresh_entry(&shared, &key, &full).await {
            return Leased::Entry(entry);
        }
    }
}

async fn fresh_entry(shared: &Shared, key: &Arc<str>, full: &str) -> Option<Arc<Entry>> {
    let entry = shared.stash.store().get(key.clone()).await.ok()??;
    // Fresh by its idle time too (sliding expiry), not only its cap.
    (entry.key() == full && shared.stash.now() < entry.fresh_until()).then_some(entry)
}
