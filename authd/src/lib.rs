//! authd: verifies bearer tokens against identity sources, maps them to Kubernetes users,
//! applies per-cluster policy and caches verdicts. Served over gRPC (`authd-proto`).

pub mod access;
pub mod admin;
pub mod authz;
pub mod cache;
pub mod check;
pub mod config;
pub mod field;
pub mod fingerprint;
pub mod grpc;
pub mod identity;
pub mod mapping;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod reloading;
pub mod revocation;
pub mod server;
pub mod service;
pub mod source;
pub mod tls;

pub use service::Authd;

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Call once at start-up,
/// before any TLS configuration is built.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Sets up logging to stderr: `RUST_LOG` filters (default `info`), `json` selects JSON lines.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
