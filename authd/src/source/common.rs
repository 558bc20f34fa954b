//! Pieces several sources share: the `[prefix]user<separator>password` token split, secret
//! files, CA bundles, and the field checks they all make, among them the plaintext check:
//! a transport without TLS is only accepted to this machine (loopback, unix sockets) or
//! with the source's explicit `allow_plaintext = true`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

pub use authd_runtime::plaintext::{check_plaintext, is_loopback_host};

use crate::field::FieldError;

/// A file a source needs at build time could not be used; names the field and the file.
#[derive(Debug, thiserror::Error)]
#[error("{field} {path}: {message}", path = path.display())]
pub struct FileError {
    pub field: &'static str,
    pub path: PathBuf,
    pub message: String,
}

impl FileError {
    pub fn new(field: &'static str, path: &Path, message: impl Into<String>) -> Self {
        Self {
            field,
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// A URL parsed once, at load, with its scheme checked and no credentials in it (a URL is
/// logged and shown in errors). Read from a TOML string.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct CheckedUrl<const KIND: u8>(reqwest::Url);

/// `http://` or `https://`.
pub const HTTP: u8 = 0;
/// `ldap://` or `ldaps://`.
pub const LDAP: u8 = 1;

/// An HTTP(S) URL, e.g. a JWKS document.
pub type HttpUrl = CheckedUrl<HTTP>;
/// An LDAP server, `ldap://host:389` or `ldaps://host:636`.
pub type LdapUrl = CheckedUrl<LDAP>;

impl<const KIND: u8> CheckedUrl<KIND> {
    const SCHEMES: &'static [&'static str] = match KIND {
        HTTP => &["http", "https"],
        _ => &["ldap", "ldaps"],
    };

    pub fn parse(text: &str) -> Result<Self, String> {
        let url =
            reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a valid URL: {e}"))?;
        if !Self::SCHEMES.contains(&url.scheme()) {
            return Err(format!(
                "{text:?} must start with {}",
                Self::SCHEMES
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{}://{}: must not hold credentials",
                url.scheme(),
                url.host_str().unwrap_or("")
            ));
        }
        Ok(Self(url))
    }

    pub fn as_url(&self) -> &reqwest::Url {
        &self.0
    }
}

impl<const KIND: u8> TryFrom<String> for CheckedUrl<KIND> {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl<const KIND: u8> std::fmt::Display for CheckedUrl<KIND> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Splits an owned token into user and password: `[prefix]user<separator>password`, at the
/// first separator, with a non-empty user name. `None`: not this source's shape.
pub fn split_user_password<'t>(
    prefix: Option<&str>,
    separator: &str,
    token: &'t str,
) -> Option<(&'t str, &'t str)> {
    let rest = match prefix {
        Some(p) => token.strip_prefix(p)?,
        None => token,
    };
    let (user, password) = rest.split_once(separator)?;
    (!user.is_empty()).then_some((user, password))
}

/// A password kept in a file; trailing line ends are not part of it.
pub fn read_secret(field: &'static str, path: &Path) -> Result<String, FileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FileError::new(field, path, format!("cannot read: {e}")))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// A PEM CA bundle as the only trust anchors of an HTTP client.
pub fn http_roots(
    field: &'static str,
    path: &Path,
) -> Result<Vec<reqwest::Certificate>, FileError> {
    let pem = std::fs::read(path)
        .map_err(|e| FileError::new(field, path, format!("cannot read: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| FileError::new(field, path, format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(FileError::new(field, path, "holds no certificate"));
    }
    Ok(certs)
}

/// A rustls client configuration trusting only the PEM CA bundle at `path`.
pub fn tls_roots(field: &'static str, path: &Path) -> Result<rustls::ClientConfig, FileError> {
    let err = |message: String| FileError::new(field, path, message);
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(path).map_err(|e| err(format!("cannot read: {e}")))?;
    for cert in certs {
        let cert = cert.map_err(|e| err(format!("bad PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| err(format!("bad certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(err("no certificates found".into()));
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An optional prefix, when given, must not be empty (it would own every token).
pub fn check_prefix(prefix: Option<&str>) -> Result<(), FieldError> {
    if prefix == Some("") {
        return Err(FieldError::new("prefix", "must not be empty when set"));
    }
    Ok(())
}

/// The user/password separator must not be empty.
pub fn check_separator(separator: &str) -> Result<(), FieldError> {
    if separator.is_empty() {
        return Err(FieldError::new("separator", "must not be empty"));
    }
    Ok(())
}

/// A time limit must be more than zero.
pub fn check_timeout(field: &str, timeout: Duration) -> Result<(), FieldError> {
    if timeout.is_zero() {
        return Err(FieldError::new(field, "must be more than zero"));
    }
    Ok(())
}

/// Anchors a relative path at the configuration file's folder.
pub fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

/// The default `separator` between user and password in `user:password` tokens.
pub fn default_separator() -> String {
    ":".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_at_the_first_separator() {
        let split = split_user_password;
        assert_eq!(split(None, ":", "a:b:c"), Some(("a", "b:c")));
        assert_eq!(split(None, ":", "a:"), Some(("a", "")));
        assert_eq!(split(None, ":", ":pw"), None);
        assert_eq!(split(None, ":", "opaque"), None);
        assert_eq!(split(Some("l/"), "::", "l/a::b"), Some(("a", "b")));
        assert_eq!(split(Some("l/"), "::", "a::b"), None);
    }

    #[test]
    fn urls_are_checked_once() {
        assert!(HttpUrl::parse("https://idp/jwks").is_ok());
        assert!(LdapUrl::parse("ldaps://dir:636").is_ok());
        for bad in ["idp/jwks", "ftp://idp/", "ldap://dir", "https://u:pw@idp/"] {
            let e = HttpUrl::parse(bad).unwrap_err();
            assert!(!e.contains("pw"), "{e}");
        }
        assert!(LdapUrl::parse("https://dir")
            .unwrap_err()
            .contains("ldap:// or ldaps://"));
    }

    #[test]
    fn secrets_lose_their_line_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\r\n").unwrap();
        assert_eq!(read_secret("password_file", &p).unwrap(), "s3cret");
        let e = read_secret("password_file", &dir.path().join("none")).unwrap_err();
        assert!(e.to_string().starts_with("password_file "), "{e}");
    }
}
