//! `authd-proto`: the only API boundary between kube-authd processes.
//!
//! Holds the `.proto` files and the tonic/prost code generated from them, nothing else, so
//! an internal gRPC client can depend on this crate alone.

/// Version 1 of the kube-authd API (`kubeauthd.v1`).
pub mod v1 {
    tonic::include_proto!("kubeauthd.v1");

    /// Encoded `FileDescriptorSet` for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/kubeauthd_descriptor.bin"));

    /// Stands in for a raw token in Debug output: its length only.
    struct Redacted(usize);

    impl std::fmt::Debug for Redacted {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "<redacted, {} bytes>", self.0)
        }
    }

    /// Never prints the token: a `{:?}` in a log line or a panic message must not leak it.
    impl std::fmt::Debug for AuthenticateRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("AuthenticateRequest")
                .field("token", &Redacted(self.token.len()))
                .field("audiences", &self.audiences)
                .field("cluster", &self.cluster)
                .field("request_id", &self.request_id)
                .finish()
        }
    }

    /// Never prints the token, like [`AuthenticateRequest`]'s.
    impl std::fmt::Debug for RevokeTokenRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RevokeTokenRequest")
                .field("token", &Redacted(self.token.len()))
                .field("until_unix_ms", &self.until_unix_ms)
                .finish()
        }
    }

    /// Never prints the token, like [`AuthenticateRequest`]'s.
    impl std::fmt::Debug for UnrevokeRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("UnrevokeRequest")
                .field("id", &self.id)
                .field("username", &self.username)
                .field("token", &Redacted(self.token.len()))
                .field("credential_id", &self.credential_id)
                .finish()
        }
    }

    /// Never prints the password.
    impl std::fmt::Debug for LoginRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("LoginRequest")
                .field("username", &self.username)
                .field("password", &Redacted(self.password.len()))
                .field("client_address", &self.client_address)
                .finish()
        }
    }

    /// Never prints the session credential.
    impl std::fmt::Debug for LoginResponse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("LoginResponse")
                .field("session", &Redacted(self.session.len()))
                .field("session_id", &self.session_id)
                .field("username", &self.username)
                .field("expires_unix_ms", &self.expires_unix_ms)
                .field("idle_expires_unix_ms", &self.idle_expires_unix_ms)
                .finish()
        }
    }

    /// Never prints the session credential.
    impl std::fmt::Debug for TokenRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TokenRequest")
                .field("session", &Redacted(self.session.len()))
                .field("cluster", &self.cluster)
                .finish()
        }
    }

    /// Never prints the token.
    impl std::fmt::Debug for TokenResponse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TokenResponse")
                .field("token", &Redacted(self.token.len()))
                .field("expires_unix_ms", &self.expires_unix_ms)
                .field("username", &self.username)
                .field("groups", &self.groups)
                .finish()
        }
    }

    /// Never prints the session credential.
    impl std::fmt::Debug for LogoutRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("LogoutRequest")
                .field("session", &Redacted(self.session.len()))
                .finish()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v1::{AuthenticateRequest, RevokeTokenRequest, UnrevokeRequest};

    #[test]
    fn debug_never_prints_the_token() {
        let req = AuthenticateRequest {
            token: "s3cr3t-token-value".into(),
            audiences: vec!["k8s".into()],
            cluster: "prod".into(),
            request_id: "r1".into(),
        };
        for text in [format!("{req:?}"), format!("{req:#?}")] {
            assert!(!text.contains("s3cr3t"), "{text}");
            assert!(text.contains("prod") && text.contains("k8s") && text.contains("r1"));
            assert!(text.contains("18 bytes"), "{text}");
        }
        let revoke = RevokeTokenRequest {
            token: "s3cr3t-token-value".into(),
            until_unix_ms: 0,
        };
        assert!(!format!("{revoke:?}").contains("s3cr3t"));
        let unrevoke = UnrevokeRequest {
            token: "s3cr3t-token-value".into(),
            ..Default::default()
        };
        assert!(!format!("{unrevoke:?}").contains("s3cr3t"));
        let login = super::v1::LoginRequest {
            username: "alice".into(),
            password: "s3cr3t-password".into(),
            client_address: String::new(),
        };
        assert!(!format!("{login:?}").contains("s3cr3t"));
        let token = super::v1::TokenResponse {
            token: "kat_s3cr3t".into(),
            ..Default::default()
        };
        assert!(!format!("{token:?}").contains("s3cr3t"));
        // Wrapped in a tonic request, as a handler would log it.
        let wrapped = tonic::Request::new(req);
        assert!(!format!("{wrapped:?}").contains("s3cr3t"));
    }
}
