//! The circuit breaker of a [`Guarded`](super::Guarded) store: when calls go through, when
//! they fail at once, and when the probe pings.

use super::probe::Next;
use crate::store::{BreakerState, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// After a failure, the probe pings again after this fraction of its interval, so that a dead
/// store reaches the failure threshold in a fraction of a second, not `failures` seconds.
const CONFIRM: u32 = 10;

/// The most parts (cluster nodes) a breaker keeps breakers for: past it, those closed are
/// forgotten (a cluster whose addresses keep changing).
const MAX_PARTS: usize = 1024;

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
    /// When the breaker last opened after being closed (the outage's start).
    opened_at: Option<Instant>,
    /// Calls refused at once since then: said in one line when the breaker closes.
    refused: u64,
}

#[derive(Debug)]
pub(super) struct Breaker {
    state: Mutex<State>,
    /// Wakes the probe: a failure, a changed setting, the breaker's drop.
    pub(super) wake: Arc<Notify>,
    /// Whether a probe task runs for this breaker.
    pub(super) probe_started: AtomicBool,
    /// The part of the store this breaker guards (a cluster node), or `None` for the whole.
    pub(super) part: Option<Arc<str>>,
    /// The whole's breakers of its parts (see [`Store::part_of`](crate::Store::part_of)).
    parts: RwLock<HashMap<Arc<str>, Arc<Breaker>>>,
}

impl Drop for Breaker {
    fn drop(&mut self) {
        // The probe sees the breaker gone and ends.
        self.wake.notify_one();
    }
}

impl Breaker {
    pub(super) fn new(settings: Settings) -> Arc<Self> {
        Self::with_part(settings, None)
    }

    fn with_part(settings: Settings, part: Option<Arc<str>>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                settings,
                phase: Phase::Closed { failures: 0 },
                last_end: None,
                last_success: None,
                opened_at: None,
                refused: 0,
            }),
            wake: Arc::new(Notify::new()),
            probe_started: AtomicBool::new(false),
            part,
            parts: RwLock::default(),
        })
    }

    /// The breaker of `part` (created closed, with this breaker's settings, on first use),
    /// and whether it was created.
    pub(super) fn part(&self, part: &Arc<str>) -> (Arc<Breaker>, bool) {
        if let Some(found) = self
            .parts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(part)
        {
            return (found.clone(), false);
        }
        let settings = self.state().settings;
        let mut parts = self.parts.write().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = parts.get(part) {
            return (found.clone(), false);
        }
        if parts.len() >= MAX_PARTS {
            parts.retain(|_, b| b.phase() != BreakerState::Closed);
        }
        let breaker = Self::with_part(settings, Some(part.clone()));
        parts.insert(part.clone(), breaker.clone());
        (breaker, true)
    }

    /// The parts' breakers.
    pub(super) fn parts(&self) -> Vec<Arc<Breaker>> {
        let parts = self.parts.read().unwrap_or_else(|e| e.into_inner());
        parts.values().cloned().collect()
    }

    /// Forgets the parts' breakers (their settings changed).
    pub(super) fn forget_parts(&self) {
        self.parts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Whether calls are refused at once now (open, or a probe in flight), counting the
    /// refusal: a call to a part is refused while the whole is.
    pub(super) fn refuses(&self) -> bool {
        let mut state = self.state();
        let refused = match state.phase {
            Phase::Closed { .. } => false,
            Phase::Open { until } => Instant::now() < until || self.probe_on(&state),
            Phase::Probing => true,
        };
        if refused {
            state.refused += 1;
        }
        refused
    }

    /// When a call or a ping through this breaker last succeeded.
    pub(super) fn last_success(&self) -> Option<Instant> {
        self.state().last_success
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The breaker's state now.
    pub(super) fn phase(&self) -> BreakerState {
        self.state().phase.into()
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
                state.refused += 1;
                return Err(StoreError::circuit_open());
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

    /// Records a call's (or a ping's) outcome: `error` is `None` for a success. The outage
    /// is logged once per transition: at warn when the breaker opens (with the error that
    /// opened it), at info when it closes (with how long it lasted and how many calls were
    /// refused meanwhile, none of them logged one by one).
    fn record(&self, probe: bool, error: Option<&StoreError>) -> bool {
        let ok = error.is_none();
        let mut opened = false;
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
                let down_for = state.opened_at.take().map(|at| now - at);
                let refused = std::mem::take(&mut state.refused);
                tracing::info!(
                    ?down_for,
                    refused,
                    part = self.part.as_deref().unwrap_or("the whole store"),
                    "cache store answers again: circuit closed ({refused} calls were refused \
                     while it was open)"
                );
                state.phase = Phase::Closed { failures: 0 };
            }
            (Phase::Closed { failures }, false) => {
                let failures = failures + 1;
                state.phase = if failures >= threshold {
                    state.opened_at = Some(now);
                    state.refused = 0;
                    opened = true;
                    let error = error.map(ToString::to_string).unwrap_or_default();
                    let part = self.part.as_deref().unwrap_or("the whole store");
                    tracing::warn!(
                        failures,
                        ?cool_down,
                        %error,
                        part,
                        "cache store failing: circuit open (calls fail at once, unlogged, until \
                         it answers again)"
                    );
                    open
                } else {
                    Phase::Closed { failures }
                };
            }
            (Phase::Probing, false) if probe => {
                tracing::debug!(
                    part = self.part.as_deref(),
                    "cache store probe failed: circuit open again"
                );
                state.phase = open;
                opened = true;
            }
            // A late failure of a call let through before the breaker opened.
            (Phase::Open { .. } | Phase::Probing, false) => {}
        }
        drop(state);
        if !ok {
            // The probe confirms a failure sooner, or waits for the cool-down.
            self.wake.notify_one();
        }
        opened
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
    /// Reports the call's outcome: `None` for a success, else its error. Says whether the
    /// breaker opened (or opened again) because of it.
    pub(super) fn finish(mut self, error: Option<&StoreError>) -> bool {
        match self.breaker.take() {
            Some(breaker) => breaker.record(self.probe, error),
            None => false,
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
