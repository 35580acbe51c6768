//! A check at start: a fresh connection to Redis (past the pool and any breaker), a `PING`,
//! and what answered, or an error that says what is wrong in words an operator can act on.

use super::RedisStore;
use crate::store::StoreError;
use redis::{AsyncConnectionConfig, ConnectionAddr, RedisError, Value};
use std::time::Duration;

impl RedisStore {
    /// Connects afresh to the server (on a cluster, to each seed node until one answers),
    /// authenticates, pings, and says what answered: `Redis 7.2.4 at 10.0.0.5:6379 (TLS, user
    /// app, db 2)`. Within `timeout`. A wrong address, password or certificate authority is
    /// an error saying so; a server that cannot be reached at all is
    /// [`StoreError::is_unreachable`].
    pub async fn check(&self, timeout: Duration) -> Result<String, StoreError> {
        let mut first_error: Option<StoreError> = None;
        for target in self.clients.iter() {
            let found = match tokio::time::timeout(timeout, target.client()).await {
                Ok(Ok(client)) => check_one(&client, timeout)
                    .await
                    .map(|found| format!("{found}{}", target.via())),
                Ok(Err(e)) => Err(explain(&format!("the sentinels{}", target.via()), &e)),
                Err(_) => Err(StoreError::unreachable(format!(
                    "redis: no master named within {timeout:?}{}",
                    target.via()
                ))),
            };
            match found {
                Ok(found) if self.is_cluster() => {
                    return Ok(format!("Redis Cluster, seed {found}"))
                }
                Ok(found) => return Ok(found),
                // A server that answered and refused us says more than one that did not answer.
                Err(e) => match &first_error {
                    Some(seen) if !seen.is_unreachable() || e.is_unreachable() => {}
                    _ => first_error = Some(e),
                },
            }
        }
        Err(first_error.unwrap_or_else(|| StoreError::new("redis: no server to check")))
    }
}

/// Connects to `client`'s server, pings it, and describes it.
async fn check_one(client: &redis::Client, timeout: Duration) -> Result<String, StoreError> {
    let info = client.get_connection_info();
    let addr = info.addr().to_string();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let connecting = client.get_multiplexed_async_connection_with_config(&config);
    let mut conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(explain(&addr, &e)),
        Err(_) => {
            return Err(StoreError::unreachable(format!(
                "redis at {addr} is unreachable: no connection within {timeout:?}"
            )))
        }
    };
    let asked = async {
        redis::cmd("PING").query_async::<Value>(&mut conn).await?;
        // A user without `INFO` (an ACL) is fine: the version is then unknown.
        let info = redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut conn)
            .await
            .unwrap_or_default();
        Ok::<_, RedisError>(info)
    };
    let server = match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(info)) => server_name(&info),
        Ok(Err(e)) => return Err(explain(&addr, &e)),
        Err(_) => {
            return Err(StoreError::unreachable(format!(
                "redis at {addr}: connected, but no answer to PING within {timeout:?}"
            )))
        }
    };
    let mut details = Vec::new();
    if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        details.push("TLS".to_owned());
    }
    let settings = info.redis_settings();
    if let Some(user) = settings.username() {
        details.push(format!("user {user}"));
    }
    if settings.db() != 0 {
        details.push(format!("db {}", settings.db()));
    }
    let details = if details.is_empty() {
        String::new()
    } else {
        format!(" ({})", details.join(", "))
    };
    Ok(format!("{server} at {addr}{details}"))
}

/// `Redis 7.2.4` (or `Valkey 8.0.1`) from an `INFO server` reply; `Redis` when unknown.
fn server_name(info: &str) -> String {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    match (field("valkey_version:"), field("redis_version:")) {
        (Some(v), _) => format!("Valkey {v}"),
        (None, Some(v)) => format!("Redis {v}"),
        (None, None) => "Redis".to_owned(),
    }
}

/// Redis's error `e`, met connecting to `addr`, in an operator's words.
pub(super) fn explain(addr: &str, e: &RedisError) -> StoreError {
    let text = e.to_string();
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
    {
        return StoreError::new(format!(
            "redis at {addr} refused the credentials ({text}): check the user name and \
             password (redis://USER:PASSWORD@HOST:PORT, or `username` and `password` in \
             [stash.redis])"
        ));
    }
    if e.code() == Some("NOPERM") {
        return StoreError::new(format!(
            "redis at {addr}: the user lacks a permission ({text}): it needs the commands \
             and keys of the README's \"With Redis\""
        ));
    }
    if text.contains("CertificateRequired") {
        return StoreError::new(format!(
            "redis at {addr}: the TLS handshake failed ({text}): the server asks for a client \
             certificate (`client_cert_file` and `client_key_file`, or \
             `RedisStoreBuilder::tls_client_certificate`)"
        ));
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        return StoreError::new(format!(
            "redis at {addr}: the TLS handshake failed ({text}): is the server's certificate \
             signed by a trusted authority (the system's roots, or `ca_file` / \
             `RedisStoreBuilder::tls_root_certificate`) for this host name?"
        ));
    }
    if e.is_connection_refusal() || e.is_timeout() || e.is_io_error() {
        return StoreError::unreachable(format!("redis at {addr} is unreachable: {text}"));
    }
    StoreError::new(format!("redis at {addr}: {text}"))
}

#[cfg(test)]
mod tests {
    use super::server_name;

    #[test]
    fn the_server_is_named_from_info() {
        assert_eq!(
            server_name("# Server\r\nredis_version:7.0.15\r\n"),
            "Redis 7.0.15"
        );
        assert_eq!(
            server_name("redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.0.1\r\n"),
            "Valkey 8.0.1"
        );
        assert_eq!(server_name(""), "Redis");
    }
}
