//! The background probe of a [`Guarded`](super::Guarded) store: pings it while no call ends.

use super::breaker::{Breaker, Permit};
use crate::store::{Store, StoreError};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The background probe of one breaker: pings the store (or, for a part's breaker, that
/// part) while no call ends, until the breaker is dropped.
pub(super) async fn probe<S: Store>(store: Weak<S>, breaker: Weak<Breaker>, wake: Arc<Notify>) {
    let _running = Running(breaker.clone());
    loop {
        let Some(next) = breaker.upgrade().map(|b| b.probe_next()) else {
            return;
        };
        match next {
            Next::Wait(due) => {
                // Woken early by a failure, a changed setting, or the breaker's drop.
                let woken = wake.notified();
                match due {
                    Some(due) => {
                        let mut woken = std::pin::pin!(woken);
                        let mut sleep = std::pin::pin!(tokio::time::sleep_until(due));
                        std::future::poll_fn(|cx| {
                            if woken.as_mut().poll(cx).is_ready()
                                || sleep.as_mut().poll(cx).is_ready()
                            {
                                Poll::Ready(())
                            } else {
                                Poll::Pending
                            }
                        })
                        .await;
                    }
                    None => woken.await,
                }
            }
            Next::Ping(permit, timeout) => {
                let store_again = store.clone();
                let Some(store) = store.upgrade() else {
                    return;
                };
                // A part's breaker pings that part.
                let part = breaker.upgrade().and_then(|b| b.part.clone());
                let ping = match (store.health_check(), &part) {
                    (Some(check), Some(part)) => check.ping_part(part),
                    (Some(check), None) => check.ping(),
                    (None, _) => Box::pin(std::future::ready(Ok(()))),
                };
                drop(store);
                let error = match tokio::time::timeout(timeout, ping).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some(StoreError::new(format!(
                        "no answer to a ping within {timeout:?}"
                    ))),
                };
                if let Some(e) = &error {
                    tracing::debug!(error = %e, "cache store probe failed");
                }
                let opened = permit.finish(error.as_ref());
                if let (true, Some(part)) = (opened, &part) {
                    if let Some(store) = store_again.upgrade() {
                        store.part_failing(part);
                    }
                }
            }
        }
    }
}

/// Marks the probe stopped if its task is dropped (its runtime shut down), so that the next
/// call starts another.
struct Running(Weak<Breaker>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(breaker) = self.0.upgrade() {
            breaker.probe_started.store(false, Ordering::Release);
        }
    }
}

/// What the probe does next.
pub(super) enum Next {
    /// Nothing until then (or, `None`, until woken: the probe is off).
    Wait(Option<Instant>),
    /// Ping the store, within the timeout.
    Ping(Permit, Duration),
}
