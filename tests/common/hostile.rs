//! Tools for playing a hostile client against the edge: what a process holds (RSS, open
//! file descriptors) sampled while an attack runs, and raw TLS and HTTP/2 connections that
//! send exactly what the attacker chooses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::common::{Kubeconfig, V1};

/// Resident memory of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// Samples a process's RSS and open descriptors every 20 ms until stopped; keeps the peaks.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Peaks>,
}

/// The highest values a [`Sampler`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Peaks {
    pub rss_kib: u64,
    pub fds: usize,
}

impl Sampler {
    pub fn start(pid: i32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks = Peaks { rss_kib: 0, fds: 0 };
            while !stopped.load(Ordering::Relaxed) {
                peaks.rss_kib = peaks.rss_kib.max(rss_kib(pid));
                peaks.fds = peaks.fds.max(open_fds(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peaks
        });
        Sampler { stop, thread }
    }

    pub fn stop(self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler")
    }
}

/// `host:port` of the kubeconfig's server.
pub fn authority(kc: &Kubeconfig) -> String {
    let rest = kc.server.trim_start_matches("https://");
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// A TLS client configuration as kube-apiserver's: trusts the kubeconfig's CA, presents its
/// client certificate when it has one, offers `alpn`.
pub fn tls_config(kc: &Kubeconfig, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&kc.ca_pem) {
        roots.add(c.expect("CA PEM")).expect("CA");
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match (&kc.client_cert_pem, &kc.client_key_pem) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                rustls::pki_types::CertificateDer::pem_slice_iter(cert)
                    .map(|c| c.expect("client certificate PEM"))
                    .collect(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key).expect("client key PEM"),
            )
            .expect("client identity"),
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A completed TLS connection to `addr`.
pub async fn tls_connect(addr: &str, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// An HTTP/2 connection (h2 client, which keeps to flow control and the server's stream
/// limit) over TLS to `addr`; its driver runs on a task.
pub async fn h2_connect(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> h2::client::SendRequest<bytes::Bytes> {
    let tls = tls_connect(addr, config).await;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake(tls)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// An HTTP/2 `POST /authenticate` declaring `content_length`.
pub fn h2_post(kc: &Kubeconfig, content_length: u64) -> http::Request<()> {
    http::Request::post(format!("{}?timeout=30s", kc.server))
        .header("content-type", "application/json")
        .header("content-length", content_length)
        .body(())
        .expect("request")
}

/// A legitimate review over a fresh HTTP/1.1 connection: kube-apiserver's, during or after
/// an attack.
pub async fn legit_review(kc: &Kubeconfig, token: &str) -> crate::common::Answer {
    let c = crate::common::client(&kc.ca_pem, crate::common::Proto::H1, identity(kc));
    crate::common::review(&c, &kc.server, V1, token).await
}

/// The kubeconfig's client certificate and key as one PEM, for reqwest.
pub fn identity(kc: &Kubeconfig) -> Option<Vec<u8>> {
    match (&kc.client_cert_pem, &kc.client_key_pem) {
        (Some(c), Some(k)) => Some([c.as_slice(), k.as_slice()].concat()),
        _ => None,
    }
}

/// Issue 13: no token or password a test used appears in anything its processes wrote
/// (stderr and stdout of edge, authd, `kube-authd up`). A secret may also be a random part
/// that every password of the test shares: one search instead of thousands.
pub fn assert_no_secret_logged(procs: &[&crate::common::Proc], secrets: &[&str]) {
    for p in procs {
        for (stream, text) in [("stderr", p.stderr()), ("stdout", p.stdout())] {
            for secret in secrets {
                assert!(!secret.is_empty(), "an empty secret matches everything");
                if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                    panic!(
                        "{}'s {stream} holds a token or password: {}",
                        p.name,
                        line.replace(secret, "<SECRET>")
                    );
                }
            }
        }
    }
}

/// kube-apiserver (or an internal client) while an attack runs: a review every `every`,
/// each within `ANSWER_WITHIN`, until stopped. Every failure is kept, with when it happened.
pub struct LegitCaller {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

/// A legitimate review that takes longer than this failed: kube-apiserver's own timeout is
/// longer, but no attack here should slow a review down this much.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

impl LegitCaller {
    /// Starts the reviews; `review` makes one and says what was wrong with its answer.
    /// Returns once the first review succeeded, so the caller is known to work before the
    /// attack starts.
    pub async fn start<F, Fut>(every: Duration, mut review: F) -> LegitCaller
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        match tokio::time::timeout(ANSWER_WITHIN, review()).await {
            Ok(Ok(())) => {}
            other => panic!("the legitimate caller fails before any attack: {other:?}"),
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let (started, mut ok, mut failed) = (std::time::Instant::now(), 0usize, Vec::new());
            while !stopped.load(Ordering::Relaxed) {
                let at = started.elapsed();
                match tokio::time::timeout(ANSWER_WITHIN, review()).await {
                    Ok(Ok(())) => ok += 1,
                    Ok(Err(e)) => failed.push(format!("at {at:?}: {e}")),
                    Err(_) => failed.push(format!("at {at:?}: no answer within {ANSWER_WITHIN:?}")),
                }
                tokio::time::sleep(every).await;
            }
            (ok, failed)
        });
        LegitCaller { stop, task }
    }

    /// Stops the reviews and asserts that every one succeeded; returns how many there were.
    pub async fn stop(self, what: &str) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failed) = self.task.await.expect("legitimate caller");
        eprintln!(
            "{what}: {ok} legitimate reviews during the attack, {} failed",
            failed.len()
        );
        assert!(
            failed.is_empty(),
            "{what}: {} of {} legitimate reviews failed during the attack: {failed:#?}",
            failed.len(),
            ok + failed.len()
        );
        assert!(
            ok >= 3,
            "{what}: only {ok} legitimate reviews ran during the attack"
        );
        ok
    }
}

/// kube-apiserver's reviews of `token` over its own keep-alive connection (`client` holds
/// it), each of which must authenticate `user`.
pub async fn edge_caller(
    client: reqwest::Client,
    url: String,
    token: String,
    user: &'static str,
) -> LegitCaller {
    LegitCaller::start(Duration::from_millis(75), move || {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        async move {
            let sent = client
                .post(format!("{url}?timeout=30s"))
                .header("content-type", "application/json")
                .body(crate::common::review_body(V1, &token, &[]))
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            let a = crate::common::answer(sent).await;
            if a.status == 200 && a.authenticated() && a.username() == user {
                Ok(())
            } else {
                Err(format!("{a:?}"))
            }
        }
    })
    .await
}

/// A loopback TCP listener that stands in front of a real server: while it is a black hole
/// it accepts connections and never answers them (it reads and drops what they send); once
/// opened, new connections are forwarded to `target`. Connections keep the mode they were
/// accepted in. Counts the connections it holds, so a test can see the client close them.
pub struct BlackHole {
    pub addr: std::net::SocketAddr,
    forward: Arc<AtomicBool>,
    held: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    pub async fn start(target: std::net::SocketAddr) -> BlackHole {
        use std::sync::atomic::AtomicUsize;
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let forward = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let (fwd, count) = (forward.clone(), held.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let count = count.clone();
                if fwd.load(Ordering::SeqCst) {
                    tokio::spawn(async move {
                        if let Ok(mut upstream) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                        }
                    });
                } else {
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let mut sink = [0u8; 4096];
                        while let Ok(1..) = conn.read(&mut sink).await {}
                        count.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        });
        BlackHole {
            addr,
            forward,
            held,
            task,
        }
    }

    /// From now on, new connections reach the real server.
    pub fn open(&self) {
        self.forward.store(true, Ordering::SeqCst);
    }

    /// From now on, new connections fall into the hole again.
    pub fn close(&self) {
        self.forward.store(false, Ordering::SeqCst);
    }

    /// Connections accepted as a black hole that the client has not closed yet.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}
