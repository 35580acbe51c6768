//! A Redis Cluster behind a [`RedisStore`](super::RedisStore): its connection, and the seed
//! nodes of a `redis+cluster://` URL.

use crate::store::StoreError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A Redis Cluster: the redis crate's cluster connection (slots, `MOVED` and `ASK`
/// redirections, topology refreshes), opened in the background.
pub(super) struct Cluster {
    pub(super) client: redis::cluster::ClusterClient,
    pub(super) conn: tokio::sync::watch::Sender<Option<redis::cluster_async::ClusterConnection>>,
    pub(super) connecting: std::sync::atomic::AtomicBool,
    pub(super) connect_timeout: Duration,
}

impl Cluster {
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
                // Each seed has `connect_timeout`; the whole opening (seeds, slots) a few.
                let opened = tokio::time::timeout(
                    this.connect_timeout * 4,
                    this.client.get_async_connection(),
                )
                .await;
                match opened {
                    Ok(Ok(conn)) => {
                        this.conn.send_replace(Some(conn));
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "redis cluster: connecting failed"),
                    Err(_) => tracing::debug!("redis cluster: connecting timed out"),
                }
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
