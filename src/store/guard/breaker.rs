//! The circuit breaker of a [`Guarded`](super::Guarded) store: when calls go through, when
//! they fail at once, and when the probe pings.

use super::probe::Next;
use crate::store::{BreakerState, HealthReport, StoreError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// After a failure, the probe pings again after this fraction of its interval, so that a dead
/// store reaches the failure threshold in a fraction of a second, not `failures` seconds.
const CONFIRM: u32 = 10;

/// The least the probe waits after a ping, whatever the settings (a zero cool-down, a tiny
/// interval), so that it never spins on a store that answers at once.
pub(super) const MIN_GAP: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Calls go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// Calls fail at once until `until`.
    Open { until: Instant },
    /// One probe (a ping or a call) is in flight; the calls fail at once.
    Probing,
}

impl From<Phase> for BreakerState {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Closed { .. } => Self::Closed,
            Phase::Open { .. } => Self::Open,
            Phase::Probing => Self::HalfOpen,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    pub(super) timeout: Duration,
    pub(super) threshold: u32,
    pub(super) cool_down: Duration,
    pub(super) probe_interval: Duration,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) settings: Settings,
    phase: Phase,
    /// When a call or a ping last ended, failed or not.
    last_end: Option<Instant>,
    /// When one last succeeded.
    last_success: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct Breaker {
    state: Mutex<State>,
    /// Wakes the probe: a failure, a changed setting, the breaker's drop.
    pub(super) wake: Arc<Notify>,
    /// Whether a probe task runs for this breaker.
    pub(super) probe_started: AtomicBool,
}

impl Drop for Breaker {
    fn drop(&mut self) {
        // The probe sees the breaker gone and ends.
        self.wake.notify_one();
    }
}

impl Breaker {
    pub(super) fn new(settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                settings,
                phase: Phase::Closed { failures: 0 },
                last_end: None,
                last_success: None,
            }),
            wake: Arc::new(Notify::new()),
            probe_started: AtomicBool::new(false),
        })
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The breaker's state now.
    pub(super) fn phase(&self) -> BreakerState {
        self.state().phase.into()
    }

    pub(super) fn report(&self) -> HealthReport {
        let state = self.state();
        let since = state
            .last_success
            .map(|at| Instant::now().saturating_duration_since(at));
        HealthReport::new(state.phase.into(), since)
    }

    /// Whether the background probe, not a call, half-opens the breaker.
    fn probe_on(&self, state: &State) -> bool {
        !state.settings.probe_interval.is_zero() && self.probe_started.load(Ordering::Acquire)
    }

    /// Lets a call through (with its timeout), or fails it at once while open.
    pub(super) fn admit(self: &Arc<Self>) -> Result<(Permit, Duration), StoreError> {
        let mut state = self.state();
        let probe = match state.phase {
            Phase::Closed { .. } => false,
            Phase::Open { until } if Instant::now() >= until && !self.probe_on(&state) => {
                state.phase = Phase::Probing;
                true
            }
            Phase::Open { .. } | Phase::Probing => {
                return Err(StoreError::new("circuit open: not calling the store"));
            }
        };
        let permit = Permit {
            breaker: Some(self.clone()),
            probe,
        };
        Ok((permit, state.settings.timeout))
    }

    /// The probe's next step: wait, or ping now (half-opening an open breaker).
    pub(super) fn probe_next(self: &Arc<Self>) -> Next {
        let mut state = self.state();
        let settings = state.settings;
        let interval = settings.probe_interval;
        if interval.is_zero() {
            return Next::Wait(None);
        }
        let now = Instant::now();
        let after_last = |wait: Duration| state.last_end.map_or(now, |at| at + wait.max(MIN_GAP));
        let due = match state.phase {
            Phase::Closed { failures: 0 } => after_last(interval),
            Phase::Closed { .. } => after_last(interval / CONFIRM),
            Phase::Open { until } => until.max(after_last(Duration::ZERO)),
            // A call probes (it was let through before the probe started).
            Phase::Probing => now + (interval / CONFIRM).max(MIN_GAP),
        };
        if now < due {
            return Next::Wait(Some(due));
        }
        let probe = matches!(state.phase, Phase::Open { .. });
        if probe {
            state.phase = Phase::Probing;
        }
        let permit = Permit {
            breaker: Some(self.clone()),
            probe,
        };
        Next::Ping(permit, settings.timeout)
    }

    fn record(&self, probe: bool, ok: bool) {
        let mut state = self.state();
        let now = Instant::now();
        state.last_end = Some(now);
        if ok {
            state.last_success = Some(now);
        }
        let Settings {
            threshold,
            cool_down,
            ..
        } = state.settings;
        let open = Phase::Open {
            until: now + cool_down,
        };
        match (state.phase, ok) {
            (Phase::Closed { .. }, true) => state.phase = Phase::Closed { failures: 0 },
            // Any success shows the store answers again.
            (Phase::Open { .. } | Phase::Probing, true) => {
                tracing::info!("cache store answers again: circuit closed");
                state.phase = Phase::Closed { failures: 0 };
            }
            (Phase::Closed { failures }, false) => {
                let failures = failures + 1;
                state.phase = if failures >= threshold {
                    tracing::warn!(failures, ?cool_down, "cache store failing: circuit open");
                    open
                } else {
                    Phase::Closed { failures }
                };
            }
            (Phase::Probing, false) if probe => {
                tracing::debug!("cache store probe failed: circuit open again");
                state.phase = open;
            }
            // A late failure of a call let through before the breaker opened.
            (Phase::Open { .. } | Phase::Probing, false) => {}
        }
        drop(state);
        if !ok {
            // The probe confirms a failure sooner, or waits for the cool-down.
            self.wake.notify_one();
        }
    }

    /// A probe dropped before it ended: the next call (or the probe) probes.
    fn abandon_probe(&self) {
        let mut state = self.state();
        if state.phase == Phase::Probing {
            state.phase = Phase::Open {
                until: Instant::now(),
            };
        }
    }
}

/// A call let through; reports its outcome once, or, dropped unfinished, frees the probe.
pub(super) struct Permit {
    breaker: Option<Arc<Breaker>>,
    probe: bool,
}

impl Permit {
    pub(super) fn finish(mut self, ok: bool) {
        if let Some(breaker) = self.breaker.take() {
            breaker.record(self.probe, ok);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(breaker) = self.breaker.take() {
            if self.probe {
                breaker.abandon_probe();
            }
        }
    }
}
