//! Real `redis-server` processes on free loopback ports, and a fault-injecting TCP proxy.
//!
//! * [`RedisServer`] runs `/usr/bin/redis-server` on `127.0.0.1:<free port>` with persistence off
//!   and its own scratch directory; it can be killed, restarted on the same port, paused
//!   (`SIGSTOP`) and resumed (`SIGCONT`), and inspected with [`RedisServer::cli`].
//! * [`Proxy`] sits between a client and any TCP upstream and can add latency, cut every
//!   connection at once, leave every connection half-open (silent, never closed: a peer that
//!   vanished without FIN or RST), or send new connections to another upstream.
//!
//! Nothing here ever talks to the system Redis on port 6379: every server gets a port the kernel
//! just handed out, and its identity is checked (by process id) before it is used.
//!
//! [`RedisServer`]'s methods block the calling thread (for up to a few seconds while waiting for
//! the server). From a `current_thread` tokio test that also runs a [`Proxy`], the proxy stalls
//! meanwhile; use `#[tokio::test(flavor = "multi_thread")]` or `spawn_blocking` where that matters.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

/// How long [`RedisServer::start`] and [`RedisServer::restart`] wait for the server to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`RedisServer::restart`] keeps retrying while its port is briefly taken.
const REBIND_TIMEOUT: Duration = Duration::from_secs(3);
/// How many fresh ports [`RedisServer::start`] tries when one is grabbed before Redis binds it.
const START_ATTEMPTS: usize = 5;
/// How long [`RedisServer::cli`] lets `redis-cli` run.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process listening on `127.0.0.1:<port>`, with no persistence and a
/// private scratch directory (holding `redis.log`, plus `redis.stderr` for config errors).
///
/// Dropping it kills the process (resuming it first if paused) and removes the directory.
pub struct RedisServer {
    port: u16,
    extra: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// Why one launch attempt did not produce a ready server.
enum LaunchError {
    /// The port was taken by someone else (Redis reported `Address already in use`).
    PortBusy,
    /// Anything else; the message includes the log.
    Other(String),
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port with the default test configuration and
    /// waits (up to ~5 s) until it answers `PING`. Panics with the server log otherwise.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Like [`RedisServer::start`], with extra command-line config appended, e.g.
    /// `&["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]`.
    /// The same extra arguments are used again by [`RedisServer::restart`].
    pub fn start_with(args: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: 0,
            extra: args.iter().map(|a| a.to_string()).collect(),
            dir: scratch_dir(),
            child: None,
            paused: false,
        };
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.launch() {
                Ok(()) => return server,
                // Someone grabbed the port between our probe and Redis binding it: pick another.
                Err(LaunchError::PortBusy) => continue,
                Err(LaunchError::Other(msg)) => panic!("{msg}"),
            }
        }
        panic!(
            "redis-server: no free port after {START_ATTEMPTS} attempts; log:\n{}",
            server.log()
        );
    }

    /// The TCP port the server listens on (stable across [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id of the running server, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The scratch directory (`--dir`), which also holds `redis.log` and `redis.stderr`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server log so far (all runs of this server), or a note if it cannot be read,
    /// followed by anything redis-server wrote to stderr (config errors land only there).
    pub fn log(&self) -> String {
        let mut log = std::fs::read_to_string(self.log_path())
            .unwrap_or_else(|e| format!("<no log at {}: {e}>", self.log_path().display()));
        let stderr = std::fs::read_to_string(self.stderr_path()).unwrap_or_default();
        if !stderr.trim().is_empty() {
            log.push_str("\n--- stderr ---\n");
            log.push_str(&stderr);
        }
        log
    }

    /// Kills the server with `SIGKILL` (no shutdown, no save) and waits for it to exit.
    /// Connections to [`RedisServer::addr`] are refused afterwards. Does nothing if not running.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.paused {
            // SIGKILL works on stopped processes too, but resume so the state is never stale.
            let _ = signal(child.id(), "CONT");
            self.paused = false;
        }
        let _ = child.kill();
        child.wait().expect("waiting for the killed redis-server");
    }

    /// Starts the server again on the same port with the same arguments (killing it first if it
    /// is still running) and waits until it answers. The data set is empty afterwards.
    /// Retries for a few seconds if the port is briefly busy; panics with the log otherwise.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(LaunchError::PortBusy) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(LaunchError::PortBusy) => panic!(
                    "redis-server: port {} still busy after {REBIND_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log()
                ),
                Err(LaunchError::Other(msg)) => panic!("{msg}"),
            }
        }
    }

    /// Freezes the server with `SIGSTOP`: connections are still accepted by the kernel, but
    /// nothing is answered until [`RedisServer::resume`]. Panics if the server is not running.
    pub fn pause(&mut self) {
        let pid = self.pid().expect("pause(): redis-server is not running");
        signal(pid, "STOP").expect("sending SIGSTOP to redis-server");
        self.paused = true;
    }

    /// Continues a server frozen by [`RedisServer::pause`] (`SIGCONT`).
    /// Panics if the server is not running.
    pub fn resume(&mut self) {
        let pid = self.pid().expect("resume(): redis-server is not running");
        signal(pid, "CONT").expect("sending SIGCONT to redis-server");
        self.paused = false;
    }

    /// Runs `redis-cli -h 127.0.0.1 -p <port> <args...>` and returns its stdout, trimmed.
    ///
    /// Output is redis-cli's non-TTY ("raw") form: `GET` of a missing key gives `""`, integers
    /// are plain digits, error replies come back as text (`"ERR ..."`), arrays one item a line.
    /// Panics if redis-cli fails (e.g. cannot connect) or runs longer than 10 s (e.g. paused).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut child = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning redis-cli");
        // Drain the pipes on threads so a large reply cannot block the child.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_string(&mut text);
                }
                text
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + CLI_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for redis-cli") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-cli {args:?} on port {} timed out", self.port);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        assert!(
            status.success(),
            "redis-cli {args:?} on port {} failed ({status}): {}{}",
            self.port,
            stdout.trim(),
            stderr.trim()
        );
        stdout.trim().to_string()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.join("redis.stderr")
    }

    /// Spawns redis-server on `self.port` and waits until it is ready and verifiably ours.
    fn launch(&mut self) -> Result<(), LaunchError> {
        // stderr goes to a file of this run only (never to the test output).
        let stderr = std::fs::File::create(self.stderr_path())
            .map_err(|e| LaunchError::Other(format!("creating redis.stderr: {e}")))?;
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| LaunchError::Other(format!("spawning redis-server: {e}")))?;
        let pid = child.id();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for redis-server") {
                let log = self.log();
                // Only look at the tail: earlier runs of this server share the log file.
                let last = log.lines().rev().take(5).collect::<Vec<_>>().join("\n");
                return Err(if last.contains("Address already in use") {
                    LaunchError::PortBusy
                } else {
                    LaunchError::Other(format!(
                        "redis-server on port {} exited early ({status}); log:\n{log}",
                        self.port
                    ))
                });
            }
            // PONG alone could come from whoever else holds the port; check it is our process.
            if ping(self.port) && server_pid(self.port) == Some(pid) {
                self.child = Some(child);
                self.paused = false;
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Other(format!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port the kernel considers free on 127.0.0.1 right now (the listener is dropped again).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// A fresh, empty directory under the system temp dir, unique per process and call.
pub fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tower-stash-redis-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            // Left over from an earlier process that had the same pid: try the next name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("creating {}: {e}", dir.display()),
        }
    }
}

/// Sends `SIG<name>` to `pid` with the `kill` command.
fn signal(pid: u32, name: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("running kill: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{name} {pid}: {status}"))
    }
}

/// A short blocking connection to `127.0.0.1:port` with read/write timeouts.
fn connect(port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    Some(stream)
}

/// Whether `127.0.0.1:port` answers an inline `PING` with `+PONG`.
pub fn ping(port: u16) -> bool {
    let Some(mut stream) = connect(port) else {
        return false;
    };
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    reply.starts_with(b"+PONG")
}

/// The `process_id` reported by `INFO server` on `127.0.0.1:port`.
fn server_pid(port: u16) -> Option<u32> {
    let mut stream = connect(port)?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    // Reply: `$<len>\r\n<len bytes>\r\n`.
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = reply.windows(2).position(|w| w == b"\r\n") {
            let len: usize = std::str::from_utf8(reply.get(1..end)?).ok()?.parse().ok()?;
            if reply.first() == Some(&b'$') && reply.len() >= end + 2 + len {
                let text = String::from_utf8_lossy(&reply[end + 2..end + 2 + len]);
                return text
                    .lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|p| p.trim().parse().ok());
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
}

/// What the proxy's tasks watch: live settings plus a cut generation.
#[derive(Clone, Copy, Debug)]
struct ProxyState {
    /// Where new connections go.
    upstream: SocketAddr,
    /// Added to every chunk in each direction.
    latency: Duration,
    /// While true, new connections are closed right after accept.
    cut: bool,
    /// Bumped by every `cut()`; a connection closes when it differs from its value at accept.
    epoch: u64,
    /// While true, new connections are accepted and silent for good (see `half_open()`).
    half_open: bool,
    /// Bumped by every `half_open()`; a connection goes silent for good when it differs
    /// from its value at accept.
    silence: u64,
}

/// What a connection knew of the proxy's state when it was accepted.
#[derive(Clone, Copy, Debug)]
struct Accepted {
    epoch: u64,
    silence: u64,
    half_open: bool,
}

impl Accepted {
    /// Whether this connection forwards nothing any more (and never closes by itself).
    fn silenced(&self, state: &ProxyState) -> bool {
        self.half_open || state.silence != self.silence
    }
}

/// A TCP proxy on a free `127.0.0.1` port in front of `upstream`, with injectable faults:
/// latency ([`Proxy::set_latency`]), outages ([`Proxy::cut`] / [`Proxy::restore`]), silent
/// half-open connections ([`Proxy::half_open`] / [`Proxy::restore`]) and a move of the
/// upstream for new connections ([`Proxy::set_upstream`], a failover behind one address).
///
/// Each accepted connection opens its own upstream connection (if that fails, the client
/// connection is closed). Half-closes are forwarded. Runs on the current tokio runtime;
/// dropping the `Proxy` stops the listener and closes every connection.
pub struct Proxy {
    addr: SocketAddr,
    state: watch::Sender<ProxyState>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy local address");
        let (state, rx) = watch::channel(ProxyState {
            upstream,
            latency: Duration::ZERO,
            cut: false,
            epoch: 0,
            half_open: false,
            silence: 0,
        });
        let task = tokio::spawn(accept_loop(listener, rx));
        Proxy { addr, state, task }
    }

    /// The proxy's listening address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream new connections go to.
    pub fn upstream(&self) -> SocketAddr {
        self.state.borrow().upstream
    }

    /// Sends connections accepted from now on to `upstream`; open ones stay where they are
    /// (as after a failover behind one address: a DNS name, a virtual IP, a TCP proxy).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        self.state.send_modify(|s| s.upstream = upstream);
    }

    /// `redis://127.0.0.1:<proxy port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.addr.port())
    }

    /// Delays every chunk forwarded, in each direction, by `latency` (so a request/reply round
    /// trip gains about twice that). Applies at once to existing connections, for data read
    /// from then on. Chunks stay in order; throughput is not limited. `Duration::ZERO` turns it off.
    pub fn set_latency(&self, latency: Duration) {
        self.state.send_modify(|s| s.latency = latency);
    }

    /// Closes every current connection (both sides, immediately, dropping data in flight), and
    /// closes new connections right after accepting them, until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.send_modify(|s| {
            s.cut = true;
            s.epoch += 1;
        });
    }

    /// Makes every current connection half-open for good: nothing is forwarded any more in
    /// either direction, not even a close, and nothing is closed, as when the host at the
    /// other end vanished without a FIN or an RST (powered off, partitioned). Connections
    /// accepted until [`Proxy::restore`] are the same: accepted (by the kernel, as the
    /// listener stays open), then silent. Only dropping the proxy or a [`Proxy::cut`] closes them.
    pub fn half_open(&self) {
        self.state.send_modify(|s| {
            s.half_open = true;
            s.silence += 1;
        });
    }

    /// Ends a [`Proxy::cut`] or a [`Proxy::half_open`]: connections accepted from now on are
    /// forwarded (the ones silenced stay silent).
    pub fn restore(&self) {
        self.state.send_modify(|s| {
            s.cut = false;
            s.half_open = false;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: watch::Receiver<ProxyState>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // E.g. out of file descriptors: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let ProxyState { cut, epoch, upstream, half_open, silence, .. } = *state.borrow();
                if cut {
                    drop(stream);
                    continue;
                }
                let accepted = Accepted { epoch, silence, half_open };
                conns.spawn(relay(stream, upstream, state.clone(), accepted));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Forwards one client connection until both directions finish or a cut bumps the epoch.
async fn relay(
    client: tokio::net::TcpStream,
    upstream: SocketAddr,
    state: watch::Receiver<ProxyState>,
    accepted: Accepted,
) {
    let mut cut_rx = state.clone();
    let cut = async move {
        // Checks the current value first, so a cut just before this point is not missed.
        let _ = cut_rx.wait_for(|s| s.epoch != accepted.epoch).await;
    };
    let work = async move {
        let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::join!(
            pump(client_read, server_write, state.clone(), accepted),
            pump(server_read, client_write, state, accepted),
        );
    };
    // Whichever ends first drops the other, closing both sockets.
    tokio::select! {
        _ = cut => {}
        _ = work => {}
    }
}

/// Copies `from` to `to`, delivering each chunk `latency` after it was read. Once the
/// connection is silenced it neither reads, writes nor shuts down again (the sockets stay
/// open until the relay is dropped).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    state: watch::Receiver<ProxyState>,
    accepted: Accepted,
) {
    let (queue_tx, mut queue_rx) = mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(64);
    let mut silence_rx = state.clone();
    let writer_state = state.clone();
    let silenced = move || accepted.silenced(&writer_state.borrow());
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let read = tokio::select! {
                read = from.read(&mut buf) => read,
                // The writer gave up (its peer is gone): stop reading too.
                _ = queue_tx.closed() => break,
                // Silent for good: neither this read nor an end of stream goes on.
                _ = async { drop(silence_rx.wait_for(|s| accepted.silenced(s)).await) } => {
                    std::future::pending::<()>().await;
                    break;
                }
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + state.borrow().latency;
                    if queue_tx.send((due, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `queue_tx` lets the writer drain the queue and then shut down.
    };
    let writer = async move {
        while let Some((due, chunk)) = queue_rx.recv().await {
            tokio::time::sleep_until(due).await;
            if silenced() {
                std::future::pending::<()>().await;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        if silenced() {
            std::future::pending::<()>().await;
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
