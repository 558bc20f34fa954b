//! `authd-edge`: the HTTPS TokenReview front, calling authd over gRPC.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use authd_edge::discovery;
use authd_runtime::process::ServerCli;

authd_runtime::server_main!(
    ServerCli {
        name: "authd-edge",
        about: "kube-authd HTTPS TokenReview edge",
        serve_about: "Serve TokenReviews over HTTPS",
        config_env: "AUTHD_EDGE_CONFIG",
    },
    serve
);

async fn serve(config: PathBuf) -> anyhow::Result<()> {
    // The same loading as every reload and `kube-authd config check --edge`.
    let seen = authd_runtime::file_state::FileState::of(&config, None);
    let cfg = authd_edge::load_for_serve(&config)?;
    let authd = cfg.authd.as_ref().context("[authd]")?;
    let replicas = discovery::start(
        authd.replicas.clone(),
        discovery::Settings {
            tls: authd_edge::tls::reloading_client(authd)?,
            connect_timeout: authd.connect_timeout,
            health_interval: authd.health_interval,
        },
    );
    let reachability = replicas.reachability.clone();
    let discovery = replicas.discovery.clone();
    let backend = authd_edge::Backend::layered(
        authd_edge::balance::balancer(replicas.changes),
        (&cfg).into(),
        reachability.clone(),
    );
    // Give the first health probes a moment, so the first reviews find a replica.
    let until = tokio::time::Instant::now() + authd.connect_timeout;
    while !reachability.get() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sessions = authd_edge::login::grpc_backend(authd)?;
    let edge =
        authd_edge::Edge::bind(&cfg, backend, Some(sessions), reachability, Vec::new()).await?;
    let addr = edge.local_addr()?;
    let admin = edge.admin_addr();
    let login = edge
        .login_addr()
        .map(|a| format!(" login=https://{a}"))
        .unwrap_or_default();
    authd_edge::reload::spawn(
        config.clone(),
        seen,
        cfg.clone(),
        edge.control(),
        discovery,
        authd_edge::reload::POLL_INTERVAL,
    );
    tracing::info!(%addr, ?admin, authd = %authd.replicas, clusters = cfg.clusters.len(), "edge serving");
    println!(
        "authd-edge ready https=https://{addr} admin={}{login}",
        admin.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
    );
    edge.serve(authd_runtime::shutdown::signal()).await;
    tracing::info!("edge stopped");
    Ok(())
}
