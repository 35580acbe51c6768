//! Redis Sentinel on loopback ports: a master, its replica and three sentinels watching them
//! (`redis-server --sentinel` with a generated configuration), torn down when dropped.

use super::redis::{free_port, ping, scratch_dir, RedisServer};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `redis-server --sentinel` process.
pub struct SentinelServer {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl SentinelServer {
    /// A sentinel on a free port, watching the master at `master_port` as `service`, with a
    /// quorum of 2, the master deemed down after 500 ms.
    pub fn start(master_port: u16, service: &str) -> SentinelServer {
        let dir = scratch_dir();
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                     dir {dir}\nlogfile {dir}/sentinel.log\n\
                     sentinel monitor {service} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {service} 500\n\
                     sentinel failover-timeout {service} 3000\n\
                     sentinel parallel-syncs {service} 1\n",
                    dir = dir.display()
                ),
            )
            .unwrap();
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawning redis-server --sentinel");
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken: another one
                }
                if ping(port) {
                    return SentinelServer { port, dir, child };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("a sentinel on port {port} did not answer within 5 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no sentinel started after 5 ports");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis-cli -p <port> <args>`, trimmed stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A field of `SENTINEL MASTER <service>` (`num-slaves`, `num-other-sentinels`, ...).
    pub fn master_field(&self, service: &str, field: &str) -> Option<String> {
        let out = self.cli(&["SENTINEL", "MASTER", service]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .find(|kv| kv[0] == field)
            .and_then(|kv| kv.get(1).map(|v| v.to_string()))
    }
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A master, one replica and three sentinels that know each other and the replica.
pub struct SentinelGroup {
    pub service: String,
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<SentinelServer>,
}

impl SentinelGroup {
    /// Starts them all and waits (at most 30 s) until the replica is in sync and every
    /// sentinel sees the replica and the two other sentinels.
    pub fn start(service: &str) -> SentinelGroup {
        let fast = ["--repl-diskless-sync-delay", "0"];
        let master = RedisServer::start_with(&fast);
        let port = master.port().to_string();
        let replica =
            RedisServer::start_with(&[fast[0], fast[1], "--replicaof", "127.0.0.1", &port]);
        let sentinels: Vec<SentinelServer> = (0..3)
            .map(|_| SentinelServer::start(master.port(), service))
            .collect();
        let group = SentinelGroup {
            service: service.to_owned(),
            master,
            replica,
            sentinels,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = group
                .replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up");
            let known = group.sentinels.iter().all(|s| {
                s.master_field(service, "num-slaves").as_deref() == Some("1")
                    && s.master_field(service, "num-other-sentinels").as_deref() == Some("2")
            });
            if synced && known {
                return group;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not settle within 30 s (replica synced: {synced})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis+sentinel://127.0.0.1:<port>,.../<service>`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+sentinel://{}/{}", hosts.join(","), self.service)
    }

    /// The master's port as the first sentinel names it now.
    pub fn master_port(&self) -> Option<u16> {
        let out = self.sentinels[0].cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.service]);
        out.lines().nth(1).and_then(|p| p.parse().ok())
    }
}
