//! `kube-authd revoke`: calls authd's Admin service to revoke one token (read from stdin,
//! so it never appears in argv or shell history), one user or one credential id on every
//! replica, to lift a revocation (`revoke lift`) or to list them (`revoke list`). The call
//! carries the admin secret, so `http://` is refused to anything but this machine unless
//! `--allow-plaintext` says otherwise.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use authd_proto::v1::admin_client::AdminClient;
use authd_proto::v1::{
    ListRevocationsRequest, RevokeCredentialRequest, RevokeTokenRequest, RevokeUserRequest,
    UnrevokeRequest,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How to reach authd's Admin service.
#[derive(clap::Args, Clone)]
pub struct AdminConn {
    /// authd's gRPC URL, e.g. https://authd.example:50051 with --ca; http:// only to
    /// this machine (loopback) unless --allow-plaintext.
    #[arg(long)]
    pub authd: String,
    /// File holding the admin secret (authd's admin.token_file). Not needed when the
    /// client certificate (--client-cert) belongs to a [clients.NAME] allowed the call.
    #[arg(long, required_unless_present = "client_cert")]
    pub admin_token_file: Option<PathBuf>,
    /// PEM CA that signed authd's certificate, for https://.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate to present (authd with [tls] client_ca requires one; its
    /// identity must be a [clients.NAME] whose methods list the call).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Allow http:// to a host other than this machine: the admin secret then crosses
    /// the network without TLS.
    #[arg(long)]
    pub allow_plaintext: bool,
}

/// What to revoke (exactly one), or what to lift.
#[derive(clap::Args, Clone, Default)]
pub struct Target {
    /// Read the token from stdin (never from argv).
    #[arg(long)]
    pub token_stdin: bool,
    /// A username (as authd maps it): every credential of this user.
    #[arg(long)]
    pub user: Option<String>,
    /// A source's credential id (the PostgreSQL source's token id).
    #[arg(long)]
    pub credential_id: Option<String>,
}

pub enum Action {
    Revoke {
        target: Target,
        /// RFC 3339 time or a duration from now (e.g. 2h).
        until: Option<String>,
    },
    Lift {
        target: Target,
        /// A keyed id from `revoke` or `revoke list`.
        id: Option<String>,
    },
    List,
}

/// The admin secret and the token travel in the request: a plaintext `--authd` must be
/// this machine (loopback) or explicitly allowed. Checked before anything is read or sent.
fn check_transport(authd: &str, allow_plaintext: bool) -> anyhow::Result<()> {
    let uri: tonic::transport::Uri = authd
        .parse()
        .with_context(|| format!("--authd {authd:?}: not a URL"))?;
    if uri.scheme_str() == Some("https") || allow_plaintext {
        return Ok(());
    }
    let host = uri.host().unwrap_or("");
    if authd::source::common::is_loopback_host(host) {
        return Ok(());
    }
    anyhow::bail!(
        "--authd {authd:?}: plaintext to the remote host {host:?} would send the admin secret \
         without TLS; use https:// with --ca, or pass --allow-plaintext"
    )
}

/// `--until`: an RFC 3339 time, or a duration from now.
pub fn parse_until(text: &str) -> anyhow::Result<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    let d = humantime::parse_duration(text).map_err(|_| {
        anyhow::anyhow!("--until {text:?}: expected an RFC 3339 time or a duration such as 2h")
    })?;
    Ok(SystemTime::now() + d)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(1, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

fn shown(ms: u64) -> String {
    if ms == 0 {
        return "until lifted".into();
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    format!("until {}", humantime::format_rfc3339_seconds(t))
}

/// A connected Admin client and the request metadata carrying the admin secret, if any.
pub struct Admin {
    pub client: AdminClient<Channel>,
    auth: Option<MetadataValue<Ascii>>,
    /// Added to a call's transport failure: what may be missing (a client certificate).
    pub(crate) transport_hint: &'static str,
}

/// A TLS 1.3 server checks the client certificate after the client thinks the handshake
/// is done: a missing one shows up as the first call failing, not as a connect error.
const NO_CLIENT_CERT_HINT: &str = " (if authd requires client certificates ([tls] client_ca), \
     pass --client-cert and --client-key of a [clients.NAME] allowed to make this call)";

impl Admin {
    pub async fn connect(conn: &AdminConn) -> anyhow::Result<Self> {
        check_transport(&conn.authd, conn.allow_plaintext)?;
        let auth = match &conn.admin_token_file {
            Some(file) => {
                let secret = authd::authz::read_secret(file)
                    .map_err(|e| anyhow::anyhow!("--admin-token-file: {e}"))?;
                let mut bearer = b"Bearer ".to_vec();
                bearer.extend_from_slice(&secret);
                let mut auth = MetadataValue::try_from(bearer.as_slice()).map_err(|_| {
                    anyhow::anyhow!("--admin-token-file: the secret is not a valid header value")
                })?;
                auth.set_sensitive(true);
                Some(auth)
            }
            None => None,
        };
        let mut endpoint = Endpoint::from_shared(conn.authd.clone())
            .with_context(|| format!("--authd {:?}: not a URL", conn.authd))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        let https = conn.authd.starts_with("https://");
        if !https && (conn.ca.is_some() || conn.client_cert.is_some()) {
            anyhow::bail!(
                "--authd {:?}: --ca and --client-cert need an https:// URL",
                conn.authd
            );
        }
        if https {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &conn.ca {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("--ca {}: cannot read", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&conn.client_cert, &conn.client_key) {
                let read = |flag: &str, p: &PathBuf| {
                    std::fs::read(p).with_context(|| format!("{flag} {}: cannot read", p.display()))
                };
                let (cert_pem, key_pem) =
                    (read("--client-cert", cert)?, read("--client-key", key)?);
                crate::pki::check_key_pair(&cert_pem, &key_pem)
                    .context("--client-cert/--client-key")?;
                tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .context("--ca/--client-cert: TLS configuration")?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            let mut why = format!("cannot connect to authd at {}: {e}", conn.authd);
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why.push_str(&format!(": {s}"));
                source = s.source();
            }
            if https && conn.client_cert.is_none() {
                why.push_str(NO_CLIENT_CERT_HINT);
            }
            anyhow::anyhow!(why)
        })?;
        Ok(Self {
            client: AdminClient::new(channel),
            auth,
            transport_hint: if https && conn.client_cert.is_none() {
                NO_CLIENT_CERT_HINT
            } else {
                ""
            },
        })
    }

    /// A request carrying the admin secret, if one was given.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if let Some(auth) = &self.auth {
            req.metadata_mut().insert("authorization", auth.clone());
        }
        req
    }

    /// Revokes one credential id; returns the line to print.
    pub async fn revoke_credential(
        &mut self,
        credential_id: &str,
        until_unix_ms: u64,
    ) -> anyhow::Result<String> {
        let req = self.request(RevokeCredentialRequest {
            credential_id: credential_id.to_owned(),
            until_unix_ms,
        });
        let hint = self.transport_hint;
        let r = self
            .client
            .revoke_credential(req)
            .await
            .map_err(|s| refused(s, hint))?
            .into_inner();
        Ok(format!(
            "revoked: {} shared cache entries removed; id {} {}",
            r.removed,
            r.id,
            shown(r.until_unix_ms)
        ))
    }
}

/// A refused or failed Admin call, with what the operator may be missing.
pub(crate) fn refused(s: tonic::Status, transport_hint: &str) -> anyhow::Error {
    let hint = match s.code() {
        tonic::Code::Cancelled | tonic::Code::Unavailable | tonic::Code::Unknown => transport_hint,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            "; to be allowed, either present authd's admin secret (--admin-token-file, the \
             file authd's [admin] token_file names; `kube-authd up` writes it to \
             <state-dir>/admin.token) or a client certificate (--client-cert/--client-key) \
             whose identity has a [clients.NAME] table listing this call in its methods"
        }
        _ => "",
    };
    anyhow::anyhow!("authd refused: {:?}: {}{hint}", s.code(), s.message())
}

fn read_token() -> anyhow::Result<String> {
    let mut token = String::new();
    std::io::stdin()
        .read_to_string(&mut token)
        .context("reading the token from stdin")?;
    let token = token.trim_end_matches(['\r', '\n']).to_owned();
    if token.is_empty() {
        anyhow::bail!("--token-stdin: no token on stdin");
    }
    Ok(token)
}

/// Exactly one of the target's options.
fn one_of(target: &Target, id: bool) -> anyhow::Result<()> {
    let given = [
        target.token_stdin,
        target.user.is_some(),
        target.credential_id.is_some(),
        id,
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        let with_id = if id { ", --id" } else { "" };
        anyhow::bail!("give exactly one of --token-stdin, --user, --credential-id{with_id}");
    }
    Ok(())
}

pub async fn run(conn: AdminConn, action: Action) -> anyhow::Result<()> {
    // Checked before anything is read or sent.
    check_transport(&conn.authd, conn.allow_plaintext)?;
    match &action {
        Action::Revoke { target, until } => {
            one_of(target, false)?;
            if let Some(u) = until {
                parse_until(u)?;
            }
        }
        Action::Lift { target, id } => one_of(target, id.is_some())?,
        Action::List => {}
    }
    let mut admin = Admin::connect(&conn).await?;
    match action {
        Action::Revoke { target, until } => {
            let until_unix_ms = until
                .as_deref()
                .map(parse_until)
                .transpose()?
                .map_or(0, unix_ms);
            let r = if target.token_stdin {
                let token = read_token()?;
                let req = admin.request(RevokeTokenRequest {
                    token,
                    until_unix_ms,
                });
                admin.client.revoke_token(req).await
            } else if let Some(username) = target.user {
                let req = admin.request(RevokeUserRequest {
                    username,
                    until_unix_ms,
                });
                admin.client.revoke_user(req).await
            } else {
                let id = target.credential_id.unwrap_or_default();
                println!("{}", admin.revoke_credential(&id, until_unix_ms).await?);
                return Ok(());
            }
            .map_err(|s| refused(s, admin.transport_hint))?
            .into_inner();
            println!(
                "revoked: {} shared cache entries removed; id {} {}",
                r.removed,
                r.id,
                shown(r.until_unix_ms)
            );
        }
        Action::Lift { target, id } => {
            let mut req = UnrevokeRequest {
                id: id.unwrap_or_default(),
                username: target.user.unwrap_or_default(),
                credential_id: target.credential_id.unwrap_or_default(),
                ..Default::default()
            };
            if target.token_stdin {
                req.token = read_token()?;
            }
            let req = admin.request(req);
            let r = admin
                .client
                .unrevoke(req)
                .await
                .map_err(|s| refused(s, admin.transport_hint))?
                .into_inner();
            println!("{}", if r.lifted { "lifted" } else { "not revoked" });
        }
        Action::List => {
            let req = admin.request(ListRevocationsRequest {});
            let r = admin
                .client
                .list_revocations(req)
                .await
                .map_err(|s| refused(s, admin.transport_hint))?
                .into_inner();
            for d in r.revocations {
                println!("{} {} {}", d.kind, d.id, shown(d.until_unix_ms));
            }
        }
    }
    Ok(())
}

/// `kube-authd sessions`: what to do with login sessions.
pub enum SessionsAction {
    /// The open sessions of a (mapped) username.
    List { user: String },
    /// End one session by id: its tokens are refused on every replica at once.
    End { id: String },
}

/// Lists or ends login sessions through authd's Admin service.
pub async fn sessions(conn: AdminConn, action: SessionsAction) -> anyhow::Result<()> {
    check_transport(&conn.authd, conn.allow_plaintext)?;
    let mut admin = Admin::connect(&conn).await?;
    match action {
        SessionsAction::List { user } => {
            let req = admin.request(authd_proto::v1::ListSessionsRequest { username: user });
            let sessions = admin
                .client
                .list_sessions(req)
                .await
                .map_err(|s| refused(s, admin.transport_hint))?
                .into_inner()
                .sessions;
            if sessions.is_empty() {
                println!("no open session");
            }
            for s in sessions {
                let at =
                    |ms| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms));
                println!(
                    "{} {} created {} last used {} ends {} (unused: {})",
                    s.session_id,
                    s.username,
                    at(s.created_unix_ms),
                    at(s.last_used_unix_ms),
                    at(s.expires_unix_ms),
                    at(s.idle_expires_unix_ms),
                );
            }
        }
        SessionsAction::End { id } => {
            let req = admin.request(authd_proto::v1::EndSessionRequest { session_id: id });
            let ended = admin
                .client
                .end_session(req)
                .await
                .map_err(|s| refused(s, admin.transport_hint))?
                .into_inner()
                .ended;
            println!(
                "{}",
                if ended {
                    "session ended; its tokens are refused on every replica"
                } else {
                    "no such open session (its tokens, if any, are refused anyway)"
                }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_for_this_machine_or_the_flag() {
        for ok in [
            "http://127.0.0.1:50051",
            "http://localhost:50051",
            "http://[::1]:50051",
            "https://authd.example:50051",
        ] {
            assert!(check_transport(ok, false).is_ok(), "{ok}");
        }
        let e = check_transport("http://authd.example:50051", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--authd") && e.contains("--allow-plaintext"),
            "{e}"
        );
        assert!(check_transport("http://10.0.0.5:50051", false).is_err());
        assert!(check_transport("http://authd.example:50051", true).is_ok());
    }

    #[test]
    fn until_is_a_time_or_a_duration() {
        let t = parse_until("2030-01-02T03:04:05Z").unwrap();
        assert_eq!(unix_ms(t), 1_893_553_445_000);
        let soon = parse_until("2h").unwrap();
        let d = soon.duration_since(SystemTime::now()).unwrap();
        assert!(d > Duration::from_secs(7100) && d <= Duration::from_secs(7200));
        assert!(parse_until("tomorrow-ish").is_err());
    }
}
