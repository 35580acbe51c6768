//! What a memory store keeps about invalidations, each part bounded whatever the rate of
//! writes: which keys carry a tag (so that a tag's invalidation visits its members, not every
//! entry), and since when fills dated earlier are refused, per tag and per key.

use dashmap::DashMap;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
// Stores date to the microsecond (see `Stash::stamp`): invalidations rounded up, fills down.
use crate::entry::{micros, micros_up};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Dates of invalidations in a fixed number of buckets, each keeping the latest date hashed
/// to it and until when it matters. Two names that share a bucket share its date: a fill
/// may then be refused that need not be (a miss later), never the reverse. Its size never
/// grows.
pub(super) struct Epochs {
    /// Per bucket: the latest date (µs since the epoch, rounded up; 0: none), and until when
    /// (µs) it refuses fills.
    at: Box<[AtomicU64]>,
    until: Box<[AtomicU64]>,
    hasher: foldhash::fast::FixedState,
}

impl Epochs {
    /// `buckets` buckets (a power of two).
    pub(super) fn new(buckets: usize) -> Self {
        let zeros = || (0..buckets).map(|_| AtomicU64::new(0)).collect();
        Self {
            at: zeros(),
            until: zeros(),
            hasher: foldhash::fast::FixedState::with_seed(fastrand::u64(..)),
        }
    }

    fn bucket(&self, name: &[&str]) -> usize {
        (self.hasher.hash_one(name) as usize) & (self.at.len() - 1)
    }

    /// Records an invalidation of `name` dated `at`, which refuses earlier fills for `keep`.
    pub(super) fn record(&self, name: &[&str], at: SystemTime, keep: Duration) {
        let b = self.bucket(name);
        // `until` first: a reader that sees the new date sees its horizon too.
        let until = micros_up(SystemTime::now() + keep);
        self.until[b].fetch_max(until, Ordering::Release);
        self.at[b].fetch_max(micros_up(at), Ordering::Release);
    }

    /// The latest invalidation date of `name`'s bucket, while it matters.
    pub(super) fn latest(&self, name: &[&str]) -> Option<SystemTime> {
        let b = self.bucket(name);
        let at = self.at[b].load(Ordering::Acquire);
        let until = self.until[b].load(Ordering::Acquire);
        (at != 0 && until > micros(SystemTime::now()))
            .then(|| UNIX_EPOCH + Duration::from_micros(at))
    }

    /// Whether a fill whose request began at `began` came before an invalidation of `name`.
    pub(super) fn refuses(&self, name: &[&str], began: SystemTime) -> bool {
        self.latest(name)
            .is_some_and(|at| micros(began) < micros(at))
    }

    pub(super) fn clear(&self) {
        for (a, u) in self.at.iter().zip(self.until.iter()) {
            a.store(0, Ordering::Release);
            u.store(0, Ordering::Release);
        }
    }

    /// The bytes they take.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.at.len() * 16
    }
}

/// Which keys hold an entry carrying each tag. Kept as entries come and go, so it is bounded
/// by what the store holds.
#[derive(Default)]
pub(super) struct Members {
    tags: DashMap<String, HashSet<Arc<str>>, foldhash::quality::RandomState>,
}

impl Members {
    pub(super) fn add(&self, key: &Arc<str>, tags: &[String]) {
        for tag in tags {
            self.tags
                .entry(tag.clone())
                .or_default()
                .insert(key.clone());
        }
    }

    /// Forgets `key` under each of `tags` for which `still(tag)` is false.
    pub(super) fn remove(&self, key: &str, tags: &[String], still: impl Fn(&str) -> bool) {
        for tag in tags {
            if still(tag) {
                continue;
            }
            let emptied = match self.tags.get_mut(tag.as_str()) {
                Some(mut keys) => {
                    keys.remove(key);
                    keys.is_empty()
                }
                None => false,
            };
            if emptied {
                self.tags.remove_if(tag.as_str(), |_, keys| keys.is_empty());
            }
        }
    }

    /// The keys under `tag` (a copy: no guard is held while they are visited).
    pub(super) fn of(&self, tag: &str) -> Vec<Arc<str>> {
        self.tags
            .get(tag)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(super) fn clear(&self) {
        self.tags.clear();
    }

    /// About the bytes they take.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.tags
            .iter()
            .map(|r| r.key().len() + 48 + r.value().len() * 24)
            .sum()
    }
}
