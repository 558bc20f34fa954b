//! `authd`: the gRPC identity service.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the request path allocates small, short-lived
/// buffers on several threads, where glibc's arenas cost ≈ 15% of the CPU (perf, warm path).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "authd", version, about = "kube-authd identity service (gRPC)")]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "AUTHD_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, env = "AUTHD_CONFIG")]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    authd::init_tracing(cli.log_json);
    authd::install_crypto_provider();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = authd::config::Config::load(&config)?;
            let service = authd::server::build(&cfg)?;
            let path = config.clone();
            authd::reload::spawn(
                service.clone(),
                Some(config.clone()),
                Box::new(move || Ok(authd::config::Config::load(&path)?)),
                cfg.clone(),
                authd::reload::POLL_INTERVAL,
            );
            let listeners = authd::server::Listeners::bind(cfg.listen, cfg.admin_listen)
                .await?
                .secure(&cfg)?;
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
                authd::server::shutdown_signal(),
            )
            .await?;
            tracing::info!("authd stopped");
            Ok(())
        }
    }
}
