//! TLS 1.3 for QUIC, both ends: the node's server configuration (its
//! certificate, optionally client certificates from a CA: mTLS, and the
//! protocols it speaks by ALPN) and a client's (the CA it trusts, an
//! optional client certificate, one protocol).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

/// Why TLS cannot be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file cannot be read or holds no valid item.
    #[error("cannot read {what} {}: {why}", path.display())]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// rustls or quinn refused the configuration.
    #[error("TLS setup: {0}")]
    Config(String),
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |why: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        why,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        let holds_key = std::fs::read_to_string(path).is_ok_and(|t| t.contains("PRIVATE KEY-----"));
        return Err(pem(if holds_key {
            format!("it holds a private key, not a certificate: pass the {what} there (a .pem from `edgeflow certs`; keys go to --key)")
        } else {
            "no certificate in it (PEM, `-----BEGIN CERTIFICATE-----`)".into()
        }));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_owned(),
        why: if std::fs::read_to_string(path).is_ok_and(|t| t.contains("BEGIN CERTIFICATE")) {
            "it holds a certificate, not a private key: pass the key file there (server.key or client.key from `edgeflow certs`)".into()
        } else {
            e.to_string()
        },
    })
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca, "CA certificate")? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client over TCP (a city sink's database): the web's roots
/// (webpki-roots) and `ca` when given, TLS 1.2 or 1.3, the server's name
/// checked.
pub fn tcp_client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca {
        store.roots.extend(roots(ca)?.roots);
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth())
}

/// The node's side: its certificate chain and key, client certificates
/// signed by `client_ca` required when given, and the protocols `alpns`.
pub fn server_crypto(
    cert: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
    alpns: &[&[u8]],
) -> Result<QuicServerConfig, TlsError> {
    let tls = server_tls(cert, key_file, client_ca, alpns)?;
    QuicServerConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))
}

/// The node's side over TCP (the live map's HTTPS): the same certificate
/// and key, TLS 1.3 only, no client certificates.
pub fn tcp_server_config(
    cert: &Path,
    key_file: &Path,
    alpns: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    server_tls(cert, key_file, None, alpns)
}

fn server_tls(
    cert: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
    alpns: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = match client_ca {
        None => rustls::server::WebPkiClientVerifier::no_client_auth(),
        Some(ca) => rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(ca)?),
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?,
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert, "certificate")?, key(key_file)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(tls)
}

/// Fills `buf` with random bytes from the TLS provider's system source.
pub fn random(buf: &mut [u8]) -> Result<(), TlsError> {
    provider()
        .secure_random
        .fill(buf)
        .map_err(|_| TlsError::Config("the system's random source failed".into()))
}

/// A client's side: trusting `ca`, presenting `identity` (certificate
/// chain and key, PEM) when given, speaking `alpn`. It notices a dead node
/// within seconds (the smaller of the two peers' idle timeouts applies), so
/// resending starts soon, and keep-alive pings hold a connection to a live
/// node open through quiet spells (a subscription to a node with nothing
/// new, a paced send with gaps).
pub fn client_config(
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    let mut tls = match identity {
        None => tls.with_no_client_auth(),
        Some((cert, key_file)) => tls
            .with_client_auth_cert(certs(cert, "client certificate")?, key(key_file)?)
            .map_err(|e| TlsError::Config(e.to_string()))?,
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Duration::from_secs(5).try_into().ok());
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}
