//! Tombstones and tag indexes in Redis: what an invalidation leaves in an entry's place, and
//! how a tag's entries are found and invalidated.

use super::oom;
use super::scripts::{
    eval, eval_text, invalidate_key, last_writer_key, millis_at, ms, namespace, set_unless_newer,
    tag_epoch, tag_key, tagged_set, TAG_ADD, TAG_REMOVE,
};
use super::RedisStore;
use crate::entry::micros;
use crate::store::guard::step_done;
use crate::store::StoreError;
use crate::Entry;
use bytes::Bytes;
use redis::Value;
use std::fmt;
use std::time::{Duration, SystemTime};

/// Members a tag invalidation asks for per step (`ZSCAN`'s `COUNT`, a hint: a small index,
/// stored as a listpack, comes whole).
const TAG_BATCH: usize = 500;

/// Whether Redis refused a key's invalidation in one script for good (see
/// [`RedisStore::invalidate_family`]).
#[derive(Debug, Default)]
pub(super) struct Refused(std::sync::atomic::AtomicBool);

impl Refused {
    pub(super) fn is_refused(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn refuse(&self, e: &redis::RedisError) {
        if !self.0.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                error = %e,
                "redis refuses a key's invalidation in one script: invalidations take several round trips from now on"
            );
        }
    }
}

/// How a key's invalidation in one script went.
enum OneScript {
    /// All of it: how many subscribers got the message.
    Done(u64),
    /// The key and its family's epoch: the family is left to walk, and the message to send.
    FamilyTooLarge,
    /// Nothing to count on: everything is left.
    Refused,
}

/// A member of a tag index and its score, as Redis wrote them.
type Scored = (Vec<u8>, Vec<u8>);

/// A page of a `ZSCAN` reply: the next cursor (0 when done) and the flat items.
fn scan_page(reply: Value) -> Result<(u64, Vec<Value>), StoreError> {
    let unexpected = |what: &dyn fmt::Debug| {
        StoreError::new(format!("redis: unexpected reply to a scan: {what:?}"))
    };
    let Value::Array(reply) = reply else {
        return Err(unexpected(&reply));
    };
    match <[Value; 2]>::try_from(reply) {
        Ok([Value::BulkString(cursor), Value::Array(items)]) => {
            let next = std::str::from_utf8(&cursor)
                .ok()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| unexpected(&String::from_utf8_lossy(&cursor)))?;
            Ok((next, items))
        }
        Ok(other) => Err(unexpected(&other)),
        Err(other) => Err(unexpected(&other)),
    }
}

/// The (member, score) pairs of a `ZSCAN` page or a `WITHSCORES` reply, in either protocol's
/// shape: a flat `[member, score, member, score, ...]` (RESP2, and `ZSCAN` in both; scores as
/// strings) or `[[member, score], ...]` (`WITHSCORES` in RESP3; scores as doubles). Scores are
/// kept as text, to be handed back to Redis. Any other shape is an error, never an empty list
/// (which would end an invalidation as done).
pub(super) fn scored_members(items: Vec<Value>) -> Result<Vec<Scored>, StoreError> {
    let unexpected = |what: &dyn fmt::Debug| {
        StoreError::new(format!(
            "redis: unexpected member and score in a reply: {what:?}"
        ))
    };
    let mut pairs = Vec::with_capacity(items.len());
    let mut items = items.into_iter();
    while let Some(item) = items.next() {
        let pair = match item {
            Value::Array(pair) => <[Value; 2]>::try_from(pair).map_err(|p| unexpected(&p))?,
            member => {
                let score = items.next().ok_or_else(|| unexpected(&member))?;
                [member, score]
            }
        };
        match pair {
            [Value::BulkString(m), Value::BulkString(s)] => pairs.push((m, s)),
            [Value::BulkString(m), Value::Double(d)] if d.is_finite() => {
                pairs.push((m, d.to_string().into_bytes()));
            }
            other => return Err(unexpected(&other)),
        }
    }
    Ok(pairs)
}

impl RedisStore {
    /// Adds `key` to the indexes of its entry's tags, kept `millis` ms: true when one of
    /// them was invalidated at or after `began` (the entry's request, or its write, began
    /// then: it must not be stored).
    pub(super) async fn add_to_tags(
        &self,
        key: &str,
        entry: &Entry,
        began: SystemTime,
        millis: u64,
    ) -> Result<bool, StoreError> {
        if entry.tags().is_empty() {
            return Ok(false);
        }
        // The tag indexes first: a tag invalidation that reads an index after this sees the
        // key; one that set its epoch before this is seen here.
        let now = millis_at(SystemTime::now());
        let leaves = now.saturating_add(millis);
        let ns = namespace(key);
        let mut pipe = redis::pipe();
        for tag in entry.tags() {
            pipe.add_command(eval(TAG_ADD))
                .arg(1)
                .arg(tag_key(ns, tag))
                .arg(leaves)
                .arg(key)
                .arg(now)
                .arg(millis);
        }
        let started = micros(began);
        let mut invalidated = false;
        for epoch in self.run_each(&mut pipe).await? {
            match epoch {
                // Epochs are rounded up to the microsecond, `started` down: the same
                // microsecond began after the invalidation.
                Ok(Value::Int(at)) => invalidated |= u64::try_from(at).unwrap_or(0) > started,
                Ok(_) => {}
                Err(e) => return Err(self.refusal(&e)),
            }
        }
        Ok(invalidated)
    }

    /// A tagged fill on one server, in one round trip (see [`tagged_set`]): the tag indexes
    /// first, the fill only if none of its tags was invalidated after its request began, and
    /// not over a newer entry or a tombstone.
    pub(super) async fn put_tagged(
        &self,
        key: &str,
        entry: &Entry,
        value: &[u8],
        set_millis: u64,
        millis: u64,
    ) -> Result<(), StoreError> {
        let now = millis_at(SystemTime::now());
        let ns = namespace(key);
        let mut cmd = eval(tagged_set());
        cmd.arg(1 + entry.tags().len()).arg(key);
        for tag in entry.tags() {
            cmd.arg(tag_key(ns, tag));
        }
        cmd.arg(value)
            .arg(set_millis)
            .arg("0")
            .arg(now.saturating_add(millis))
            .arg(key)
            .arg(now)
            .arg(millis)
            // Epochs are rounded up to the microsecond, this down: the same microsecond
            // began after the invalidation.
            .arg(micros(entry.stored_at()));
        let reply = self.query(&cmd).await?;
        self.filled(key, reply)
    }

    /// Reads a fill script's reply ([`set_unless_newer`]'s, or [`tagged_set`]'s): 1 stored,
    /// -1 refused for a tag invalidated after the fill's request began, 0 refused for a newer
    /// entry or a tombstone; Redis's error is a refusal (out of memory pauses fills).
    pub(super) fn filled(
        &self,
        key: &str,
        reply: Result<Value, redis::RedisError>,
    ) -> Result<(), StoreError> {
        match reply {
            Ok(Value::Int(1)) => {
                self.memory.accepted();
                Ok(())
            }
            Ok(Value::Int(-1)) => {
                tracing::debug!(%key, "a tag of this fill was invalidated after its request began: not stored");
                Ok(())
            }
            Ok(Value::Int(_)) => {
                tracing::debug!(%key, "a newer entry or an invalidation is stored: this fill is dropped");
                Ok(())
            }
            Ok(other) => Err(StoreError::new(format!(
                "redis: unexpected reply to a fill: {other:?}"
            ))),
            Err(e) => Err(self.refusal(&e)),
        }
    }
}

impl RedisStore {
    /// The command that leaves a tombstone (`stone`, for `keep`) in the place of `key` unless
    /// it holds an entry stored after the tombstone's date, and ends the writes in progress.
    /// With `force`, the tombstone lands whatever the key holds.
    fn tombstone_cmd(
        mut cmd: redis::Cmd,
        key: &[u8],
        stone: &[u8],
        keep: Duration,
        force: bool,
    ) -> redis::Cmd {
        cmd.arg(2)
            .arg(key)
            .arg(last_writer_key(&String::from_utf8_lossy(key)))
            .arg(stone)
            .arg(ms(keep))
            .arg(if force { "1" } else { "0" });
        cmd
    }

    /// Leaves a tombstone dated `at` for `keep` in the place of each of `keys`, unless it
    /// holds an entry stored after `at`, in one round trip; says of each whether its entry is
    /// gone (the tombstone landed) or stays (a newer entry).
    ///
    /// Out of memory (Redis at `maxmemory` under `noeviction`), the tombstones Redis refused
    /// are written again by a script allowed out of memory (Redis 7's `allow-oom`: a tombstone
    /// is small, and takes the place of what it invalidates), so that the guarantee holds. A
    /// Redis that refuses that too (older than 7), or a store that must not write past
    /// `maxmemory`, has the keys deleted instead (`DEL`, allowed out of memory): gone, but
    /// without a tombstone, said once per outage. Each round trip is a step.
    pub(super) async fn tombstone_keys(
        &self,
        keys: &[&[u8]],
        at: SystemTime,
        keep: Duration,
        force: bool,
    ) -> Result<Vec<bool>, StoreError> {
        let stones: Vec<Bytes> = keys
            .iter()
            .map(|key| Entry::tombstone(&*String::from_utf8_lossy(key), at).encode())
            .collect();
        let mut pipe = redis::pipe();
        for (key, stone) in keys.iter().zip(&stones) {
            pipe.add_command(Self::tombstone_cmd(
                eval(set_unless_newer()),
                key,
                stone,
                keep,
                force,
            ));
        }
        let replies = self.run_each(&mut pipe).await?;
        step_done();
        if replies.len() != keys.len() {
            return Err(StoreError::new(format!(
                "redis: {} replies to {} tombstones",
                replies.len(),
                keys.len()
            )));
        }
        let mut gone = vec![false; keys.len()];
        let mut refused = Vec::new();
        for (i, reply) in replies.into_iter().enumerate() {
            match reply {
                Ok(Value::Int(1)) => gone[i] = true,
                // An entry stored after `at`: it stays.
                Ok(_) => {}
                Err(e) if oom::is_oom(&e) => refused.push(i),
                Err(e) => return Err(StoreError::new(format!("redis: {e}"))),
            }
        }
        if refused.is_empty() {
            if gone.contains(&true) {
                self.memory.accepted();
            }
            return Ok(gone);
        }
        self.memory.refused();
        let mut delete = Vec::new();
        if self.memory.past_maxmemory() {
            let script = oom::allow_oom(set_unless_newer());
            let mut pipe = redis::pipe();
            for &i in &refused {
                pipe.add_command(Self::tombstone_cmd(
                    eval_text(&script),
                    keys[i],
                    &stones[i],
                    keep,
                    force,
                ));
            }
            let replies = self.run_each(&mut pipe).await?;
            step_done();
            for (&i, reply) in refused.iter().zip(replies) {
                match reply {
                    Ok(Value::Int(1)) => gone[i] = true,
                    Ok(_) => {}
                    Err(e) if oom::is_refusal(&e) => {
                        tracing::debug!(error = %e, "redis refuses a tombstone allowed out of memory");
                        delete.push(i);
                    }
                    Err(e) => return Err(StoreError::new(format!("redis: {e}"))),
                }
            }
        } else {
            delete = refused;
        }
        if delete.is_empty() {
            return Ok(gone);
        }
        self.memory.deleted_instead();
        let mut pipe = redis::pipe();
        for &i in &delete {
            // The key and its last writer (one slot): a write in progress no longer stores.
            pipe.cmd("DEL")
                .arg(keys[i])
                .arg(last_writer_key(&String::from_utf8_lossy(keys[i])));
        }
        let replies = self.run_each(&mut pipe).await?;
        step_done();
        for (&i, reply) in delete.iter().zip(replies) {
            reply.map_err(|e| StoreError::new(format!("redis: {e}")))?;
            gone[i] = true;
        }
        Ok(gone)
    }

    /// Leaves a tombstone dated `at` in the place of each of `pairs` (member, score read),
    /// then removes from `index` the members whose entry is gone, each only while its score
    /// is still the one read. A step per round trip.
    async fn tombstone_members(
        &self,
        index: &str,
        pairs: Vec<Scored>,
        at: SystemTime,
        keep: Duration,
    ) -> Result<(), StoreError> {
        let keys: Vec<&[u8]> = pairs.iter().map(|(member, _)| &member[..]).collect();
        // Every tombstone first: a member leaves the index only once its entry is gone (on
        // a cluster they run on several nodes, and one may fail).
        let gone = self.tombstone_keys(&keys, at, keep, false).await?;
        // A refused tombstone: the member holds an entry stored after `at`, which the next
        // invalidation must still find in the index.
        let mut remove = eval(TAG_REMOVE);
        remove.arg(1).arg(index);
        let mut landed = 0;
        for ((member, score), gone) in pairs.iter().zip(gone) {
            if gone {
                remove.arg(&member[..]).arg(&score[..]);
                landed += 1;
            }
        }
        if landed > 0 {
            self.run(&remove).await?;
            step_done();
        }
        Ok(())
    }

    /// Sets the epoch of the tag index `index` to `at` (see [`tag_epoch`]); out of memory, by
    /// a script allowed out of memory, or not at all where Redis refuses that too (said once
    /// per outage: a fill that began before `at` may then be stored).
    async fn set_tag_epoch(
        &self,
        index: &str,
        at: SystemTime,
        keep: Duration,
    ) -> Result<(), StoreError> {
        let epoch = |mut cmd: redis::Cmd| {
            cmd.arg(1).arg(index).arg(micros(at)).arg(ms(keep));
            cmd
        };
        match self.query(&epoch(eval(tag_epoch()))).await? {
            Ok(_) => return Ok(()),
            Err(e) if oom::is_oom(&e) => self.memory.refused(),
            Err(e) => return Err(StoreError::new(format!("redis: {e}"))),
        };
        if !self.memory.past_maxmemory() {
            self.memory.deleted_instead();
            return Ok(());
        }
        match self
            .query(&epoch(eval_text(&oom::allow_oom(tag_epoch()))))
            .await?
        {
            Ok(_) => {}
            Err(e) if oom::is_refusal(&e) => {
                tracing::debug!(error = %e, "redis refuses a tag epoch allowed out of memory");
                self.memory.deleted_instead();
            }
            Err(e) => return Err(StoreError::new(format!("redis: {e}"))),
        }
        Ok(())
    }
}

impl RedisStore {
    /// Invalidates the entries of namespace `ns` tagged `tag`: see
    /// [`Store::invalidate_tag`](crate::store::Store::invalidate_tag) on [`RedisStore`].
    pub(super) async fn invalidate_tagged(
        &self,
        ns: &str,
        tag: &str,
        at: SystemTime,
        keep: Duration,
    ) -> Result<(), StoreError> {
        let index = tag_key(ns, tag);
        self.set_tag_epoch(&index, at, keep).await?;
        step_done();
        let mut cursor = 0;
        loop {
            let mut scan = redis::cmd("ZSCAN");
            scan.arg(&index).arg(cursor).arg("COUNT").arg(TAG_BATCH);
            let (next, items) = scan_page(self.run(&scan).await?)?;
            step_done();
            // Live members only: not the epoch, nor entries gone by their score.
            let now = millis_at(SystemTime::now()) as f64;
            let mut pairs = Vec::with_capacity(items.len());
            for (member, score) in scored_members(items)? {
                let s = std::str::from_utf8(&score)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or_else(|| {
                        StoreError::new(format!(
                            "redis: a tag index score that is no number: {:?}",
                            String::from_utf8_lossy(&score)
                        ))
                    })?;
                if s >= now && s < 1e15 {
                    pairs.push((member, score));
                }
            }
            if !pairs.is_empty() {
                self.tombstone_members(&index, pairs, at, keep).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

impl RedisStore {
    /// Invalidates `key` and its family (the index of its variants, `family` in namespace
    /// `ns`), then publishes `message` on the bus, on one server: in one script
    /// ([`invalidate_key`]) when the family has at most `FAMILY_IN_SCRIPT` live members and
    /// Redis takes it; else (a larger family, Redis out of memory, a refused command) the
    /// rest as [`Store::invalidate`](crate::store::Store::invalidate),
    /// [`invalidate_tagged`](Self::invalidate_tagged) and [`Bus::publish`](crate::store::Bus::publish)
    /// do it, which handle each case. Says how many subscribers got the message.
    pub(super) async fn invalidate_family(
        &self,
        key: &str,
        ns: &str,
        family: &str,
        at: SystemTime,
        keep: Duration,
        message: Bytes,
    ) -> Result<u64, StoreError> {
        use crate::store::Bus;
        let key_done = if self.one_script.is_refused() {
            false
        } else {
            match self
                .invalidate_in_one_script(key, ns, family, at, keep, &message)
                .await?
            {
                OneScript::Done(sent) => return Ok(sent),
                OneScript::FamilyTooLarge => true,
                OneScript::Refused => false,
            }
        };
        if !key_done {
            self.tombstone_keys(&[key.as_bytes()], at, keep, true)
                .await?;
        }
        self.invalidate_tagged(ns, family, at, keep).await?;
        self.publish(message).await
    }

    /// The script of [`invalidate_family`](Self::invalidate_family) (see
    /// [`invalidate_key`]). Out of memory, a refusal for this call; any other (an ACL, a
    /// server that forbids undeclared keys) for good, said once.
    async fn invalidate_in_one_script(
        &self,
        key: &str,
        ns: &str,
        family: &str,
        at: SystemTime,
        keep: Duration,
        message: &[u8],
    ) -> Result<OneScript, StoreError> {
        let (before, after) = Entry::tombstone_parts(at);
        let mut cmd = eval(invalidate_key());
        cmd.arg(3)
            .arg(key)
            .arg(last_writer_key(key))
            .arg(tag_key(ns, family))
            .arg(ms(keep))
            .arg(micros(at))
            .arg(millis_at(SystemTime::now()))
            .arg(&before[..])
            .arg(&after[..])
            .arg(message);
        let reply = self.query(&cmd).await?;
        step_done();
        match reply {
            Ok(Value::Int(sent)) if sent >= 0 => {
                self.memory.accepted();
                Ok(OneScript::Done(u64::try_from(sent).unwrap_or(0)))
            }
            Ok(Value::Int(_)) => Ok(OneScript::FamilyTooLarge),
            Ok(other) => Err(StoreError::new(format!(
                "redis: unexpected reply to an invalidation: {other:?}"
            ))),
            Err(e) if oom::is_refusal(&e) => {
                if !oom::is_oom(&e) {
                    self.one_script.refuse(&e);
                }
                tracing::debug!(error = %e, "redis refuses an invalidation in one script: made in steps");
                Ok(OneScript::Refused)
            }
            Err(e) => Err(StoreError::new(format!("redis: {e}"))),
        }
    }

    /// Up to `limit` keys starting with `prefix`, by `SCAN` (every master of a cluster).
    pub(super) async fn scan_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut pattern = String::with_capacity(prefix.len() + 1);
        for c in prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let mut keys = Vec::new();
        let masters = self.masters().await?;
        for master in masters {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(TAG_BATCH);
                let reply = match &master {
                    Some(addr) => self.run_on(addr, &scan).await?,
                    None => self.run(&scan).await?,
                };
                let (next, items) = scan_page(reply)?;
                step_done();
                for item in items {
                    if let Value::BulkString(key) = item {
                        if keys.len() >= limit {
                            return Ok(keys);
                        }
                        if let Ok(key) = String::from_utf8(key) {
                            keys.push(key);
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }
}
