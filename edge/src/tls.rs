//! Serving TLS for the edge: PEM files in, a rustls config offering h2 and http/1.1 out.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub fn load_certs(path: &Path, field: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{field} {}: cannot read certificate file", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{field} {}: not a valid PEM certificate", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{field} {}: no PEM certificate found", path.display());
    }
    Ok(certs)
}

pub fn load_key(path: &Path, field: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("{field} {}: cannot read a PEM private key", path.display()))
}

/// TLS ≥ 1.2 (rustls has nothing older), ALPN h2 then http/1.1.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = load_certs(cert, "tls.cert")?;
    let key = load_key(key, "tls.key")?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls.cert/tls.key: the key does not match the certificate or is unsupported")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
