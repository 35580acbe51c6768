//! How a [`RedisStore`](super::RedisStore) authenticates and encrypts: an ACL user and
//! password in place of the URL's, and TLS certificates (feature `tls`).

use super::pool::{connection_info, with_keepalive};
use redis::{ConnectionAddr, ConnectionInfo, RedisError};
use std::fmt;

/// The credentials and certificates a store's connections use, beside its URL.
#[derive(Clone, Default)]
pub(super) struct Connect {
    /// An ACL user, in place of the URL's.
    pub(super) username: Option<String>,
    /// A password, in place of the URL's.
    pub(super) password: Option<String>,
    /// PEM certificates of the authorities trusted in place of the system's roots.
    #[cfg(feature = "tls")]
    pub(super) root_certificate: Option<Vec<u8>>,
    /// A PEM client certificate and key (mutual TLS).
    #[cfg(feature = "tls")]
    pub(super) client_certificate: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password; the certificates only by whether they are set.
        let mut d = f.debug_struct("Connect");
        d.field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"));
        #[cfg(feature = "tls")]
        d.field("root_certificate", &self.root_certificate.is_some())
            .field("client_certificate", &self.client_certificate.is_some());
        d.finish()
    }
}

/// Where a store's connections go: a server's client, or the master a service's sentinels
/// name at the time.
#[derive(Clone)]
// One or a few per store, cloned only to open a connection: their size does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Target {
    Client(redis::Client),
    #[cfg(feature = "sentinel")]
    Sentinel(std::sync::Arc<super::sentinel::Sentinel>),
}

impl Target {
    /// A client to the server now.
    pub(super) async fn client(&self) -> Result<redis::Client, RedisError> {
        match self {
            Self::Client(client) => Ok(client.clone()),
            #[cfg(feature = "sentinel")]
            Self::Sentinel(sentinel) => sentinel.master().await,
        }
    }

    /// How the server was found, for [`RedisStore::check`](super::RedisStore::check): ` via
    /// Sentinel `name`` or nothing.
    pub(super) fn via(&self) -> String {
        match self {
            Self::Client(_) => String::new(),
            #[cfg(feature = "sentinel")]
            Self::Sentinel(sentinel) => format!(", via Sentinel `{}`", sentinel.service),
        }
    }
}

/// Whether `url` asks for TLS (`rediss://`, `rediss+cluster://`, `rediss+sentinel://`).
pub(super) fn is_tls(url: &str) -> bool {
    url.starts_with("rediss")
}

impl Connect {
    /// What is wrong with these settings for a store whose URL (or client) is `tls` or not.
    pub(super) fn errors(&self, tls: bool) -> Vec<String> {
        let mut errors = Vec::new();
        if tls && !cfg!(feature = "tls") {
            errors
                .push("redis.url: a `rediss://` URL needs tower-stash's `tls` feature".to_owned());
        }
        #[cfg(feature = "tls")]
        if !tls && (self.root_certificate.is_some() || self.client_certificate.is_some()) {
            errors.push(
                "redis.url: TLS certificates are set, but the URL is not `rediss://`".to_owned(),
            );
        }
        errors
    }

    /// A client for one server at `url`, with these credentials and certificates.
    pub(super) fn client(&self, url: &str) -> Result<redis::Client, RedisError> {
        self.client_from(connection_info(url)?)
    }

    /// A client for the server of `info` (an application's client's), with TCP keepalive and
    /// these credentials and certificates.
    pub(super) fn client_from(&self, info: ConnectionInfo) -> Result<redis::Client, RedisError> {
        let tcp = with_keepalive(info.tcp_settings());
        let mut info = info.set_tcp_settings(tcp);
        if self.username.is_some() || self.password.is_some() {
            let mut settings = info.redis_settings().clone();
            if let Some(user) = &self.username {
                settings = settings.set_username(user);
            }
            if let Some(password) = &self.password {
                settings = settings.set_password(password);
            }
            info = info.set_redis_settings(settings);
        }
        if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
            #[cfg(feature = "tls")]
            {
                install_crypto_provider();
                if let Some(certs) = self.certificates() {
                    return redis::Client::build_with_tls(info, certs);
                }
            }
        }
        redis::Client::open(info)
    }

    /// These credentials and certificates on a cluster client.
    pub(super) fn cluster(
        &self,
        mut builder: redis::cluster::ClusterClientBuilder,
    ) -> redis::cluster::ClusterClientBuilder {
        if let Some(user) = &self.username {
            builder = builder.username(user);
        }
        if let Some(password) = &self.password {
            builder = builder.password(password);
        }
        #[cfg(feature = "tls")]
        if let Some(certs) = self.certificates() {
            install_crypto_provider();
            builder = builder.certs(certs);
        }
        builder
    }

    #[cfg(feature = "tls")]
    pub(super) fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.root_certificate.is_none() && self.client_certificate.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client_certificate
                .clone()
                .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }),
            root_cert: self.root_certificate.clone(),
        })
    }
}

/// rustls needs a process-wide crypto provider: this crate's (ring) unless the application
/// installed one already (then that one is used, and this does nothing).
#[cfg(feature = "tls")]
pub(super) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
