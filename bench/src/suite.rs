//! The suite: one invocation starts every server itself (loopback, ephemeral ports, fresh
//! processes per scenario so no cache carries over), runs each scenario for a bounded time
//! with the same tokens and the same client, and writes a Markdown report with the ratios
//! to the seed and to the fixed-answer ceilings.
//!
//! Scenarios that need a feature this branch does not have (a Redis cache, the Basic-auth
//! source) are configured by text like any other; when authd refuses that configuration
//! the scenario is reported as skipped with authd's reason.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::load::{self, Outcome, Proto, Target};
use crate::tokens::{Universe, Workload, GROUP};

#[derive(clap::Args)]
pub struct Args {
    /// Where the Markdown report goes (default: bench/RESULTS.md, or
    /// target/bench-smoke.md with --smoke; relative to the current folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measured time per scenario.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up per scenario (not measured).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// HTTP/1.1 connections; HTTP/2 and gRPC: streams over one connection.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Hot tokens (the warm set).
    #[arg(long, default_value_t = 100)]
    hot_tokens: usize,
    /// Cold tokens, each sent once; also the size of the static token file.
    #[arg(long, default_value_t = 800_000)]
    cold_tokens: usize,
    /// Open-loop rows offer this many reviews per second (default: half the seed's
    /// measured closed-loop throughput, so latencies compare at one load the seed can carry).
    #[arg(long)]
    open_rate: Option<f64>,
    /// gunicorn sync workers for the seed (default: 2 × nproc + 1, gunicorn's advice).
    #[arg(long)]
    gunicorn_workers: Option<usize>,
    /// Folder holding the release binaries (default: this binary's folder).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Python 3 with the venv module, for the seed's baselines.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Run only scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// A few seconds in all, small: checks that everything runs with zero errors (CI).
    #[arg(long)]
    smoke: bool,
    /// Keep the temp dir (configs, logs) and print its path.
    #[arg(long)]
    keep: bool,
    /// Interleaved rounds of each ceiling comparison (ceiling and ours back to back, the
    /// order alternating), after the main table; the targets use their median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// TOML appended to every scenario's authd configuration (e.g. an `[audit]` table, to
    /// measure the warm rows with the audit log on).
    #[arg(long)]
    authd_toml: Option<PathBuf>,
}

/// A child process killed (with its process group) on drop.
pub(crate) struct Proc {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &str, mut cmd: Command, dir: &Path) -> anyhow::Result<Proc> {
        use std::os::unix::process::CommandExt;
        let stderr_path = dir.join(format!("{name}.stderr"));
        let stderr = std::fs::File::create(&stderr_path)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(l);
                }
            });
        }
        Ok(Proc {
            name: name.to_owned(),
            child,
            lines,
            stderr_path,
        })
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Waits for a stdout line starting with `prefix`; Err(stderr tail) if the process
    /// exits first.
    pub(crate) fn ready(&mut self, prefix: &str) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|l| l.starts_with(prefix))
            {
                return Ok(l.clone());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before it was ready: {}",
                    self.name,
                    self.stderr_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready within 60 s", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `addr` accepts TCP connections (servers without a ready line).
    pub(crate) fn listening(&mut self, addr: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}): {}",
                    self.name,
                    self.stderr_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("{} not listening on {addr} within 60 s", self.name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this suite created for its own child.
        unsafe {
            libc::kill(-self.pid(), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A private redis-server on a free loopback port, its data in `dir`, nothing persisted;
/// returns once it listens.
pub(crate) fn start_redis(dir: &Path) -> anyhow::Result<(Proc, u16)> {
    let port = free_port()?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir);
    let mut p = Proc::spawn("redis", cmd, dir)
        .context("redis-server is needed: apt-get install redis-server")?;
    p.listening(&format!("127.0.0.1:{port}"))
        .map_err(anyhow::Error::msg)?;
    Ok((p, port))
}

/// `authd serve --config CONFIG` from `bins` as `name`; returns it and its ready line once
/// it is ready.
pub(crate) fn start_authd(
    bins: &Path,
    name: &str,
    config: &Path,
    dir: &Path,
) -> anyhow::Result<(Proc, String)> {
    let mut cmd = Command::new(bin(bins, "authd")?);
    cmd.args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn");
    let mut p = Proc::spawn(name, cmd, dir)?;
    let line = p.ready("authd ready").map_err(anyhow::Error::msg)?;
    Ok((p, line))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cache {
    Local,
    Redis,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    File,
    Basic,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Work {
    Warm,
    Cold,
    Mix95,
}

impl Work {
    fn hot_permille(self) -> u64 {
        match self {
            Work::Warm => 1000,
            Work::Cold => 0,
            Work::Mix95 => 950,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    Split(Cache),
    AllInOne(Cache),
    /// authd alone, driven over gRPC.
    Authd(Cache),
    SeedGunicorn,
    SeedFlask,
    CeilingHttps,
    CeilingSplit,
}

impl Server {
    fn label(self) -> String {
        let c = |c: Cache| match c {
            Cache::Local => "in-process cache",
            Cache::Redis => "Redis + in-process",
        };
        match self {
            Server::Split(k) => format!("split (edge + authd), {}", c(k)),
            Server::AllInOne(k) => format!("all-in-one (`kube-authd up`), {}", c(k)),
            Server::Authd(k) => format!("authd gRPC direct, {}", c(k)),
            Server::SeedGunicorn => "seed Flask app on gunicorn".into(),
            Server::SeedFlask => "seed Flask app on Flask's server".into(),
            Server::CeilingHttps => "fixed-answer HTTPS ceiling".into(),
            Server::CeilingSplit => "fixed-answer HTTPS + tonic hop ceiling".into(),
        }
    }

    fn ours(self) -> bool {
        matches!(
            self,
            Server::Split(_) | Server::AllInOne(_) | Server::Authd(_)
        )
    }

    fn cache(self) -> Option<Cache> {
        match self {
            Server::Split(c) | Server::AllInOne(c) | Server::Authd(c) => Some(c),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
struct Scenario {
    name: String,
    server: Server,
    work: Work,
    source: Source,
    proto: Proto,
    rate: Option<f64>,
}

impl Scenario {
    fn new(server: Server, work: Work, source: Source, proto: Proto) -> Self {
        let s = match server {
            Server::Split(Cache::Local) => "split-local",
            Server::Split(Cache::Redis) => "split-redis",
            Server::AllInOne(Cache::Local) => "aio-local",
            Server::AllInOne(Cache::Redis) => "aio-redis",
            Server::Authd(Cache::Local) => "authd-grpc-local",
            Server::Authd(Cache::Redis) => "authd-grpc-redis",
            Server::SeedGunicorn => "seed-gunicorn",
            Server::SeedFlask => "seed-flask",
            Server::CeilingHttps => "ceiling-https",
            Server::CeilingSplit => "ceiling-split",
        };
        let w = match (work, source) {
            (Work::Warm, _) => "warm",
            (Work::Cold, Source::File) => "cold-file",
            (Work::Cold, Source::Basic) => "cold-basic",
            (Work::Mix95, Source::File) => "mix95-file",
            (Work::Mix95, Source::Basic) => "mix95-basic",
        };
        let grpc = matches!(server, Server::Authd(_));
        let p = if grpc { "grpc" } else { proto.label() };
        Self {
            name: format!("{s}/{w}/{p}"),
            server,
            work,
            source,
            proto,
            rate: None,
        }
    }

    /// Open loop; the rate is fixed when the row runs (see `Args::open_rate`).
    fn open(mut self) -> Self {
        self.rate = Some(0.0);
        self
    }

    fn set_rate(&mut self, rate: f64) {
        self.rate = Some(rate);
        self.name = format!("{}/open{rate:.0}", self.name);
    }

    /// The issues whose features this scenario's configuration needs.
    fn needs(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.server.cache() == Some(Cache::Redis) {
            v.push("issue 3 (Redis cache)");
        }
        if self.server.ours() && self.source == Source::Basic {
            v.push("issue 4 (Basic-auth source)");
        }
        v
    }
}

fn scenarios() -> Vec<Scenario> {
    use Proto::{H1, H2};
    let seed = |server, work| Scenario::new(server, work, Source::Basic, H1);
    // Baselines first: the ratios below refer to them.
    let mut v = vec![
        seed(Server::SeedGunicorn, Work::Warm),
        seed(Server::SeedGunicorn, Work::Cold),
        seed(Server::SeedGunicorn, Work::Mix95),
        seed(Server::SeedGunicorn, Work::Warm).open(),
        seed(Server::SeedFlask, Work::Warm),
    ];
    for p in [H1, H2] {
        v.push(Scenario::new(
            Server::CeilingHttps,
            Work::Warm,
            Source::File,
            p,
        ));
        v.push(Scenario::new(
            Server::CeilingSplit,
            Work::Warm,
            Source::File,
            p,
        ));
    }
    for cache in [Cache::Local, Cache::Redis] {
        for server in [Server::Split(cache), Server::AllInOne(cache)] {
            v.push(Scenario::new(server, Work::Warm, Source::File, H1));
            v.push(Scenario::new(server, Work::Warm, Source::File, H2));
            v.push(Scenario::new(server, Work::Cold, Source::File, H1));
            v.push(Scenario::new(server, Work::Cold, Source::Basic, H1));
            v.push(Scenario::new(server, Work::Mix95, Source::Basic, H1));
        }
        v.push(Scenario::new(
            Server::Authd(cache),
            Work::Warm,
            Source::File,
            H1,
        ));
    }
    v.push(Scenario::new(Server::AllInOne(Cache::Local), Work::Warm, Source::File, H1).open());
    v
}

/// Everything the scenarios share: folders, certificates, tokens, the Basic-auth server,
/// Redis.
struct Env {
    dir: PathBuf,
    bins: PathBuf,
    universe: Universe,
    token_file: PathBuf,
    hmac_key: PathBuf,
    ca_pem: Vec<u8>,
    /// kube-apiserver's client certificate and key (PEM), which the edge requires.
    identity_pem: Vec<u8>,
    basic_addr: String,
    redis_port: Option<u16>,
    /// `--authd-toml`'s contents.
    extra_authd_toml: String,
    venv: Option<PathBuf>,
    gunicorn_workers: usize,
    _basic: Proc,
    redis: Option<Proc>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub(crate) fn bin(env_bins: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = env_bins.join(name);
    anyhow::ensure!(
        p.exists(),
        "{} not found: build the workspace binaries first (`cargo build --release --workspace --bins`)",
        p.display()
    );
    Ok(p)
}

/// A venv under target/ with the seed's pinned requirements (re-made when they change).
fn ensure_venv(python: &str) -> anyhow::Result<PathBuf> {
    let root = repo_root();
    let reqs = root.join("bench/baseline/requirements.txt");
    let venv = root.join("target/bench-venv");
    let stamp = venv.join("requirements.txt");
    let wanted = std::fs::read(&reqs).with_context(|| format!("reading {}", reqs.display()))?;
    if std::fs::read(&stamp).ok().as_deref() == Some(wanted.as_slice())
        && venv.join("bin/gunicorn").exists()
    {
        return Ok(venv);
    }
    eprintln!(
        "bench: creating {} (pip install -r {})",
        venv.display(),
        reqs.display()
    );
    let ok = Command::new(python)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    anyhow::ensure!(
        ok,
        "`{python} -m venv` failed: install Python 3 with venv (apt-get install python3 python3-venv)"
    );
    let ok = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", "-r"])
        .arg(&reqs)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    anyhow::ensure!(ok, "pip install -r {} failed", reqs.display());
    std::fs::write(&stamp, wanted)?;
    Ok(venv)
}

/// `apiserver-default.crt` and its key in `dir` as one PEM: kube-apiserver's identity.
fn identity(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut pem = std::fs::read(dir.join("apiserver-default.crt"))
        .with_context(|| format!("{}/apiserver-default.crt", dir.display()))?;
    pem.extend(
        std::fs::read(dir.join("apiserver-default.key"))
            .with_context(|| format!("{}/apiserver-default.key", dir.display()))?,
    );
    Ok(pem)
}

/// The folder of the binaries under test: `--bin-dir`, or this binary's own folder.
pub fn bin_dir(given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(b) => Ok(b.clone()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("binary folder")?
            .to_path_buf()),
    }
}

impl Env {
    fn setup(args: &Args, dir: &Path, need_python: bool, need_redis: bool) -> anyhow::Result<Env> {
        let bins = bin_dir(args.bin_dir.as_ref())?;
        let certs = Command::new(bin(&bins, "kube-authd")?)
            .args(["certs", "init", "--cluster", "default", "--dir"])
            .arg(dir)
            .output()
            .context("kube-authd certs init")?;
        anyhow::ensure!(
            certs.status.success(),
            "kube-authd certs init: {}",
            String::from_utf8_lossy(&certs.stderr)
        );
        let universe = Universe::new(args.hot_tokens, args.cold_tokens);
        let token_file = dir.join("tokens.csv");
        universe.write_token_file(&token_file)?;
        let hmac_key = dir.join("hmac.key");
        let key: [u8; 32] = rand::random();
        std::fs::write(&hmac_key, key)?;

        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["basic-auth-server", "--secret", &universe.secret]);
        let mut basic = Proc::spawn("basic-auth", cmd, dir)?;
        let line = basic
            .ready("bench-basic-auth ready")
            .map_err(anyhow::Error::msg)?;
        let basic_addr = field(&line, "http").context("basic-auth ready line")?;

        let (redis, redis_port) = if need_redis {
            let (p, port) = start_redis(dir)?;
            (Some(p), Some(port))
        } else {
            (None, None)
        };
        let venv = if need_python {
            Some(ensure_venv(&args.python)?)
        } else {
            None
        };
        let nproc = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Env {
            dir: dir.to_owned(),
            ca_pem: std::fs::read(dir.join("ca.crt"))?,
            identity_pem: identity(dir)?,
            bins,
            universe,
            token_file,
            hmac_key,
            basic_addr,
            redis_port,
            extra_authd_toml: match &args.authd_toml {
                Some(p) => format!(
                    "\n{}\n",
                    std::fs::read_to_string(p)
                        .with_context(|| format!("--authd-toml {}", p.display()))?
                ),
                None => String::new(),
            },
            venv,
            gunicorn_workers: args.gunicorn_workers.unwrap_or(2 * nproc + 1),
            _basic: basic,
            redis,
        })
    }

    /// Empties Redis so a scenario starts cold there too.
    fn flush_redis(&self) -> anyhow::Result<()> {
        use std::io::{Read, Write};
        if let Some(port) = self.redis_port {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.write_all(b"FLUSHALL\r\n")?;
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf)?;
            anyhow::ensure!(buf[..n].starts_with(b"+OK"), "redis FLUSHALL failed");
        }
        Ok(())
    }

    /// authd's configuration for a scenario. The Redis and Basic-auth parts are the
    /// configuration issues 3 and 4 define; on a branch without them authd refuses it.
    fn authd_toml(&self, cache: Cache, source: Source) -> String {
        // The one cluster the load speaks for (the edge's default route, the gRPC load's
        // `default`): authd refuses clusters it does not declare. The suite measures
        // verification, so the cold rows' wrong tokens go to the source every time: no
        // throttle (`throttle-attack` measures it).
        let mut s = format!(
            "listen = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n[clusters.default]\n\
             [throttle]\nenabled = false\n\
             [cache]\nhmac_key_file = {:?}\n",
            self.hmac_key.display().to_string()
        );
        if cache == Cache::Redis {
            let port = self.redis_port.unwrap_or(0);
            let _ = write!(s, "[cache.redis]\nurl = \"redis://127.0.0.1:{port}\"\n");
        }
        match source {
            Source::File => {
                let _ = write!(
                    s,
                    "[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = {:?}\n",
                    self.token_file.display().to_string()
                );
            }
            Source::Basic => {
                let _ = write!(
                    s,
                    "[[sources]]\nname = \"basic\"\ntype = \"basic_auth\"\nurl = \"http://{}/basic-auth/{{user}}\"\ngroups = [\"{GROUP}\"]\n",
                    self.basic_addr
                );
            }
        }
        s.push_str(&self.extra_authd_toml);
        s
    }
}

/// The servers of one scenario, the URL to load and the pids to measure.
struct Running {
    _procs: Vec<Proc>,
    target: Target,
    pids: Vec<i32>,
}

enum Start {
    Up(Running),
    Skipped(String),
}

fn start(env: &Env, sc: &Scenario, idx: usize) -> anyhow::Result<Start> {
    let dir = env.dir.join(format!("s{idx:02}"));
    std::fs::create_dir_all(&dir)?;
    let mut procs = Vec::new();
    let mut pids = Vec::new();
    let ca_pem = env.ca_pem.clone();
    let https = |url: String, ca_pem: Vec<u8>, identity_pem: Vec<u8>| Target::Https {
        url,
        ca_pem,
        identity_pem: Some(identity_pem),
        proto: sc.proto,
    };
    // authd refusing a configuration this branch does not support is a skip, anything
    // else that stops a server is a failure.
    let refused = |e: String| -> anyhow::Result<Start> {
        if sc.needs().is_empty() {
            anyhow::bail!("{}: {e}", sc.name)
        }
        Ok(Start::Skipped(format!(
            "skipped: needs {} on this branch ({})",
            sc.needs().join(" and "),
            e.lines()
                .last()
                .unwrap_or_default()
                .trim()
                .chars()
                .take(100)
                .collect::<String>()
        )))
    };
    if let Some(cache) = sc.server.cache() {
        env.flush_redis()?;
        let cfg = dir.join("authd.toml");
        std::fs::write(&cfg, env.authd_toml(cache, sc.source))?;
        let mut rust_env = vec![("RUST_LOG", "info")];
        rust_env.push(("RUST_BACKTRACE", "0"));
        if let (Some(p), Cache::Redis) = (&env.redis, cache) {
            pids.push(p.pid());
        }
        match sc.server {
            Server::Split(_) | Server::Authd(_) => {
                let mut cmd = Command::new(bin(&env.bins, "authd")?);
                cmd.args(["serve", "--config"])
                    .arg(&cfg)
                    .envs(rust_env.clone());
                let mut authd = Proc::spawn("authd", cmd, &dir)?;
                let line = match authd.ready("authd ready") {
                    Ok(l) => l,
                    Err(e) => return refused(e),
                };
                let grpc = field(&line, "grpc").context("authd ready line")?;
                pids.push(authd.pid());
                procs.push(authd);
                if matches!(sc.server, Server::Authd(_)) {
                    return Ok(Start::Up(Running {
                        _procs: procs,
                        target: Target::Grpc {
                            endpoint: format!("http://{grpc}"),
                        },
                        pids,
                    }));
                }
                let edge_cfg = dir.join("edge.toml");
                std::fs::write(
                    &edge_cfg,
                    format!(
                        "listen = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n[authd]\nendpoint = \"http://{grpc}\"\n",
                        env.dir.join("edge.crt").display().to_string(),
                        env.dir.join("edge.key").display().to_string(),
                        env.dir.join("cluster-default-ca.crt").display().to_string(),
                    ),
                )?;
                let mut cmd = Command::new(bin(&env.bins, "authd-edge")?);
                cmd.args(["serve", "--config"])
                    .arg(&edge_cfg)
                    .envs(rust_env);
                let mut edge = Proc::spawn("edge", cmd, &dir)?;
                let line = edge.ready("authd-edge ready").map_err(anyhow::Error::msg)?;
                let base = field(&line, "https").context("edge ready line")?;
                pids.push(edge.pid());
                procs.push(edge);
                Ok(Start::Up(Running {
                    _procs: procs,
                    target: https(
                        format!("{base}/authenticate"),
                        ca_pem,
                        env.identity_pem.clone(),
                    ),
                    pids,
                }))
            }
            _ => {
                let state = dir.join("state");
                let mut cmd = Command::new(bin(&env.bins, "kube-authd")?);
                cmd.args(["up", "--listen", "127.0.0.1:0", "--state-dir"])
                    .arg(&state)
                    .arg("--config")
                    .arg(&cfg)
                    .envs(rust_env);
                let mut up = Proc::spawn("kube-authd", cmd, &dir)?;
                let line = match up.ready("kube-authd ready") {
                    Ok(l) => l,
                    Err(e) => return refused(e),
                };
                let url = field(&line, "https").context("kube-authd ready line")?;
                pids.push(up.pid());
                procs.push(up);
                Ok(Start::Up(Running {
                    _procs: procs,
                    target: https(url, std::fs::read(state.join("ca.crt"))?, identity(&state)?),
                    pids,
                }))
            }
        }
    } else {
        match sc.server {
            Server::SeedGunicorn | Server::SeedFlask => {
                let venv = env.venv.as_ref().context("venv")?;
                let port = free_port()?;
                let baseline = repo_root().join("bench/baseline");
                let mut cmd = if sc.server == Server::SeedGunicorn {
                    let mut c = Command::new(venv.join("bin/gunicorn"));
                    c.args([
                        "--workers",
                        &env.gunicorn_workers.to_string(),
                        "--worker-class",
                        "sync",
                        "--bind",
                        &format!("127.0.0.1:{port}"),
                        "--certfile",
                    ])
                    .arg(env.dir.join("edge.crt"))
                    .arg("--keyfile")
                    .arg(env.dir.join("edge.key"))
                    .arg("--chdir")
                    .arg(&baseline)
                    .arg("app:app");
                    c
                } else {
                    let mut c = Command::new(venv.join("bin/python"));
                    c.arg(baseline.join("app.py"))
                        .env("PORT", port.to_string())
                        .env("TLS_CERT", env.dir.join("edge.crt"))
                        .env("TLS_KEY", env.dir.join("edge.key"));
                    c
                };
                cmd.current_dir(&baseline)
                    .env("BASIC_AUTH_URL", format!("http://{}", env.basic_addr))
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                let name = if sc.server == Server::SeedGunicorn {
                    "gunicorn"
                } else {
                    "flask"
                };
                let mut p = Proc::spawn(name, cmd, &dir)?;
                p.listening(&format!("127.0.0.1:{port}"))
                    .map_err(anyhow::Error::msg)?;
                pids.push(p.pid());
                procs.push(p);
                Ok(Start::Up(Running {
                    _procs: procs,
                    target: https(
                        format!("https://127.0.0.1:{port}/"),
                        ca_pem,
                        env.identity_pem.clone(),
                    ),
                    pids,
                }))
            }
            _ => {
                let me = std::env::current_exe()?;
                let mut authd_arg = None;
                if sc.server == Server::CeilingSplit {
                    let mut cmd = Command::new(&me);
                    cmd.arg("fixed-authd");
                    let mut p = Proc::spawn("fixed-authd", cmd, &dir)?;
                    let line = p
                        .ready("bench-fixed-authd ready")
                        .map_err(anyhow::Error::msg)?;
                    authd_arg = Some(format!(
                        "http://{}",
                        field(&line, "grpc").context("fixed-authd ready line")?
                    ));
                    pids.push(p.pid());
                    procs.push(p);
                }
                let mut cmd = Command::new(&me);
                cmd.args(["fixed-https", "--cert"])
                    .arg(env.dir.join("edge.crt"))
                    .arg("--key")
                    .arg(env.dir.join("edge.key"));
                if let Some(a) = authd_arg {
                    cmd.args(["--authd", &a]);
                }
                let mut p = Proc::spawn("fixed-https", cmd, &dir)?;
                let line = p.ready("bench-fixed ready").map_err(anyhow::Error::msg)?;
                let base = field(&line, "https").context("fixed ready line")?;
                pids.push(p.pid());
                procs.push(p);
                Ok(Start::Up(Running {
                    _procs: procs,
                    target: https(
                        format!("{base}/authenticate"),
                        ca_pem,
                        env.identity_pem.clone(),
                    ),
                    pids,
                }))
            }
        }
    }
}

struct Row {
    sc: Scenario,
    result: Result<Outcome, String>,
    cold_used: usize,
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|r| r.trim().to_owned()))
        .and_then(|kb| kb.trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb / 1024.0 / 1024.0)
        });
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{nproc} CPUs ({model}), {mem} memory; load average before the run: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn find<'a>(rows: &'a [Row], name: &str) -> Option<&'a Outcome> {
    rows.iter()
        .find(|r| r.sc.name == name)
        .and_then(|r| r.result.as_ref().ok())
        .filter(|o| o.ok > 0)
}

/// The baseline and ceiling a row is compared with.
fn references(sc: &Scenario) -> (Option<String>, Option<String>) {
    if !sc.server.ours() || sc.rate.is_some() {
        return (None, None);
    }
    let seed = match sc.work {
        Work::Warm => "seed-gunicorn/warm/h1",
        Work::Cold => "seed-gunicorn/cold-basic/h1",
        Work::Mix95 => "seed-gunicorn/mix95-basic/h1",
    };
    let ceiling = match (sc.server, sc.work) {
        (Server::Split(_), Work::Warm) => Some(format!("ceiling-split/warm/{}", sc.proto.label())),
        (Server::AllInOne(_), Work::Warm) => {
            Some(format!("ceiling-https/warm/{}", sc.proto.label()))
        }
        _ => None,
    };
    (Some(seed.into()), ceiling)
}

fn report(
    args: &Args,
    rows: &[Row],
    pairs: &[Pair],
    env: &Env,
    started: &str,
    machine: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# kube-authd benchmark report\n");
    let _ = writeln!(
        s,
        "`kube-authd-bench suite` started {started} (UTC); commit `{}`.\n",
        git_commit()
    );
    let _ = writeln!(s, "- Machine: {machine}.");
    let _ = writeln!(
        s,
        "- Load: closed loop, {} keep-alive HTTPS connections (HTTP/1.1, one review at a time each) or {} streams over one HTTP/2 connection (h2) or one gRPC channel (grpc); warm-up {:?}, then {:?} measured per scenario; `/openN` rows are open loop at N reviews/s (half the seed's closed-loop throughput unless `--open-rate` says otherwise) with latency from the intended send time. Client and servers share the machine.",
        args.connections, args.connections, args.warmup, args.duration
    );
    let _ = writeln!(
        s,
        "- Tokens: {} hot (warm set), {} cold (each sent once; the static token file lists all valid ones); every tenth token has a wrong password and must be denied. Bodies are byte-for-byte kube-apiserver's v1 TokenReview with the default audience.",
        args.hot_tokens, args.cold_tokens
    );
    let _ = writeln!(
        s,
        "- Seed: bench/baseline/app.py on gunicorn ({} sync workers, TLS via --certfile/--keyfile) and on Flask's own server (debug=True as in the post, ssl_context); both call the local Basic-auth server once per review. Server CPU counts the server processes and their children (and redis-server where used), not the Basic-auth server or the client.\n",
        env.gunicorn_workers
    );
    let _ = writeln!(
        s,
        "| scenario | server | reviews/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | CPU s / 1k reviews | × seed (gunicorn) | of ceiling | of ceiling (CPU) |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    );
    for r in rows {
        match &r.result {
            Err(why) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | – | | | | | | {} | | | | |",
                    r.sc.name,
                    r.sc.server.label(),
                    why.replace('|', "/")
                );
            }
            Ok(o) => {
                let (seed, ceiling) = references(&r.sc);
                let ratio = |name: Option<String>, pct: bool| {
                    name.and_then(|n| find(rows, &n))
                        .map(|b| o.throughput() / b.throughput())
                        .map_or(String::new(), |x| {
                            if pct {
                                format!("{:.0}%", x * 100.0)
                            } else {
                                format!("{x:.1}×")
                            }
                        })
                };
                // Throughput ratios move with whatever else the machine runs; the CPU a
                // review costs, compared with the ceiling's, does not.
                let cpu_ratio = ceiling
                    .as_deref()
                    .and_then(|n| find(rows, n))
                    .and_then(|c| Some(c.cpu_per_1k()? / o.cpu_per_1k()?))
                    .map_or(String::new(), |x| format!("{:.0}%", x * 100.0));
                let note = if o.exhausted {
                    format!(
                        " (cold set used up after {:.1} s)",
                        o.measured.as_secs_f64()
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "| {}{} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
                    r.sc.name,
                    note,
                    r.sc.server.label(),
                    o.throughput(),
                    o.ms(0.5),
                    o.ms(0.9),
                    o.ms(0.99),
                    o.ms(0.999),
                    o.max_ms(),
                    o.errors_text(),
                    o.cpu_per_1k().map_or("–".into(), |c| format!("{c:.3}")),
                    ratio(seed, false),
                    ratio(ceiling.clone(), true),
                    cpu_ratio,
                );
            }
        }
    }
    if !pairs.is_empty() {
        let _ = writeln!(s, "\n## Ceiling comparisons in interleaved rounds\n");
        let _ = writeln!(
            s,
            "The table above runs every ceiling once, minutes before the rows compared with it, and this machine's speed drifts over minutes (other tenants). So each ceiling comparison runs again here in {} rounds, ceiling and ours back to back, the order alternating (ABBA); the targets use the median of the rounds' ratios, and every round is shown.\n",
            args.rounds
        );
        let _ = writeln!(
            s,
            "| ours vs ceiling | round | order | ceiling reviews/s | ours reviews/s | of ceiling | CPU s / 1k: ceiling | ours | of ceiling (CPU) | errors |"
        );
        let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|---:|---:|---|");
        for p in pairs {
            let rps = |r: &Row| {
                r.result
                    .as_ref()
                    .map_or("–".to_owned(), |o| format!("{:.0}", o.throughput()))
            };
            let cpu = |r: &Row| {
                r.result
                    .as_ref()
                    .ok()
                    .and_then(Outcome::cpu_per_1k)
                    .map_or("–".to_owned(), |c| format!("{c:.3}"))
            };
            let errors = |r: &Row| match &r.result {
                Ok(o) => o.errors_text(),
                Err(why) => why.replace('|', "/"),
            };
            let (ratio, cpu_ratio) = match p.ratios() {
                Some((r, c)) => (
                    format!("{:.0}%", r * 100.0),
                    c.map_or("–".to_owned(), |c| format!("{:.0}%", c * 100.0)),
                ),
                None => ("–".to_owned(), "–".to_owned()),
            };
            let _ = writeln!(
                s,
                "| `{}` vs `{}` | {} | {} | {} | {} | {ratio} | {} | {} | {cpu_ratio} | {} / {} |",
                p.ours,
                p.ceiling,
                p.round,
                if p.ours_first {
                    "ours, then ceiling"
                } else {
                    "ceiling, then ours"
                },
                rps(&p.ceiling_row),
                rps(&p.ours_row),
                cpu(&p.ceiling_row),
                cpu(&p.ours_row),
                errors(&p.ceiling_row),
                errors(&p.ours_row),
            );
        }
        for ours in PAIRS.map(|(_, o)| o) {
            if let Some((median, each)) = paired(pairs, ours) {
                let _ = writeln!(
                    s,
                    "\n`{ours}`: median {:.0}% of its ceiling over {} rounds ({}).",
                    median * 100.0,
                    each.len(),
                    each.iter()
                        .map(|r| format!("{:.0}%", r * 100.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    let _ = writeln!(s, "\n## Targets (issue 6)\n");
    let seed = find(rows, "seed-gunicorn/warm/h1");
    let mut target =
        |what: &str, ours: &str, check: &dyn Fn(&Outcome, &Outcome) -> (String, bool)| {
            let line = match (find(rows, ours), seed) {
                (Some(o), Some(b)) => {
                    let (text, pass) = check(o, b);
                    format!("{} — {text}", if pass { "**met**" } else { "**not met**" })
                }
                _ => "n/a (scenario or seed not run)".into(),
            };
            let _ = writeln!(s, "- {what} (`{ours}`): {line}");
        };
    let ceiling_split = find(rows, "ceiling-split/warm/h1").map(Outcome::throughput);
    let ceiling_https = find(rows, "ceiling-https/warm/h1").map(Outcome::throughput);
    // The same ratio by CPU per review, which a busy machine disturbs far less.
    let cpu_of = |name: &str, o: &Outcome| {
        find(rows, name)
            .and_then(|c| Some(c.cpu_per_1k()? / o.cpu_per_1k()?))
            .map_or("–".to_owned(), |x| format!("{:.0}%", x * 100.0))
    };
    // Split mode, with or without Redis: ≥ 25× the seed, a tenth of its p99, 85% of the ceiling.
    // Of the ceiling: the median of the interleaved rounds when they ran, else the main
    // table's single comparison.
    let of_ceiling = |ours: &str, single: f64| match paired(pairs, ours) {
        Some((median, each)) => (
            median,
            format!(
                "median {:.0}% of ceiling over {} interleaved rounds (main table: {:.0}%)",
                median * 100.0,
                each.len(),
                single * 100.0
            ),
        ),
        None => (single, format!("{:.0}% of ceiling", single * 100.0)),
    };
    let split = |ours: &'static str| {
        move |o: &Outcome, b: &Outcome| {
            let x = o.throughput() / b.throughput();
            let (c, text) = of_ceiling(ours, ceiling_split.map_or(0.0, |c| o.throughput() / c));
            (
                format!(
                    "{x:.1}× seed, p99 {:.2} ms vs seed {:.2} ms, {text} ({} by CPU per review in the main table)",
                    o.ms(0.99),
                    b.ms(0.99),
                    cpu_of("ceiling-split/warm/h1", o)
                ),
                x >= 25.0 && o.ms(0.99) * 10.0 <= b.ms(0.99) && c >= 0.85,
            )
        }
    };
    target(
        "warm, split, Redis: ≥ 25× seed, p99 ≤ seed p99 / 10, ≥ 85% of the split ceiling",
        "split-redis/warm/h1",
        &split("split-redis/warm/h1"),
    );
    target(
        "warm, split, in-process cache only (same targets, for reference)",
        "split-local/warm/h1",
        &split("split-local/warm/h1"),
    );
    target(
        "warm, all-in-one: ≥ 50× seed, ≥ 60% of the HTTPS ceiling",
        "aio-local/warm/h1",
        &|o, b| {
            let x = o.throughput() / b.throughput();
            let (c, text) = of_ceiling(
                "aio-local/warm/h1",
                ceiling_https.map_or(0.0, |c| o.throughput() / c),
            );
            (
                format!(
                    "{x:.1}× seed, {text} ({} by CPU per review in the main table)",
                    cpu_of("ceiling-https/warm/h1", o)
                ),
                x >= 50.0 && c >= 0.60,
            )
        },
    );
    let cold_seed = find(rows, "seed-gunicorn/cold-basic/h1");
    for ours in [
        "split-local/cold-basic/h1",
        "split-redis/cold-basic/h1",
        "aio-local/cold-basic/h1",
        "aio-redis/cold-basic/h1",
    ] {
        let line = match (find(rows, ours), cold_seed) {
            (Some(o), Some(b)) => {
                let x = o.throughput() / b.throughput();
                format!(
                    "{} — {x:.1}× seed",
                    if x >= 10.0 { "**met**" } else { "**not met**" }
                )
            }
            _ => "n/a (scenario or seed not run)".into(),
        };
        let _ = writeln!(
            s,
            "- cold against Basic-auth: ≥ 10× seed (`{ours}`): {line}"
        );
    }
    let errs: Vec<&Row> = rows
        .iter()
        .filter(|r| r.result.as_ref().is_ok_and(|o| o.error_count() > 0))
        .collect();
    if !errs.is_empty() {
        let _ = writeln!(s, "\n## Errors\n");
        for r in errs {
            if let Ok(o) = &r.result {
                let _ = writeln!(s, "- `{}`: {}", r.sc.name, o.errors_text());
            }
        }
    }
    let _ = writeln!(
        s,
        "\nCold rows used {} cold tokens at most; connections opened are in the suite's stderr.",
        rows.iter().map(|r| r.cold_used).max().unwrap_or(0)
    );
    s
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Starts the servers of one scenario, loads them and stops them.
async fn run_one(
    args: &Args,
    env: &Env,
    sc: Scenario,
    idx: usize,
    hot: &[crate::tokens::Item],
    cold: &[crate::tokens::Item],
) -> anyhow::Result<Row> {
    eprint!("bench: {:<40} ", sc.name);
    let running = match start(env, &sc, idx)? {
        Start::Skipped(why) => {
            eprintln!("{why}");
            return Ok(Row {
                sc,
                result: Err(why),
                cold_used: 0,
            });
        }
        Start::Up(r) => r,
    };
    // The fixed-answer ceilings say "authenticated" to every token: no verdict check.
    let strip = |items: &[crate::tokens::Item]| -> Vec<crate::tokens::Item> {
        items
            .iter()
            .map(|it| crate::tokens::Item {
                token: it.token.clone(),
                expect: None,
            })
            .collect()
    };
    let fixed = matches!(sc.server, Server::CeilingHttps | Server::CeilingSplit);
    let (h, c) = if fixed {
        (strip(hot), strip(cold))
    } else {
        (hot.to_vec(), cold.to_vec())
    };
    let workload = Arc::new(Workload::new(h, c, sc.work.hot_permille()));
    let spec = load::Spec {
        target: running.target.clone(),
        concurrency: args.connections,
        h2_connections: 1,
        rate: sc.rate,
        warmup: args.warmup,
        duration: args.duration,
        timeout: Duration::from_secs(10),
        pids: running.pids.clone(),
    };
    let outcome = load::run(&spec, workload.clone()).await?;
    eprintln!(
        "{:>8.0}/s p99 {:>7.2} ms errors {} connects {}{}",
        outcome.throughput(),
        outcome.ms(0.99),
        outcome.errors_text(),
        outcome.connects,
        if outcome.exhausted {
            " (cold set used up)"
        } else {
            ""
        }
    );
    drop(running);
    Ok(Row {
        sc,
        result: Ok(outcome),
        cold_used: workload.cold_used(),
    })
}

/// The ceiling comparisons run again in interleaved rounds: (ceiling, ours).
const PAIRS: [(&str, &str); 2] = [
    ("ceiling-split/warm/h1", "split-redis/warm/h1"),
    ("ceiling-https/warm/h1", "aio-local/warm/h1"),
];

/// One round of a ceiling comparison.
struct Pair {
    ceiling: String,
    ours: String,
    round: usize,
    ours_first: bool,
    ceiling_row: Row,
    ours_row: Row,
}

impl Pair {
    /// Ours over the ceiling: (throughput ratio, CPU-per-review ratio).
    fn ratios(&self) -> Option<(f64, Option<f64>)> {
        let (Ok(c), Ok(o)) = (&self.ceiling_row.result, &self.ours_row.result) else {
            return None;
        };
        if c.ok == 0 || o.ok == 0 {
            return None;
        }
        let cpu = c.cpu_per_1k().zip(o.cpu_per_1k()).map(|(c, o)| c / o);
        Some((o.throughput() / c.throughput(), cpu))
    }
}

/// The median of the rounds' throughput ratios for `ours`, with every round's ratio.
fn paired(pairs: &[Pair], ours: &str) -> Option<(f64, Vec<f64>)> {
    let mut each: Vec<f64> = pairs
        .iter()
        .filter(|p| p.ours == ours)
        .filter_map(|p| p.ratios().map(|r| r.0))
        .collect();
    if each.is_empty() {
        return None;
    }
    let shown = each.clone();
    each.sort_by(f64::total_cmp);
    let n = each.len();
    let median = if n % 2 == 1 {
        each[n / 2]
    } else {
        (each[n / 2 - 1] + each[n / 2]) / 2.0
    };
    Some((median, shown))
}

/// Runs the suite; Ok(false) when any scenario that ran had errors.
pub async fn run(mut args: Args) -> anyhow::Result<bool> {
    if args.smoke {
        args.duration = Duration::from_millis(1000);
        args.warmup = Duration::from_millis(300);
        args.connections = args.connections.min(4);
        args.hot_tokens = args.hot_tokens.min(20);
        args.cold_tokens = args.cold_tokens.min(3_000);
        args.open_rate = Some(args.open_rate.unwrap_or(50.0).min(50.0));
        args.rounds = args.rounds.min(1);
    }
    let machine = machine();
    let started = utc_now();
    let tmp = std::env::temp_dir().join(format!("kube-authd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let list: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| {
            args.only
                .as_ref()
                .is_none_or(|o| s.name.contains(o.as_str()))
        })
        .collect();
    let need_python = list
        .iter()
        .any(|s| matches!(s.server, Server::SeedGunicorn | Server::SeedFlask));
    let need_redis = list.iter().any(|s| s.server.cache() == Some(Cache::Redis));
    let env = Env::setup(&args, &tmp, need_python, need_redis)?;
    let hot = env.universe.hot_items();
    let cold = env.universe.cold_items();
    let mut rows = Vec::new();
    for (i, mut sc) in list.into_iter().enumerate() {
        if sc.rate.is_some() {
            let rate = args.open_rate.unwrap_or_else(|| {
                find(&rows, "seed-gunicorn/warm/h1")
                    .map_or(200.0, |o| (o.throughput() / 2.0).round().max(1.0))
            });
            sc.set_rate(rate);
        }
        let row = run_one(&args, &env, sc, i, &hot, &cold).await?;
        rows.push(row);
    }
    let mut pairs = Vec::new();
    let wanted = |name: &str| args.only.as_ref().is_none_or(|o| name.contains(o.as_str()));
    let all = scenarios();
    let by_name = |name: &str| all.iter().find(|s| s.name == name).cloned();
    for (ceiling, ours) in PAIRS {
        let (Some(c), Some(o)) = (by_name(ceiling), by_name(ours)) else {
            continue;
        };
        if !(wanted(ceiling) && wanted(ours)) {
            continue;
        }
        for round in 0..args.rounds {
            // ABBA: drift over the run favours neither side.
            let ours_first = round % 2 == 1;
            let next = |sc: &Scenario| {
                let mut sc = sc.clone();
                sc.name = format!("{} (round {})", sc.name, round + 1);
                sc
            };
            let order = if ours_first {
                [next(&o), next(&c)]
            } else {
                [next(&c), next(&o)]
            };
            let mut got = Vec::new();
            for sc in order {
                let idx = 100 + pairs.len() * 2 + got.len();
                got.push(run_one(&args, &env, sc, idx, &hot, &cold).await?);
            }
            let (c_row, o_row) = if ours_first {
                (got.remove(1), got.remove(0))
            } else {
                (got.remove(0), got.remove(0))
            };
            pairs.push(Pair {
                ceiling: ceiling.into(),
                ours: ours.into(),
                round: round + 1,
                ours_first,
                ceiling_row: c_row,
                ours_row: o_row,
            });
        }
    }
    let text = report(&args, &rows, &pairs, &env, &started, &machine);
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if args.smoke {
            "target/bench-smoke.md"
        } else {
            "bench/RESULTS.md"
        })
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: report written to {}", out.display());
    drop(env);
    if args.keep {
        eprintln!("bench: kept {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let clean = rows
        .iter()
        .chain(pairs.iter().flat_map(|p| [&p.ceiling_row, &p.ours_row]))
        .all(|r| match &r.result {
            Ok(o) => o.error_count() == 0 && o.ok > 0,
            Err(_) => true,
        });
    Ok(clean)
}
