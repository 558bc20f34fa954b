//! Loading PEM files: certificate chains, private keys and CA root stores. Every error names
//! the configuration field and the file, so an operator knows which setting to fix.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{field} {}: cannot read certificate file", path.display())]
    Read {
        field: String,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{field} {}: not a valid PEM certificate", path.display())]
    Invalid {
        field: String,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{field} {}: no PEM certificate found", path.display())]
    Empty { field: String, path: PathBuf },
    #[error("{field} {}: cannot read a PEM private key", path.display())]
    Key {
        field: String,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{field} {}: not a usable CA certificate", path.display())]
    Ca {
        field: String,
        path: PathBuf,
        source: rustls::Error,
    },
}

/// The certificates of a PEM file (a chain, leaf first, or a CA bundle); at least one.
/// `field` names the setting the path came from.
pub fn load_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|source| PemError::Read {
            field: field.to_owned(),
            path: path.to_owned(),
            source,
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::Invalid {
            field: field.to_owned(),
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::Empty {
            field: field.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path, field: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| PemError::Key {
        field: field.to_owned(),
        path: path.to_owned(),
        source,
    })
}

/// A root store holding every certificate of the given `(file, field)` CA bundles.
pub fn root_store<'a>(
    files: impl IntoIterator<Item = (&'a Path, &'a str)>,
) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for (path, field) in files {
        for c in load_certs(path, field)? {
            roots.add(c).map_err(|source| PemError::Ca {
                field: field.to_owned(),
                path: path.to_owned(),
                source,
            })?;
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_names_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).expect("cert");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, ca.cert.pem()).expect("write");
        std::fs::write(&key, ca.signing_key.serialize_pem()).expect("write");
        assert_eq!(load_certs(&cert, "tls.cert").expect("chain").len(), 1);
        load_key(&key, "tls.key").expect("key");
        let roots = root_store([(cert.as_path(), "tls.client_ca")]).expect("roots");
        assert_eq!(roots.len(), 1);

        let e = load_certs(&key, "tls.cert").expect_err("a key is no certificate");
        assert_eq!(
            e.to_string(),
            format!("tls.cert {}: no PEM certificate found", key.display())
        );
        let missing = dir.path().join("missing.pem");
        let e = load_certs(&missing, "authd.ca").expect_err("no file");
        assert!(e.to_string().starts_with("authd.ca "), "{e}");
        assert!(
            e.to_string().ends_with("cannot read certificate file"),
            "{e}"
        );
        let e = load_key(&cert, "tls.key").expect_err("a certificate is no key");
        assert!(
            e.to_string().contains("cannot read a PEM private key"),
            "{e}"
        );
    }
}
