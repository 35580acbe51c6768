//! Self-tests of `support::redis`: real redis-server processes and the fault-injecting proxy,
//! driven with hand-written RESP over raw TCP.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::redis::{Proxy, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
const WAIT: Duration = Duration::from_secs(5);

async fn connect(addr: SocketAddr) -> TcpStream {
    timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// Reads one `\r\n`-terminated line (a simple reply), or `None` on EOF.
async fn read_line(stream: &mut TcpStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) => return None,
            Ok(_) => line.push(byte[0]),
            Err(e) => panic!("read failed: {e}"),
        }
    }
    Some(String::from_utf8(line).unwrap())
}

/// Sends a RESP `PING` on `stream` and returns the reply line (bounded by `WAIT`).
async fn ping_on(stream: &mut TcpStream) -> String {
    stream.write_all(PING).await.unwrap();
    timeout(WAIT, read_line(stream))
        .await
        .expect("PING reply timed out")
        .expect("connection closed before the PING reply")
}

/// PINGs `addr` on a new connection.
async fn ping(addr: SocketAddr) -> String {
    ping_on(&mut connect(addr).await).await
}

/// Whether the peer closed (EOF) or reset the connection within `WAIT`.
async fn closed_promptly(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        timeout(WAIT, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn start_answers_ping_and_cli_reads_and_writes() {
    let redis = RedisServer::start();
    assert_ne!(redis.port(), 6379);
    assert_eq!(
        redis.addr(),
        SocketAddr::from(([127, 0, 0, 1], redis.port()))
    );
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
    assert_eq!(ping(redis.addr()).await, "+PONG\r\n");

    assert_eq!(redis.cli(&["SET", "k", "v", "PX", "60000"]), "OK");
    assert_eq!(redis.cli(&["GET", "k"]), "v");
    let pttl: i64 = redis.cli(&["PTTL", "k"]).parse().unwrap();
    assert!((1..=60_000).contains(&pttl), "PTTL {pttl}");
    assert_eq!(redis.cli(&["GET", "missing"]), "");

    // A value written by hand over RESP is visible to redis-cli.
    let mut conn = connect(redis.addr()).await;
    conn.write_all(b"*3\r\n$3\r\nSET\r\n$4\r\nhand\r\n$4\r\nmade\r\n")
        .await
        .unwrap();
    let reply = timeout(WAIT, read_line(&mut conn)).await.unwrap();
    assert_eq!(reply.as_deref(), Some("+OK\r\n"));
    assert_eq!(redis.cli(&["GET", "hand"]), "made");
}

#[tokio::test]
async fn start_with_passes_extra_config() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]);
    assert_eq!(
        redis.cli(&["CONFIG", "GET", "maxmemory"]),
        "maxmemory\n1048576"
    );
    assert_eq!(
        redis.cli(&["CONFIG", "GET", "maxmemory-policy"]),
        "maxmemory-policy\nnoeviction"
    );
}

#[tokio::test]
async fn kill_refuses_connections_and_restart_comes_back_empty_on_the_same_port() {
    let mut redis = RedisServer::start_with(&["--maxmemory", "1mb"]);
    let port = redis.port();
    assert_eq!(redis.cli(&["SET", "k", "v"]), "OK");

    redis.kill();
    assert!(redis.pid().is_none());
    let refused = timeout(WAIT, TcpStream::connect(redis.addr()))
        .await
        .expect("connect timed out");
    assert!(refused.is_err(), "connected to a killed server");

    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(ping(redis.addr()).await, "+PONG\r\n");
    assert_eq!(redis.cli(&["EXISTS", "k"]), "0");
    // The extra args survive the restart.
    assert_eq!(
        redis.cli(&["CONFIG", "GET", "maxmemory"]),
        "maxmemory\n1048576"
    );
}

#[tokio::test]
async fn pause_withholds_replies_until_resume() {
    let mut redis = RedisServer::start();
    let mut conn = connect(redis.addr()).await;
    assert_eq!(ping_on(&mut conn).await, "+PONG\r\n");

    redis.pause();
    conn.write_all(PING).await.unwrap();
    assert!(
        timeout(Duration::from_millis(200), read_line(&mut conn))
            .await
            .is_err(),
        "a paused server replied"
    );

    redis.resume();
    let reply = timeout(WAIT, read_line(&mut conn))
        .await
        .expect("no reply after resume");
    assert_eq!(reply.as_deref(), Some("+PONG\r\n"));
}

#[tokio::test]
async fn drop_while_paused_kills_the_server() {
    let mut redis = RedisServer::start();
    let addr = redis.addr();
    let dir = redis.dir().to_path_buf();
    redis.pause();
    drop(redis);
    assert!(!dir.exists(), "scratch dir left behind");
    let refused = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out");
    assert!(refused.is_err(), "server still listening after drop");
}

#[tokio::test]
async fn proxy_forwards() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.addr()).await;
    assert_ne!(proxy.addr(), redis.addr());
    assert_eq!(
        proxy.url(),
        format!("redis://127.0.0.1:{}/", proxy.addr().port())
    );

    let mut conn = connect(proxy.addr()).await;
    assert_eq!(ping_on(&mut conn).await, "+PONG\r\n");
    conn.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\np\r\n$1\r\nq\r\n")
        .await
        .unwrap();
    let reply = timeout(WAIT, read_line(&mut conn)).await.unwrap();
    assert_eq!(reply.as_deref(), Some("+OK\r\n"));
    assert_eq!(redis.cli(&["GET", "p"]), "q");
}

#[tokio::test]
async fn proxy_latency_applies_to_open_connections() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.addr()).await;
    let mut conn = connect(proxy.addr()).await;
    assert_eq!(ping_on(&mut conn).await, "+PONG\r\n");

    proxy.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(ping_on(&mut conn).await, "+PONG\r\n");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "PING took only {took:?}"
    );
}

#[tokio::test]
async fn proxy_cut_closes_connections_until_restore() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.addr()).await;
    let mut conn = connect(proxy.addr()).await;
    assert_eq!(ping_on(&mut conn).await, "+PONG\r\n");

    proxy.cut();
    assert!(
        closed_promptly(&mut conn).await,
        "open connection survived cut()"
    );

    // While cut, a new connection is closed straight away (or refused).
    if let Ok(Ok(mut during)) = timeout(WAIT, TcpStream::connect(proxy.addr())).await {
        let _ = during.write_all(PING).await;
        assert!(
            closed_promptly(&mut during).await,
            "new connection served while cut"
        );
    }

    proxy.restore();
    assert_eq!(ping(proxy.addr()).await, "+PONG\r\n");
}

/// Whether `stream` stays silent (no byte, no close) for `quiet`: a negative check, so it
/// can only wait a fixed time.
async fn silent_for(stream: &mut TcpStream, quiet: Duration) -> bool {
    let mut buf = [0u8; 64];
    timeout(quiet, stream.read(&mut buf)).await.is_err()
}

/// The number of clients connected to `redis` (not counting redis-cli itself).
fn clients(redis: &RedisServer) -> usize {
    let info = redis.cli(&["INFO", "clients"]);
    let n: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    n - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_half_open_forwards_nothing_closes_nothing_until_restore() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.addr()).await;
    let mut old = connect(proxy.addr()).await;
    assert_eq!(ping_on(&mut old).await, "+PONG\r\n");

    proxy.half_open();
    // A request goes nowhere, and no reply or close comes back.
    old.write_all(PING).await.unwrap();
    assert!(silent_for(&mut old, Duration::from_millis(300)).await);
    // A new connection is accepted, and as silent.
    let mut during = connect(proxy.addr()).await;
    during.write_all(PING).await.unwrap();
    assert!(silent_for(&mut during, Duration::from_millis(300)).await);
    // The client's close does not reach the server either: its connections stay.
    let before = tokio::task::block_in_place(|| clients(&redis));
    assert_eq!(before, 2, "the old and the new proxied connection");
    drop(during);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(tokio::task::block_in_place(|| clients(&redis)), before);

    proxy.restore();
    // New connections are forwarded again; the silenced one stays silent.
    assert_eq!(ping(proxy.addr()).await, "+PONG\r\n");
    assert!(silent_for(&mut old, Duration::from_millis(300)).await);
    // Until the proxy goes: then every connection closes.
    drop(proxy);
    assert!(closed_promptly(&mut old).await, "dropping the proxy closes");
}

#[tokio::test]
async fn proxy_set_upstream_moves_new_connections_only() {
    let first = RedisServer::start();
    let second = RedisServer::start();
    let proxy = Proxy::start(first.addr()).await;
    let mut old = connect(proxy.addr()).await;
    assert_eq!(ping_on(&mut old).await, "+PONG\r\n");

    proxy.set_upstream(second.addr());
    assert_eq!(proxy.upstream(), second.addr());
    let mut new = connect(proxy.addr()).await;
    async fn set(stream: &mut TcpStream, value: &[u8]) -> Option<String> {
        let mut cmd = b"*3\r\n$3\r\nSET\r\n$5\r\nwhere\r\n$1\r\n".to_vec();
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        stream.write_all(&cmd).await.unwrap();
        timeout(WAIT, read_line(stream)).await.unwrap()
    }
    assert_eq!(set(&mut old, b"1").await.as_deref(), Some("+OK\r\n"));
    assert_eq!(set(&mut new, b"2").await.as_deref(), Some("+OK\r\n"));
    assert_eq!(first.cli(&["GET", "where"]), "1");
    assert_eq!(second.cli(&["GET", "where"]), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_follows_the_server_through_kill_and_restart() {
    let mut redis = RedisServer::start();
    let proxy = Proxy::start(redis.addr()).await;
    let mut conn = connect(proxy.addr()).await;
    assert_eq!(ping_on(&mut conn).await, "+PONG\r\n");

    redis.kill();
    assert!(
        closed_promptly(&mut conn).await,
        "proxied connection survived kill()"
    );

    redis.restart();
    assert_eq!(ping(proxy.addr()).await, "+PONG\r\n");
}

#[test]
fn bad_config_panics_with_the_reason() {
    let panic =
        std::panic::catch_unwind(|| RedisServer::start_with(&["--maxmemory-policy", "bogus"]))
            .err()
            .expect("started with a bogus config");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("exited early") && msg.contains("bogus"),
        "{msg}"
    );
}
