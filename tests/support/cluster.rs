//! A real Redis Cluster on loopback ports: three masters with one replica each, small node
//! timeouts, torn down (every process killed, every directory removed) when dropped.

use super::redis::RedisServer;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`RedisCluster::start`] waits for the cluster to agree on its slots.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// Six `redis-server --cluster-enabled yes` processes joined by `redis-cli --cluster create`:
/// nodes 0 to 2 start as masters, 3 to 5 as their replicas (redis-cli decides the pairing).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts and forms the cluster, and waits until every node sees every slot served.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    // A master gone for 1 s is failed over.
                    "--cluster-node-timeout",
                    "1000",
                    // Slots of healthy masters keep serving while one fails over.
                    "--cluster-require-full-coverage",
                    "no",
                    // Replicas get their first copy at once, not after 5 s.
                    "--repl-diskless-sync-delay",
                    "0",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("running redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok(FORM_TIMEOUT);
        cluster
    }

    /// `redis+cluster://127.0.0.1:<port>,...` with every node as a seed.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Runs `redis-cli -c` (following redirections) on the first running node.
    pub fn cli(&self, args: &[&str]) -> String {
        let node = self
            .nodes
            .iter()
            .find(|n| n.pid().is_some())
            .expect("a running node");
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        node.cli(&all)
    }

    /// Runs `args` on every running node and returns each output.
    pub fn cli_all(&self, args: &[&str]) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(|n| n.cli(args))
            .collect()
    }

    /// How many nodes are running.
    pub fn running(&self) -> usize {
        self.nodes.iter().filter(|n| n.pid().is_some()).count()
    }

    /// The index of the node that is master of `key`'s slot now.
    pub fn master_of(&self, key: &str) -> usize {
        let slot: u16 = self.cli(&["CLUSTER", "KEYSLOT", key]).parse().unwrap();
        let nodes = self.cli(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                let mut ends = range.split('-');
                match (ends.next().and_then(|a| a.parse::<u16>().ok()), ends.next()) {
                    (Some(a), Some(b)) => b.parse::<u16>().is_ok_and(|b| (a..=b).contains(&slot)),
                    (Some(a), None) => a == slot,
                    _ => false,
                }
            });
            if owns {
                let port: u16 = fields[1]
                    .split('@')
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .expect("a node address");
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port() == port)
                    .expect("a node of this cluster");
            }
        }
        panic!("no master owns slot {slot}:\n{nodes}");
    }

    /// Waits until every running node reports `cluster_state:ok` with all 16384 slots
    /// assigned and served, and every replica is in sync with its master (a replica that
    /// never synced cannot take over).
    pub fn wait_until_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let infos = self.cli_all(&["CLUSTER", "INFO"]);
            let ok = infos.iter().all(|info| {
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_assigned:16384")
                    && info.contains("cluster_slots_ok:16384")
            });
            let synced = self
                .cli_all(&["INFO", "replication"])
                .iter()
                .all(|r| !r.contains("role:slave") || r.contains("master_link_status:up"));
            let replicas = self
                .cli_all(&["INFO", "replication"])
                .iter()
                .filter(|r| r.contains("role:slave"))
                .count();
            if ok && synced && replicas * 2 >= self.running() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not form within {limit:?}: {infos:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
