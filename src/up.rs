//! `kube-authd up`: edge and authd in one process, for one machine and the quick start.
//!
//! The edge calls authd's tower service in-process (no loopback socket on the hot path),
//! behind the same admission and layers as split mode (`authd_edge::Backend::layered`: load
//! shed at `--max-in-flight-reviews` and the body budget, deadline, fail fast); authd's gRPC
//! port is still served for internal clients.
//!
//! Callers are authenticated: `up` issues kube-apiserver's client certificate (CN
//! `kube-apiserver:default`, from the `cluster-default-ca` it keeps in the state dir), puts
//! it in the webhook kubeconfig, and the edge requires it on every review route.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::kubeconfig::WebhookKubeconfig;
use crate::pki::{self, Ca};

/// The cluster `POST /authenticate` serves, and whose kube-apiserver certificate `up` issues.
const DEFAULT_CLUSTER: &str = "default";

pub struct UpArgs {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub token_file: Option<PathBuf>,
    pub authd_config: Option<PathBuf>,
    pub grpc_listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// The login routes' HTTPS address (default: --listen's port + 1, or an ephemeral
    /// port when that is 0).
    pub login_listen: Option<SocketAddr>,
    pub limits: EdgeLimits,
}

/// The edge's capacity limits (edge.toml fields of the same names); each is the edge's
/// default when not given.
#[derive(clap::Args)]
pub struct EdgeLimits {
    /// Most reviews in progress at once; beyond it a review is answered at once with the
    /// retryable 500 (the edge's `max_in_flight_reviews`, default 1024).
    #[arg(long)]
    pub max_in_flight_reviews: Option<usize>,
    /// Most bytes of request headers and bodies held by reviews in progress (the edge's
    /// `max_buffered_body_bytes`, default 64 MiB).
    #[arg(long)]
    pub max_buffered_body_bytes: Option<usize>,
    /// Most open client connections (the edge's `max_connections`, default 256).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most concurrent HTTP/2 streams per connection (the edge's `max_concurrent_streams`,
    /// default 128).
    #[arg(long)]
    pub max_concurrent_streams: Option<u32>,
}

impl EdgeLimits {
    /// The limits given, as edge.toml lines.
    fn toml(&self) -> String {
        let line = |field: &str, v: Option<String>| {
            v.map(|v| format!("{field} = {v}\n")).unwrap_or_default()
        };
        [
            line(
                "max_in_flight_reviews",
                self.max_in_flight_reviews.map(|n| n.to_string()),
            ),
            line(
                "max_buffered_body_bytes",
                self.max_buffered_body_bytes.map(|n| n.to_string()),
            ),
            line(
                "max_connections",
                self.max_connections.map(|n| n.to_string()),
            ),
            line(
                "max_concurrent_streams",
                self.max_concurrent_streams.map(|n| n.to_string()),
            ),
        ]
        .concat()
    }
}

/// The host put in the certificate and the kubeconfig: the listen IP unless it is a
/// wildcard, in which case `localhost` (override with --advertise).
fn advertise_host(args: &UpArgs) -> String {
    match &args.advertise {
        Some(h) => h.clone(),
        None if args.listen.ip().is_unspecified() => "localhost".into(),
        None => args.listen.ip().to_string(),
    }
}

fn demo_tokens(path: &Path) -> anyhow::Result<()> {
    let token = || {
        let bytes: [u8; 24] = rand::random();
        format!("kad_{}", hex::encode(bytes))
    };
    let text = format!(
        "# kube-authd demo tokens: token,user,uid,\"groups\"\n\
         {},demo-admin,1000,\"demo:admins,demo:users\"\n\
         {},demo-viewer,1001,\"demo:users\"\n",
        token(),
        token()
    );
    pki::write_private(path, text.as_bytes())
}

/// The admin secret of the built-in configuration (`kube-authd revoke
/// --admin-token-file`): made once, kept in the state dir (0600).
fn admin_secret(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        let bytes: [u8; 32] = rand::random();
        pki::write_private(path, format!("{}\n", hex::encode(bytes)).as_bytes())?;
    }
    Ok(())
}

/// The login routes' way to authd's Sessions service: in this process, through the same
/// service the gRPC listener serves.
fn sessions_in_process(
    authd: &authd::Authd,
    sessions: Option<std::sync::Arc<authd::session::Sessions>>,
) -> authd_edge::login::SessionBackend {
    use authd::session::SessionsGrpc;
    use authd_edge::login::{render_login, render_logout, render_token, SessionCall};
    use authd_proto::v1::sessions_server::Sessions as _;
    let service = std::sync::Arc::new(SessionsGrpc::new(authd.clone(), sessions));
    authd_edge::login::SessionBackend::from_fn(move |call| {
        let service = service.clone();
        Box::pin(async move {
            Ok(match call {
                SessionCall::Login(r) => {
                    render_login(service.login(tonic::Request::new(r)).await?.into_inner())
                }
                SessionCall::Token(r) => {
                    render_token(service.token(tonic::Request::new(r)).await?.into_inner())
                }
                SessionCall::Logout(r) => {
                    render_logout(service.logout(tonic::Request::new(r)).await?.into_inner())
                }
            })
        })
    })
}

fn authd_config(
    authd_config: Option<&Path>,
    grpc_listen: SocketAddr,
    token_file: &Path,
    admin_token: &Path,
) -> anyhow::Result<authd::config::Config> {
    match authd_config {
        Some(path) => Ok(authd::config::Config::load(path)?),
        None => {
            let source = authd::source::token_file::Config {
                name: "static".into(),
                path: token_file.to_owned(),
                prefix: None,
                mapping: authd::mapping::Mapping::default(),
            };
            let mut config =
                authd::config::Config::with_sources(vec![authd::config::SourceConfig::TokenFile(
                    Box::new(source),
                )]);
            config.listen = grpc_listen;
            config.admin.token_file = Some(admin_token.to_owned());
            // The one cluster the built-in edge serves (its default route).
            config.clusters.insert("default".into(), Default::default());
            // The demo users log in (the login route) with their token as the password.
            config.sessions = Some(
                toml::from_str("password_source = \"static\"")
                    .map_err(|e| anyhow::anyhow!("built-in [sessions]: {e}"))?,
            );
            config
                .finish(Path::new("."))
                .map_err(|e| anyhow::anyhow!("built-in authd configuration: {e}"))
        }
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("--state-dir {}: cannot create", args.state_dir.display()))?;
    let dir = args.state_dir.canonicalize()?;
    let ca = Ca::load_or_create(&dir)?;
    let host = advertise_host(&args);
    let mut hosts = vec![host.clone()];
    for h in ["localhost", "127.0.0.1"] {
        if !hosts.iter().any(|x| x == h) {
            hosts.push(h.into());
        }
    }
    ca.issue_server("kube-authd edge", &hosts)?
        .write(&dir, "edge")?;
    // kube-apiserver's certificate comes from a CA of its own (as `certs init --cluster`
    // makes), so nothing else the state dir's CA signs can pass as kube-apiserver.
    let cluster_ca = Ca::load_or_create_named(
        &dir,
        &format!("cluster-{DEFAULT_CLUSTER}-ca"),
        &format!("kube-authd cluster {DEFAULT_CLUSTER} CA"),
    )?;
    let apiserver = cluster_ca.issue_client(&format!(
        "{}{DEFAULT_CLUSTER}",
        authd_edge::tls::APISERVER_CN_PREFIX
    ))?;
    apiserver.write(&dir, &format!("apiserver-{DEFAULT_CLUSTER}"))?;

    // With --config, the configuration names its own sources: no demo tokens.
    let token_file = match (&args.token_file, &args.authd_config) {
        (Some(f), _) => f.clone(),
        (None, Some(_)) => PathBuf::new(),
        (None, None) => {
            let f = dir.join("tokens.csv");
            if !f.exists() {
                demo_tokens(&f)?;
                tracing::info!(path = %f.display(), "wrote demo token file");
            }
            f
        }
    };
    let admin_token = dir.join("admin.token");
    if args.authd_config.is_none() {
        admin_secret(&admin_token)?;
    }
    let authd_cfg = authd_config(
        args.authd_config.as_deref(),
        args.grpc_listen,
        &token_file,
        &admin_token,
    )?;
    // The one admin listener (the edge's, serving both processes' metrics): the flag, else
    // the configuration's `admin_listen`.
    let admin_listen = args.admin_listen.or(authd_cfg.admin_listen);
    let (authd, sessions) = authd::server::build_with_sessions(&authd_cfg)?;
    let login_listen = args.login_listen.or_else(|| {
        let mut a = args.listen;
        a.set_port(
            a.port()
                .checked_add(1)
                .filter(|_| a.port() != 0)
                .unwrap_or(0),
        );
        Some(a)
    });
    authd::server::load_revocations(&authd).await;
    {
        let (config, grpc_listen, tokens, admin) = (
            args.authd_config.clone(),
            args.grpc_listen,
            token_file.clone(),
            admin_token.clone(),
        );
        authd::reload::spawn(
            authd.clone(),
            args.authd_config.clone(),
            Box::new(move || authd_config(config.as_deref(), grpc_listen, &tokens, &admin)),
            authd_cfg.clone(),
            authd::reload::POLL_INTERVAL,
        );
    }
    let mut grpc = authd::server::Listeners::bind(authd_cfg.listen, None)
        .await?
        .secure(&authd_cfg)?;
    grpc.sessions = sessions.clone();
    let grpc_addr = grpc.grpc.local_addr()?;

    let edge_cfg = authd_edge::Config::parse(
        &format!(
            "listen = \"{}\"\ndefault_cluster = \"{DEFAULT_CLUSTER}\"\n{}{}\
             [tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
             {}",
            args.listen,
            admin_listen
                .map(|a| format!("admin_listen = \"{a}\"\n"))
                .unwrap_or_default(),
            args.limits.toml(),
            dir.join("edge.crt").display().to_string(),
            dir.join("edge.key").display().to_string(),
            dir.join(format!("cluster-{DEFAULT_CLUSTER}-ca.crt"))
                .display()
                .to_string(),
            match (&sessions, login_listen) {
                (Some(_), Some(addr)) => format!("[login]\nlisten = \"{addr}\"\n"),
                _ => String::new(),
            },
        ),
        &dir,
    )
    .map_err(|e| anyhow::anyhow!("built-in edge configuration: {e}"))?;
    // The same layers as split mode (load shed, deadline, fail fast) around authd's
    // in-process service: overload is the fast retryable 500 here too.
    let backend = authd_edge::Backend::layered(
        authd_edge::Inner::in_process(authd.clone()),
        (&edge_cfg).into(),
        authd_edge::Reachability::always(),
    );
    let metrics = authd.metrics().clone();
    let edge = authd_edge::Edge::bind(
        &edge_cfg,
        backend,
        Some(sessions_in_process(&authd, sessions)),
        authd_edge::Reachability::always(),
        vec![std::sync::Arc::new(move || metrics.encode())],
    )
    .await?;
    let edge_addr = edge.local_addr()?;
    let login = edge
        .login_addr()
        .map(|a| format!("https://{}", host_port(&host, a.port())));
    let server = format!(
        "https://{}/authenticate",
        host_port(&host, edge_addr.port())
    );
    let kubeconfig_path = dir.join("webhook-kubeconfig.yaml");
    let kubeconfig = WebhookKubeconfig {
        server: &server,
        ca_pem: &ca.pem.cert,
        client_cert_pem: Some(&apiserver.cert),
        client_key_pem: Some(&apiserver.key),
    };
    // It holds kube-apiserver's private key.
    pki::write_private(&kubeconfig_path, kubeconfig.render().as_bytes())?;

    let admin = edge
        .admin_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into());
    tracing::info!(%edge_addr, %grpc_addr, %admin, "kube-authd up");
    println!(
        "kube-authd ready https={server} grpc={grpc_addr} admin={admin} login={}",
        login.as_deref().unwrap_or("-")
    );
    println!("webhook kubeconfig: {}", kubeconfig_path.display());
    println!(
        "  kube-apiserver --authentication-token-webhook-config-file={}",
        kubeconfig_path.display()
    );
    let curl = |token: &str| {
        format!(
            "  curl --cacert {ca} --cert {cert} --key {key} -H 'Content-Type: application/json' {server} -d \"{{\\\"apiVersion\\\":\\\"authentication.k8s.io/v1\\\",\\\"kind\\\":\\\"TokenReview\\\",\\\"spec\\\":{{\\\"token\\\":\\\"{token}\\\"}}}}\"",
            ca = dir.join("ca.crt").display(),
            cert = dir.join(format!("apiserver-{DEFAULT_CLUSTER}.crt")).display(),
            key = dir.join(format!("apiserver-{DEFAULT_CLUSTER}.key")).display(),
        )
    };
    if args.authd_config.is_none() {
        println!(
            "try a review (uses the first token in {}):",
            token_file.display()
        );
        println!(
            "{}",
            curl(&format!(
                "$(grep -v '^#' {} | head -n1 | cut -d, -f1)",
                token_file.display()
            ))
        );
        println!(
            "revoke a user on every replica:\n  kube-authd revoke --authd http://{grpc_addr} --admin-token-file {} --user demo-viewer",
            admin_token.display()
        );
        if let Some(login) = &login {
            println!(
            "log in as a demo user (password: the user's token in {}; see docs/login.md):\n  \
             kube-authd kubeconfig --server https://YOUR-APISERVER:6443 --cluster {DEFAULT_CLUSTER} --login {login} --ca {} > kubeconfig.yaml\n  \
             KUBE_AUTHD_USERNAME=demo-viewer kube-authd login --login {login} --login-ca {} --cluster {DEFAULT_CLUSTER}",
            token_file.display(),
            dir.join("ca.crt").display(),
            dir.join("ca.crt").display(),
        );
        }
    } else {
        println!("try a review (TOKEN: one your configured sources accept):");
        println!("{}", curl("TOKEN"));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        authd_runtime::shutdown::signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grace = authd_cfg.shutdown_grace;
    let authd_task = tokio::spawn(authd::server::serve(
        authd,
        grpc,
        grace,
        stopped(stop_rx.clone()),
    ));
    edge.serve(stopped(stop_rx)).await;
    match tokio::time::timeout(grace + Duration::from_secs(1), authd_task).await {
        Ok(Ok(r)) => r?,
        Ok(Err(e)) => anyhow::bail!("authd task failed: {e}"),
        Err(_) => tracing::warn!("authd did not stop within the grace period"),
    }
    tracing::info!("kube-authd stopped");
    Ok(())
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
