//! Unit tests of the Redis store's pure parts: URLs, replies, connection retirement.

use super::cluster::{cluster_nodes, key_slot, parse_slots};
use redis::Value;

fn nodes(url: &str) -> Vec<String> {
    cluster_nodes(url).unwrap().unwrap()
}

#[test]
fn cluster_urls_name_their_seed_nodes() {
    assert_eq!(
        nodes("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/"),
        ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
    );
    // Shared credentials, and a node with its own.
    assert_eq!(
        nodes("redis+cluster://:pw@h1:1, h2:2,u:other@h3:3"),
        [
            "redis://:pw@h1:1",
            "redis://:pw@h2:2",
            "redis://u:other@h3:3"
        ]
    );
    // Full node URLs, as `RedisStore::cluster` joins them.
    assert_eq!(
        nodes("redis+cluster://redis://:a@h1:1,redis://:b@h2:2"),
        ["redis://:a@h1:1", "redis://:b@h2:2"]
    );
    assert_eq!(nodes("rediss+cluster://h1:1"), ["rediss://h1:1"]);
    assert!(cluster_nodes("redis+cluster://").unwrap().is_err());
    assert!(cluster_nodes("redis://h:1").is_none());
}

#[test]
fn scored_members_read_both_protocols_and_refuse_other_shapes() {
    use super::tombstones::scored_members;
    use redis::Value::{Array, BulkString, Double, Int};
    let b = |s: &str| BulkString(s.as_bytes().to_vec());
    let want = vec![
        (b"a".to_vec(), b"1712345678901".to_vec()),
        (b"b".to_vec(), b"1712345678902".to_vec()),
    ];
    // RESP2: flat, scores as strings.
    let flat = vec![b("a"), b("1712345678901"), b("b"), b("1712345678902")];
    assert_eq!(scored_members(flat).unwrap(), want);
    // RESP3: a pair per member, scores as doubles.
    let nested = vec![
        Array(vec![b("a"), Double(1712345678901.0)]),
        Array(vec![b("b"), Double(1712345678902.0)]),
    ];
    assert_eq!(scored_members(nested).unwrap(), want);
    assert_eq!(scored_members(vec![]).unwrap(), vec![]);
    // Anything else is an error, not "no members".
    assert!(scored_members(vec![b("a")]).is_err());
    assert!(scored_members(vec![b("a"), Int(1)]).is_err());
    assert!(scored_members(vec![Array(vec![b("a")])]).is_err());
    assert!(scored_members(vec![Array(vec![b("a"), Double(f64::NAN)])]).is_err());
}

#[test]
fn timeouts_in_a_row_a_drop_or_readonly_retire_a_connection_and_every_older_one() {
    use super::pool::{Hold, Liveness, RETIRE_AFTER_TIMEOUTS};
    use redis::{ErrorKind, RedisError, ServerErrorKind};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let timeout = || -> Result<(), RedisError> {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer").into())
    };
    let shared = Arc::new(AtomicU64::new(4));
    let hold = |epoch| Hold {
        epoch,
        shared_epoch: shared.clone(),
        liveness: Arc::new(Liveness::default()),
    };
    let conn = hold(4);
    // Timeouts retire only in a row: any answer, even an error, resets the count.
    for _ in 0..3 {
        for _ in 1..RETIRE_AFTER_TIMEOUTS {
            conn.observe(&timeout());
        }
        conn.observe(&Err::<(), _>(RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "an error answer",
        ))));
        conn.observe(&timeout());
        conn.observe(&Ok(()));
    }
    assert_eq!(shared.load(Ordering::SeqCst), 4);
    for _ in 0..RETIRE_AFTER_TIMEOUTS {
        conn.observe(&timeout());
    }
    assert_eq!(
        shared.load(Ordering::SeqCst),
        5,
        "retired, with all before it"
    );
    // A demoted master: at once.
    hold(5).observe(&Err::<(), _>(RedisError::from((
        ErrorKind::Server(ServerErrorKind::ReadOnly),
        "You can't write against a read only replica.",
    ))));
    assert_eq!(shared.load(Ordering::SeqCst), 6);
    // A dropped connection: at once. An older connection's failure retires no newer one.
    hold(6).observe(&Err::<(), _>(
        std::io::Error::from(std::io::ErrorKind::ConnectionReset).into(),
    ));
    assert_eq!(shared.load(Ordering::SeqCst), 7);
    hold(3).observe(&Err::<(), _>(
        std::io::Error::from(std::io::ErrorKind::BrokenPipe).into(),
    ));
    assert_eq!(shared.load(Ordering::SeqCst), 7);
}

#[test]
fn passwords_never_reach_errors() {
    assert_eq!(
        super::cluster::redact("redis://:p@ss@host:1"),
        "redis://***@host:1"
    );
}

#[test]
fn key_slots_are_redis_clusters() {
    // As `CLUSTER KEYSLOT` answers.
    assert_eq!(key_slot(b"foo"), 12182);
    assert_eq!(key_slot(b"123456789"), 0x31C3);
    // A hash tag: the first `{` to the next `}`, when not empty.
    assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
    assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
    assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
    // A lease and a write's keys live with their entry.
    assert_eq!(key_slot(b"{ns:v1:GET /k}!lease"), key_slot(b"ns:v1:GET /k"));
}

#[test]
fn cluster_slots_replies_name_each_ranges_master() {
    let node = |host: &str, port: i64, id: &str| {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(id.as_bytes().to_vec()),
        ])
    };
    let range = |first: i64, last: i64, master: Value, replica: Value| {
        Value::Array(vec![Value::Int(first), Value::Int(last), master, replica])
    };
    let reply = Value::Array(vec![
        range(
            5461,
            10922,
            node("127.0.0.1", 7001, "b"),
            node("127.0.0.1", 7004, "e"),
        ),
        range(
            0,
            5460,
            node("127.0.0.1", 7000, "a"),
            node("127.0.0.1", 7003, "d"),
        ),
        range(10923, 16383, node("::1", 7002, "c"), node("::1", 7005, "f")),
        // A master with no known address is left out.
        range(16383, 16383, node("", 7006, "g"), node("", 7007, "h")),
    ]);
    let ranges = parse_slots(&reply).unwrap();
    let shown: Vec<(u16, u16, &str)> = ranges.iter().map(|(a, b, m)| (*a, *b, &**m)).collect();
    assert_eq!(
        shown,
        [
            (0, 5460, "127.0.0.1:7000"),
            (5461, 10922, "127.0.0.1:7001"),
            (10923, 16383, "[::1]:7002")
        ]
    );
    assert!(parse_slots(&Value::Int(1)).is_none());
    assert!(parse_slots(&Value::Array(vec![Value::Array(vec![Value::Int(0)])])).is_none());
    assert!(parse_slots(&Value::Array(vec![range(
        0,
        99999,
        node("h", 1, "a"),
        Value::Nil
    )]))
    .is_none());
}
