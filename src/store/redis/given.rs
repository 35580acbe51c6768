//! Connections an application hands a [`RedisStore`](super::RedisStore): one it already has
//! (a multiplexed connection, a connection manager), or its bb8 pool.

use crate::store::StoreError;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A future of a [`GivenConn`].
pub(super) type Connecting<'a> =
    Pin<Box<dyn Future<Output = Result<GivenConn, StoreError>> + Send + 'a>>;

/// Where the store's commands go when the application gave the connections.
pub(super) trait Given: Send + Sync {
    /// A connection for one call, waiting at most `wait` for it.
    fn connection(&self, wait: Duration) -> Connecting<'_>;

    /// Connections open, and how many of them idle.
    fn state(&self) -> (u32, u32);
}

/// One call's connection: a clone of the given one, or of a pooled one (back in the pool at
/// once: commands on a multiplexed connection are pipelined, as with the store's own pool).
pub(super) struct GivenConn(Box<dyn ConnectionLike + Send>);

impl ConnectionLike for GivenConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// A connection the application has: every call runs on a clone of it.
pub(super) struct One<C>(pub(super) C);

impl<C> Given for One<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn connection(&self, _: Duration) -> Connecting<'_> {
        let conn = GivenConn(Box::new(self.0.clone()));
        Box::pin(std::future::ready(Ok(conn)))
    }

    fn state(&self) -> (u32, u32) {
        (1, 0)
    }
}

/// The application's bb8 pool of multiplexed connections (bb8-redis's, or the redis crate's
/// own `bb8` support): its settings (size, timeouts, tests on checkout) are its own.
pub(super) struct Pool<M: bb8::ManageConnection>(pub(super) bb8::Pool<M>);

impl<M> Given for Pool<M>
where
    M: bb8::ManageConnection<Connection = MultiplexedConnection>,
{
    fn connection(&self, wait: Duration) -> Connecting<'_> {
        Box::pin(async move {
            let checkout = self.0.get();
            let conn = match tokio::time::timeout(wait, checkout).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(bb8::RunError::User(e))) => {
                    return Err(StoreError::new(format!("redis: {e:?}")))
                }
                Ok(Err(bb8::RunError::TimedOut)) | Err(_) => {
                    return Err(StoreError::new(format!(
                        "redis: no connection from the pool within {wait:?}"
                    )))
                }
            };
            Ok(GivenConn(Box::new(conn.clone())))
        })
    }

    fn state(&self) -> (u32, u32) {
        let state = self.0.state();
        (state.connections, state.idle_connections)
    }
}
