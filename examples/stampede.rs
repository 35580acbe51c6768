//! A load client for stampedes: `concurrency` requests for one cold key, all at once, over
//! connections opened beforehand; repeated for `rounds` fresh keys. Prints the latency
//! percentiles, how many database queries the server made (its `/stats`), and the mean latency
//! of each tenth of the requests in the order they were sent (with a fair fan-out, the first
//! sent are not the last answered).
//!
//! ```sh
//! cargo run --release --example quickstart -- --listen 127.0.0.1:3200 &
//! cargo run --release --example stampede -- --url http://127.0.0.1:3200 --concurrency 1000 --rounds 5
//! ```
//!
//! `scripts/stampede.sh` runs it against the quickstart with and without single flight;
//! `--url a,b,c,d` sends `concurrency` requests to each instance at once (instances sharing a
//! Redis: `scripts/stampede-instances.sh`; `--host name` sends the same `Host` to all, as a
//! load balancer would), and prints each instance's percentiles.

use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A keep-alive connection that writes ready-made HTTP/1.1 requests and reads responses with
/// a `Content-Length` (what the quickstart sends): a lean client, so that the burst measures
/// the server rather than the load generator sharing its cores.
struct Sender {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

async fn connect(addr: &str) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    Sender {
        stream,
        buf: Vec::with_capacity(4096),
    }
}

/// The `Host` header every request names (`--host`), whichever instance it goes to: the same
/// name on each, as behind a load balancer (the cache keys the host). By default the address.
fn host_header(addr: &str) -> String {
    let named: String = arg("--host", String::new());
    if named.is_empty() {
        addr.to_owned()
    } else {
        named
    }
}

async fn get(sender: &mut Sender, host: &str, path: &str) -> (u16, Bytes) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n");
    sender
        .stream
        .write_all(req.as_bytes())
        .await
        .expect("write");
    sender.buf.clear();
    loop {
        if let Some(end) = sender.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&sender.buf[..end]).expect("utf-8 head");
            let status: u16 = head[9..12].parse().expect("status");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a content-length");
            let total = end + 4 + len;
            while sender.buf.len() < total {
                let mut chunk = [0u8; 4096];
                let n = sender.stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "connection closed");
                sender.buf.extend_from_slice(&chunk[..n]);
            }
            return (status, Bytes::copy_from_slice(&sender.buf[end + 4..total]));
        }
        let mut chunk = [0u8; 4096];
        let n = sender.stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed");
        sender.buf.extend_from_slice(&chunk[..n]);
    }
}

fn db_queries(stats: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(stats).expect("stats json");
    v["db_queries"].as_u64().expect("db_queries")
}

/// The latency at quantile `p` of `times`, sorted.
fn pct(times: &[Duration], p: f64) -> Duration {
    times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let urls: String = arg("--url", "http://127.0.0.1:3000".to_string());
    let concurrency: usize = arg("--concurrency", 1000);
    let rounds: usize = arg("--rounds", 5).max(1);
    // The handler's time (the quickstart's database takes 200 ms): a round is within bound
    // when its p99 is at most 10% over it.
    let bound = Duration::from_millis(arg("--handler-ms", 200u64)).mul_f64(1.1);
    let first_id: u64 = arg(
        "--first-id",
        1_000_000 + u64::from(std::process::id()) * 1000,
    );
    // Several instances (`--url a,b,c`): `concurrency` requests on each, all at once.
    let hosts: Vec<String> = urls
        .split(',')
        .map(|u| {
            u.trim()
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    let n = hosts.len();

    let mut controls = Vec::with_capacity(n);
    for host in &hosts {
        controls.push(connect(host).await);
    }
    let mut senders = Vec::with_capacity(concurrency * n);
    for (i, host) in hosts.iter().enumerate() {
        for _ in 0..concurrency {
            senders.push((i, connect(host).await));
        }
    }
    let mut all = Vec::new();
    let mut by_instance: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let mut round_p99s = Vec::with_capacity(rounds);
    let mut gaps: Vec<f64> = Vec::new();
    let mut queries = 0;
    let total = concurrency * n;
    for round in 0..rounds {
        let path = format!("/users/{}", first_id + round as u64);
        let mut before = Vec::with_capacity(n);
        for (control, host) in controls.iter_mut().zip(&hosts) {
            before.push(db_queries(&get(control, host, "/stats").await.1));
        }
        let barrier = Arc::new(Barrier::new(total));
        let tasks: Vec<_> = senders
            .drain(..)
            .map(|(i, mut sender)| {
                let (barrier, host, path) = (barrier.clone(), host_header(&hosts[i]), path.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let start = Instant::now();
                    let (status, body) = get(&mut sender, &host, &path).await;
                    (i, sender, start, start.elapsed(), status, body)
                })
            })
            .collect();
        let mut sent = Vec::with_capacity(total);
        let mut per: Vec<Vec<Duration>> = vec![Vec::new(); n];
        let mut bodies = std::collections::HashSet::new();
        for t in tasks {
            let (i, sender, start, took, status, body) = t.await.expect("task");
            assert_eq!(status, 200, "a request failed");
            bodies.insert(body);
            sent.push((start, took));
            per[i].push(took);
            senders.push((i, sender));
        }
        let mut asked = Vec::with_capacity(n);
        for (i, (control, host)) in controls.iter_mut().zip(&hosts).enumerate() {
            asked.push(db_queries(&get(control, host, "/stats").await.1) - before[i]);
        }
        let round_queries: u64 = asked.iter().sum();
        // By the order they were sent: the mean latency of each tenth, first to last.
        sent.sort();
        let tenths: Vec<_> = sent
            .chunks(total.div_ceil(10))
            .map(|c| {
                let mean = c.iter().map(|(_, t)| *t).sum::<Duration>() / c.len() as u32;
                format!("{:.0}", mean.as_secs_f64() * 1e3)
            })
            .collect();
        let mut times: Vec<_> = sent.into_iter().map(|(_, t)| t).collect();
        times.sort();
        let instances = if n > 1 {
            let p99s: Vec<_> = per
                .iter_mut()
                .map(|t| {
                    t.sort();
                    pct(t, 0.99)
                })
                .collect();
            let shown: Vec<_> = p99s
                .iter()
                .zip(&asked)
                .map(|(p, q)| {
                    let lead = if *q > 0 { "*" } else { "" };
                    format!("{:.1}{lead}", p.as_secs_f64() * 1e3)
                })
                .collect();
            // How much later than the instance that asked the database the others were.
            let gap = asked.iter().position(|q| *q > 0).map(|lead| {
                let others = p99s
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != lead)
                    .map(|(_, p)| *p)
                    .max()
                    .unwrap_or(p99s[lead]);
                let ms = (others.as_secs_f64() - p99s[lead].as_secs_f64()) * 1e3;
                gaps.push(ms);
                format!("; worst other instance minus the leader's: {ms:+.1} ms")
            });
            format!(
                "; p99 ms by instance (* asked the database): {}{}",
                shown.join(" "),
                gap.unwrap_or_default()
            )
        } else {
            String::new()
        };
        println!(
            "round {round}: {total} requests for {path}: p50 {:?}, p99 {:?}, max {:?}; db queries {}; distinct bodies {}; mean ms by tenth sent: {}{instances}",
            pct(&times, 0.50), pct(&times, 0.99), times[times.len() - 1], round_queries, bodies.len(), tenths.join(" ")
        );
        round_p99s.push(pct(&times, 0.99));
        queries += round_queries;
        all.extend(times);
        for (i, t) in per.into_iter().enumerate() {
            by_instance[i].extend(t);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all.sort();
    round_p99s.sort();
    let within = round_p99s.iter().filter(|t| **t <= bound).count();
    println!(
        "overall: {} requests: p50 {:?}, p99 {:?}, max {:?}; p99 of a round: median {:?}, worst {:?}, {within} of {rounds} within {bound:?}; db queries {queries} ({} per cold key)",
        all.len(),
        pct(&all, 0.50),
        pct(&all, 0.99),
        all[all.len() - 1],
        round_p99s[rounds / 2],
        round_p99s[rounds - 1],
        queries as f64 / rounds as f64
    );
    if !gaps.is_empty() {
        gaps.sort_by(f64::total_cmp);
        println!(
            "other instances' p99 minus the leader's, by round: median {:+.1} ms, worst {:+.1} ms",
            gaps[gaps.len() / 2],
            gaps[gaps.len() - 1]
        );
    }
    if n > 1 {
        for (i, mut t) in by_instance.into_iter().enumerate() {
            t.sort();
            println!(
                "instance {i} ({}): p50 {:?}, p99 {:?}, max {:?}",
                hosts[i],
                pct(&t, 0.50),
                pct(&t, 0.99),
                t[t.len() - 1]
            );
        }
    }
}
