//! Store errors the layers meet, logged without a storm: a store down for 10,000 requests
//! writes a handful of lines, not two per request.
//!
//! A call a circuit breaker refused at once is never logged here: the breaker says once that
//! it opened (with the error that opened it) and once that it closed (with how many calls it
//! refused meanwhile). Other errors (the failures before a breaker opens, or a store with no
//! breaker) are logged at warn at most once per [`EVERY`], each line counting the errors left
//! unlogged since the previous one; the others go to debug. Every error is counted in
//! [`Stats::store_errors`](crate::Stats::store_errors) all the same.

use super::Stash;
use crate::store::StoreError;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least time between two warn lines for store errors.
const EVERY: Duration = Duration::from_secs(10);

/// When a store error was last logged at warn, and how many were not since.
#[derive(Debug, Default)]
pub(crate) struct ErrorLog {
    gate: Mutex<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    /// `Some(errors left unlogged since the last line)` when this one is to be logged at
    /// warn; `None` when it is one more left unlogged.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if gate.last.is_some_and(|at| now.duration_since(at) < EVERY) {
            gate.suppressed += 1;
            return None;
        }
        gate.last = Some(now);
        Some(std::mem::take(&mut gate.suppressed))
    }
}

impl Stash {
    /// Counts a store error a layer met (`what` it was doing, on `key`), and logs it without
    /// a storm (see the module's docs).
    pub(crate) fn store_failed(
        &self,
        what: &'static str,
        key: &dyn std::fmt::Display,
        e: &StoreError,
    ) {
        self.counters().store_error();
        if e.is_circuit_open() {
            tracing::trace!(%key, "{what}: circuit open");
            return;
        }
        match self.inner.error_log.admit(Instant::now()) {
            Some(0) => tracing::warn!(%key, error = %e, "{what}"),
            Some(suppressed) => tracing::warn!(
                %key,
                error = %e,
                suppressed,
                "{what} ({suppressed} more store errors since the last such line, not logged)"
            ),
            None => tracing::debug!(%key, error = %e, "{what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_others() {
        let log = ErrorLog::default();
        let t0 = Instant::now();
        assert_eq!(log.admit(t0), Some(0));
        let logged = (1..=10_000u64)
            .filter(|i| log.admit(t0 + Duration::from_micros(*i)).is_some())
            .count();
        assert_eq!(logged, 0);
        assert_eq!(log.admit(t0 + EVERY), Some(10_000));
        assert_eq!(log.admit(t0 + EVERY), None);
    }
}
