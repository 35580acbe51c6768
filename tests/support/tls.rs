//! A test certificate authority (rcgen) and the certificates it signs, in a scratch directory,
//! and a `redis-server` with a TLS port whose certificate it signed.

use super::redis::{free_port, RedisServer};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A certificate authority made for one test: its certificate, and a directory holding it and
/// the certificates it issues. Dropping it removes the directory.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl TestCa {
    /// A new authority named `name`, with a fresh key.
    pub fn new(name: &str) -> TestCa {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tower-stash-tls-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa { issuer, dir };
        std::fs::write(ca.ca_file(), ca.pem()).unwrap();
        ca
    }

    /// The authority's certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The file holding [`TestCa::pem`].
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `names` (host names or IP addresses), written to
    /// `<file>.pem` and `<file>.key` in the directory; returns their paths.
    pub fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, file);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` with a TLS port (beside its plain one, which the support's readiness
/// checks and `cli` use), its certificate issued by `ca` for `localhost` and `127.0.0.1`.
/// With `client_certs`, it asks clients for a certificate `ca` issued (`tls-auth-clients`).
pub struct TlsRedis {
    pub server: RedisServer,
    pub tls_port: u16,
}

impl TlsRedis {
    pub fn start(ca: &TestCa, client_certs: bool) -> TlsRedis {
        let (cert, key) = ca.issue("server", &["localhost", "127.0.0.1"]);
        let tls_port = free_port();
        let port = tls_port.to_string();
        let (cert, key, ca_file) = (
            cert.display().to_string(),
            key.display().to_string(),
            ca.ca_file().display().to_string(),
        );
        let server = RedisServer::start_with(&[
            "--tls-port",
            &port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            if client_certs { "yes" } else { "no" },
        ]);
        TlsRedis { server, tls_port }
    }

    /// `rediss://127.0.0.1:<tls port>/`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.tls_port)
    }
}
