//! The connections of a [`RedisStore`] on one server: a pool that retires the connections that
//! no longer serve, and the calls made on them (on a cluster too).

use super::oom::{self, MemoryWatch};
use super::{scripts, Backend, RedisStore};
use crate::store::StoreError;
use redis::aio::MultiplexedConnection;
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::{AsyncConnectionConfig, ConnectionInfo, IntoConnectionInfo, RedisError, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// TCP keepalive on every connection (the pool's, the cluster's, the subscriber's): probes
/// after 10 s without traffic, then every 5 s; 3 unanswered close the connection. A host that
/// vanished without a FIN or an RST is found in about 25 s even on a connection nothing uses;
/// on Linux, data unacknowledged for as long closes it too (`TCP_USER_TIMEOUT`).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

const KEEPALIVE_PROBES: u32 = 3;

/// How long a pooled connection's call waits for its answer (the redis crate's default, made
/// explicit): a call without an answer by then fails, and counts towards retiring it.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

/// Calls in a row without an answer within [`RESPONSE_TIMEOUT`] that retire a pooled
/// connection (any answer, even an error, resets the count).
pub(super) const RETIRE_AFTER_TIMEOUTS: u32 = 3;

/// `base` with TCP keepalive (see [`KEEPALIVE_IDLE`]) and without Nagle's algorithm (the
/// redis crate leaves it on: a command written in two parts, an EVAL's script text, could
/// then wait for the server's delayed ACK, 40 ms).
pub(super) fn with_keepalive(base: &TcpSettings) -> TcpSettings {
    let keepalive = TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "windows"
    ))]
    let keepalive = keepalive
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let settings = base.clone().set_keepalive(keepalive).set_nodelay(true);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let settings =
        settings.set_user_timeout(KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES);
    settings
}

/// The connection settings of `url`, with TCP keepalive.
pub(super) fn connection_info(url: &str) -> Result<ConnectionInfo, RedisError> {
    let info = url.into_connection_info()?;
    let tcp = with_keepalive(info.tcp_settings());
    Ok(info.set_tcp_settings(tcp))
}

/// Opens the pool's connections (multiplexed, with a connect timeout, a response timeout and
/// TCP keepalive), and retires the ones that no longer serve, which bb8-redis's manager
/// (whose `has_broken` is always `false`) does not do: without it, a connection to a Redis
/// that was restarted, that vanished, or that was demoted to a replica would stay in the pool
/// and fail every call until its lifetime ends (30 min). See [`Hold::observe`].
pub(super) struct Manager {
    pub(super) client: super::connect::Target,
    pub(super) config: AsyncConnectionConfig,
    pub(super) connect_timeout: Duration,
    /// Connections opened before this epoch are discarded.
    pub(super) epoch: Arc<AtomicU64>,
}

/// A pooled connection.
pub(super) struct Conn {
    mux: MultiplexedConnection,
    /// The manager's epoch when it was opened.
    epoch: u64,
    /// Set when it was found opened before the manager's epoch.
    broken: bool,
    /// What its calls have met so far.
    liveness: Arc<Liveness>,
}

/// What a pooled connection's calls have met: shared by every call on it.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    /// Calls in a row that got no answer within [`RESPONSE_TIMEOUT`].
    unanswered: AtomicU32,
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        // With Sentinel, the master is asked of the sentinels for each new connection.
        let opening = async {
            let client = self.client.client().await?;
            client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await
        };
        let mux = tokio::time::timeout(self.connect_timeout, opening)
            .await
            .map_err(|_| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting to redis timed out",
                ))
            })??;
        Ok(Conn {
            mux,
            epoch,
            broken: false,
            liveness: Arc::default(),
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(&mut conn.mux).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken || conn.epoch < self.epoch.load(Ordering::Acquire)
    }
}

type Pooled = bb8::PooledConnection<'static, Manager>;

/// Hands each new pooled connection to [`MemoryWatch::check_policy`] (which reads the policy
/// once), without waiting.
#[derive(Debug)]
pub(super) struct PolicyCheck(pub(super) Arc<MemoryWatch>);

impl bb8::CustomizeConnection<Conn, RedisError> for PolicyCheck {
    fn on_acquire<'a>(
        &'a self,
        conn: &'a mut Conn,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RedisError>> + Send + 'a>>
    {
        self.0.check_policy(conn.mux.clone());
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Checks out a live connection: stale ones (opened before a drop was seen) are discarded.
async fn checkout(
    pool: &bb8::Pool<Manager>,
    epoch: &AtomicU64,
    checkout_timeout: Duration,
) -> Result<Pooled, StoreError> {
    loop {
        let mut conn = pool.get_owned().await.map_err(|e| match e {
            bb8::RunError::User(e) => StoreError::new(format!("redis: {e}")),
            bb8::RunError::TimedOut => StoreError::new(format!(
                "redis: no connection free within {checkout_timeout:?}"
            )),
        })?;
        if conn.epoch < epoch.load(Ordering::Acquire) {
            conn.broken = true;
            continue;
        }
        return Ok(conn);
    }
}

/// Checks out a connection for one call: a clone of its multiplexed handle, and the [`Hold`]
/// that reads what the call's outcome says of it. The connection goes back to the pool at
/// once.
pub(super) async fn hold_on(
    pool: &bb8::Pool<Manager>,
    epoch: &Arc<AtomicU64>,
    checkout_timeout: Duration,
) -> Result<(MultiplexedConnection, Hold), StoreError> {
    let conn = checkout(pool, epoch, checkout_timeout).await?;
    let hold = Hold {
        epoch: conn.epoch,
        shared_epoch: epoch.clone(),
        liveness: conn.liveness.clone(),
    };
    Ok((conn.mux.clone(), hold))
}

impl RedisStore {
    /// [`hold_on`] this store's pool.
    pub(super) async fn hold(
        &self,
        pool: &bb8::Pool<Manager>,
        epoch: &Arc<AtomicU64>,
    ) -> Result<(MultiplexedConnection, Hold), StoreError> {
        hold_on(pool, epoch, self.checkout_timeout).await
    }

    /// Runs one command on a pooled connection: the outer error is the pool's, the inner one
    /// Redis's. What the outcome says of the connection retires it, with every connection
    /// opened before it, when it dropped, stopped answering or reached a demoted master
    /// (see [`Hold::observe`]).
    ///
    /// The connection goes back to the pool at once and the command runs on a clone of its
    /// multiplexed handle: concurrent requests share connections and their commands are
    /// pipelined (one write and one read for many GETs), instead of each request holding a
    /// connection for its round trip.
    ///
    /// A script run by its SHA-1 ([`scripts::eval`]) that Redis no longer holds is sent again
    /// whole.
    pub(super) async fn query(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<Result<Value, RedisError>, StoreError> {
        match self.query_once(cmd).await? {
            // A script Redis no longer holds (restarted, failed over, flushed): sent whole,
            // which loads it for the next calls.
            Err(e) if scripts::is_noscript(&e) => match scripts::as_eval(cmd) {
                Some(eval) => self.query_once(&eval).await,
                None => Ok(Err(e)),
            },
            reply => Ok(reply),
        }
    }

    async fn query_once(&self, cmd: &redis::Cmd) -> Result<Result<Value, RedisError>, StoreError> {
        let (pool, shared_epoch) = match &self.backend {
            Backend::Single { pool, epoch, .. } => (pool, epoch),
            Backend::Cluster(cluster) => {
                let mut conn = cluster.connection(self.checkout_timeout).await?;
                return Ok(cmd.query_async::<Value>(&mut conn).await);
            }
            Backend::Given(given) => {
                let mut conn = given.connection(self.checkout_timeout).await?;
                return Ok(cmd.query_async::<Value>(&mut conn).await);
            }
        };
        let (mut mux, hold) = self.hold(pool, shared_epoch).await?;
        let cmd = cmd.clone();
        Ok(hold
            .watch(async move { cmd.query_async::<Value>(&mut mux).await })
            .await)
    }

    /// Runs a pipeline in one round trip (on a cluster, each command on its own, all at once:
    /// their keys may live on different nodes); any error is a [`StoreError`].
    pub(super) async fn run_pipe(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, StoreError> {
        let (pool, shared_epoch) = match &self.backend {
            Backend::Single { pool, epoch, .. } => (pool, epoch),
            Backend::Given(given) => {
                let mut conn = given.connection(self.checkout_timeout).await?;
                return pipe
                    .query_async::<Vec<Value>>(&mut conn)
                    .await
                    .map_err(|e| StoreError::new(format!("redis: {e}")));
            }
            Backend::Cluster(_) => {
                let replies =
                    futures_util::future::join_all(pipe.cmd_iter().map(|cmd| self.run(cmd))).await;
                return replies.into_iter().collect();
            }
        };
        let (mut mux, hold) = self.hold(pool, shared_epoch).await?;
        let pipe = pipe.clone();
        hold.watch(async move { pipe.query_async::<Vec<Value>>(&mut mux).await })
            .await
            .map_err(|e| StoreError::new(format!("redis: {e}")))
    }

    /// Runs one command; any error is a [`StoreError`].
    pub(super) async fn run(&self, cmd: &redis::Cmd) -> Result<Value, StoreError> {
        self.query(cmd)
            .await?
            .map_err(|e| StoreError::new(format!("redis: {e}")))
    }

    /// Runs `pipe`'s commands in one round trip (on a cluster, each on its own, all at once),
    /// and returns each one's reply or Redis's error: a command Redis refuses does not hide the
    /// others' replies. Failing to reach Redis is the outer error (on a cluster, per command).
    pub(super) async fn run_each(
        &self,
        pipe: &mut redis::Pipeline,
    ) -> Result<Vec<Result<Value, RedisError>>, StoreError> {
        if self.is_cluster() {
            let replies =
                futures_util::future::join_all(pipe.cmd_iter().map(|cmd| self.query(cmd))).await;
            return replies.into_iter().collect();
        }
        let replies = self.run_pipe(pipe.ignore_errors()).await?;
        let mut replies: Vec<_> = replies.into_iter().map(Value::extract_error).collect();
        // The scripts Redis no longer holds, sent again whole in one more round trip.
        let mut again = redis::pipe();
        let mut at = Vec::new();
        for (i, (reply, cmd)) in replies.iter().zip(pipe.cmd_iter()).enumerate() {
            if reply.as_ref().is_err_and(scripts::is_noscript) {
                if let Some(eval) = scripts::as_eval(cmd) {
                    again.add_command(eval);
                    at.push(i);
                }
            }
        }
        if !at.is_empty() {
            let more = self.run_pipe(again.ignore_errors()).await?;
            for (i, reply) in at.into_iter().zip(more) {
                replies[i] = reply.extract_error();
            }
        }
        Ok(replies)
    }

    /// Redis's error `e` as a [`StoreError`]; a refusal for lack of memory pauses fills.
    pub(super) fn refusal(&self, e: &RedisError) -> StoreError {
        if oom::is_oom(e) {
            self.memory.refused();
        }
        StoreError::new(format!("redis: {e}"))
    }
}

/// One call's hold on a pooled connection: what its outcome says of the connection.
#[derive(Clone)]
pub(super) struct Hold {
    /// The connection's epoch.
    pub(super) epoch: u64,
    /// The manager's: raised past `epoch` to retire the connection.
    pub(super) shared_epoch: Arc<AtomicU64>,
    pub(super) liveness: Arc<Liveness>,
}

impl Hold {
    /// Runs `call` and reads its outcome, even when the caller gives up first (see
    /// [`Watched`]).
    pub(super) fn watch<T: Send + 'static, F>(self, call: F) -> Watched<T>
    where
        F: Future<Output = Result<T, RedisError>> + Send + 'static,
    {
        Watched {
            call: Some(Box::pin(call)),
            hold: self,
        }
    }

    /// Retires the connection, with every connection opened before it (they went to the same
    /// server), when `reply` shows that it no longer serves:
    ///
    /// - it dropped (a server restarted or killed);
    /// - it reached a demoted master (`READONLY`): every write would fail until it recycled,
    ///   while a new connection finds the new master behind the same address;
    /// - [`RETIRE_AFTER_TIMEOUTS`] calls in a row got no answer within [`RESPONSE_TIMEOUT`]
    ///   (a host that vanished, or a path that went half-open, which no error reports): once
    ///   the server answers again, a new connection serves. A server that is only slow costs
    ///   a reconnection.
    ///
    /// Any other answer, even an error, shows the connection serves, and resets the count.
    pub(super) fn observe<T>(&self, reply: &Result<T, RedisError>) {
        let why = match reply {
            Err(e) if e.is_timeout() => {
                let unanswered = self.liveness.unanswered.fetch_add(1, Ordering::AcqRel) + 1;
                if unanswered < RETIRE_AFTER_TIMEOUTS {
                    return;
                }
                "calls in a row got no answer"
            }
            Err(e) if e.is_connection_dropped() || e.is_unrecoverable_error() => {
                "the connection dropped"
            }
            Err(e) if e.code() == Some("READONLY") => "the server is a read-only replica now",
            Ok(_) | Err(_) => {
                self.liveness.unanswered.store(0, Ordering::Release);
                return;
            }
        };
        let before = self
            .shared_epoch
            .fetch_max(self.epoch + 1, Ordering::AcqRel);
        if before <= self.epoch {
            tracing::warn!(
                reason = why,
                "redis: retiring the connection and every one opened before it"
            );
        }
    }
}

/// A call on a connection, boxed to be moved to another task.
type Call<T> = Pin<Box<dyn Future<Output = Result<T, RedisError>> + Send>>;

/// A call on a pooled connection, whose outcome its [`Hold`] reads. Dropped unfinished (the
/// caller gave up: [`Guarded`](crate::store::Guarded)'s timeout, a client gone away), the
/// call is finished in the background, up to the connection's [`RESPONSE_TIMEOUT`]: a
/// connection that no longer answers is found even when every caller gives up first.
// The bounds are `Drop`'s, which finishes the call on another task.
pub(super) struct Watched<T: Send + 'static> {
    call: Option<Call<T>>,
    hold: Hold,
}

impl<T: Send + 'static> Future for Watched<T> {
    type Output = Result<T, RedisError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(call) = this.call.as_mut() else {
            return Poll::Pending;
        };
        let reply = std::task::ready!(call.as_mut().poll(cx));
        this.call = None;
        this.hold.observe(&reply);
        Poll::Ready(reply)
    }
}

impl<T: Send + 'static> Drop for Watched<T> {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hold = self.hold.clone();
        rt.spawn(async move { hold.observe(&call.await) });
    }
}
