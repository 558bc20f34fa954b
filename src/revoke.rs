//! `kube-authd revoke`: calls authd's Admin service to drop cached verdicts for one token
//! (read from stdin, so it never appears in argv or shell history) or one user. The call
//! carries the admin secret, so `http://` is refused to anything but this machine unless
//! `--allow-plaintext` says otherwise.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use authd_proto::v1::admin_client::AdminClient;
use authd_proto::v1::{RevokeTokenRequest, RevokeUserRequest};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

pub struct RevokeArgs {
    pub authd: String,
    pub token_stdin: bool,
    pub user: Option<String>,
    pub admin_token_file: PathBuf,
    pub ca: Option<PathBuf>,
    pub allow_plaintext: bool,
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

pub async fn run(args: RevokeArgs) -> anyhow::Result<()> {
    check_transport(&args.authd, args.allow_plaintext)?;
    let secret = authd::authz::read_secret(&args.admin_token_file)
        .map_err(|e| anyhow::anyhow!("--admin-token-file: {e}"))?;
    let mut bearer = b"Bearer ".to_vec();
    bearer.extend_from_slice(&secret);
    let mut auth = MetadataValue::try_from(bearer.as_slice()).map_err(|_| {
        anyhow::anyhow!("--admin-token-file: the secret is not a valid header value")
    })?;
    auth.set_sensitive(true);

    let mut endpoint = Endpoint::from_shared(args.authd.clone())
        .with_context(|| format!("--authd {:?}: not a URL", args.authd))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30));
    if let Some(ca) = &args.ca {
        let pem =
            std::fs::read(ca).with_context(|| format!("--ca {}: cannot read", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .context("--ca: TLS configuration")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to authd at {}", args.authd))?;
    let mut client = AdminClient::new(channel);

    let removed = if args.token_stdin {
        let mut token = String::new();
        std::io::stdin()
            .read_to_string(&mut token)
            .context("reading the token from stdin")?;
        let token = token.trim_end_matches(['\r', '\n']).to_owned();
        if token.is_empty() {
            anyhow::bail!("--token-stdin: no token on stdin");
        }
        let mut req = tonic::Request::new(RevokeTokenRequest { token });
        req.metadata_mut().insert("authorization", auth);
        client.revoke_token(req).await
    } else {
        let username = args.user.context("--user or --token-stdin is required")?;
        let mut req = tonic::Request::new(RevokeUserRequest { username });
        req.metadata_mut().insert("authorization", auth);
        client.revoke_user(req).await
    }
    .map_err(|s| anyhow::anyhow!("authd refused: {:?}: {}", s.code(), s.message()))?
    .into_inner()
    .removed;
    println!("revoked: {removed} shared cache entries removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_transport;

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
}
