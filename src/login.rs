//! The people's side of login sessions: `kube-authd login` as a client-go exec credential
//! plugin, `logout`, `whoami`, and the credential-free kubeconfig that runs it.
//!
//! kubectl (client-go) runs `kube-authd login --login URL` with `KUBERNETES_EXEC_INFO`
//! (`provideClusterInfo: true`): the cluster's name comes from the cluster's exec extension
//! (`client.authentication.k8s.io/exec: {cluster: NAME}`), so one user entry serves every
//! cluster. The plugin answers from its cache when it can, else exchanges the cached
//! session for a token (`POST /token`), else logs in (`POST /login`) — with the password
//! from `KUBE_AUTHD_PASSWORD` or `--password-stdin`, or by prompting on the terminal, only
//! when client-go says the session is interactive; otherwise it fails at once with the
//! command to run.
//!
//! The cache (`$KUBECACHEDIR/kube-authd`, else `~/.kube/cache/kube-authd`; folder 0700,
//! files 0600) holds the session and the tokens, never the password. One lock file per
//! login URL (flock): twenty kubectl calls at once make one login, the others wait for it
//! and read what it cached.

use std::io::{BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The exec extension key client-go hands to the plugin as `spec.cluster.config`.
pub const EXEC_EXTENSION: &str = "client.authentication.k8s.io/exec";
/// How long before a token's real end kubectl is told it expires.
const EARLY: Duration = Duration::from_secs(60);
/// Longest wait for the login endpoint.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the login endpoint is and how to trust it.
#[derive(clap::Args, Clone)]
pub struct Endpoint {
    /// The edge's base URL serving the login routes, e.g. https://authn.example.com:8443
    #[arg(long = "login", env = "KUBE_AUTHD_LOGIN")]
    pub login: String,
    /// PEM CA that signed the login endpoint's certificate (default: the system roots).
    #[arg(long = "login-ca", env = "KUBE_AUTHD_LOGIN_CA")]
    pub login_ca: Option<PathBuf>,
}

/// `kube-authd login`.
#[derive(clap::Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// The cluster to get a token for; default: from KUBERNETES_EXEC_INFO (the cluster's
    /// exec extension). Without either, only logs in.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Directory user name (else KUBE_AUTHD_USERNAME, else asked on the terminal).
    #[arg(long, env = "KUBE_AUTHD_USERNAME")]
    pub username: Option<String>,
    /// Read the password from the first line of stdin (never a flag: it would show in ps).
    #[arg(long)]
    pub password_stdin: bool,
}

/// What client-go tells the plugin (`KUBERNETES_EXEC_INFO`).
struct ExecInfo {
    api_version: String,
    interactive: bool,
    cluster: Option<String>,
}

fn exec_info() -> anyhow::Result<Option<ExecInfo>> {
    let Ok(text) = std::env::var("KUBERNETES_EXEC_INFO") else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&text).context("KUBERNETES_EXEC_INFO is not JSON")?;
    let api_version = v["apiVersion"].as_str().unwrap_or_default().to_owned();
    if !matches!(
        api_version.as_str(),
        "client.authentication.k8s.io/v1" | "client.authentication.k8s.io/v1beta1"
    ) {
        anyhow::bail!("KUBERNETES_EXEC_INFO: unsupported apiVersion {api_version:?}");
    }
    let cluster = v["spec"]["cluster"]["config"]["cluster"]
        .as_str()
        .map(str::to_owned);
    Ok(Some(ExecInfo {
        api_version,
        interactive: v["spec"]["interactive"].as_bool().unwrap_or(false),
        cluster,
    }))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The cache folder, made 0700 (and tightened if it exists looser).
fn cache_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("KUBECACHEDIR") {
        Some(d) => PathBuf::from(d).join("kube-authd"),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set (or set KUBECACHEDIR)")?;
            PathBuf::from(home).join(".kube/cache/kube-authd")
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create the cache folder {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// The cache of one login URL: its files share a key (a hash of the URL).
struct Cache {
    dir: PathBuf,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct CachedSession {
    session: String,
    username: String,
    expires_ms: u64,
    idle_expires_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct CachedToken {
    token: String,
    issued_ms: u64,
    expires_ms: u64,
}

impl Cache {
    fn open(login: &str) -> anyhow::Result<Cache> {
        use sha2::Digest;
        let key = hex::encode(&sha2::Sha256::digest(login.as_bytes())[..12]);
        Ok(Cache {
            dir: cache_dir()?,
            key,
        })
    }

    fn session_path(&self) -> PathBuf {
        self.dir.join(format!("{}.session.json", self.key))
    }

    fn token_path(&self, cluster: &str) -> PathBuf {
        use sha2::Digest;
        let c = hex::encode(&sha2::Sha256::digest(cluster.as_bytes())[..8]);
        self.dir.join(format!("{}.token-{c}.json", self.key))
    }

    /// The lock of this login URL's cache, held until dropped.
    fn lock(&self) -> anyhow::Result<std::fs::File> {
        let path = self.dir.join(format!("{}.lock", self.key));
        let file = private_file(&path, false)?;
        // SAFETY: flock(2) on a descriptor we own; released when the file closes.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot lock {}", path.display()));
        }
        Ok(file)
    }

    fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Writes a file 0600 through a temporary file and a rename (never half-written).
    fn write<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut f = private_file(&tmp, true)?;
        f.write_all(&serde_json::to_vec(value)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    fn session(&self) -> Option<CachedSession> {
        let s: CachedSession = Self::read(&self.session_path())?;
        let now = now_ms();
        (now < s.expires_ms && now < s.idle_expires_ms).then_some(s)
    }

    /// Removes the session and every token of this login URL.
    fn clear(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(&self.key) && name.ends_with(".json") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Opens (creating 0600) a file; `truncate` for writing anew.
fn private_file(path: &Path, truncate: bool) -> anyhow::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// The login endpoint's client.
struct Client {
    http: reqwest::Client,
    base: String,
}

/// How a login-route call failed.
enum CallError {
    /// 401: the credential is not (or no longer) good.
    Unauthorized(String),
    Other(anyhow::Error),
}

impl Client {
    fn new(endpoint: &Endpoint) -> anyhow::Result<Client> {
        let base = endpoint.login.trim_end_matches('/').to_owned();
        if !base.starts_with("https://") {
            anyhow::bail!("--login {base:?}: must be an https:// URL");
        }
        // No redirects (the password would follow); HTTPS_PROXY is honoured (TLS to the
        // login endpoint goes through it end to end).
        let mut b = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &endpoint.login_ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("--login-ca {}: cannot read", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--login-ca {}: not a PEM CA", ca.display()))?;
            b = b.tls_certs_only(certs);
        }
        Ok(Client {
            http: b.build().context("HTTPS client")?,
            base,
        })
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, CallError> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| CallError::Other(anyhow::anyhow!("POST {url}: {e}")))?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        let message = value["error"].as_str().unwrap_or("").to_owned();
        match status.as_u16() {
            200 => Ok(value),
            401 => Err(CallError::Unauthorized(message)),
            code => Err(CallError::Other(anyhow::anyhow!(
                "POST {url}: {code}: {message}"
            ))),
        }
    }
}

/// Where the password comes from, in order.
fn password(args: &LoginArgs, interactive: bool) -> anyhow::Result<Option<String>> {
    if let Ok(p) = std::env::var("KUBE_AUTHD_PASSWORD") {
        return Ok(Some(p));
    }
    if args.password_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()));
    }
    if interactive {
        return prompt_password().map(Some);
    }
    Ok(None)
}

/// Asks on the terminal (stderr), echo off while the password is typed (turned off before
/// the prompt shows, so nothing typed after it is echoed).
fn prompt_password() -> anyhow::Result<String> {
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios calls on stdin with a zeroed struct filled by tcgetattr.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let is_tty = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if is_tty {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    eprint!("Password: ");
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if is_tty {
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn prompt_username(login: &str) -> anyhow::Result<String> {
    eprint!("Username for {login}: ");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

fn run_hint(endpoint: &Endpoint) -> String {
    let ca = endpoint
        .login_ca
        .as_ref()
        .map(|c| format!(" --login-ca {}", c.display()))
        .unwrap_or_default();
    format!("kube-authd login --login {}{ca}", endpoint.login)
}

/// Opens a session, from the environment, stdin or the terminal.
async fn log_in(
    client: &Client,
    cache: &Cache,
    args: &LoginArgs,
    interactive: bool,
) -> anyhow::Result<CachedSession> {
    let username = match &args.username {
        Some(u) => u.clone(),
        None if interactive => prompt_username(&args.endpoint.login)?,
        None => anyhow::bail!(
            "no kube-authd session for {} and no terminal to ask on; log in first: {} \
             (or set KUBE_AUTHD_USERNAME and KUBE_AUTHD_PASSWORD)",
            args.endpoint.login,
            run_hint(&args.endpoint)
        ),
    };
    let Some(password) = password(args, interactive)? else {
        anyhow::bail!(
            "no kube-authd session for {} and no terminal to ask on; log in first: {} \
             (or set KUBE_AUTHD_PASSWORD)",
            args.endpoint.login,
            run_hint(&args.endpoint)
        );
    };
    let v = match client
        .post(
            "/login",
            json!({"username": username, "password": password}),
        )
        .await
    {
        Ok(v) => v,
        Err(CallError::Unauthorized(m)) => anyhow::bail!("login refused: {m}"),
        Err(CallError::Other(e)) => return Err(e),
    };
    let s = CachedSession {
        session: v["session"].as_str().unwrap_or_default().to_owned(),
        username: v["username"].as_str().unwrap_or_default().to_owned(),
        expires_ms: v["expiresUnixMs"].as_u64().unwrap_or(0),
        idle_expires_ms: v["idleExpiresUnixMs"].as_u64().unwrap_or(0),
    };
    Cache::write(&cache.session_path(), &s)?;
    Ok(s)
}

/// A token still good for long enough: more than the early margin (a minute, or half its
/// lifetime for short-lived tokens) before its end.
fn fresh(t: &CachedToken) -> bool {
    let margin = (EARLY.as_millis() as u64).min(t.expires_ms.saturating_sub(t.issued_ms) / 2);
    now_ms() + margin < t.expires_ms
}

/// `kube-authd login`: the exec credential plugin (or, without a cluster, a login).
pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let info = exec_info()?;
    let cluster = args
        .cluster
        .clone()
        .or_else(|| info.as_ref().and_then(|i| i.cluster.clone()));
    // Outside kubectl a person runs it: the terminal may be asked when there is one.
    let interactive = match &info {
        Some(i) => i.interactive,
        None => std::io::IsTerminal::is_terminal(&std::io::stdin()),
    };
    if info.is_some() && cluster.is_none() {
        anyhow::bail!(
            "the cluster has no {EXEC_EXTENSION} extension naming it (with provideClusterInfo: \
             true); regenerate the kubeconfig with `kube-authd kubeconfig`"
        );
    }
    let client = Client::new(&args.endpoint)?;
    let cache = Cache::open(&args.endpoint.login)?;
    let _lock = cache.lock()?;
    let Some(cluster) = cluster else {
        let s = log_in(&client, &cache, &args, interactive).await?;
        eprintln!("logged in as {}", s.username);
        return Ok(());
    };
    let token_path = cache.token_path(&cluster);
    let token = match Cache::read::<CachedToken>(&token_path).filter(fresh) {
        Some(t) => t,
        None => {
            let mut session = match cache.session() {
                Some(s) => s,
                None => log_in(&client, &cache, &args, interactive).await?,
            };
            let mut answer = client
                .post(
                    "/token",
                    json!({"session": session.session, "cluster": cluster}),
                )
                .await;
            if let Err(CallError::Unauthorized(_)) = answer {
                // Ended elsewhere (logout, an admin, the directory): log in again.
                cache.clear();
                session = log_in(&client, &cache, &args, interactive).await?;
                answer = client
                    .post(
                        "/token",
                        json!({"session": session.session, "cluster": cluster}),
                    )
                    .await;
            }
            let v = match answer {
                Ok(v) => v,
                Err(CallError::Unauthorized(m)) => anyhow::bail!("token refused: {m}"),
                Err(CallError::Other(e)) => return Err(e),
            };
            session.idle_expires_ms = v["sessionIdleExpiresUnixMs"]
                .as_u64()
                .unwrap_or(session.idle_expires_ms);
            Cache::write(&cache.session_path(), &session)?;
            let t = CachedToken {
                token: v["token"].as_str().unwrap_or_default().to_owned(),
                issued_ms: now_ms(),
                expires_ms: v["expiresUnixMs"].as_u64().unwrap_or(0),
            };
            Cache::write(&token_path, &t)?;
            t
        }
    };
    let api_version = info
        .map(|i| i.api_version)
        .unwrap_or_else(|| "client.authentication.k8s.io/v1".into());
    let expires = UNIX_EPOCH + Duration::from_millis(token.expires_ms) - EARLY;
    let credential = json!({
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "status": {
            "token": token.token,
            "expirationTimestamp": humantime::format_rfc3339_seconds(expires).to_string(),
        },
    });
    println!("{credential}");
    Ok(())
}

/// `kube-authd logout`: ends the session at authd (its tokens are refused at once) and
/// clears the cache.
pub async fn logout(endpoint: Endpoint) -> anyhow::Result<()> {
    let cache = Cache::open(&endpoint.login)?;
    let _lock = cache.lock()?;
    let Some(s) = Cache::read::<CachedSession>(&cache.session_path()) else {
        cache.clear();
        eprintln!("not logged in at {}", endpoint.login);
        return Ok(());
    };
    let client = Client::new(&endpoint)?;
    let ended = client.post("/logout", json!({"session": s.session})).await;
    cache.clear();
    match ended {
        Ok(_) | Err(CallError::Unauthorized(_)) => {
            eprintln!("logged out");
            Ok(())
        }
        Err(CallError::Other(e)) => Err(e.context(
            "the local session is removed, but authd did not confirm the logout: its tokens \
             stay valid until they expire",
        )),
    }
}

/// `kube-authd whoami`: the cached session's user and when it ends.
pub fn whoami(endpoint: Endpoint) -> anyhow::Result<()> {
    let cache = Cache::open(&endpoint.login)?;
    match cache.session() {
        Some(s) => {
            let at = |ms| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms));
            println!("{}", s.username);
            eprintln!(
                "session ends at {} (or at {} if unused)",
                at(s.expires_ms),
                at(s.idle_expires_ms)
            );
            Ok(())
        }
        None => anyhow::bail!(
            "not logged in at {}: {}",
            endpoint.login,
            run_hint(&endpoint)
        ),
    }
}

/// `kube-authd kubeconfig`: a kubeconfig for one cluster with no secret in it: the user
/// entry runs `kube-authd login`, shared by every cluster of the same login endpoint.
pub fn kubeconfig(
    server: &str,
    cluster: &str,
    login: &str,
    ca: Option<&Path>,
) -> anyhow::Result<String> {
    use base64::Engine;
    if !server.starts_with("https://") {
        anyhow::bail!("--server {server:?}: must be an https:// URL");
    }
    if !login.starts_with("https://") {
        anyhow::bail!("--login {login:?}: must be an https:// URL");
    }
    if cluster.is_empty()
        || !cluster
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        anyhow::bail!("--cluster {cluster:?}: letters, digits, '-', '_' and '.' only");
    }
    let mut ca_line = String::new();
    let mut login_ca = String::new();
    if let Some(ca) = ca {
        let pem =
            std::fs::read(ca).with_context(|| format!("--ca {}: cannot read", ca.display()))?;
        crate::pki::check_certificates(&pem)
            .with_context(|| format!("--ca {}: must be a PEM CA certificate", ca.display()))?;
        ca_line = format!(
            "    certificate-authority-data: {}\n",
            base64::engine::general_purpose::STANDARD.encode(&pem)
        );
        let abs = std::fs::canonicalize(ca)?;
        login_ca = format!(
            "\n      - --login-ca\n      - {}",
            yaml_str(&abs.to_string_lossy())
        );
    }
    let user = "kube-authd";
    Ok(format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
{ca_line}    extensions:
    - name: {EXEC_EXTENSION}
      extension:
        cluster: {cluster}
contexts:
- name: {cluster}
  context:
    cluster: {cluster}
    user: {user}
current-context: {cluster}
users:
- name: {user}
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: kube-authd
      args:
      - login
      - --login
      - {login}{login_ca}
      provideClusterInfo: true
      interactiveMode: IfAvailable
      installHint: |
        kube-authd signs you in to this cluster with your directory password.
        Install the kube-authd binary on your PATH (see its README), then retry.
",
        server = yaml_str(server),
        login = yaml_str(login),
    ))
}

/// A YAML double-quoted string (JSON's escaping is valid YAML).
fn yaml_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_fresh_until_a_minute_or_half_its_life_before_its_end() {
        let now = now_ms();
        let token = |issued_ms, expires_ms| CachedToken {
            token: String::new(),
            issued_ms,
            expires_ms,
        };
        // Five minutes: fresh until one minute before the end.
        assert!(fresh(&token(now, now + 300_000)));
        assert!(!fresh(&token(now - 250_000, now + 50_000)));
        // Four seconds: fresh for its first half.
        assert!(fresh(&token(now, now + 4_000)));
        assert!(!fresh(&token(now - 2_500, now + 1_500)));
        assert!(!fresh(&token(now - 5_000, now - 1_000)));
    }

    #[test]
    fn kubeconfig_has_no_secret_and_checks_its_input() {
        let k = kubeconfig("https://api:6443", "prod", "https://login:8444", None).unwrap();
        assert!(k.contains("interactiveMode: IfAvailable"));
        assert!(k.contains("provideClusterInfo: true"));
        assert!(k.contains(&format!(
            "- name: {EXEC_EXTENSION}\n      extension:\n        cluster: prod"
        )));
        for field in ["token:", "password:", "client-key", "kat_", "kas_"] {
            assert!(!k.contains(field), "{field} in {k}");
        }
        for (server, cluster, login) in [
            ("http://api", "prod", "https://login"),
            ("https://api", "prod", "http://login"),
            ("https://api", "pr od", "https://login"),
            ("https://api", "", "https://login"),
        ] {
            assert!(
                kubeconfig(server, cluster, login, None).is_err(),
                "{server} {cluster} {login}"
            );
        }
    }
}
