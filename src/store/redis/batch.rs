//! Reads sent together: the `GET`s of the requests a runtime runs in one go reach Redis in one
//! write and their replies in one read, instead of a write (and a wake-up of Redis) each.
//!
//! A multiplexed connection pipelines what is queued when its writer runs, but the runtime
//! runs a task woken by the one before it next (tokio's LIFO slot): each `GET` was written on
//! its own. Here a task of its own collects the reads: woken by the first, it lets the tasks
//! already runnable go first (`yield_now`), then sends everything they queued as one
//! pipeline, on a task per batch so that batches overlap.

use super::pool::{hold_on, Manager};
use crate::store::StoreError;
use redis::{RedisError, Value};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The most reads in one pipeline.
const MAX_BATCH: usize = 256;

/// A read's answer: the outer error is the pool's or the connection's, the inner one Redis's.
type Answer = Result<Result<Value, RedisError>, StoreError>;

type Queued = (redis::Cmd, oneshot::Sender<Answer>);

/// The reads of one server's pool, sent in batches by a task started with the first (and
/// started again in the runtime of a read that finds it gone with the runtime it ran on).
pub(super) struct Reads {
    pool: PoolRef,
    queue: Mutex<Option<mpsc::UnboundedSender<Queued>>>,
}

/// What a batch needs of the pool. Never the store itself: the task ends once the store's
/// last handle, which holds the queue's sender, is gone.
#[derive(Clone)]
pub(super) struct PoolRef {
    pub(super) pool: bb8::Pool<Manager>,
    pub(super) epoch: Arc<AtomicU64>,
    pub(super) checkout_timeout: Duration,
}

impl Reads {
    pub(super) fn new(pool: PoolRef) -> Self {
        Self {
            pool,
            queue: Mutex::new(None),
        }
    }

    /// Runs `cmd`, a read, in the next batch.
    pub(super) async fn query(&self, cmd: redis::Cmd) -> Answer {
        let (tx, rx) = oneshot::channel();
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let queue = match &*queue {
                Some(q) if !q.is_closed() => q,
                _ => {
                    let (q, batches) = mpsc::unbounded_channel();
                    tokio::spawn(collect(batches, self.pool.clone()));
                    queue.insert(q)
                }
            };
            if queue.send((cmd, tx)).is_err() {
                return Err(StoreError::new("redis: the read batches ended"));
            }
        }
        rx.await
            .unwrap_or_else(|_| Err(StoreError::new("redis: a read batch was dropped")))
    }
}

/// Collects the queued reads into batches, and sends each on a task of its own.
async fn collect(mut rx: mpsc::UnboundedReceiver<Queued>, pool: PoolRef) {
    while let Some(first) = rx.recv().await {
        // The tasks runnable now run first: the reads they make join this batch.
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(read) => batch.push(read),
                Err(_) => break,
            }
        }
        // Readers that gave up meanwhile (a timeout, a client gone) are left out.
        batch.retain(|(_, tx)| !tx.is_closed());
        if batch.is_empty() {
            continue;
        }
        tokio::spawn(send(batch, pool.clone()));
    }
}

/// Sends `batch` in one round trip and answers each read.
async fn send(batch: Vec<Queued>, pool: PoolRef) {
    let (mut cmds, mut readers): (Vec<redis::Cmd>, Vec<_>) = batch.into_iter().unzip();
    let (mut mux, hold) = match hold_on(&pool.pool, &pool.epoch, pool.checkout_timeout).await {
        Ok(held) => held,
        Err(e) => return fail(readers, e),
    };
    if cmds.len() == 1 {
        if let (Some(cmd), Some(reader)) = (cmds.pop(), readers.pop()) {
            let reply = hold
                .watch(async move { cmd.query_async::<Value>(&mut mux).await })
                .await;
            let _ = reader.send(Ok(reply));
        }
        return;
    }
    let mut pipe = redis::pipe();
    for cmd in cmds {
        pipe.add_command(cmd);
    }
    pipe.ignore_errors();
    let replies = hold
        .watch(async move { pipe.query_async::<Vec<Value>>(&mut mux).await })
        .await;
    match replies {
        Ok(replies) if replies.len() == readers.len() => {
            for (reader, reply) in readers.into_iter().zip(replies) {
                let _ = reader.send(Ok(reply.extract_error()));
            }
        }
        Ok(replies) => {
            let e = format!(
                "redis: {} replies to {} reads",
                replies.len(),
                readers.len()
            );
            fail(readers, StoreError::new(e));
        }
        Err(e) => fail(readers, StoreError::new(format!("redis: {e}"))),
    }
}

/// Answers every reader of a batch with `e`.
fn fail(readers: Vec<oneshot::Sender<Answer>>, e: StoreError) {
    for reader in readers {
        let _ = reader.send(Err(e.clone()));
    }
}
