//! The background probe of a [`Guarded`](super::Guarded) store: pings it while no call ends.

use super::breaker::{Breaker, Permit};
use crate::store::Store;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The background probe of one breaker: pings the store while no call ends, until the
/// breaker is dropped.
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
                    Some(due) => tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        () = woken => {}
                    },
                    None => woken.await,
                }
            }
            Next::Ping(permit, timeout) => {
                let Some(store) = store.upgrade() else {
                    return;
                };
                let ping = match store.health_check() {
                    Some(check) => check.ping(),
                    None => Box::pin(std::future::ready(Ok(()))),
                };
                drop(store);
                let ok = matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(())));
                if !ok {
                    tracing::debug!("cache store probe: no answer to a ping");
                }
                permit.finish(ok);
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
