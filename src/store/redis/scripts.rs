//! The Lua scripts a [`RedisStore`](super::RedisStore) runs, and the names of the keys it
//! writes besides entries (leases, writes in progress, acknowledgements, tag indexes).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The scripts run by SHA-1 so far, both ways: by where their text lives, and by SHA-1.
#[derive(Default)]
struct Loaded {
    sha: HashMap<(usize, usize), Arc<str>>,
    text: HashMap<Arc<str>, &'static str>,
}

/// Read by every script call (on many worker threads at once), written once per script.
fn loaded() -> &'static RwLock<Loaded> {
    static LOADED: OnceLock<RwLock<Loaded>> = OnceLock::new();
    LOADED.get_or_init(RwLock::default)
}

/// A command running `script` (one of this module's): `EVALSHA` with its SHA-1, by which
/// Redis keeps the scripts it has run, so that a call sends 40 bytes instead of the text.
/// Where Redis has lost it (a restart, a failover to a replica that never ran it, `SCRIPT
/// FLUSH`), [`as_eval`] makes the same call an `EVAL`, which loads it again.
pub(super) fn eval(script: &'static str) -> redis::Cmd {
    // A `'static` text never moves nor changes: where it lives names it.
    let at = (script.as_ptr() as usize, script.len());
    let known = loaded()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .sha
        .get(&at)
        .cloned();
    let sha = known.unwrap_or_else(|| {
        let sha: Arc<str> = redis::Script::new(script).get_hash().into();
        let mut loaded = loaded().write().unwrap_or_else(|e| e.into_inner());
        loaded.sha.insert(at, sha.clone());
        loaded.text.insert(sha.clone(), script);
        sha
    });
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(&*sha);
    cmd
}

/// A command running a script made at run time (not kept by SHA-1: each is sent whole).
pub(super) fn eval_text(script: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script);
    cmd
}

/// `cmd`, an [`eval`] Redis answered `NOSCRIPT`, as an `EVAL` of the script's text with the
/// same arguments; `None` for any other command.
pub(super) fn as_eval(cmd: &redis::Cmd) -> Option<redis::Cmd> {
    let args: Option<Vec<&[u8]>> = cmd
        .args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(a) => Some(a),
            _ => None,
        })
        .collect();
    let mut args = args?.into_iter();
    if !args.next()?.eq_ignore_ascii_case(b"EVALSHA") {
        return None;
    }
    let sha = std::str::from_utf8(args.next()?).ok()?;
    let text = *loaded()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .text
        .get(sha)?;
    let mut eval = eval_text(text);
    for arg in args {
        eval.arg(arg);
    }
    Some(eval)
}

/// Whether Redis answered that it does not hold the script asked for.
pub(super) fn is_noscript(e: &redis::RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

/// Deletes a key only while it still holds the given bytes.
pub(super) const DELETE_IF_SAME: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
/// Deletes a key only while it is not a string (a fill may have replaced it since).
pub(super) const DELETE_IF_NOT_STRING: &str = "if redis.call('TYPE', KEYS[1]).ok ~= 'string' then \
     return redis.call('DEL', KEYS[1]) end return 0";
/// Lua: `unless_newer(k, v, px, force)` sets `k` to `v` (an envelope) for `px` ms unless it
/// holds an entry stored later, and says whether it did (1) or not (0). The entry's
/// `stored_at` is bytes 7 to 14 of the envelope (big-endian micros, compared byte by byte,
/// never with Lua's locale-dependent string order), read with GETRANGE, never the whole
/// value. A late fill (its request began before the stored entry's) never replaces a newer
/// entry, and a tombstone refuses the fills dated before it. A key of another type is
/// replaced (GETRANGE fails on it: `pcall` makes that an empty string). A fill of the same
/// microsecond as a tombstone is stored: invalidations are dated rounded up to the
/// microsecond, fills rounded down (see `Stash::stamp`). A tombstone always replaces an entry
/// a write-through stored (flags value 8, `Entry::with_written`), whose date is its write's
/// end. `force` skips the comparison: a key's invalidation always lands (what Redis saw last
/// wins; a newer entry it drops only costs a miss).
const UNLESS_NEWER: &str = "local function unless_newer(k, v, px, force) \
    if not force then \
    local cur = redis.pcall('GETRANGE', k, 0, 13) \
    if type(cur) ~= 'string' then cur = '' end \
    if string.len(cur) == 14 and string.sub(cur, 1, 3) == string.sub(v, 1, 3) then \
    local newer = nil \
    for i = 7, 14 do \
    local a, b = string.byte(cur, i), string.byte(v, i) \
    if a ~= b then newer = a > b break end \
    end \
    if newer == true and not (math.floor(string.byte(cur, 4) / 8) % 2 == 1 \
    and math.floor(string.byte(v, 4) / 2) % 2 == 1) then return 0 end \
    end \
    end \
    redis.call('SET', k, v, 'PX', px) return 1 end ";

/// Sets `KEYS[1]` to `ARGV[1]` for `ARGV[2]` ms unless it holds an entry stored later (see
/// [`UNLESS_NEWER`]; `ARGV[3]` = `1` forces it). An invalidation passes the key's last writer
/// (`{K}!ws`, see [`WRITE_END`]) as `KEYS[2]`: set to `0` if present, so that no write in
/// progress may store after it.
pub(super) fn set_unless_newer() -> &'static str {
    static SCRIPT: OnceLock<String> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        format!(
            "{UNLESS_NEWER}if #KEYS > 1 then redis.call('SET', KEYS[2], '0', 'XX', 'PX', ARGV[2]) end \
            return unless_newer(KEYS[1], ARGV[1], ARGV[2], ARGV[3] == '1')"
        )
    })
}
/// `GET KEYS[1]`, extending its TTL to `ARGV[1]` ms (sliding expiry) unless it is a tombstone
/// (whose time is its own): one round trip, on any Redis version. A key of another type is
/// the `WRONGTYPE` error, as a `GET`.
pub(super) const GET_SLIDING: &str = "local v = redis.pcall('GET', KEYS[1]) \
    if type(v) == 'string' and string.len(v) >= 4 \
    and math.floor(string.byte(v, 4) / 2) % 2 == 0 then \
    redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return v";
/// Extends `KEYS[1]` to `ARGV[1]` ms unless it is a tombstone.
pub(super) const TOUCH: &str = "local f = redis.pcall('GETRANGE', KEYS[1], 3, 3) \
    if type(f) == 'string' and f ~= '' and math.floor(string.byte(f) / 2) % 2 == 0 then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return 0";
/// Deletes the lease `KEYS[1]` only while `ARGV[1]` holds it.
pub(super) const RELEASE_LEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    redis.call('DEL', KEYS[1]) \
    if redis.call('DEL', KEYS[2]) == 1 then redis.pcall('PUBLISH', ARGV[2], ARGV[3]) end \
    return 1 else return 0 end";
/// Takes the lease `KEYS[1]` for the token `ARGV[1]`, for `ARGV[2]` ms, if nobody holds it
/// (1); else marks it waited on (`KEYS[2]`, as long as it lasts), so that its holder's
/// release is announced on the bus (0).
pub(super) const TAKE_LEASE: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) \
    then return 1 end \
    local left = redis.call('PTTL', KEYS[1]) \
    if left > 0 then redis.call('SET', KEYS[2], '1', 'PX', left) end return 0";
/// What a key's lease is stored under: `!` never appears unescaped in a key.
pub(super) fn lease_key(key: &str) -> String {
    format!("{{{key}}}!lease")
}
/// The mark that someone waits for the lease on `key` (the same slot as the lease).
pub(super) fn lease_waited_key(key: &str) -> String {
    format!("{{{key}}}!lease!w")
}
/// The bus message announcing that the lease on `key` was released: `r`, no date, no keep,
/// no id, and the key (compared whole, never parsed).
pub(super) fn released_message(key: &str) -> Vec<u8> {
    let mut m = RELEASED_PREFIX.to_vec();
    m.extend_from_slice(key.as_bytes());
    m
}
/// The start of every [`released_message`].
pub(super) const RELEASED_PREFIX: &[u8] = b"r\t0\t0\t-\t";
/// Adds `ARGV[2]` to the tag index `KEYS[1]` (a sorted set scored by when each entry leaves
/// the store, `ARGV[1]` ms), drops the members gone by `ARGV[3]`, keeps the index for at
/// least `ARGV[4]` ms (an index holds only live entries and expires after its last one), and
/// returns the tag's epoch: when it was last invalidated, in µs (0 if never). A fill whose
/// request began before the epoch is not stored.
pub(super) const TAG_ADD: &str = "redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2]) \
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3]) \
    if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then \
    redis.call('PEXPIRE', KEYS[1], ARGV[4]) end \
    local e = redis.call('ZSCORE', KEYS[1], '!epoch') \
    if e then return tonumber(e) - 1e15 end return 0";
/// A tagged fill in one round trip (one server: the keys' slots differ): adds `ARGV[5]` (the
/// entry's key) to each tag index `KEYS[2..]` as [`TAG_ADD`] does (`ARGV[4]` its score,
/// `ARGV[6]` now, `ARGV[7]` the index's least life); if one of the tags was invalidated after
/// `ARGV[8]` (when the fill's request began, in µs), returns -1 and stores nothing; else stores
/// `ARGV[1]` under `KEYS[1]` for `ARGV[2]` ms as [`set_unless_newer`] does (1, or 0 when a
/// newer entry or a tombstone is there).
pub(super) fn tagged_set() -> &'static str {
    static SCRIPT: OnceLock<String> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        let tags = "local invalidated = false \
            for i = 2, #KEYS do \
            redis.call('ZADD', KEYS[i], ARGV[4], ARGV[5]) \
            redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[6]) \
            if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[7]) then \
            redis.call('PEXPIRE', KEYS[i], ARGV[7]) end \
            local e = redis.call('ZSCORE', KEYS[i], '!epoch') \
            if e and tonumber(e) - 1e15 > tonumber(ARGV[8]) then invalidated = true end \
            end \
            if invalidated then return -1 end ";
        // The fill itself, as `set_unless_newer` without a last writer (`KEYS[2]` is a tag).
        format!("{UNLESS_NEWER}{tags}return unless_newer(KEYS[1], ARGV[1], ARGV[2], false)")
    })
}
/// Lua: `set_epoch(k, at, px)` sets the epoch of the tag index `k` to `at` µs (never
/// backwards) and keeps the index at least `px` ms. The epoch is the member `!epoch`, scored
/// 10^15 above its time (under 2^53 for millennia: exact in a double): above every entry's
/// score (when it leaves, in ms), so trimming and reading the live members never touch it.
const SET_EPOCH: &str = "local function set_epoch(k, at, px) \
    local e = tonumber(at) + 1e15 \
    local cur = redis.call('ZSCORE', k, '!epoch') \
    if (not cur) or tonumber(cur) < e then redis.call('ZADD', k, e, '!epoch') end \
    if redis.call('PTTL', k) < tonumber(px) then redis.call('PEXPIRE', k, px) end end ";
/// Sets the epoch of the tag index `KEYS[1]` to `ARGV[1]` µs and keeps the index at least
/// `ARGV[2]` ms (see [`SET_EPOCH`]).
pub(super) fn tag_epoch() -> &'static str {
    static SCRIPT: OnceLock<String> = OnceLock::new();
    SCRIPT.get_or_init(|| format!("{SET_EPOCH}set_epoch(KEYS[1], ARGV[1], ARGV[2]) return 1"))
}
/// The most live variants [`invalidate_key`] tombstones itself; a family with more is walked
/// by the caller, a page at a time (a script blocks the server while it runs).
pub(super) const FAMILY_IN_SCRIPT: usize = 128;
/// A key's invalidation on one server, in one round trip, everything kept `ARGV[1]` ms:
/// - a tombstone dated `ARGV[2]` µs in the place of `KEYS[1]`, whatever it holds, and its
///   last writer `KEYS[2]` ended;
/// - the epoch of its family's index `KEYS[3]` set to `ARGV[2]` (see [`SET_EPOCH`]);
/// - a tombstone in the place of each live member of the family (scored `ARGV[3]` ms or
///   later) unless it holds a newer entry, that member's last writer ended, and the member
///   taken out of the index (the member that is the key itself too);
/// - then `ARGV[6]` published on the bus channel.
///
/// A tombstone is `ARGV[4]`, its key's length (4 bytes, big-endian), the key and `ARGV[5]`:
/// see `Entry::tombstone_parts`. Returns how many subscribers got the message, or -1 when the
/// family has more than [`FAMILY_IN_SCRIPT`] live members: then the key and the epoch are
/// done, nothing is published, and the caller walks the family. Members are keys the script
/// was not given (their names are in the index): one server only, never a cluster.
pub(super) fn invalidate_key() -> &'static str {
    static SCRIPT: OnceLock<String> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        format!(
            "{UNLESS_NEWER}{SET_EPOCH}\
            local function stone(k) local n = string.len(k) \
            return ARGV[4] .. string.char(math.floor(n / 16777216) % 256, \
            math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256) .. k .. ARGV[5] end \
            redis.call('SET', KEYS[2], '0', 'XX', 'PX', ARGV[1]) \
            unless_newer(KEYS[1], stone(KEYS[1]), ARGV[1], true) \
            set_epoch(KEYS[3], ARGV[2], ARGV[1]) \
            local live = redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[3], '(1e15', 'LIMIT', 0, {more}) \
            if #live > {most} then return -1 end \
            for _, m in ipairs(live) do \
            redis.call('SET', '{{' .. m .. '}}!ws', '0', 'XX', 'PX', ARGV[1]) \
            if m == KEYS[1] or unless_newer(m, stone(m), ARGV[1], false) == 1 then \
            redis.call('ZREM', KEYS[3], m) end \
            end \
            return redis.call('PUBLISH', '{BUS}', ARGV[6])",
            more = FAMILY_IN_SCRIPT + 1,
            most = FAMILY_IN_SCRIPT,
        )
    })
}
/// Removes members of the tag index `KEYS[1]` given as (member, score) pairs in `ARGV`, each
/// only while its score is still the one read: a member a fill added again meanwhile stays.
pub(super) const TAG_REMOVE: &str = "local n = 0 \
    for i = 1, #ARGV, 2 do \
    local cur = redis.call('ZSCORE', KEYS[1], ARGV[i]) \
    if cur and tonumber(cur) == tonumber(ARGV[i + 1]) then \
    n = n + redis.call('ZREM', KEYS[1], ARGV[i]) end end return n";
/// The writes in progress on key `K`: a sorted set `{K}!w` of their ids, scored by when
/// each stops counting (ms, Redis's clock), and `{K}!ws`, the id of the last to begin (`0`
/// once the key was invalidated since). Both hash-tagged with `K` (keys never hold braces),
/// so that on a cluster they live in the key's slot and one script sees all three.
pub(super) fn writes_key(key: &str) -> String {
    format!("{{{key}}}!w")
}
pub(super) fn last_writer_key(key: &str) -> String {
    format!("{{{key}}}!ws")
}
/// Begins write `ARGV[1]`, tracked `ARGV[2]` ms: returns how many other writes of the key
/// are in progress.
pub(super) const WRITE_BEGIN: &str = "local t = redis.call('TIME') \
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) \
    local others = redis.call('ZCARD', KEYS[1]) \
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) \
    redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) \
    return others";
/// Ends write `ARGV[1]`; when it began alone (`ARGV[2]` is `1`), is still the last to have
/// begun and no invalidation came since, sets `KEYS[3]` to `ARGV[3]` for `ARGV[4]` ms and
/// returns 1. An empty `ARGV[3]` only ends the write.
pub(super) const WRITE_END: &str = "redis.call('ZREM', KEYS[1], ARGV[1]) \
    local clean = ARGV[2] == '1' and redis.call('GET', KEYS[2]) == ARGV[1] \
    if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[2]) end \
    if clean and ARGV[3] ~= '' then \
    redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4]) return 1 end \
    return 0";
/// The counter of the instances that applied message `id`.
pub(super) fn ack_key(id: &str) -> String {
    format!("tower-stash:ack:{id}")
}
/// Counts an acknowledgement in `KEYS[1]`, kept `ARGV[1]` ms, and tells the publisher on the
/// channel `ARGV[2]` (none when empty): `ARGV[3]` followed by the count (a refused publish
/// changes nothing: the publisher reads the counter too).
pub(super) const ACK: &str = "local n = redis.call('INCR', KEYS[1]) \
    redis.call('PEXPIRE', KEYS[1], ARGV[1]) \
    if ARGV[2] ~= '' then redis.pcall('PUBLISH', ARGV[2], ARGV[3] .. n) end return 1";
/// The channel invalidations are published on.
pub(super) const BUS: &str = "tower-stash:bus";
/// The index of the entries of namespace `ns` tagged `tag`: `{ns}:t:{tag, escaped}` (entry
/// keys are `{ns}:v1:...`, so the two never meet).
pub(super) fn tag_key(ns: &str, tag: &str) -> String {
    let mut k = format!("{ns}:t:");
    crate::key::escape_into(&mut k, tag.as_bytes());
    k
}
/// The namespace of an entry key, `{ns}:v1:...`.
pub(super) fn namespace(key: &str) -> &str {
    key.split(':').next().unwrap_or(key)
}
pub(super) fn millis_at(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
