//! The invalidation bus: what a store's bus delivers, how a message is written and read, and
//! how a memory tier applies one.
//!
//! A message is `kind`, the invalidation's date (µs since the epoch) and keep time (ms), an id to
//! acknowledge, and fields, separated by tabs; fields are percent-escaped, so they may hold
//! anything.
//!
//! - `k`: a stored key, its namespace and its family tag (the key's variants).
//! - `t`: a namespace and a tag.
//! - `a`: an acknowledgement (a message id and how many instances applied it so far), and
//!   `r`: a lease released (its key): signals for the instances waiting on them.

use super::MemoryStore;
use super::StoreFuture;
use bytes::Bytes;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

/// How the instances sharing a store tell each other what they invalidated (Redis pub/sub),
/// so that each drops its memory copy. Offered through [`Store::bus`](super::Store::bus); a
/// store without one is one no other instance shares.
///
/// The rule: a subscriber gets every message published by any instance (itself included)
/// while it is subscribed, or hears [`BusEvent::Lost`] once it may have missed some.
///
/// # Example
///
/// ```
/// use tower_stash::{MemoryStore, Store};
///
/// // No other instance shares a memory store: it has no bus.
/// assert!(MemoryStore::default().bus().is_none());
/// ```
pub trait Bus: Send + Sync {
    /// Sends `message` to every instance subscribed to this store, and says how many
    /// subscribers got it.
    fn publish(&self, message: Bytes) -> StoreFuture<u64>;

    /// Calls `sink` with each message [published](Self::publish) by any instance, and with
    /// [`BusEvent::Lost`] whenever messages may have been missed (the subscription dropped and
    /// is back, or was found silent), until the sink is dropped. Returns whether it could
    /// subscribe.
    fn subscribe(&self, sink: Weak<dyn Fn(BusEvent) + Send + Sync>) -> bool;

    /// Whether invalidations made by other instances reach this one now (the subscription is
    /// up). While it is down, a memory tier may hold what another instance invalidated: the
    /// cache serves session-scoped entries from the shared store only. The default is `true`.
    fn live(&self) -> bool {
        true
    }

    /// Records that this instance applied the message `id` (see
    /// [`acknowledgements`](Self::acknowledgements)). The default records nothing.
    fn acknowledge(&self, id: Arc<str>) -> StoreFuture<()> {
        let _ = id;
        Box::pin(std::future::ready(Ok(())))
    }

    /// How many instances have applied the message `id` so far: the publisher waits (briefly)
    /// for every subscriber. The default is 0: the publisher does not wait.
    fn acknowledgements(&self, id: Arc<str>) -> StoreFuture<u64> {
        let _ = id;
        Box::pin(std::future::ready(Ok(0)))
    }

    /// Resolves once `sent` instances are known to have applied the message `id`, told by
    /// the bus itself (a push), with how many had; the publisher asks
    /// [`acknowledgements`](Self::acknowledgements) meanwhile, and stops waiting at its
    /// deadline. The default never resolves: acknowledgements are only asked for.
    fn pushed_acknowledgements(&self, id: Arc<str>, sent: u64) -> StoreFuture<u64> {
        let _ = (id, sent);
        Box::pin(std::future::pending())
    }
}

/// What a store's bus delivers to a subscriber: see [`Bus::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusEvent {
    /// A message another instance (or this one) published.
    Message(Bytes),
    /// Messages may have been missed: the subscription was lost and is back, or it was found
    /// silent (a connection that stopped answering without closing) and is being replaced.
    Lost,
}

/// What bus message fields escape: controls (tabs) and `%` itself.
const BUS_FIELD: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// A fresh message id.
pub(crate) fn new_message_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// A message on the store's bus: `kind`, the date in µs, the keep time in ms, and fields,
/// separated by tabs (the last field may hold anything).
pub(crate) fn bus_message(
    kind: u8,
    at: SystemTime,
    keep: Duration,
    id: &str,
    fields: &[&str],
) -> Bytes {
    let at = crate::entry::micros(at);
    let mut m = format!("{}\t{at}\t{}\t{id}", kind as char, keep.as_millis());
    for f in fields {
        m.push('\t');
        // Keys and tags may hold any character, tabs included: escaped.
        m.extend(percent_encoding::utf8_percent_encode(f, BUS_FIELD));
    }
    m.into()
}

/// A bus message read by [`parse_bus_message`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BusMessage {
    /// When the invalidation was made: older copies go.
    pub(crate) at: SystemTime,
    /// How long tombstones are kept (at most a minute).
    pub(crate) keep: Duration,
    /// The message's id, to acknowledge.
    pub(crate) id: String,
    /// What it invalidates.
    pub(crate) what: BusWhat,
}

/// What a bus message invalidates, its fields unescaped.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BusWhat {
    /// `k`: a stored key, its namespace and its family tag.
    Key {
        key: String,
        ns: String,
        family: String,
    },
    /// `t`: a namespace and a tag.
    Tag { ns: String, tag: String },
    /// `a`, an acknowledgement of another message (for its publisher), or `r`, a lease
    /// released (for the instances waiting for it): applied to no tier, never acknowledged.
    Signal,
    /// Another kind, or the wrong number of fields: ignored, but acknowledged.
    Unknown,
}

/// A bus message field, unescaped.
fn field(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// Reads a message written by [`bus_message`]; `None` when it is not one (not UTF-8, too few
/// parts, a time that is not a number or that this platform's `SystemTime` does not hold).
/// Never panics, whatever the bytes.
pub(crate) fn parse_bus_message(message: &[u8]) -> Option<BusMessage> {
    let text = std::str::from_utf8(message).ok()?;
    let mut parts = text.splitn(7, '\t');
    let kind = parts.next()?;
    let at = crate::entry::at_micros(parts.next()?.parse().ok()?)?;
    let keep = Duration::from_millis(parts.next()?.parse().ok()?).min(Duration::from_secs(60));
    let id = parts.next()?.to_owned();
    let mut fields: Vec<String> = parts.map(field).collect();
    let what = match (kind, fields.as_mut_slice()) {
        ("k", [key, ns, family]) => BusWhat::Key {
            key: std::mem::take(key),
            ns: std::mem::take(ns),
            family: std::mem::take(family),
        },
        // For the instances waiting on them: never acknowledged.
        ("a" | "r", _) => BusWhat::Signal,
        ("t", [ns, tag]) => BusWhat::Tag {
            ns: std::mem::take(ns),
            tag: std::mem::take(tag),
        },
        _ => BusWhat::Unknown,
    };
    Some(BusMessage { at, keep, id, what })
}

/// Applies a bus event to a memory tier: drops what another instance invalidated (keeping a
/// tombstone, so that a late fill of this instance is refused too), or everything when
/// messages may have been missed. Returns the id of the message applied, to acknowledge.
pub(crate) fn apply_to_l1(l1: &MemoryStore, event: BusEvent) -> Option<String> {
    use super::Store;
    let message = match event {
        BusEvent::Lost => {
            tracing::debug!("invalidations may have been missed: flushing the memory tier");
            // Tombstones stay: they keep refusing what this instance invalidated while an
            // invalidation of the shared store may still be pending.
            l1.clear_entries();
            return None;
        }
        BusEvent::Message(m) => m,
    };
    let BusMessage { at, keep, id, what } = parse_bus_message(&message)?;
    match what {
        // A key (and its variants, by their family tag); a write-through's new entry is
        // dated after `at`, so only older copies go.
        BusWhat::Key { key, ns, family } => {
            drop(l1.invalidate(key.into(), at, keep));
            drop(l1.invalidate_tag(ns.into(), family.into(), at, keep));
        }
        BusWhat::Tag { ns, tag } => {
            drop(l1.invalidate_tag(ns.into(), tag.into(), at, keep));
        }
        BusWhat::Signal => return None,
        BusWhat::Unknown => tracing::debug!(
            message = &*String::from_utf8_lossy(&message),
            "unknown bus message ignored"
        ),
    }
    Some(id)
}
