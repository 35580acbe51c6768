//! A Redis Cluster behind a [`RedisStore`](super::RedisStore): its connection, and the seed
//! nodes of a `redis+cluster://` URL.

use crate::store::StoreError;
use redis::ConnectionAddr;
use redis::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// How long the map of slot owners is trusted before it is read again (in the background,
/// on the next call): resharding moves slots without any call failing.
const OWNERS_FRESH: Duration = Duration::from_secs(10);

/// The least time between two readings started because a master failed.
const REFRESH_GAP: Duration = Duration::from_millis(250);

/// `(first slot, last slot, master address)`.
pub(super) type SlotRange = (u16, u16, Arc<str>);

/// The number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// A Redis Cluster: the redis crate's cluster connection (slots, `MOVED` and `ASK`
/// redirections, topology refreshes), opened in the background.
pub(super) struct Cluster {
    pub(super) client: redis::cluster::ClusterClient,
    pub(super) conn: tokio::sync::watch::Sender<Option<redis::cluster_async::ClusterConnection>>,
    pub(super) connecting: std::sync::atomic::AtomicBool,
    pub(super) connect_timeout: Duration,
}

impl Cluster {
    /// Opens the cluster connection (afresh: the redis crate reads the slot map anew) and
    /// uses it from then on; keeps the one in use if the opening fails. Each seed has
    /// `connect_timeout`; the whole opening (seeds, slots) a few.
    async fn reopen(&self) {
        let opened =
            tokio::time::timeout(self.connect_timeout * 4, self.client.get_async_connection())
                .await;
        match opened {
            Ok(Ok(conn)) => {
                self.conn.send_replace(Some(conn));
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "redis cluster: connecting failed"),
            Err(_) => tracing::debug!("redis cluster: connecting timed out"),
        }
    }

    /// The cluster connection, opened in the background on first use (a call waits for it at
    /// most `wait`; the opening goes on without it).
    pub(super) async fn connection(
        self: &Arc<Self>,
        wait: Duration,
    ) -> Result<redis::cluster_async::ClusterConnection, StoreError> {
        if let Some(conn) = self.conn.borrow().as_ref() {
            return Ok(conn.clone());
        }
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                this.reopen().await;
                this.connecting.store(false, Ordering::Release);
            });
        }
        let mut rx = self.conn.subscribe();
        let waited = tokio::time::timeout(wait, async {
            rx.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|conn| conn.as_ref().cloned())
        })
        .await;
        match waited {
            Ok(Some(conn)) => Ok(conn),
            _ => Err(StoreError::new(format!(
                "redis cluster: no connection within {wait:?}"
            ))),
        }
    }
}

/// A store's cluster connections (`pool_size` of them, default 1), used in turn, and the
/// masters that serve the slots, as last read.
pub(super) struct Clusters {
    each: Vec<Arc<Cluster>>,
    next: std::sync::atomic::AtomicUsize,
    owners: Owners,
    /// A seed's connection settings (credentials, TLS), for connections of our own to nodes.
    template: Option<redis::ConnectionInfo>,
    /// The seeds' addresses (`host:port`).
    seeds: Vec<Arc<str>>,
    /// Connections of our own to nodes, by address: to read the slots and to ping one master
    /// apart from the cluster connection, whose recovery from a silent node holds up every
    /// node's calls.
    direct: Mutex<HashMap<Arc<str>, redis::aio::MultiplexedConnection>>,
    timeout: Duration,
}

/// Which master serves which slots (`CLUSTER SLOTS`), so that each master's calls go through a
/// breaker of their own; read when the first call asks, every [`OWNERS_FRESH`], and when a
/// master's calls keep failing. When a reading finds the slots moved (a replica took over a
/// master that stopped answering, which sends no `MOVED`), the cluster connections are
/// opened afresh, so that the redis crate routes by the new map.
struct Owners {
    /// By first slot.
    ranges: RwLock<Arc<[SlotRange]>>,
    /// When the last reading began, in ms since `origin` (`u64::MAX`: never): read on every
    /// call, without a lock.
    read_at: AtomicU64,
    origin: Instant,
    /// Whether a reading is under way.
    reading: AtomicBool,
    /// Masters reported failing, asked last.
    suspects: Mutex<Vec<Arc<str>>>,
}

impl Owners {
    fn new() -> Self {
        Self {
            ranges: RwLock::new(Arc::from([])),
            read_at: AtomicU64::new(u64::MAX),
            origin: Instant::now(),
            reading: AtomicBool::new(false),
            suspects: Mutex::default(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// How long ago the last reading began; `None` if none did.
    fn since_read(&self) -> Option<Duration> {
        match self.read_at.load(Ordering::Acquire) {
            u64::MAX => None,
            at => Some(Duration::from_millis(self.now().saturating_sub(at))),
        }
    }
}

impl Clusters {
    /// `each`, at least one; `seeds`, the seed nodes' clients, whose settings our own
    /// connections to nodes use; `timeout` for those connections and their calls.
    pub(super) fn new(each: Vec<Arc<Cluster>>, seeds: &[redis::Client], timeout: Duration) -> Self {
        assert!(!each.is_empty());
        let template = seeds.first().map(|c| c.get_connection_info().clone());
        let seeds = seeds
            .iter()
            .filter_map(|c| match c.get_connection_info().addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    Some(format!("{host}:{port}").into())
                }
                _ => None,
            })
            .collect();
        Self {
            each,
            next: Default::default(),
            owners: Owners::new(),
            template,
            seeds,
            direct: Mutex::default(),
            timeout,
        }
    }

    /// The address (`host:port`) of the master that serves `key`'s slot, as last read; `None`
    /// before the first reading. Starts a reading in the background when the last is stale.
    pub(super) fn master_of(self: &Arc<Self>, key: &str) -> Option<Arc<str>> {
        let found = self.known_master_of(key);
        if self
            .owners
            .since_read()
            .is_none_or(|since| since >= OWNERS_FRESH)
        {
            self.clone().read_owners(None);
        }
        found
    }

    /// The address of the master that serves `key`'s slot, as last read, without reading.
    fn known_master_of(&self, key: &str) -> Option<Arc<str>> {
        let slot = key_slot(key.as_bytes());
        let ranges = self.owners.ranges.read().unwrap_or_else(|e| e.into_inner());
        let at = ranges.partition_point(|(_, last, _)| *last < slot);
        ranges
            .get(at)
            .filter(|(first, ..)| *first <= slot)
            .map(|(.., addr)| addr.clone())
    }

    /// Reads which masters serve the slots again, in the background, asking `failing` (a
    /// master whose calls keep failing) last; one reading at a time, and one started for a
    /// failure at most every [`REFRESH_GAP`]. If the slots moved, opens the cluster
    /// connections afresh.
    pub(super) fn read_owners(self: Arc<Self>, failing: Option<&str>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(failing) = failing {
            let mut suspects = self
                .owners
                .suspects
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !suspects.iter().any(|s| &**s == failing) {
                suspects.push(failing.into());
                if suspects.len() > 16 {
                    suspects.remove(0);
                }
            }
            drop(suspects);
            if self
                .owners
                .since_read()
                .is_some_and(|since| since < REFRESH_GAP)
            {
                return;
            }
        }
        if self.owners.reading.swap(true, Ordering::AcqRel) {
            return;
        }
        self.owners
            .read_at
            .store(self.owners.now(), Ordering::Release);
        rt.spawn(async move {
            match self.query_owners().await {
                Ok(ranges) => {
                    let moved = {
                        let mut known = self
                            .owners
                            .ranges
                            .write()
                            .unwrap_or_else(|e| e.into_inner());
                        let moved = !known.is_empty() && known[..] != ranges[..];
                        *known = ranges.into();
                        moved
                    };
                    self.owners
                        .suspects
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    if moved {
                        tracing::info!(
                            "redis cluster: the slots moved; reconnecting to follow them"
                        );
                        let opened = self.each.iter().map(|cluster| cluster.reopen());
                        futures_util::future::join_all(opened).await;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "redis cluster: reading the slots failed"),
            }
            self.owners.reading.store(false, Ordering::Release);
        });
    }

    /// `CLUSTER SLOTS`, as sorted ranges, from the first node that answers: the known
    /// masters, then the seeds; masters reported failing last.
    async fn query_owners(&self) -> Result<Vec<SlotRange>, StoreError> {
        let suspects = self
            .owners
            .suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut nodes: Vec<Arc<str>> = Vec::new();
        {
            let ranges = self.owners.ranges.read().unwrap_or_else(|e| e.into_inner());
            for (.., addr) in ranges.iter() {
                if !nodes.contains(addr) {
                    nodes.push(addr.clone());
                }
            }
        }
        for seed in &self.seeds {
            if !nodes.contains(seed) {
                nodes.push(seed.clone());
            }
        }
        nodes.sort_by_key(|addr| suspects.contains(addr));
        let mut last = StoreError::new("redis cluster: no node to read the slots from");
        for node in nodes {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SLOTS");
            match self.direct_call(&node, &cmd).await {
                Ok(reply) => {
                    return parse_slots(&reply).ok_or_else(|| {
                        StoreError::new(format!(
                            "redis: unexpected reply to CLUSTER SLOTS: {reply:?}"
                        ))
                    })
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The masters' addresses, as last read (read now if never).
    pub(super) async fn masters(&self) -> Result<Vec<Arc<str>>, StoreError> {
        let known: Vec<Arc<str>> = {
            let ranges = self.owners.ranges.read().unwrap_or_else(|e| e.into_inner());
            ranges.iter().map(|(.., addr)| addr.clone()).collect()
        };
        let ranges = if known.is_empty() {
            let read = self.query_owners().await?;
            let addrs = read.iter().map(|(.., addr)| addr.clone()).collect();
            *self
                .owners
                .ranges
                .write()
                .unwrap_or_else(|e| e.into_inner()) = read.into();
            addrs
        } else {
            known
        };
        let mut masters: Vec<Arc<str>> = Vec::new();
        for addr in ranges {
            if !masters.contains(&addr) {
                masters.push(addr);
            }
        }
        Ok(masters)
    }

    /// Runs `cmd` on the node at `addr`, on a connection of our own.
    pub(super) async fn call_on(&self, addr: &str, cmd: &redis::Cmd) -> Result<Value, StoreError> {
        self.direct_call(addr, cmd).await
    }

    /// `PING` to the node at `addr`, on a connection of our own.
    pub(super) async fn ping_node(&self, addr: &str) -> Result<(), StoreError> {
        match self.direct_call(addr, &redis::cmd("PING")).await? {
            Value::SimpleString(pong) if pong == "PONG" => Ok(()),
            other => Err(StoreError::new(format!(
                "redis: unexpected reply to PING: {other:?}"
            ))),
        }
    }

    /// Runs `cmd` on the node at `addr` (`host:port`) through a connection of our own, opened
    /// with a seed's settings and kept; dropped on any error.
    async fn direct_call(&self, addr: &str, cmd: &redis::Cmd) -> Result<Value, StoreError> {
        let cached = self
            .direct
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .cloned();
        let mut conn = match cached {
            Some(conn) => conn,
            None => {
                let conn = self.open_direct(addr).await?;
                let mut direct = self.direct.lock().unwrap_or_else(|e| e.into_inner());
                if direct.len() >= 64 {
                    direct.clear();
                }
                direct.insert(addr.into(), conn.clone());
                conn
            }
        };
        let reply = tokio::time::timeout(self.timeout, cmd.query_async::<Value>(&mut conn)).await;
        let reply = match reply {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(e)) => StoreError::new(format!("redis: {e}")),
            Err(_) => StoreError::new(format!("no answer within {:?}", self.timeout)),
        };
        self.direct
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(addr);
        Err(reply)
    }

    /// A multiplexed connection to the node at `addr`, with a seed's credentials and TLS.
    async fn open_direct(
        &self,
        addr: &str,
    ) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        let client = self.client_at(addr)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| StoreError::new(format!("redis: {e}")))
    }

    /// A client of the master that serves `key`'s slot as last read (read now if never: no
    /// other reading is started, which would reopen the cluster connections if the slots
    /// moved), with a seed's credentials and TLS; `None` when the slots cannot be read.
    pub(super) async fn client_of_master(&self, key: &str) -> Option<redis::Client> {
        self.masters().await.ok()?;
        let addr = self.known_master_of(key)?;
        self.client_at(&addr).ok()
    }

    /// A client of the node at `addr` (`host:port`), with a seed's credentials and TLS.
    fn client_at(&self, addr: &str) -> Result<redis::Client, StoreError> {
        let (Some(template), Some((host, port))) = (&self.template, addr.rsplit_once(':')) else {
            return Err(StoreError::new(format!(
                "redis cluster: cannot reach {addr}"
            )));
        };
        let host = host.trim_matches(['[', ']']).to_owned();
        let port: u16 = port
            .parse()
            .map_err(|_| StoreError::new(format!("redis cluster: not a node address: {addr}")))?;
        let node = match template.addr().clone() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                tls_params,
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        redis::Client::open(template.clone().set_addr(node))
            .map_err(|e| StoreError::new(format!("redis: {e}")))
    }

    /// The next cluster connection (see [`Cluster::connection`]).
    pub(super) async fn connection(
        &self,
        wait: Duration,
    ) -> Result<redis::cluster_async::ClusterConnection, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.each.len();
        self.each[i].connection(wait).await
    }

    /// How many of the cluster connections are open.
    pub(super) fn opened(&self) -> u32 {
        let open = self.each.iter().filter(|c| c.conn.borrow().is_some());
        u32::try_from(open.count()).unwrap_or(u32::MAX)
    }

    /// The first cluster connection's state, which reads the servers' `maxmemory-policy`.
    pub(super) fn first(&self) -> &Arc<Cluster> {
        &self.each[0]
    }
}

/// The seed nodes of a `redis+cluster://` (or `rediss+cluster://`) URL, as node URLs; `None`
/// for any other URL. Credentials before the first node (`redis+cluster://:pw@h1:1,h2:2`)
/// apply to every node that has none of its own; a node may be a full URL of its own
/// (`redis://:pw@h1:1`).
pub(super) fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, StoreError>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return None;
    };
    let parts: Vec<&str> = rest
        .trim_end_matches('/')
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let shared_auth = parts
        .first()
        .filter(|p| !p.contains("://"))
        .and_then(|p| p.rsplit_once('@'))
        .map(|(auth, _)| auth);
    let nodes: Vec<String> = parts
        .iter()
        .map(|part| {
            if part.contains("://") {
                return (*part).to_owned();
            }
            let (auth, host) = match part.rsplit_once('@') {
                Some((auth, host)) => (Some(auth), host),
                None => (shared_auth, *part),
            };
            match auth {
                Some(a) => format!("{scheme}://{a}@{host}"),
                None => format!("{scheme}://{host}"),
            }
        })
        .collect();
    if nodes.is_empty() {
        return Some(Err(StoreError::new(
            "redis.url: a cluster needs at least one seed node (redis+cluster://host:port,...)",
        )));
    }
    Some(Ok(nodes))
}

/// A node URL without its password, for errors.
pub(super) fn redact(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((head, host)) => {
            let scheme = head.split("://").next().unwrap_or("redis");
            format!("{scheme}://***@{host}")
        }
        None => url.to_owned(),
    }
}

/// The hash slot of `key`, as Redis Cluster computes it: CRC16 (XMODEM) of the key, or of its
/// hash tag (what lies between the first `{` and the next `}`, when not empty), modulo 16384.
pub(super) fn key_slot(key: &[u8]) -> u16 {
    let tag = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|b| *b == b'}')
            .filter(|close| *close > 0)
            .map(|close| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(key)) % SLOTS
}

/// `CLUSTER SLOTS`'s reply as `(first, last, "host:port" of the master)`, sorted; ranges whose
/// master has no address (an empty host) are left out. `None` for a reply of another shape.
pub(super) fn parse_slots(reply: &Value) -> Option<Vec<SlotRange>> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok().filter(|n| *n < SLOTS),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(fields) = entry else {
            return None;
        };
        let (first, last) = (int(fields.first()?)?, int(fields.get(1)?)?);
        let Value::Array(master) = fields.get(2)? else {
            return None;
        };
        let host = text(master.first()?)?;
        let Value::Int(port) = master.get(1)? else {
            return None;
        };
        if host.is_empty() || host == "?" {
            continue;
        }
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        ranges.push((first, last, Arc::from(addr)));
    }
    ranges.sort_by_key(|(first, ..)| *first);
    Some(ranges)
}
