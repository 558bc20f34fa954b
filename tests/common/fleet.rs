//! Harness pieces for the fleet tests: authd replicas on fixed loopback ports (so a killed
//! one can come back at the same address), an edge balancing over them, bounded load runs,
//! raw TLS connections and certificates made with rcgen.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{admin_get, metric_sum, review, write, Proc, V1};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `kube-authd certs init --dir DIR` with extra arguments (`--cluster`, `--client`), plus
/// kube-apiserver's client certificate, registered for `ca.crt` (see `register_certs`).
pub fn certs_init_with(dir: &Path, extra: &[&str]) {
    let mut args = vec!["certs", "init", "--dir", dir.to_str().unwrap()];
    args.extend(extra);
    args.extend(["--client", "kube-apiserver"]);
    let out = std::process::Command::new(super::bin("kube-authd"))
        .args(&args)
        .output()
        .expect("run kube-authd certs init");
    assert!(out.status.success(), "certs init: {out:?}");
    super::register_certs(dir);
}

/// One authd replica at a fixed address, restartable.
pub struct Replica {
    pub name: String,
    pub addr: String,
    pub proc: Option<Proc>,
    toml: String,
}

impl Replica {
    pub fn start(dir: &Path, name: &str, toml: &str) -> Replica {
        let mut r = Replica {
            name: name.to_owned(),
            addr: format!("127.0.0.1:{}", free_port()),
            proc: None,
            toml: toml.to_owned(),
        };
        r.restart(dir);
        r
    }

    /// The same address and name without the process: for addressing it from another task.
    pub fn handle(&self) -> Replica {
        Replica {
            name: self.name.clone(),
            addr: self.addr.clone(),
            proc: None,
            toml: self.toml.clone(),
        }
    }

    pub fn restart(&mut self, dir: &Path) {
        self.proc = Some(super::start_authd(dir, &self.name, &self.addr, &self.toml));
    }

    /// SIGKILL: no drain, connections reset.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("replica running")
    }

    /// One gRPC review of `token` for the default cluster: whether it was authenticated
    /// (a review that could not decide fails the test).
    pub async fn review(&self, token: &str) -> bool {
        use authd_proto::v1::authenticator_client::AuthenticatorClient;
        use authd_proto::v1::AuthenticateRequest;
        let mut c = AuthenticatorClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect to authd");
        let a = c
            .authenticate(AuthenticateRequest {
                token: token.to_owned(),
                request_id: "fleet-test".into(),
                cluster: "default".into(),
                ..Default::default()
            })
            .await
            .expect("Authenticate")
            .into_inner();
        assert!(a.error.is_empty(), "{}: {a:?}", self.name);
        a.authenticated
    }

    /// authd_verdicts_total of the running process.
    pub async fn verdicts(&self) -> f64 {
        let (_, text) = admin_get(&self.proc().ready_field("admin"), "/metrics").await;
        metric_sum(&text, "authd_verdicts_total", &[])
    }
}

/// Starts an edge whose `[authd]` table is `authd_toml`; `extra_toml` goes at the top.
pub fn start_fleet_edge(dir: &Path, name: &str, extra_toml: &str, authd_toml: &str) -> Proc {
    let cfg = write(
        dir,
        &format!("{name}.toml"),
        &format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{extra_toml}\n\
             {}[authd]\n{authd_toml}\n",
            super::EDGE_TLS
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

/// `endpoints = [...]` for plaintext replicas.
pub fn endpoints_toml(replicas: &[Replica], scheme: &str) -> String {
    let list: Vec<String> = replicas
        .iter()
        .map(|r| format!("\"{scheme}://{}\"", r.addr))
        .collect();
    format!("endpoints = [{}]", list.join(", "))
}

pub async fn ready(admin: &str) -> bool {
    admin_get(admin, "/readyz").await.0 == 200
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: usize,
    /// Every answer that was not "200, authenticated", described.
    pub failed: Vec<String>,
}

/// A bounded load run: `workers` loops reviewing `token` until stopped, `max_reviews`
/// answers were received, or `max_time` passed.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    result: Arc<Mutex<LoadResult>>,
    pub done: Arc<AtomicUsize>,
}

impl Load {
    pub fn start(
        client: reqwest::Client,
        url: String,
        token: String,
        workers: usize,
        max_reviews: usize,
        max_time: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let result = Arc::new(Mutex::new(LoadResult::default()));
        let done = Arc::new(AtomicUsize::new(0));
        let deadline = tokio::time::Instant::now() + max_time;
        let tasks = (0..workers)
            .map(|_| {
                let (client, url, token) = (client.clone(), url.clone(), token.clone());
                let (stop, result, done) = (stop.clone(), result.clone(), done.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst)
                        && done.fetch_add(1, Ordering::SeqCst) < max_reviews
                        && tokio::time::Instant::now() < deadline
                    {
                        let body = super::review_body(V1, &token, &[]);
                        let sent = client
                            .post(format!("{url}?timeout=30s"))
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await;
                        let outcome = match sent {
                            Err(e) => Err(format!("transport: {e:?}")),
                            Ok(resp) => {
                                let a = super::answer(resp).await;
                                if a.status == 200 && a.authenticated() {
                                    Ok(())
                                } else {
                                    Err(format!("{} {}", a.status, a.body))
                                }
                            }
                        };
                        let mut r = result.lock().unwrap();
                        match outcome {
                            Ok(()) => r.ok += 1,
                            Err(e) => r.failed.push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            result,
            done,
        }
    }

    pub fn ok_so_far(&self) -> usize {
        self.result.lock().unwrap().ok
    }

    pub async fn stop(self) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("load worker");
        }
        std::mem::take(&mut *self.result.lock().unwrap())
    }
}

/// One review that must be authenticated.
pub async fn assert_authenticated(client: &reqwest::Client, url: &str, token: &str) {
    let a = review(client, url, V1, token).await;
    assert!(a.status == 200 && a.authenticated(), "{a:?}");
}

/// PEM certificate + key as one identity for reqwest.
pub fn identity(dir: &Path, name: &str) -> Vec<u8> {
    let mut pem = std::fs::read(dir.join(format!("{name}.crt"))).unwrap();
    pem.extend(std::fs::read(dir.join(format!("{name}.key"))).unwrap());
    pem
}

/// Lower-case hex SHA-256 of bytes (certificate fingerprints).
pub fn sha256_hex_bytes(b: &[u8]) -> String {
    use sha2::Digest;
    super::hex(&sha2::Sha256::digest(b))
}

/// DER of the first certificate in a PEM file.
pub fn cert_der(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// TLS as kube-apiserver: trusts `ca_pem` and presents the identity registered for it.
fn client_tls(ca_pem: &Path, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let ca = std::fs::read(ca_pem).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(super::kube_apiserver_tls(&ca, alpn)))
}

/// A fresh TLS connection to `addr` trusting `ca_pem`, with its server name "localhost",
/// presenting kube-apiserver's certificate.
pub async fn tls_connect(
    addr: &str,
    ca_pem: &Path,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    client_tls(ca_pem, alpn)
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// The DER of the certificate served on a fresh connection.
pub async fn served_cert(addr: &str, ca_pem: &Path, alpn: &[u8]) -> Vec<u8> {
    let tls = tls_connect(addr, ca_pem, alpn).await;
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .to_vec()
}

/// Signs a client certificate with the CA in `ca_crt`/`ca_key`; `expired` puts its
/// validity entirely in the past. Writes `NAME.crt` and `NAME.key` into `dir`.
pub fn issue_client_cert(dir: &Path, ca: &str, common_name: &str, name: &str, expired: bool) {
    let ca_cert = std::fs::read_to_string(dir.join(format!("{ca}.crt"))).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join(format!("{ca}.key"))).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    if expired {
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
    } else {
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// Replaces `dir/name` with `from` atomically (rename), as a secret mount update does.
pub fn replace_file(from: &Path, dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.new"));
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}
