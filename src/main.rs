//! `kube-authd`: the all-in-one binary and the operator's tool.

mod kubeconfig;
mod pki;
mod revoke;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kube-authd",
    version,
    about = "Kubernetes webhook token authentication"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "AUTHD_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run edge and authd in one process (generates certificates, a demo token file and
    /// the webhook kubeconfig on first start).
    Up {
        /// Where certificates, tokens and the kubeconfig are kept.
        #[arg(long, default_value = ".kube-authd")]
        state_dir: PathBuf,
        /// HTTPS address kube-apiserver calls.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Host name or IP put in the certificate and kubeconfig (default: the listen IP).
        #[arg(long)]
        advertise: Option<String>,
        /// Token file in --token-auth-file CSV format (default: a generated demo file).
        #[arg(long, conflicts_with = "config")]
        token_file: Option<PathBuf>,
        /// A full authd configuration (TOML) instead of the single token file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// authd gRPC address for internal clients (ignored with --config: its `listen` is used).
        #[arg(long, default_value = "127.0.0.1:50051")]
        grpc_listen: SocketAddr,
        /// Plain-HTTP /healthz, /readyz and /metrics.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Print a kubeconfig for kube-apiserver's --authentication-token-webhook-config-file.
    WebhookConfig {
        /// The edge URL, e.g. https://authn.example.com:8443/authenticate
        #[arg(long)]
        server: String,
        /// PEM CA that signed the edge's certificate.
        #[arg(long)]
        ca: PathBuf,
        /// kube-apiserver's client certificate, for mTLS.
        #[arg(long, requires = "client_key")]
        client_cert: Option<PathBuf>,
        #[arg(long, requires = "client_cert")]
        client_key: Option<PathBuf>,
    },
    /// Drop cached verdicts for one token (read from stdin) or one user on every authd
    /// replica, through authd's Admin gRPC service.
    Revoke {
        /// authd's gRPC URL, e.g. http://127.0.0.1:50051 (https:// with --ca).
        #[arg(long)]
        authd: String,
        /// Read the token to revoke from stdin (never from argv).
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        token_stdin: bool,
        /// Revoke everything cached for this username.
        #[arg(long)]
        user: Option<String>,
        /// File holding the admin secret (authd's admin.token_file).
        #[arg(long)]
        admin_token_file: PathBuf,
        /// PEM CA that signed authd's certificate, for https://.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Certificate management.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Generate a CA and the certificates of a deployment into a folder: edge server,
    /// authd server, edge client, and one kube-apiserver client per --cluster.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Host names / IPs of the edge and authd (repeat).
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
        /// Clusters to issue kube-apiserver client certificates for (repeat).
        #[arg(long = "cluster")]
        clusters: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    authd::init_tracing(cli.log_json);
    authd::install_crypto_provider();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-authd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &PathBuf, flag: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag} {}: cannot read", path.display()))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up {
            state_dir,
            listen,
            advertise,
            token_file,
            config,
            grpc_listen,
            admin_listen,
        } => {
            up::run(up::UpArgs {
                state_dir,
                listen,
                advertise,
                token_file,
                authd_config: config,
                grpc_listen,
                admin_listen,
            })
            .await
        }
        Command::Revoke {
            authd,
            token_stdin,
            user,
            admin_token_file,
            ca,
        } => {
            revoke::run(revoke::RevokeArgs {
                authd,
                token_stdin,
                user,
                admin_token_file,
                ca,
            })
            .await
        }
        Command::WebhookConfig {
            server,
            ca,
            client_cert,
            client_key,
        } => {
            if !server.starts_with("https://") {
                anyhow::bail!("--server {server:?}: must be an https:// URL");
            }
            let ca = read(&ca, "--ca")?;
            let cert = client_cert.map(|p| read(&p, "--client-cert")).transpose()?;
            let key = client_key.map(|p| read(&p, "--client-key")).transpose()?;
            print!(
                "{}",
                kubeconfig::WebhookKubeconfig {
                    server: &server,
                    ca_pem: &ca,
                    client_cert_pem: cert.as_deref(),
                    client_key_pem: key.as_deref(),
                }
                .render()
            );
            Ok(())
        }
        Command::Certs {
            command:
                CertsCommand::Init {
                    dir,
                    hosts,
                    clusters,
                },
        } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("--dir {}: cannot create", dir.display()))?;
            let ca = pki::Ca::load_or_create(&dir)?;
            ca.issue_server("kube-authd edge", &hosts)?
                .write(&dir, "edge")?;
            ca.issue_server("kube-authd authd", &hosts)?
                .write(&dir, "authd")?;
            ca.issue_client("edge")?.write(&dir, "edge-client")?;
            for c in &clusters {
                ca.issue_client(&format!("kube-apiserver:{c}"))?
                    .write(&dir, &format!("apiserver-{c}"))?;
            }
            println!("wrote certificates to {}", dir.display());
            Ok(())
        }
    }
}
