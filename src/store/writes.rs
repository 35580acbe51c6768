//! Writes in progress (write-through): [`Writes`] and its [`WriteTicket`].

use super::StoreFuture;
use crate::Entry;
use std::sync::Arc;
use std::time::Duration;

/// Follows the writes in progress on each key, so that a write-through stores its response
/// only when nothing else changed the key meanwhile. Offered through
/// [`Store::writes`](super::Store::writes); without it, every write-through ends as an
/// invalidation.
///
/// The rule: [`end_write`](Self::end_write) stores only when the write began with no other
/// write of the key in progress, and no other write began and no invalidation of the key came
/// before it ends; the check and the store are one step.
///
/// # Example
///
/// ```
/// use tower_stash::{MemoryStore, Store};
///
/// // A memory store follows the writes of this instance.
/// assert!(MemoryStore::default().writes().is_some());
/// ```
pub trait Writes: Send + Sync {
    /// Registers the start of a write to `key`: the ticket says whether another write to
    /// `key` was in progress then. Tracking lasts at most `keep`.
    fn begin_write(&self, key: Arc<str>, keep: Duration) -> StoreFuture<WriteTicket>;

    /// Ends the write `ticket` began, and stores `entry` for its TTL under `key` only if the
    /// write overlapped no other write and no [invalidation](super::Store::invalidate) of
    /// `key`: `Ok(true)` when stored. On `Ok(false)` the caller invalidates `key`, since the
    /// order in which overlapping writes reached the data is unknown.
    fn end_write(
        &self,
        key: Arc<str>,
        ticket: WriteTicket,
        entry: Option<(Arc<Entry>, Duration)>,
    ) -> StoreFuture<bool>;
}

/// A write in progress on one key: see [`Writes::begin_write`] and [`Writes::end_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteTicket {
    id: u64,
    alone: bool,
    began: Option<std::time::SystemTime>,
}

impl WriteTicket {
    /// The ticket of write `id` (never 0), `alone` when no other write to its key was in
    /// progress as it began.
    pub fn new(id: u64, alone: bool) -> Self {
        Self {
            id: id.max(1),
            alone,
            began: None,
        }
    }

    /// A write the store does not follow (it failed, or cannot): it ends as an invalidation.
    pub fn untracked() -> Self {
        Self {
            id: 0,
            alone: false,
            began: None,
        }
    }

    /// The same ticket, for a write that began at `began` (as the stash dates the start of
    /// a fill's request).
    pub fn with_began(mut self, began: std::time::SystemTime) -> Self {
        self.began = Some(began);
        self
    }

    /// When the write began, if the stash said: a tag of the entry invalidated at or after
    /// that refuses it in [`end_write`](Writes::end_write), as it refuses a fill whose
    /// request began before the invalidation (the entry's own date is when the write ended).
    pub fn began(&self) -> Option<std::time::SystemTime> {
        self.began
    }

    /// The write's id; 0 for an untracked write.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether no other write to the key was in progress as this one began (always false
    /// for an untracked write).
    pub fn alone(&self) -> bool {
        self.alone && self.id != 0
    }
}
