//! Who is calling (the identity of a gRPC client, from its TLS client certificate) and who
//! may call the Admin gRPC service.
//!
//! Two ways in, either suffices: a client certificate identity listed in
//! `admin.allowed_clients` (the TLS layer puts a [`ClientIdentity`] in the request's
//! extensions), or the shared admin secret from `admin.token_file` as gRPC metadata
//! `authorization: Bearer <secret>`, compared in constant time. Anything else is refused.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::config::AdminConfig;
use crate::metrics::Name;

/// The caller's certificate identity (CN, or the first DNS SAN without a CN), inserted into
/// the request extensions by the access layer; [`ANONYMOUS`] for callers without a client
/// certificate (plaintext listeners).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity(pub Arc<str>);

/// The name used for callers without a client certificate.
pub const ANONYMOUS: &str = "anonymous";

impl ClientIdentity {
    pub fn new(name: &str) -> Self {
        Self(name.into())
    }

    /// [`ANONYMOUS`], shared: a plaintext call costs a reference count, not an allocation.
    pub fn anonymous() -> Self {
        static NAME: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| ANONYMOUS.into());
        Self(NAME.clone())
    }
}

impl ClientIdentity {
    /// The identity the TLS layer attached to `request`, if any.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&ClientIdentity> {
        request.extensions().get::<ClientIdentity>()
    }

    /// The caller's name for logs and metrics: its identity or "anonymous".
    pub fn name_of<T>(request: &tonic::Request<T>) -> Name {
        Name(Self::of(request).map_or_else(|| Self::anonymous().0, |c| c.0.clone()))
    }
}

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
    /// The shared admin secret; never logged.
    token: Option<Vec<u8>>,
}

impl AdminAuthz {
    pub fn from_config(config: &AdminConfig) -> Result<Self, AuthzError> {
        let token = config.token_file.as_deref().map(read_secret).transpose()?;
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
            if bool::from(expected.as_slice().ct_eq(presented)) {
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
            token: Some(b"0123456789abcdef-secret".to_vec()),
        }
    }

    fn md(auth: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(a) = auth {
            m.insert("authorization", a.parse().unwrap());
        }
        m
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
