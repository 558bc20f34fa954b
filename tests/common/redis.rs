//! Private redis-server processes for tests: a free loopback port, a temp dir, no
//! persistence, killed on drop; plus a three-master Redis Cluster and a key/value scan.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// ACL credentials of a test server (`default` user off, this one allowed everything).
#[derive(Clone)]
pub struct Acl {
    pub user: String,
    pub password: String,
}

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    pub acl: Option<Acl>,
    /// With TLS only (`rediss://`): the folder holding `ca.crt`, `authd.crt`, `authd.key`
    /// from `kube-authd certs init`.
    tls: Option<PathBuf>,
    child: Option<Child>,
}

fn need(cmd: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{cmd} not found: install the Debian package {package} (apt-get install {package})"
    );
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

impl RedisServer {
    /// Starts redis-server on a free port in `dir/redis-<port>`; `extra` are more flags.
    pub fn start(dir: &Path, acl: Option<Acl>, extra: &[&str]) -> RedisServer {
        Self::start_with(dir, acl, None, extra)
    }

    /// TLS only, with the server certificate and CA from `certs` (`kube-authd certs init`).
    pub fn start_tls(dir: &Path, acl: Option<Acl>, certs: &Path) -> RedisServer {
        Self::start_with(dir, acl, Some(certs.to_owned()), &[])
    }

    fn start_with(
        dir: &Path,
        acl: Option<Acl>,
        tls: Option<PathBuf>,
        extra: &[&str],
    ) -> RedisServer {
        need("redis-server", "redis-server");
        need("redis-cli", "redis-tools");
        let port = free_port();
        let dir = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = RedisServer {
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            acl,
            tls,
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let (plain_port, tls_args) = match &self.tls {
            None => (port.as_str(), vec![]),
            Some(certs) => {
                let f = |n: &str| certs.join(n).to_str().unwrap().to_owned();
                let tls = vec![
                    "--tls-port".to_owned(),
                    port.clone(),
                    "--tls-cert-file".into(),
                    f("authd.crt"),
                    "--tls-key-file".into(),
                    f("authd.key"),
                    "--tls-ca-cert-file".into(),
                    f("ca.crt"),
                    "--tls-auth-clients".into(),
                    "no".into(),
                ];
                ("0", tls)
            }
        };
        let mut args: Vec<String> = [
            "--port",
            plain_port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(acl) = &self.acl {
            args.extend(
                [
                    "--user",
                    "default",
                    "off",
                    "--user",
                    &acl.user,
                    "on",
                    &format!(">{}", acl.password),
                    "~*",
                    "&*",
                    "+@all",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
        }
        args.extend(tls_args);
        args.extend(self.extra.iter().cloned());
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 30s; log:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>` (credentials go in authd's config, not the URL).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Runs redis-cli against this server; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(acl) = &self.acl {
            cmd.args([
                "--user",
                &acl.user,
                "--pass",
                &acl.password,
                "--no-auth-warning",
            ]);
        }
        if let Some(certs) = &self.tls {
            cmd.args(["--tls", "--cacert", certs.join("ca.crt").to_str().unwrap()]);
        }
        let out = cmd.args(args).output().expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A synchronous client for inspecting the data.
    pub fn connection(&self) -> redis::Connection {
        let mut info = redis::IntoConnectionInfo::into_connection_info(self.url()).unwrap();
        if let Some(acl) = &self.acl {
            let r = info
                .redis_settings()
                .clone()
                .set_username(&acl.user)
                .set_password(&acl.password);
            info = info.set_redis_settings(r);
        }
        let client = match &self.tls {
            None => redis::Client::open(info),
            Some(certs) => {
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(std::fs::read(certs.join("ca.crt")).unwrap()),
                    },
                )
            }
        };
        client
            .unwrap()
            .get_connection()
            .expect("connect to test redis")
    }

    /// Every key and its value(s) as text, via SCAN and a read per key type.
    pub fn dump(&self) -> Vec<(String, String)> {
        let mut con = self.connection();
        let keys: Vec<String> = redis::Commands::scan::<String>(&mut con)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        keys.into_iter()
            .map(|k| {
                let ty: String = redis::cmd("TYPE").arg(&k).query(&mut con).unwrap();
                let value = match ty.as_str() {
                    "string" => {
                        let v: Vec<u8> = redis::cmd("GET").arg(&k).query(&mut con).unwrap();
                        String::from_utf8_lossy(&v).into_owned()
                    }
                    "set" => {
                        let v: Vec<String> =
                            redis::cmd("SMEMBERS").arg(&k).query(&mut con).unwrap();
                        v.join(" ")
                    }
                    "zset" => {
                        let v: Vec<String> = redis::cmd("ZRANGE")
                            .arg(&k)
                            .arg(0)
                            .arg(-1)
                            .arg("WITHSCORES")
                            .query(&mut con)
                            .unwrap();
                        v.join(" ")
                    }
                    "none" => String::new(),
                    other => panic!("unexpected key type {other} for {k}"),
                };
                (k, value)
            })
            .collect()
    }

    /// The key's time to live in ms (-1 none, -2 missing).
    pub fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query(&mut self.connection())
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Asserts that no key or value holds any of `secrets`.
pub fn assert_no_secrets(dump: &[(String, String)], secrets: &[&str]) {
    assert!(!dump.is_empty(), "expected cached data to scan");
    for (k, v) in dump {
        for s in secrets {
            assert!(!k.contains(s), "a Redis key contains a secret: {k}");
            assert!(
                !v.contains(s),
                "the value of Redis key {k} contains a secret"
            );
        }
    }
}

/// A three-master Redis Cluster on free ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(dir: &Path) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                let conf = dir.join(format!("nodes-{i}.conf"));
                RedisServer::start(
                    dir,
                    None,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        conf.to_str().unwrap(),
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every node reports `cluster_state:ok` (at most 30 s).
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &self.nodes {
            while !n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    Instant::now() < deadline,
                    "cluster not ok within 30s: {}",
                    n.cli(&["CLUSTER", "INFO"])
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// TOML array of the nodes' URLs for `cluster_urls`.
    pub fn urls_toml(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// Every key/value on every master.
    pub fn dump(&self) -> Vec<(String, String)> {
        self.nodes.iter().flat_map(|n| n.dump()).collect()
    }
}
