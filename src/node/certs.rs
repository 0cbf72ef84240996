//! Development certificates (`edgeflow certs`, `demo`, tests): a CA kept
//! with its key to issue more client certificates, a server certificate and
//! a client certificate for mTLS; keys mode 0600; nothing replaced without
//! `force`. Production uses given files.

use std::path::PathBuf;

/// Where `certs` writes.
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// The development CA certificate (give it to clients).
    pub ca: PathBuf,
    /// The CA's private key (0600): keep it to issue more client
    /// certificates (`edgeflow certs --client NAME`).
    pub ca_key: PathBuf,
    /// The server certificate chain.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
    /// A client certificate signed by the CA (for nodes requiring mTLS).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl CertPaths {
    /// The files `certs` writes in `dir`.
    pub fn in_dir(dir: &std::path::Path) -> Self {
        CertPaths {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// The development CA's certificate parameters: the same every time, so
/// that the CA can be rebuilt from its key to issue more certificates.
fn ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "edgeflow development CA");
    Ok(ca_params)
}

/// A client certificate named `name`, signed by the CA.
fn client_certificate(
    name: &str,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> anyhow::Result<(rcgen::Certificate, rcgen::KeyPair)> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    Ok((params.signed_by(&key, ca, ca_key)?, key))
}

/// Refuses to overwrite any of `paths` unless `force`.
fn refuse_overwrite(paths: &[&std::path::Path], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        anyhow::bail!(
            "{} exists: replacing a CA breaks every client that trusts it; use --force to replace, or --client NAME to issue a client certificate from it",
            p.display()
        );
    }
    Ok(())
}

/// Makes a development CA, a server certificate for `names` (DNS names or
/// IP addresses) and a client certificate, both signed by it, as PEM files
/// in `dir`. Keys are written readable by their owner only (0600) and the
/// CA key is kept. Existing files are an error unless `force`.
pub fn make_certs_in(
    dir: &std::path::Path,
    names: &[String],
    force: bool,
) -> anyhow::Result<CertPaths> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let paths = CertPaths::in_dir(dir);
    refuse_overwrite(
        &[
            &paths.ca,
            &paths.ca_key,
            &paths.cert,
            &paths.key,
            &paths.client_cert,
            &paths.client_key,
        ],
        force,
    )?;
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let ca = ca_params()?.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("edgeflow", String::as_str),
    );
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let (client, client_key) = client_certificate("edgeflow development client", &ca, &ca_key)?;
    crate::output::write_private(&paths.ca_key, ca_key.serialize_pem().as_bytes())?;
    crate::output::write_private(&paths.key, key.serialize_pem().as_bytes())?;
    crate::output::write_private(&paths.client_key, client_key.serialize_pem().as_bytes())?;
    crate::output::write_durably(&paths.client_cert, client.pem().as_bytes())?;
    crate::output::write_durably(&paths.cert, cert.pem().as_bytes())?;
    crate::output::write_durably(&paths.ca, ca.pem().as_bytes())?;
    Ok(paths)
}

/// [`make_certs_in`] for a new directory (tests, demos): replaces what is
/// there.
pub fn make_certs(dir: &std::path::Path, names: &[String]) -> anyhow::Result<CertPaths> {
    make_certs_in(dir, names, true)
}

/// Issues a client certificate `client-NAME.pem` (key `client-NAME.key`,
/// 0600) from the CA that `certs` left in `dir` (`ca.pem`, `ca.key`).
/// Returns the certificate and key paths.
pub fn issue_client_cert(
    dir: &std::path::Path,
    name: &str,
    force: bool,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    use anyhow::Context;
    crate::model::check_id(name, "client name").map_err(|e| anyhow::anyhow!("{e}"))?;
    let paths = CertPaths::in_dir(dir);
    let key_pem = std::fs::read_to_string(&paths.ca_key).with_context(|| {
        format!(
            "{}: the CA key is needed to issue client certificates (CAs made before it was kept cannot issue more: make a new one with --force)",
            paths.ca_key.display()
        )
    })?;
    let ca_key = rcgen::KeyPair::from_pem(&key_pem)
        .with_context(|| format!("{}: not a private key", paths.ca_key.display()))?;
    // The same subject and key as ca.pem: what it signs verifies against it.
    let ca = ca_params()?.self_signed(&ca_key)?;
    let cert_path = dir.join(format!("client-{name}.pem"));
    let key_path = dir.join(format!("client-{name}.key"));
    refuse_overwrite(&[&cert_path, &key_path], force)?;
    let (cert, key) = client_certificate(name, &ca, &ca_key)?;
    crate::output::write_private(&key_path, key.serialize_pem().as_bytes())?;
    crate::output::write_durably(&cert_path, cert.pem().as_bytes())?;
    Ok((cert_path, key_path))
}
