//! Redis Sentinel behind a [`RedisStore`](super::RedisStore): the master of a service, asked of
//! its sentinels (the redis crate's sentinel client) for every new connection, so that the
//! store follows the master through a failover.

use super::connect::Connect;
use super::pool::with_keepalive;
use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, RedisError};

/// The sentinels of one service, and a client to its master.
pub(super) struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The service's name, as the sentinels monitor it.
    pub(super) service: String,
}

impl Sentinel {
    /// A client to the service's master now, as the sentinels say (and as the master confirms:
    /// the redis crate asks it its `ROLE`).
    pub(super) async fn master(&self) -> Result<redis::Client, RedisError> {
        self.client.lock().await.async_get_client().await
    }
}

/// A `redis+sentinel://` (or `rediss+sentinel://`) URL, read.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SentinelUrl {
    tls: bool,
    username: Option<String>,
    password: Option<String>,
    sentinels: Vec<(String, u16)>,
    service: String,
    db: i64,
}

/// `redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE[/DB]` read; `None`
/// for another URL. The credentials and database are the master's (sentinels without
/// authentication); the port defaults to 26379.
pub(super) fn sentinel_url(url: &str) -> Option<Result<SentinelUrl, String>> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
        (true, rest)
    } else {
        return None;
    };
    Some(read(tls, rest))
}

fn read(tls: bool, rest: &str) -> Result<SentinelUrl, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| "the credentials are not UTF-8".to_owned())
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (auth, hosts) = match hosts.rsplit_once('@') {
        Some((auth, hosts)) => (Some(auth), hosts),
        None => (None, hosts),
    };
    let (username, password) = match auth.map(|a| a.split_once(':').unwrap_or((a, ""))) {
        Some((user, password)) => (
            Some(decode(user)?).filter(|u| !u.is_empty()),
            Some(decode(password)?).filter(|p| !p.is_empty()),
        ),
        None => (None, None),
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) => (
                name,
                port.parse()
                    .map_err(|_| format!("`{host}`: the port is not a number"))?,
            ),
            None => (host, 26379),
        };
        sentinels.push((name.trim_matches(['[', ']']).to_owned(), port));
    }
    if sentinels.is_empty() {
        return Err(
            "a sentinel URL names at least one sentinel (redis+sentinel://host:port,.../SERVICE)"
                .into(),
        );
    }
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let service = parts
        .next()
        .ok_or("a sentinel URL names its service (redis+sentinel://host:port/SERVICE)")?
        .to_owned();
    let db = match parts.next() {
        Some(db) => db
            .parse()
            .map_err(|_| format!("`{db}`: the database is not a number"))?,
        None => 0,
    };
    Ok(SentinelUrl {
        tls,
        username,
        password,
        sentinels,
        service,
        db,
    })
}

/// The sentinel client of `url`, with `connect`'s credentials (in place of the URL's) and
/// certificates, and TCP keepalive.
pub(super) fn build(url: SentinelUrl, connect: &Connect) -> Result<Sentinel, RedisError> {
    let addrs = url.sentinels.iter().map(|(host, port)| {
        if url.tls {
            ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.clone(), *port)
        }
    });
    let keepalive = with_keepalive(&TcpSettings::default());
    let mut builder = SentinelClientBuilder::new(addrs, &url.service, SentinelServerType::Master)?
        .set_client_to_redis_db(url.db)
        .set_client_to_redis_tcp_settings(keepalive.clone())
        .set_client_to_sentinel_tcp_settings(keepalive);
    if let Some(user) = connect.username.as_ref().or(url.username.as_ref()) {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = connect.password.as_ref().or(url.password.as_ref()) {
        builder = builder.set_client_to_redis_password(password);
    }
    if url.tls {
        builder = builder
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        #[cfg(feature = "tls")]
        {
            super::connect::install_crypto_provider();
            if let Some(certs) = connect.certificates() {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
    }
    Ok(Sentinel {
        client: tokio::sync::Mutex::new(builder.build()?),
        service: url.service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_the_sentinels_the_service_and_the_master_s_credentials() {
        let url = sentinel_url("redis+sentinel://app:p%40ss@10.0.0.1:26380,10.0.0.2/mymaster/2")
            .unwrap()
            .unwrap();
        assert_eq!(
            url,
            SentinelUrl {
                tls: false,
                username: Some("app".into()),
                password: Some("p@ss".into()),
                sentinels: vec![("10.0.0.1".into(), 26380), ("10.0.0.2".into(), 26379)],
                service: "mymaster".into(),
                db: 2,
            }
        );
        let url = sentinel_url("rediss+sentinel://:pw@h:1/svc")
            .unwrap()
            .unwrap();
        assert!(url.tls && url.username.is_none() && url.password.as_deref() == Some("pw"));
        assert!(sentinel_url("redis://h:1").is_none());
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel:///svc",
            "redis+sentinel://h:x/svc",
            "redis+sentinel://h:1/svc/x",
        ] {
            assert!(sentinel_url(bad).unwrap().is_err(), "{bad}");
        }
    }
}
