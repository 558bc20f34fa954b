//! `kube-authd revoke`: calls authd's Admin service to drop cached verdicts for one token
//! (read from stdin, so it never appears in argv or shell history) or one user.

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
}

pub async fn run(args: RevokeArgs) -> anyhow::Result<()> {
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
