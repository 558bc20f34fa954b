//! Who is calling (the identity of a gRPC client, from its TLS client certificate) and who
//! may call the Admin gRPC service.
//!
//! Two ways in, either suffices: a client certificate identity listed in
//! `admin.allowed_clients` (the access layer attaches a [`ClientIdentity`] to the request's
//! extensions), or the shared admin secret from `admin.token_file` as gRPC metadata
//! `authorization: Bearer <secret>`, compared in constant time. Anything else is refused.
//!
//! The secret is kept only as its SHA-256 and a presented one is hashed before the compare:
//! comparing the raw bytes would return early on a length mismatch and tell a caller how
//! long the secret is.

use std::collections::BTreeSet;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::access::ClientIdentity;
use crate::config::AdminConfig;
use crate::metrics::Name;

#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("admin.token_file {path}: cannot read: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("admin.token_file {path}: the secret must be at least 16 bytes")]
    Short { path: std::path::PathBuf },
}

/// The Admin service's gate.
pub struct AdminAuthz {
    allowed_clients: BTreeSet<String>,
    /// SHA-256 of the shared admin secret: fixed length, so the compare is constant-time
    /// whatever the length presented. Never logged.
    token: Option<[u8; 32]>,
}

impl AdminAuthz {
    pub fn from_config(config: &AdminConfig) -> Result<Self, AuthzError> {
        let token = config
            .token_file
            .as_deref()
            .map(read_secret)
            .transpose()?
            .map(|secret| digest(&secret));
        Ok(Self {
            allowed_clients: config.allowed_clients.iter().cloned().collect(),
            token,
        })
    }

    /// Refuses every call (no `[admin]` configuration).
    pub fn deny_all() -> Self {
        Self {
            allowed_clients: BTreeSet::new(),
            token: None,
        }
    }

    /// Checks an Admin call: its caller's certificate identity (from the TLS layer) or its
    /// bearer secret. Returns a name for the caller (for logs and metrics) or
    /// PERMISSION_DENIED.
    pub fn check<T>(&self, request: &tonic::Request<T>) -> Result<Name, Status> {
        self.authorize(ClientIdentity::of(request), request.metadata())
    }

    /// Returns a name for the caller (for logs and metrics) or PERMISSION_DENIED.
    pub fn authorize(
        &self,
        identity: Option<&ClientIdentity>,
        metadata: &MetadataMap,
    ) -> Result<Name, Status> {
        if let Some(ClientIdentity(name)) = identity {
            if self.allowed_clients.contains(&**name) {
                return Ok(Name(name.clone()));
            }
        }
        if let (Some(expected), Some(presented)) = (&self.token, bearer(metadata)) {
            if bool::from(expected.ct_eq(&digest(presented))) {
                return Ok("admin-token".into());
            }
        }
        let who = identity.map_or("no client certificate", |i| &*i.0);
        tracing::warn!(client = %who, "Admin call refused");
        Err(Status::permission_denied(
            "this caller may not use the Admin service",
        ))
    }
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn bearer(metadata: &MetadataMap) -> Option<&[u8]> {
    let value = metadata.get("authorization")?.as_bytes();
    value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
}

/// Reads a secret file; one trailing newline is not part of the secret.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, AuthzError> {
    let mut bytes = std::fs::read(path).map_err(|source| AuthzError::Read {
        path: path.to_owned(),
        source,
    })?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.len() < 16 {
        return Err(AuthzError::Short {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz() -> AdminAuthz {
        AdminAuthz {
            allowed_clients: ["ops".to_string()].into(),
            token: Some(digest(b"0123456789abcdef-secret")),
        }
    }

    fn md(auth: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(a) = auth {
            m.insert("authorization", a.parse().unwrap());
        }
        m
    }

    /// What is compared is a digest of fixed length, whatever the length of the secret or
    /// of what is presented: a raw compare returns early on a length mismatch.
    #[test]
    fn secret_is_held_and_compared_as_a_fixed_length_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-secret");
        std::fs::write(&path, "a-much-longer-admin-secret-of-44-bytes-here\n").unwrap();
        let config: AdminConfig = toml::from_str(&format!("token_file = {path:?}")).unwrap();
        let a = AdminAuthz::from_config(&config).unwrap();
        let held: &[u8] = a.token.as_ref().map(<[u8; 32]>::as_slice).unwrap();
        assert_eq!(held.len(), 32);
        assert_ne!(
            held,
            b"a-much-longer-admin-secret-of-44-bytes-here".as_slice()
        );
        assert!(a
            .authorize(
                None,
                &md(Some("Bearer a-much-longer-admin-secret-of-44-bytes-here"))
            )
            .is_ok());
        for wrong in [
            "a",
            "a-much-longer-admin-secret-of-44-bytes-her",
            "x".repeat(4096).as_str(),
        ] {
            assert!(a
                .authorize(None, &md(Some(&format!("Bearer {wrong}"))))
                .is_err());
        }
    }

    #[test]
    fn allowed_identity_or_token() {
        let a = authz();
        let ops = ClientIdentity::new("ops");
        assert_eq!(&*a.authorize(Some(&ops), &md(None)).unwrap().0, "ops");
        assert!(a
            .authorize(None, &md(Some("Bearer 0123456789abcdef-secret")))
            .is_ok());
    }

    #[test]
    fn everything_else_refused() {
        let a = authz();
        let edge = ClientIdentity::new("edge");
        for (id, auth) in [
            (None, None),
            (Some(&edge), None),
            (None, Some("Bearer 0123456789abcdef-secreT")),
            (None, Some("Bearer 0123456789abcdef-secret ")),
            (None, Some("Basic 0123456789abcdef-secret")),
            (None, Some("Bearer ")),
            (None, Some("Bearer 0123456789abcdef-secre")),
            (None, Some("Bearer 0123456789abcdef-secretx")),
        ] {
            let e = a.authorize(id, &md(auth)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
            assert!(!e.message().contains("secret"));
        }
        let none = AdminAuthz::deny_all();
        assert!(none
            .authorize(Some(&ClientIdentity::new("ops")), &md(Some("Bearer x")))
            .is_err());
    }
}
