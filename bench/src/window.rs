//! `kube-authd-bench revocation-window`: how long after a revocation returns on one authd
//! replica another replica still authenticates the token.
//!
//! Starts a private redis-server and two authd replicas sharing it (the release binaries
//! next to this one, or `--bin-dir`). For each of `--revocations` tokens: replica B
//! authenticates it (so B holds it in its in-process cache, the warm case); then B is asked
//! again and again, one review at a time, while RevokeToken is called on replica A. The
//! window is the time from A's answer to the sending of B's first refused review (zero
//! when B refused before A answered); printed as p50/p99/max, with how many reviews sent
//! to B after A answered were still authenticated.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use authd_proto::v1::admin_client::AdminClient;
use authd_proto::v1::authenticator_client::AuthenticatorClient;
use authd_proto::v1::{AuthenticateRequest, RevokeTokenRequest};
use tonic::transport::Channel;

use crate::suite::{bin_dir, field, start_authd, start_redis};

#[derive(clap::Args)]
pub struct Args {
    /// How many tokens to revoke (one at a time).
    #[arg(long, default_value_t = 1000)]
    revocations: usize,
    /// Folder holding the binaries (default: this binary's folder).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Give up on one token after this long (counted as a failure).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    give_up: Duration,
}

const ADMIN_SECRET: &str = "revocation-window-admin-secret-0123";

async fn authenticated(c: &mut AuthenticatorClient<Channel>, token: &str) -> anyhow::Result<bool> {
    let r = c
        .authenticate(AuthenticateRequest {
            token: token.to_owned(),
            cluster: "default".into(),
            request_id: "window".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    anyhow::ensure!(r.error.is_empty(), "authd could not decide: {}", r.error);
    Ok(r.authenticated)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    let bins = bin_dir(args.bin_dir.as_ref())?;
    let dir = std::env::temp_dir().join(format!("kube-authd-window-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tokens: Vec<String> = (0..args.revocations)
        .map(|i| format!("window{i}_{}", hex_token()))
        .collect();
    let csv: String = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{t},user{i},uid-{i}\n"))
        .collect();
    std::fs::write(dir.join("tokens.csv"), csv)?;
    std::fs::write(dir.join("hmac.key"), rand::random::<[u8; 32]>())?;
    std::fs::write(dir.join("admin.token"), ADMIN_SECRET)?;

    let (redis, redis_port) = start_redis(&dir)?;

    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let config = dir.join(format!("authd-{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\n\
                 [cache]\nhmac_key_file = \"hmac.key\"\npositive_ttl = \"10m\"\nlocal_ttl = \"10m\"\n\
                 [cache.redis]\nurl = \"redis://127.0.0.1:{redis_port}\"\ntimeout = \"1s\"\n\
                 [admin]\ntoken_file = \"admin.token\"\n\
                 [clusters.default]\n\
                 [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n"
            ),
        )?;
        let (p, line) = start_authd(&bins, &format!("authd-{name}"), &config, &dir)?;
        let grpc = field(&line, "grpc").context("authd ready line")?;
        replicas.push((p, format!("http://{grpc}")));
    }
    let mut admin = AdminClient::connect(replicas[0].1.clone()).await?;
    let mut b = AuthenticatorClient::connect(replicas[1].1.clone()).await?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {ADMIN_SECRET}").parse()?;

    let mut windows = Vec::with_capacity(tokens.len());
    let mut gave_up = 0;
    let mut stale_after_return = 0;
    for token in &tokens {
        anyhow::ensure!(
            authenticated(&mut b, token).await?,
            "replica B does not accept a fresh token"
        );
        // B is asked again and again, from before the revocation is sent until it refuses:
        // each answer with the time its request was sent.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let poller = {
            let (mut b, token) = (b.clone(), token.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !*stop_rx.borrow() {
                    let sent = Instant::now();
                    let yes = authenticated(&mut b, &token).await?;
                    seen.push((sent, yes));
                    if !yes {
                        break;
                    }
                }
                anyhow::Ok(seen)
            })
        };
        let mut req = tonic::Request::new(RevokeTokenRequest {
            token: token.clone(),
            until_unix_ms: 0,
        });
        req.metadata_mut().insert("authorization", bearer.clone());
        admin.revoke_token(req).await?;
        let returned = Instant::now();
        let give_up = tokio::time::sleep(args.give_up);
        tokio::pin!(give_up);
        let seen = tokio::select! {
            seen = poller => seen??,
            _ = &mut give_up => {
                let _ = stop_tx.send(true);
                gave_up += 1;
                continue;
            }
        };
        // The window: from A's answer to the sending of B's first refused review (zero
        // when B refused a review sent before A answered).
        if let Some((sent, _)) = seen.iter().find(|(_, yes)| !yes) {
            windows.push(sent.saturating_duration_since(returned));
        }
        stale_after_return += seen
            .iter()
            .filter(|(sent, yes)| *yes && *sent > returned)
            .count();
    }
    windows.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if !windows.is_empty() {
        println!(
            "revocation window over {} revocations (A's RevokeToken returned -> a review sent \
             to B is refused): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; B already refused \
             before A answered: {}; reviews sent to B after A answered and still \
             authenticated: {stale_after_return}",
            windows.len(),
            ms(percentile(&windows, 0.50)),
            ms(percentile(&windows, 0.99)),
            ms(*windows.last().unwrap_or(&Duration::ZERO)),
            windows.iter().filter(|w| w.is_zero()).count(),
        );
    }
    if gave_up > 0 {
        println!(
            "{gave_up} tokens were still authenticated by B {:?} after the revocation",
            args.give_up
        );
    }
    drop(replicas);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(gave_up == 0)
}

fn hex_token() -> String {
    rand::random::<[u8; 16]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
