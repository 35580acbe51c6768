//! The bus of a [`RedisStore`]: pub/sub on one channel, a subscriber that notices when it goes
//! silent, acknowledgements counted in Redis and pushed to the publisher on the same channel
//! (`a` messages), and leases' releases announced to the instances waiting for them (`r`
//! messages); the subscriber keeps both from the memory tier.

use super::oom;
use super::scripts::{ack_key, eval, eval_text, ACK, BUS};
use super::RedisStore;
use crate::store::{Bus, BusEvent, StoreError, StoreFuture};
use bytes::Bytes;
use redis::{RedisError, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How many acknowledgements of messages nobody waits on (yet) are remembered: one may be
/// heard before its publisher starts waiting.
const ACKS_REMEMBERED: usize = 256;

/// The acknowledgements heard on the bus (`a\t0\t0\t<id>\t<count>`), and the invalidations
/// of this instance waiting on theirs.
#[derive(Default)]
pub(super) struct AckBoard {
    state: Mutex<AckState>,
}

#[derive(Default)]
struct AckState {
    waiting: HashMap<Arc<str>, tokio::sync::watch::Sender<u64>>,
    /// Counts heard for messages nobody waited on, the oldest first.
    heard: VecDeque<(Arc<str>, u64)>,
}

/// The start of the acknowledgement of message `id`, which the count follows.
fn ack_prefix(id: &str) -> String {
    format!("a\t0\t0\t{id}\t")
}

impl AckBoard {
    fn state(&self) -> std::sync::MutexGuard<'_, AckState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads an acknowledgement message; false when `payload` is not one.
    fn heard(&self, payload: &[u8]) -> bool {
        let Some(rest) = payload.strip_prefix(b"a\t0\t0\t") else {
            return false;
        };
        let text = String::from_utf8_lossy(rest);
        let Some((id, count)) = text.rsplit_once('\t') else {
            return true;
        };
        let Ok(count) = count.parse::<u64>() else {
            return true;
        };
        let mut state = self.state();
        if let Some(tx) = state.waiting.get(id) {
            tx.send_if_modified(|n| {
                let more = count > *n;
                *n = (*n).max(count);
                more
            });
        } else if let Some(seen) = state.heard.iter_mut().find(|(i, _)| &**i == id) {
            seen.1 = seen.1.max(count);
        } else {
            if state.heard.len() >= ACKS_REMEMBERED {
                state.heard.pop_front();
            }
            state.heard.push_back((id.into(), count));
        }
        true
    }

    /// Resolves once `sent` acknowledgements of `id` are heard (never, if they are not).
    async fn wait(self: Arc<Self>, id: Arc<str>, sent: u64) -> u64 {
        let mut rx = {
            let mut state = self.state();
            let so_far = state
                .heard
                .iter()
                .find(|(i, _)| *i == id)
                .map_or(0, |(_, n)| *n);
            let (tx, rx) = tokio::sync::watch::channel(so_far);
            state.waiting.insert(id.clone(), tx);
            rx
        };
        /// Unregistered however this ends (answered, or dropped at the caller's deadline).
        struct Waiting(Arc<AckBoard>, Arc<str>);
        impl Drop for Waiting {
            fn drop(&mut self) {
                self.0.state().waiting.remove(&self.1);
            }
        }
        let _waiting = Waiting(self.clone(), id);
        let heard = rx.wait_for(|n| *n >= sent).await.map(|n| *n);
        match heard {
            Ok(n) => n,
            Err(_) => std::future::pending().await,
        }
    }
}

/// The subscriber connection is PINGed this often...
const SUBSCRIBER_PING_EVERY: Duration = Duration::from_secs(1);

/// ...and its pong must come within this: a subscription silent for longer is lost.
const SUBSCRIBER_PONG_WITHIN: Duration = Duration::from_secs(2);

/// Why a subscription ended.
enum Ended {
    /// The connection closed.
    Dropped,
    /// A PING failed.
    Failed(RedisError),
    /// A PING got no pong in time: the connection may be half-open.
    Silent,
    /// Nobody listens any more (the store was dropped).
    Unsubscribed,
}

/// The subscriber count in a `PUBSUB NUMSUB` reply (`[channel, count]`, or a map of them,
/// as the cluster connection combines the nodes' replies).
fn count_in(reply: &Value) -> u64 {
    match reply {
        Value::Int(n) => u64::try_from(*n).unwrap_or(0),
        Value::Array(items) => items.iter().map(count_in).sum(),
        Value::Map(pairs) => pairs.iter().map(|(_, v)| count_in(v)).sum(),
        _ => 0,
    }
}

impl Bus for RedisStore {
    fn publish(&self, message: Bytes) -> StoreFuture<u64> {
        let this = self.clone();
        Box::pin(async move {
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(BUS).arg(&message[..]);
            if this.is_cluster() {
                // A cluster forwards the message to every node, but PUBLISH counts only the
                // subscribers of the node it ran on: ask every node how many it has.
                let mut numsub = redis::cmd("PUBSUB");
                numsub.arg("NUMSUB").arg(BUS);
                let (published, subscribers) =
                    futures_util::join!(this.run(&cmd), this.run(&numsub));
                let published = published?;
                // Counting is best effort: with a node down, the message still went out,
                // and waiting for acknowledgements is skipped rather than the call failed.
                return Ok(match subscribers {
                    Ok(n) => count_in(&n),
                    Err(e) => {
                        tracing::debug!(error = %e, "redis cluster: counting subscribers failed");
                        count_in(&published)
                    }
                });
            }
            match this.run(&cmd).await? {
                Value::Int(n) => Ok(u64::try_from(n).unwrap_or(0)),
                other => Err(StoreError::new(format!(
                    "redis: unexpected reply to PUBLISH: {other:?}"
                ))),
            }
        })
    }

    /// A task holds a pub/sub connection: it reconnects after a drop (100 ms, then backing
    /// off to 2 s), and reports [`BusEvent::Lost`] each time it has subscribed again. While
    /// the subscription is down, memory tiers keep serving (a Redis outage costs hit rate,
    /// not the memory tier); what they hold is dropped once it is back, since invalidations
    /// may have been missed meanwhile.
    ///
    /// The connection is PINGed every second: a pong that does not come within 2 s (a host
    /// that vanished without closing the connection, a path gone half-open) counts as lost
    /// at once, as no error would ever say so. Invalidations may have been missed since the
    /// last pong, so [`BusEvent::Lost`] is reported then too (the memory tier is flushed
    /// within 3 s of the silence), and the task subscribes again as after a drop.
    fn subscribe(&self, sink: Weak<dyn Fn(BusEvent) + Send + Sync>) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("redis: no tokio runtime to subscribe on: invalidations from other instances are not heard");
            return false;
        };
        let clients = self.clients.clone();
        let connect_timeout = self.connect_timeout;
        let live = self.bus_live.clone();
        let acks = self.acks.clone();
        let releases = self.releases.clone();
        let cluster = match &self.backend {
            super::Backend::Cluster(cluster) => Some(cluster.clone()),
            _ => None,
        };
        rt.spawn(async move {
            use futures_util::StreamExt;
            // Delivers `event`; false once the sink is gone (the store was dropped).
            let deliver = |event: BusEvent| match sink.upgrade() {
                Some(sink) => {
                    sink(event);
                    true
                }
                None => false,
            };
            let mut pause = Duration::from_millis(100);
            let mut resubscribed = false;
            // A cluster's nodes in turn: when one goes, the next.
            let mut next = 0;
            // On a cluster, the master that serves the channel's slot first, as `PUBLISH`
            // goes there (the redis crate routes it by the channel): a message then reaches
            // this subscription without crossing the cluster bus, whose links between nodes
            // held one in some runs for 42 ms (as we read Redis's source, the links it opens
            // lack TCP_NODELAY: a delayed acknowledgement's 40 ms). Correct on any node (a
            // cluster's `PUBLISH` reaches every node): after a failure there, the seeds in
            // turn, then the master again.
            let mut master_first = cluster.is_some();
            loop {
                let target = &clients[next % clients.len()];
                let master = match (&cluster, master_first) {
                    (Some(cluster), true) => {
                        tokio::time::timeout(connect_timeout, cluster.client_of_master(BUS))
                            .await
                            .ok()
                            .flatten()
                    }
                    _ => None,
                };
                if master.is_none() {
                    // No master known (the slots unread): the seeds until one holds.
                    master_first = false;
                    next += 1;
                }
                let on_master = master.is_some();
                let subscribed = async {
                    // With Sentinel, the master now.
                    let client = match master {
                        Some(client) => client,
                        None => target.client().await?,
                    };
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(BUS).await?;
                    Ok::<_, RedisError>(pubsub)
                };
                match tokio::time::timeout(connect_timeout, subscribed).await {
                    Ok(Ok(pubsub)) => {
                        pause = Duration::from_millis(100);
                        master_first = cluster.is_some();
                        // Messages sent while there was no subscription are lost. (Not before
                        // the first attempt: the tier was empty.)
                        if resubscribed && !deliver(BusEvent::Lost) {
                            return;
                        }
                        // Live only now that what may have been missed is flushed.
                        live.store(true, Ordering::Release);
                        let (mut control, mut messages) = pubsub.split();
                        // Ends when the sink is gone, or the connection does not answer.
                        let alive = async {
                            loop {
                                tokio::time::sleep(SUBSCRIBER_PING_EVERY).await;
                                if sink.strong_count() == 0 {
                                    return Ended::Unsubscribed;
                                }
                                let pong = control.ping::<Value>();
                                match tokio::time::timeout(SUBSCRIBER_PONG_WITHIN, pong).await {
                                    Ok(Ok(_)) => {}
                                    Ok(Err(e)) => return Ended::Failed(e),
                                    Err(_) => return Ended::Silent,
                                }
                            }
                        };
                        tokio::pin!(alive);
                        let ended = loop {
                            tokio::select! {
                                msg = messages.next() => {
                                    let Some(msg) = msg else { break Ended::Dropped };
                                    // Acknowledgements are for the publisher, releases for
                                    // the waiters: not for the tier.
                                    let payload = msg.get_payload_bytes();
                                    if acks.heard(payload) || releases.heard(payload) {
                                        continue;
                                    }
                                    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                                    if !deliver(BusEvent::Message(payload)) {
                                        return;
                                    }
                                }
                                ended = &mut alive => break ended,
                            }
                        };
                        live.store(false, Ordering::Release);
                        match ended {
                            Ended::Unsubscribed => return,
                            Ended::Dropped => {
                                tracing::warn!("redis: the invalidation subscription dropped");
                            }
                            Ended::Failed(e) => tracing::warn!(
                                error = %e,
                                "redis: the invalidation subscription failed its PING"
                            ),
                            Ended::Silent => {
                                tracing::warn!(
                                    within = ?SUBSCRIBER_PONG_WITHIN,
                                    "redis: the invalidation subscription went silent (no pong): \
                                     flushing the memory tier and subscribing again"
                                );
                                // Invalidations may have been missed since the last pong.
                                if !deliver(BusEvent::Lost) {
                                    return;
                                }
                            }
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "redis: subscribing failed"),
                    Err(_) => tracing::debug!("redis: subscribing timed out"),
                }
                // Whatever happened, the next subscription follows a time without one.
                resubscribed = true;
                if on_master {
                    // Ended or failed there: the seeds next, until one subscription holds.
                    master_first = false;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                if sink.strong_count() == 0 {
                    return;
                }
            }
        });
        true
    }

    fn live(&self) -> bool {
        self.bus_live.load(Ordering::Acquire)
    }

    /// `INCR` of the message's acknowledgement counter (kept 10 s), and the count published
    /// on the bus for the publisher, in one script.
    fn acknowledge(&self, id: Arc<str>) -> StoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            // One script: the counter never lives without its expiry.
            let ack = |mut cmd: redis::Cmd| {
                cmd.arg(1)
                    .arg(ack_key(&id))
                    .arg(10_000)
                    // On a cluster the count is only asked for: a publish crosses the
                    // cluster bus to every node (tens of ms there, measured), and one per
                    // instance per invalidation crowded it enough that failovers under load
                    // came late.
                    .arg(if this.is_cluster() { "" } else { BUS })
                    .arg(ack_prefix(&id));
                cmd
            };
            match this.query(&ack(eval(ACK))).await? {
                // Out of memory, the publisher still learns that this instance applied it.
                Err(e) if oom::is_oom(&e) => this
                    .run(&ack(eval_text(&oom::allow_oom(ACK))))
                    .await
                    .map(drop),
                reply => reply
                    .map(drop)
                    .map_err(|e| StoreError::new(format!("redis: {e}"))),
            }
        })
    }

    /// Heard on this instance's subscription (none without one: the publisher polls).
    fn pushed_acknowledgements(&self, id: Arc<str>, sent: u64) -> StoreFuture<u64> {
        let acks = self.acks.clone();
        Box::pin(async move { Ok(acks.wait(id, sent).await) })
    }

    fn acknowledgements(&self, id: Arc<str>) -> StoreFuture<u64> {
        let this = self.clone();
        Box::pin(async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(ack_key(&id));
            match this.run(&cmd).await? {
                Value::Nil => Ok(0),
                Value::BulkString(b) => Ok(std::str::from_utf8(&b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)),
                other => Err(StoreError::new(format!(
                    "redis: unexpected reply to GET: {other:?}"
                ))),
            }
        })
    }
}
