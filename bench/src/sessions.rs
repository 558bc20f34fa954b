//! `kube-authd-bench sessions`: login sessions' throughput at one authd over gRPC —
//! `Token` calls per second from one session, then reviews per second of issued tokens
//! (warm: every token reviewed once before the clock starts).
//!
//! Starts one authd (the release binary next to this one, or `--bin-dir`) whose password
//! source is a token file (a user's token is their password, no directory round trip: what
//! is measured is authd's own cost), sessions in process, or in a private redis-server with
//! `--redis` (as replicas share them).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use authd_proto::v1::authenticator_client::AuthenticatorClient;
use authd_proto::v1::sessions_client::SessionsClient;
use authd_proto::v1::{AuthenticateRequest, LoginRequest, TokenRequest};
use tonic::transport::Channel;

use crate::suite::{bin_dir, field, start_authd, start_redis};

#[derive(clap::Args)]
pub struct Args {
    /// Calls in flight at once (one gRPC connection).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long each phase runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Keep sessions and tokens in a private redis-server instead of in process.
    #[arg(long)]
    redis: bool,
    /// Folder holding the binaries (default: this binary's folder).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// Runs `call` from `concurrency` tasks until `duration` passes; (calls, errors, p50, p99).
async fn hammer<F, Fut>(
    concurrency: usize,
    duration: Duration,
    call: F,
) -> (u64, u64, Duration, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let (call, stop, errors) = (call.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    if !call(n).await {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    latencies.push(started.elapsed());
                    n += concurrency;
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort();
    let pick = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    (
        all.len() as u64,
        errors.load(Ordering::Relaxed),
        pick(0.5),
        pick(0.99),
    )
}

fn report(
    what: &str,
    duration: Duration,
    (calls, errors, p50, p99): (u64, u64, Duration, Duration),
) {
    println!(
        "{what}: {:.0} calls/s ({calls} in {duration:?}, {errors} failed), p50 {:.3} ms, p99 {:.3} ms",
        calls as f64 / duration.as_secs_f64(),
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
    );
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    let bins = bin_dir(args.bin_dir.as_ref())?;
    let dir = std::env::temp_dir().join(format!("kube-authd-sessions-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let password = format!(
        "bench_{}",
        rand::random::<[u8; 16]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{password},bench-user,uid-bench,\"bench\"\n"),
    )?;
    std::fs::write(dir.join("hmac.key"), rand::random::<[u8; 32]>())?;
    let mut redis = None;
    let mut redis_toml = String::new();
    if args.redis {
        let (p, port) = start_redis(&dir)?;
        redis = Some(p);
        redis_toml =
            format!("[cache.redis]\nurl = \"redis://127.0.0.1:{port}\"\ntimeout = \"1s\"\n");
    }
    let config = dir.join("authd.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n\
             [cache]\nhmac_key_file = \"hmac.key\"\npositive_ttl = \"10m\"\nlocal_ttl = \"10m\"\n\
             {redis_toml}\
             [clusters.default]\n\
             [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n\
             [sessions]\npassword_source = \"static\"\n"
        ),
    )?;
    let (authd, line) = start_authd(&bins, "authd", &config, &dir)?;
    let url = format!(
        "http://{}",
        field(&line, "grpc").context("authd ready line")?
    );
    let channel = Channel::from_shared(url)?.connect().await?;
    let mut sessions = SessionsClient::new(channel.clone());
    let session = sessions
        .login(LoginRequest {
            username: "bench-user".into(),
            password,
            client_address: String::new(),
        })
        .await?
        .into_inner()
        .session;

    // Token calls from one session.
    let token_call = {
        let (sessions, session) = (sessions.clone(), session.clone());
        move |_| {
            let (mut c, session) = (sessions.clone(), session.clone());
            async move {
                c.token(TokenRequest {
                    session,
                    cluster: "default".into(),
                })
                .await
                .is_ok()
            }
        }
    };
    let mode = if args.redis { "redis" } else { "in process" };
    report(
        &format!("Token (sessions {mode}, concurrency {})", args.concurrency),
        args.duration,
        hammer(args.concurrency, args.duration, token_call).await,
    );

    // Reviews of issued tokens, warm.
    let mut tokens = Vec::new();
    let mut reviewer = AuthenticatorClient::new(channel.clone());
    for _ in 0..args.concurrency.max(1) {
        let t = sessions
            .token(TokenRequest {
                session: session.clone(),
                cluster: "default".into(),
            })
            .await?
            .into_inner()
            .token;
        let warm = reviewer
            .authenticate(AuthenticateRequest {
                token: t.clone(),
                cluster: "default".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        anyhow::ensure!(warm.authenticated, "an issued token was refused: {warm:?}");
        tokens.push(t);
    }
    let tokens = Arc::new(tokens);
    let review_call = move |n: usize| {
        let mut c = reviewer.clone();
        let token = tokens[n % tokens.len()].clone();
        async move {
            c.authenticate(AuthenticateRequest {
                token,
                cluster: "default".into(),
                ..Default::default()
            })
            .await
            .is_ok_and(|r| r.into_inner().authenticated)
        }
    };
    let reviews = hammer(args.concurrency, args.duration, review_call).await;
    let ok = reviews.1 == 0;
    report(
        &format!(
            "Authenticate of issued tokens (warm, concurrency {})",
            args.concurrency
        ),
        args.duration,
        reviews,
    );
    drop(authd);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ok)
}
