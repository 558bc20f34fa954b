//! Shared end-to-end harness: runs the real binaries in temp dirs on ephemeral loopback
//! ports, reads their ready lines, and talks to the edge over real HTTPS trusting only the
//! CA from the generated kubeconfig, as kube-apiserver does.
//!
//! The edge requires a client certificate, so the harness's clients present one as
//! kube-apiserver would: `up` writes it into its kubeconfig, and `certs_init` issues one
//! (`client-kube-apiserver`, CN `kube-apiserver`, from `ca.crt`, which the harness's edges
//! trust as `tls.client_ca`). Each is registered against the server CA it goes with, and
//! `client(ca, proto, None)` presents the one registered for `ca`; `anonymous_client`
//! presents none (the attacker).
#![allow(dead_code)]

pub mod basic_auth;
pub mod delay;
pub mod envoy;
pub mod fleet;
pub mod grpc;
pub mod hostile;
pub mod jwks;
pub mod ldap;
pub mod postgres;
pub mod procs;
pub mod redis;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

pub use procs::{bin, Proc};

pub const V1: &str = "authentication.k8s.io/v1";
pub const V1BETA1: &str = "authentication.k8s.io/v1beta1";

/// The HTTP version a client speaks to the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

/// What a test needs from a webhook kubeconfig: the server URL and the CA it pins.
pub struct Kubeconfig {
    pub server: String,
    pub ca_pem: Vec<u8>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
}

impl Kubeconfig {
    pub fn parse(text: &str) -> Kubeconfig {
        let field = |name: &str| {
            text.lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(str::to_owned)
        };
        let b64 = |s: String| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        Kubeconfig {
            server: field("server").expect("kubeconfig has a cluster server"),
            ca_pem: b64(field("certificate-authority-data").expect("kubeconfig has CA data")),
            client_cert_pem: field("client-certificate-data").map(b64),
            client_key_pem: field("client-key-data").map(b64),
        }
    }

    pub fn load(path: &Path) -> Kubeconfig {
        Self::parse(&std::fs::read_to_string(path).expect("read kubeconfig"))
    }
}

/// kube-apiserver's client identity (certificate + key PEM) for each edge server CA.
static KUBE_APISERVER: Mutex<Vec<(Vec<u8>, Vec<u8>)>> = Mutex::new(Vec::new());

/// Records kube-apiserver's identity for edges whose certificate `ca_pem` signed.
pub fn register_kube_apiserver(ca_pem: &[u8], identity_pem: Vec<u8>) {
    let mut ids = KUBE_APISERVER.lock().unwrap();
    ids.retain(|(ca, _)| ca != ca_pem);
    ids.push((ca_pem.to_vec(), identity_pem));
}

/// kube-apiserver's identity for edges whose certificate `ca_pem` signed, if registered.
pub fn kube_apiserver_identity(ca_pem: &[u8]) -> Option<Vec<u8>> {
    let ids = KUBE_APISERVER.lock().unwrap();
    ids.iter()
        .find(|(ca, _)| ca == ca_pem)
        .map(|(_, id)| id.clone())
}

/// A rustls client configuration as kube-apiserver's: trusts `ca_pem` only and presents
/// the identity registered for it.
pub fn kube_apiserver_tls(ca_pem: &[u8], alpn: &[u8]) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match kube_apiserver_identity(ca_pem) {
        Some(id) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(&id)
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(&id).expect("identity key"),
            )
            .expect("identity"),
        None => b.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// An HTTPS client trusting only `ca_pem`, speaking one HTTP version, presenting
/// `identity_pem`, or kube-apiserver's identity registered for `ca_pem` when `None`.
pub fn client(ca_pem: &[u8], proto: Proto, identity_pem: Option<Vec<u8>>) -> reqwest::Client {
    client_as(
        ca_pem,
        proto,
        identity_pem.or_else(|| kube_apiserver_identity(ca_pem)),
    )
}

/// An HTTPS client that presents no client certificate: anyone who can reach the port.
pub fn anonymous_client(ca_pem: &[u8], proto: Proto) -> reqwest::Client {
    client_as(ca_pem, proto, None)
}

fn client_as(ca_pem: &[u8], proto: Proto, identity_pem: Option<Vec<u8>>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem).expect("CA PEM");
    let mut b = reqwest::Client::builder()
        .tls_certs_only([ca])
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    if let Some(id) = identity_pem {
        b = b.identity(reqwest::Identity::from_pem(&id).expect("client identity PEM"));
    }
    b = match proto {
        Proto::H1 => b.http1_only(),
        Proto::H2 => b.http2_prior_knowledge(),
    };
    b.build().expect("client")
}

/// A TokenReview body exactly as kube-apiserver encodes it.
pub fn review_body(api_version: &str, token: &str, audiences: &[&str]) -> String {
    let mut spec = json!({ "token": token });
    if !audiences.is_empty() {
        spec["audiences"] = json!(audiences);
    }
    json!({
        "kind": "TokenReview",
        "apiVersion": api_version,
        "metadata": { "creationTimestamp": null },
        "spec": spec,
        "status": { "user": {} },
    })
    .to_string()
}

/// One answer from the edge.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub version: reqwest::Version,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Answer {
    pub fn authenticated(&self) -> bool {
        self.body["status"]["authenticated"] == json!(true)
    }
    pub fn username(&self) -> &str {
        self.body["status"]["user"]["username"]
            .as_str()
            .unwrap_or("")
    }
    pub fn groups(&self) -> Vec<String> {
        self.body["status"]["user"]["groups"]
            .as_array()
            .map(|a| a.iter().map(|g| g.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }
    /// A definitive denial: 200, authenticated false, no error, no user.
    pub fn assert_denied(&self) {
        assert_eq!(self.status, 200, "{self:?}");
        assert_eq!(
            self.body["status"],
            json!({"authenticated": false}),
            "{self:?}"
        );
    }
    /// The retryable "could not decide" answer: 500, a Status body, no Retry-After.
    pub fn assert_undecided(&self) {
        assert_eq!(self.status, 500, "{self:?}");
        assert_eq!(self.body["kind"], "Status", "{self:?}");
        assert_eq!(self.body["reason"], "InternalError", "{self:?}");
        assert!(
            self.retry_after.is_none(),
            "no Retry-After on 500: {self:?}"
        );
        assert!(self
            .body
            .get("status")
            .and_then(|s| s.get("authenticated"))
            .is_none());
    }
}

/// POSTs a raw body to `url` (the kube-apiserver `?timeout=30s` is appended).
pub async fn post_raw(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> Answer {
    let resp = client
        .post(format!("{url}?timeout=30s"))
        .header("content-type", "application/json")
        .header("accept", "application/json, */*")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e:?}"));
    answer(resp).await
}

pub async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let version = resp.version();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let retry_after = header("retry-after");
    let content_type = header("content-type");
    let bytes = resp.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {bytes:?}"));
    Answer {
        status,
        version,
        retry_after,
        content_type,
        body,
    }
}

pub async fn review(client: &reqwest::Client, url: &str, api_version: &str, token: &str) -> Answer {
    post_raw(client, url, review_body(api_version, token, &[])).await
}

/// A fresh temp dir that is removed when dropped (kept if KEEP_TEST_DIRS is set).
pub fn temp_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("kube-authd-test-")
        .tempdir()
        .expect("temp dir");
    if std::env::var_os("KEEP_TEST_DIRS").is_some() {
        eprintln!("test dir: {}", d.path().display());
    }
    d
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A random token, distinctive enough to search logs for.
pub fn token(tag: &str) -> String {
    let bytes: [u8; 16] = rand_bytes();
    format!("{tag}_{}", hex(&bytes))
}

pub fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom(&mut b);
    b
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("/dev/urandom");
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(s.as_bytes()))
}

/// `kube-authd up` on ephemeral ports in `dir`, with `token_file`; kube-apiserver's
/// identity is taken from the kubeconfig it writes.
pub fn start_up(dir: &Path, token_file: &Path) -> Proc {
    start_up_env(dir, token_file, &[])
}

/// [`start_up`] with extra environment variables (e.g. `RUST_LOG`).
pub fn start_up_env(dir: &Path, token_file: &Path, env: &[(&str, &str)]) -> Proc {
    let up = Proc::start_env(
        "kube-authd",
        "kube-authd",
        &[
            "up",
            "--state-dir",
            dir.join("state").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        dir,
        "kube-authd ready",
        env,
    );
    register_up(&dir.join("state"));
    up
}

/// Registers kube-apiserver's identity from the kubeconfig `up` wrote in `state_dir`.
pub fn register_up(state_dir: &Path) {
    let kc = Kubeconfig::load(&state_dir.join("webhook-kubeconfig.yaml"));
    let (Some(mut cert), Some(key)) = (kc.client_cert_pem, kc.client_key_pem) else {
        panic!("up's kubeconfig has no client certificate");
    };
    cert.extend(key);
    register_kube_apiserver(&kc.ca_pem, cert);
}

/// Edge and authd as separate processes, with certificates from `kube-authd certs init`.
pub struct Split {
    pub authd: Proc,
    pub edge: Proc,
    pub grpc: String,
    pub url: String,
    pub ca_pem: Vec<u8>,
    pub dir: PathBuf,
}

/// `kube-authd certs init` into `dir` (one `--cluster` per name), with kube-apiserver's
/// client certificate `client-kube-apiserver` registered for the edge CA `ca.crt`.
pub fn certs_init(dir: &Path, clusters: &[&str]) {
    let mut args = vec![];
    for c in clusters {
        args.extend(["--cluster", *c]);
    }
    fleet::certs_init_with(dir, &args);
}

/// Registers `dir`'s `client-kube-apiserver` identity for its `ca.crt`.
pub fn register_certs(dir: &Path) {
    register_kube_apiserver(
        &std::fs::read(dir.join("ca.crt")).unwrap(),
        fleet::identity(dir, "client-kube-apiserver"),
    );
}

/// The `[tls]` table of the harness's edges: kube-apiserver's certificate is required.
pub const EDGE_TLS: &str =
    "[tls]\ncert = \"edge.crt\"\nkey = \"edge.key\"\nclient_ca = \"ca.crt\"\n";

/// Writes an authd config exactly as given (no cluster added), and starts authd.
pub fn start_authd_as_written(dir: &Path, name: &str, listen: &str, toml: &str) -> Proc {
    let cfg = write(
        dir,
        &format!("{name}.toml"),
        &format!("listen = \"{listen}\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"20s\"\n{toml}"),
    );
    Proc::start_named(
        name,
        "authd",
        &["serve", "--config", cfg.to_str().unwrap()],
        dir,
        "authd ready",
    )
}

/// Writes an authd config whose sources section is `sources_toml`, and starts authd.
/// authd serves only the clusters it declares: unless `extra_toml` declares it (or a
/// `[clusters."*"]` default), the edge's default cluster `default` is declared, as an
/// operator's configuration for an edge with its default route does.
pub fn start_authd(dir: &Path, name: &str, listen: &str, extra_toml: &str) -> Proc {
    let toml = format!(
        "{extra_toml}\n{}",
        default_cluster_unless_declared(extra_toml)
    );
    start_authd_as_written(dir, name, listen, &toml)
}

/// `[clusters.default]`, unless `toml` declares it or a `[clusters."*"]` default.
pub fn default_cluster_unless_declared(toml: &str) -> &'static str {
    if toml.contains("[clusters.default]") || toml.contains("[clusters.\"*\"]") {
        ""
    } else {
        "[clusters.default]\n"
    }
}

/// Starts an edge pointing at `grpc`, with `extra_toml` appended (clusters, timeouts).
pub fn start_edge(dir: &Path, name: &str, grpc: &str, extra_toml: &str) -> Proc {
    let cfg = write(
        dir,
        &format!("{name}.toml"),
        &format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{extra_toml}\n\
             {EDGE_TLS}[authd]\nendpoint = \"http://{grpc}\"\n"
        ),
    );
    Proc::start_named(
        name,
        "authd-edge",
        &["serve", "--config", cfg.to_str().unwrap()],
        dir,
        "authd-edge ready",
    )
}

impl Split {
    pub fn start(dir: &Path, authd_toml: &str, edge_toml: &str) -> Split {
        certs_init(dir, &[]);
        let authd = start_authd(dir, "authd", "127.0.0.1:0", authd_toml);
        let grpc = authd.ready_field("grpc");
        let edge = start_edge(dir, "edge", &grpc, edge_toml);
        let url = format!("{}/authenticate", edge.ready_field("https"));
        Split {
            authd,
            edge,
            grpc,
            url,
            ca_pem: std::fs::read(dir.join("ca.crt")).unwrap(),
            dir: dir.to_owned(),
        }
    }
}

/// Polls `f` every 100 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET on a plain-HTTP admin address; returns status and body.
pub async fn admin_get(addr: &str, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Sum of a Prometheus counter's samples whose label set contains every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
