//! Benchmark (not a test): review latency through edge + authd + Redis, cold and warm.
//!
//! Starts a private redis-server, two authd replicas sharing it and an edge in front of
//! each, then times sequential TokenReviews over HTTPS (HTTP/2, one connection):
//! - cold: a token no cache holds (in-process miss, Redis miss, source lookup, Redis write);
//! - warm shared: the same token through the other replica (in-process miss, Redis hit);
//! - warm local: again through that replica (in-process hit).
//!
//! Run with the binaries built in the same profile:
//! `cargo build --release --workspace --bins && cargo run --release --example cache_latency [N]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{name:<12} n={:<5} mean={:>8.3?} p50={:>8.3?} p90={:>8.3?} p99={:>8.3?} max={:>8.3?}",
        samples.len(),
        mean,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        samples[samples.len() - 1]
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let dir = temp_dir();
    let d = dir.path();
    let tokens: Vec<String> = (0..n).map(|i| token(&format!("bench{i}"))).collect();
    let csv: String = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{t},user{i},uid-{i},\"g1,g2\"\n"))
        .collect();
    write(d, "tokens.csv", &csv);
    write(d, "hmac.key", "bench-shared-hmac-key-0123456789abcdef");
    let redis = RedisServer::start(d, None, &[]);
    let toml = format!(
        "[cache]\nhmac_key_file = \"hmac.key\"\n[cache.redis]\nurl = \"{}\"\n\
         [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n",
        redis.url()
    );
    certs_init(d, &[]);
    let env = [("RUST_LOG", "warn")];
    let start = |name: &str, cfg: &str| {
        let path = write(d, &format!("{name}.toml"), cfg);
        Proc::start_env(
            name,
            "authd",
            &["serve", "--config", path.to_str().unwrap()],
            d,
            "authd ready",
            &env,
        )
    };
    let header = "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n";
    let a = start("authd-a", &format!("{header}{toml}"));
    let b = start("authd-b", &format!("{header}{toml}"));
    let edge = |name: &str, authd: &Proc| {
        let cfg = write(
            d,
            &format!("{name}.toml"),
            &format!(
                "{header}[tls]\ncert = \"edge.crt\"\nkey = \"edge.key\"\n\
                 [authd]\nendpoint = \"http://{}\"\n",
                authd.ready_field("grpc")
            ),
        );
        Proc::start_env(
            name,
            "authd-edge",
            &["serve", "--config", cfg.to_str().unwrap()],
            d,
            "authd-edge ready",
            &env,
        )
    };
    let edge_a = edge("edge-a", &a);
    let edge_b = edge("edge-b", &b);
    let url_a = format!("{}/authenticate", edge_a.ready_field("https"));
    let url_b = format!("{}/authenticate", edge_b.ready_field("https"));
    let client = client(&std::fs::read(d.join("ca.crt")).unwrap(), Proto::H2, None);

    // Warm up connections (TLS, HTTP/2, gRPC channels) with an unlisted token.
    for url in [&url_a, &url_b] {
        for _ in 0..50 {
            review(&client, url, V1, "warm-up-token").await;
        }
    }
    let run = |url: String| {
        let client = client.clone();
        let tokens = tokens.clone();
        async move {
            let mut samples = Vec::with_capacity(tokens.len());
            for t in &tokens {
                let started = Instant::now();
                let r = review(&client, &url, V1, t).await;
                samples.push(started.elapsed());
                assert!(r.authenticated(), "{r:?}");
            }
            samples
        }
    };
    let cold = run(url_a.clone()).await;
    let shared = run(url_b.clone()).await;
    let local = run(url_b.clone()).await;
    println!("reviews through edge (HTTPS, h2) -> authd -> Redis, sequential, {n} tokens");
    summary("cold", cold);
    summary("warm shared", shared);
    summary("warm local", local);
    let (_, m) = admin_get(&b.ready_field("admin"), "/metrics").await;
    println!(
        "replica B: source calls {}, shared hits {}, local hits {}",
        metric_sum(&m, "authd_source_calls_total", &[]) + 0.0,
        metric_sum(&m, "authd_cache_hits_total", &[("level", "shared")]),
        metric_sum(&m, "authd_cache_hits_total", &[("level", "local")]),
    );
}
