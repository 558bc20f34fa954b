//! `authd`: the gRPC identity service.

use std::path::PathBuf;

use anyhow::Context;
use authd_runtime::process::ServerCli;

authd_runtime::server_main!(
    ServerCli {
        name: "authd",
        about: "kube-authd identity service (gRPC)",
        serve_about: "Run the gRPC server",
        config_env: "AUTHD_CONFIG",
    },
    serve
);

async fn serve(config: PathBuf) -> anyhow::Result<()> {
    let cfg = authd::config::Config::load(&config)?;
    let (service, sessions) = authd::server::build_with_sessions(&cfg)?;
    authd::server::load_revocations(&service).await;
    let path = config.clone();
    authd::reload::spawn(
        service.clone(),
        Some(config.clone()),
        Box::new(move || Ok(authd::config::Config::load(&path)?)),
        cfg.clone(),
        authd::reload::POLL_INTERVAL,
    );
    let mut listeners = authd::server::Listeners::bind(cfg.listen, cfg.admin_listen)
        .await?
        .secure(&cfg)?;
    listeners.sessions = sessions;
    let grpc = listeners
        .grpc
        .local_addr()
        .context("gRPC listener address")?;
    let admin = listeners.admin.as_ref().and_then(|l| l.local_addr().ok());
    tracing::info!(%grpc, ?admin, sources = cfg.sources.len(), tls = cfg.tls.is_some(),
        mutual_tls = cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        clients = cfg.clients.len(), "authd serving");
    // One machine-readable line on stdout, for supervisors and tests.
    println!(
        "authd ready grpc={grpc} admin={}",
        admin.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
    );
    authd::server::serve(
        service,
        listeners,
        cfg.shutdown_grace,
        authd_runtime::shutdown::signal(),
    )
    .await?;
    tracing::info!("authd stopped");
    Ok(())
}
