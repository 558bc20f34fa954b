//! `kube-authd-bench`: the load generator, the baseline servers it compares against, and
//! the suite that runs every scenario and baseline in one invocation (see bench/README.md).

mod attack;
mod cpu;
mod envoy;
mod load;
mod servers;
mod sessions;
mod suite;
mod tokens;
mod window;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// The allocator kube-authd's binaries use (mimalloc), so the fixed-answer ceilings served
/// from this binary are measured on the same footing as the servers they bound.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kube-authd-bench",
    about = "Benchmark kube-authd against its baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtoArg {
    H1,
    H2,
}

#[derive(Subcommand)]
enum Command {
    /// Start every server, run every scenario and baseline, write the Markdown report.
    Suite(suite::Args),
    /// Measure how long after a revocation returns on one authd replica another one still
    /// authenticates the token (two replicas, one Redis).
    RevocationWindow(window::Args),
    /// A legitimate warm load alone, then next to an attacker sending distinct wrong
    /// passwords as fast as it can: the legitimate rate ratio, and the wrong passwords the
    /// source saw against what the throttle allows.
    ThrottleAttack(attack::Args),
    /// Login sessions at one authd: `Token` calls/s from one session, then reviews/s of
    /// issued tokens (warm).
    Sessions(sessions::Args),
    /// Requests/s and latency through Envoy with ext_authz → authd (warm) against Envoy with
    /// no filter, in interleaved rounds.
    Envoy(envoy::Args),
    /// The plain-HTTP service behind Envoy in `envoy`: 200 to everything.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// The ceiling in `envoy`: an ext_authz `Check` server over mutual TLS that allows
    /// everything at once, with the response shape authd gives (three identity headers
    /// set, `Authorization` removed) and no lookup at all.
    NoopAuthz {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// PEM server certificate, key and the CA client certificates must chain to.
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        client_ca: PathBuf,
    },
    /// Load one TokenReview endpoint (or authd's gRPC port) and print what was measured.
    Run {
        /// `https://host:port/path` of a TokenReview endpoint, or `http://host:port` with --grpc.
        #[arg(long)]
        url: String,
        /// PEM CA the endpoint's certificate chains to.
        #[arg(long, required_unless_present = "grpc")]
        ca: Option<PathBuf>,
        /// PEM client certificate and key (one file) presented as kube-apiserver's; the
        /// edge requires one.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Drive authd's Authenticate over gRPC instead.
        #[arg(long)]
        grpc: bool,
        #[arg(long, value_enum, default_value = "h1")]
        proto: ProtoArg,
        /// HTTP/1.1 connections, or HTTP/2 / gRPC concurrent streams.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// HTTP/2 / gRPC connections the streams share.
        #[arg(long, default_value_t = 1)]
        h2_connections: usize,
        /// Open loop at this many reviews per second (default: closed loop).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Tokens to send, one `token` or `token,expected` (true/false) per line; sent round-robin.
        #[arg(long)]
        tokens: PathBuf,
        /// Server process ids whose CPU time (with descendants) is measured.
        #[arg(long, value_delimiter = ',')]
        pids: Vec<i32>,
    },
    /// The local Basic-auth service: GET /basic-auth/{user}, 200 or 401.
    BasicAuthServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Shared secret from which the users' passwords derive (see tokens.rs).
        #[arg(long)]
        secret: String,
    },
    /// The fixed-answer HTTPS server (with --authd: plus one gRPC hop per review).
    FixedHttps {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// `http://host:port` of a fixed-verdict gRPC process.
        #[arg(long)]
        authd: Option<String>,
    },
    /// A gRPC Authenticator answering every call with the same verdict.
    FixedAuthd {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

fn read_tokens(path: &PathBuf) -> anyhow::Result<Vec<tokens::Item>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--tokens {}: cannot read", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| {
            let (token, expect) = match l.rsplit_once(',') {
                Some((t, "true")) => (t, Some(true)),
                Some((t, "false")) => (t, Some(false)),
                Some((_, other)) => anyhow::bail!(
                    "--tokens {} line {}: expected true or false after the comma, found {other:?}",
                    path.display(),
                    n + 1
                ),
                None => (l, None),
            };
            Ok(tokens::Item {
                token: token.to_owned(),
                expect,
            })
        })
        .collect()
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Suite(args) => suite::run(args).await,
        Command::RevocationWindow(args) => window::run(args).await,
        Command::ThrottleAttack(args) => attack::run(args).await,
        Command::Sessions(args) => sessions::run(args).await,
        Command::Envoy(args) => envoy::run(args).await,
        Command::Upstream { listen } => {
            servers::upstream(listen).await?;
            Ok(true)
        }
        Command::NoopAuthz {
            listen,
            cert,
            key,
            client_ca,
        } => {
            servers::noop_authz(listen, &cert, &key, &client_ca).await?;
            Ok(true)
        }
        Command::Run {
            url,
            ca,
            identity,
            grpc,
            proto,
            connections,
            h2_connections,
            rate,
            duration,
            warmup,
            timeout,
            tokens,
            pids,
        } => {
            let target = if grpc {
                load::Target::Grpc { endpoint: url }
            } else {
                let ca = ca.context("--ca is required for HTTPS")?;
                load::Target::Https {
                    url,
                    ca_pem: std::fs::read(&ca)
                        .with_context(|| format!("--ca {}: cannot read", ca.display()))?,
                    identity_pem: identity
                        .map(|p| {
                            std::fs::read(&p)
                                .with_context(|| format!("--identity {}: cannot read", p.display()))
                        })
                        .transpose()?,
                    proto: match proto {
                        ProtoArg::H1 => load::Proto::H1,
                        ProtoArg::H2 => load::Proto::H2,
                    },
                }
            };
            let items = read_tokens(&tokens)?;
            anyhow::ensure!(
                !items.is_empty(),
                "--tokens {}: no tokens",
                tokens.display()
            );
            let workload = Arc::new(tokens::Workload::new(items, Vec::new(), 1000));
            let spec = load::Spec {
                target,
                concurrency: connections,
                h2_connections,
                rate,
                warmup,
                duration,
                timeout,
                pids,
            };
            let o = load::run(&spec, workload).await?;
            println!(
                "reviews/s {:.0}  ok {}  errors {}  p50 {:.2}ms p90 {:.2}ms p99 {:.2}ms p99.9 {:.2}ms max {:.2}ms  connects {}  cpu s/1k {}",
                o.throughput(),
                o.ok,
                o.errors_text(),
                o.ms(0.5),
                o.ms(0.9),
                o.ms(0.99),
                o.ms(0.999),
                o.max_ms(),
                o.connects,
                o.cpu_per_1k().map_or("-".into(), |c| format!("{c:.3}")),
            );
            Ok(o.error_count() == 0)
        }
        Command::BasicAuthServer { listen, secret } => {
            servers::basic_auth_server(listen, secret).await?;
            Ok(true)
        }
        Command::FixedHttps {
            listen,
            cert,
            key,
            authd,
        } => {
            servers::fixed_https(listen, &cert, &key, authd).await?;
            Ok(true)
        }
        Command::FixedAuthd { listen } => {
            servers::fixed_authd(listen).await?;
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kube-authd-bench: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kube-authd-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
