//! `authd-edge`: the HTTPS TokenReview front, calling authd over gRPC.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use authd_edge::discovery;
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the request path allocates small, short-lived
/// buffers on several threads, where glibc's arenas cost ≈ 15% of the CPU (perf, warm path).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "authd-edge",
    version,
    about = "kube-authd HTTPS TokenReview edge"
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
    /// Serve TokenReviews over HTTPS.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, env = "AUTHD_EDGE_CONFIG")]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authd-edge: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = authd_edge::Config::load(&config)?;
            let authd = cfg.authd.as_ref().with_context(|| {
                format!(
                    "config file {}: authd.endpoint (or authd.endpoints or authd.dns) is required for authd-edge",
                    config.display()
                )
            })?;
            let replicas = discovery::start(
                authd.replicas.clone(),
                discovery::Settings {
                    tls: authd_edge::tls::reloading_client(authd)?,
                    connect_timeout: authd.connect_timeout,
                    health_interval: authd.health_interval,
                },
            );
            let reachability = replicas.reachability.clone();
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
            let edge = authd_edge::Edge::bind(&cfg, backend, reachability, Vec::new()).await?;
            let addr = edge.local_addr()?;
            let admin = edge.admin_addr();
            tracing::info!(%addr, ?admin, authd = %authd.replicas, clusters = cfg.clusters.len(), "edge serving");
            println!(
                "authd-edge ready https=https://{addr} admin={}",
                admin.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
            );
            edge.serve(authd_edge::shutdown_signal()).await;
            tracing::info!("edge stopped");
            Ok(())
        }
    }
}
