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
