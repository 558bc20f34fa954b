//! `kube-authd-bench throttle-attack`: a legitimate warm load, alone and then next to an
//! attacker sending distinct wrong passwords as fast as it can (issue 14).
//!
//! Starts a private redis-server and two authd replicas sharing it (the binaries next to
//! this one, or `--bin-dir`), with a Basic-auth source served from this process, which
//! counts the wrong passwords that reach it. authd runs with its default `[throttle]`
//! (or `--throttle-toml`). The legitimate load (warm `user:password` tokens, loaded and
//! cached first) goes to replica A over gRPC; the attacker guesses passwords of the same
//! users through both replicas. Prints the legitimate rate alone and under attack (their
//! ratio), the guesses sent, and the wrong passwords the source saw against what the
//! throttle allows over the attack's length. Loopback only; bounded in time and count.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use authd_proto::v1::authenticator_client::AuthenticatorClient;
use authd_proto::v1::AuthenticateRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::load;
use crate::suite::{bin_dir, field, start_authd, start_redis};
use crate::tokens::{Universe, Workload};

#[derive(clap::Args)]
pub struct Args {
    /// Length of each measured phase (alone, under attack).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Legitimate users (`bu0`…): their tokens make the warm load.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Concurrent legitimate reviews (gRPC streams to replica A).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Users the attacker guesses passwords of (the first ones of the legitimate users).
    #[arg(long, default_value_t = 10)]
    targets: usize,
    /// Concurrent attacker reviews, spread over both replicas.
    #[arg(long, default_value_t = 32)]
    attackers: usize,
    /// Most guesses the attacker sends in all.
    #[arg(long, default_value_t = 5_000_000)]
    max_guesses: u64,
    /// TOML for the replicas' `[throttle]` table (default: authd's defaults).
    #[arg(long)]
    throttle_toml: Option<String>,
    /// Folder holding the binaries (default: this binary's folder).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// authd's defaults, for the bound printed when `--throttle-toml` is not given.
const BURST: u64 = 3;
const PERIOD: Duration = Duration::from_secs(60);
const CLUSTER_BURST: u64 = 100;
const CLUSTER_PERIOD: Duration = Duration::from_secs(1);

/// The Basic-auth service as the suite's, in process, counting the refusals it gives.
async fn counting_basic_auth(
    secret: String,
    refused: Arc<AtomicU64>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let secret: Arc<str> = secret.into();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (secret, refused) = (secret.clone(), refused.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let r = crate::servers::basic_auth(&secret, &req);
                    if r.status() != http::StatusCode::OK {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A counter's value (summed over its series) from an authd admin listener's `/metrics`.
async fn counter(admin: &str, name: &str) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(admin).await?;
    tcp.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// What the attacker got back.
#[derive(Default)]
struct Attack {
    sent: AtomicU64,
    /// Answers that were a yes (a guess can never be right) or an error.
    wrong_answers: AtomicU64,
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.targets >= 1 && args.targets <= args.users,
        "--targets must be 1 to --users"
    );
    let bins = bin_dir(args.bin_dir.as_ref())?;
    let dir = std::env::temp_dir().join(format!("kube-authd-attack-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("hmac.key"), rand::random::<[u8; 32]>())?;
    let universe = Universe::new(args.users, 0);
    let refused = Arc::new(AtomicU64::new(0));
    let basic = counting_basic_auth(universe.secret.clone(), refused.clone()).await?;

    let (redis, redis_port) = start_redis(&dir)?;

    let throttle = args.throttle_toml.clone().unwrap_or_default();
    let mut replicas = Vec::new();
    let mut admins = Vec::new();
    for name in ["a", "b"] {
        let config = dir.join(format!("authd-{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                 [cache]\nhmac_key_file = \"hmac.key\"\npositive_ttl = \"10m\"\n\
                 negative_ttl = \"10m\"\nlocal_ttl = \"10m\"\n\
                 [cache.redis]\nurl = \"redis://127.0.0.1:{redis_port}\"\n\
                 [throttle]\n{throttle}\n\
                 [clusters.default]\n\
                 [[sources]]\nname = \"basic\"\ntype = \"basic_auth\"\n\
                 url = \"http://{basic}/basic-auth/{{user}}\"\n"
            ),
        )?;
        let (p, line) = start_authd(&bins, &format!("authd-{name}"), &config, &dir)?;
        let grpc = field(&line, "grpc").context("authd ready line")?;
        let admin = field(&line, "admin").context("authd ready line")?;
        admins.push(admin);
        replicas.push((p, format!("http://{grpc}")));
    }

    let spec = load::Spec {
        target: load::Target::Grpc {
            endpoint: replicas[0].1.clone(),
        },
        concurrency: args.connections,
        h2_connections: 1,
        rate: None,
        warmup: args.warmup,
        duration: args.duration,
        timeout: Duration::from_secs(10),
        pids: replicas.iter().map(|(p, _)| p.pid()).collect(),
    };
    let workload = || Arc::new(Workload::new(universe.hot_items(), Vec::new(), 1000));
    let alone = load::run(&spec, workload()).await?;
    println!(
        "legitimate alone:        {:.0} reviews/s, p99 {:.2} ms, errors {}",
        alone.throughput(),
        alone.ms(0.99),
        alone.errors_text()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let attack = Arc::new(Attack::default());
    let refused_before = refused.load(Ordering::Relaxed);
    let attack_started = Instant::now();
    let deadline = attack_started + args.warmup + args.duration * 2;
    let mut tasks = Vec::new();
    for i in 0..args.attackers {
        let endpoint = replicas[i % replicas.len()].1.clone();
        let mut client = AuthenticatorClient::connect(endpoint).await?;
        let (stop, attack) = (stop.clone(), attack.clone());
        let (targets, max) = (args.targets, args.max_guesses);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let n = attack.sent.fetch_add(1, Ordering::Relaxed);
                if n >= max {
                    break;
                }
                let user = Universe::user(n as usize % targets);
                let answer = client
                    .authenticate(AuthenticateRequest {
                        token: format!("{user}:guess-{n}"),
                        cluster: "default".into(),
                        request_id: String::new(),
                        ..Default::default()
                    })
                    .await;
                match answer {
                    Ok(r) if !r.get_ref().authenticated && r.get_ref().error.is_empty() => {}
                    _ => {
                        attack.wrong_answers.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let attacked = load::run(&spec, workload()).await?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let attack_len = attack_started.elapsed();
    let seen = refused.load(Ordering::Relaxed) - refused_before;
    let sent = attack.sent.load(Ordering::Relaxed).min(args.max_guesses);
    let periods = |p: Duration| (attack_len.as_millis() / p.as_millis().max(1)) as u64 + 1;
    let per_user = args.targets as u64 * (BURST + periods(PERIOD));
    let per_cluster = CLUSTER_BURST + periods(CLUSTER_PERIOD);
    let allowed = per_user.min(per_cluster);
    // Decisions a replica took alone because Redis did not answer in time: each replica
    // then allows the budgets again from its own memory.
    let mut fallbacks = 0.0;
    for a in &admins {
        fallbacks += counter(a, "authd_throttle_fallbacks_total").await?;
    }
    let ratio = attacked.throughput() / alone.throughput().max(f64::MIN_POSITIVE);
    println!(
        "legitimate under attack: {:.0} reviews/s, p99 {:.2} ms, errors {}",
        attacked.throughput(),
        attacked.ms(0.99),
        attacked.errors_text()
    );
    println!(
        "legitimate rate under attack / alone: {:.1}% (target >= 90%)",
        ratio * 100.0
    );
    println!(
        "attacker: {sent} distinct wrong passwords in {attack_len:.1?} ({:.0}/s), {} not \
         answered a definitive no",
        sent as f64 / attack_len.as_secs_f64(),
        attack.wrong_answers.load(Ordering::Relaxed)
    );
    if args.throttle_toml.is_none() {
        println!(
            "wrong passwords seen by the source: {seen}; the default throttle allows {allowed} \
             ({} users x ({BURST} + one per {PERIOD:?}), at most {CLUSTER_BURST} + one per \
             {CLUSTER_PERIOD:?} for the cluster)",
            args.targets
        );
    } else {
        println!("wrong passwords seen by the source: {seen} (custom [throttle])");
    }
    println!(
        "throttle decisions taken without Redis (it did not answer within cache.redis.timeout): \
         {fallbacks}; each replica then allows the budgets again from its own memory"
    );
    let allowed = if fallbacks > 0.0 {
        allowed * (1 + replicas.len() as u64)
    } else {
        allowed
    };
    drop(replicas);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    let within = args.throttle_toml.is_some() || seen <= allowed;
    Ok(within
        && attack.wrong_answers.load(Ordering::Relaxed) == 0
        && alone.error_count() == 0
        && attacked.error_count() == 0)
}
