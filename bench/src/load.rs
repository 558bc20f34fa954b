//! The load generator: keep-alive HTTPS over HTTP/1.1 (one request at a time per
//! connection) or HTTP/2 (many streams over few connections), gRPC straight to authd, or
//! plain HTTP/1.1 `GET`s with a bearer token (a service behind Envoy).
//!
//! Closed loop: every worker sends its next review as soon as the last one is answered.
//! Open loop (`rate`): every worker has a fixed schedule and latency is measured from the
//! *intended* send time, so a stalled server shows up as latency instead of being hidden by
//! a client that politely waits (coordinated omission).
//!
//! The client behaves like kube-apiserver's Go client: the same body and headers, no TLS
//! session resumption (Go's client has no session cache unless configured), and a new
//! connection whenever the server closes one (gunicorn's sync workers close after each
//! response).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use authd_proto::v1::authenticator_client::AuthenticatorClient;
use authd_proto::v1::AuthenticateRequest;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::tokens::{Item, Workload, AUDIENCE};

/// The HTTP version spoken to an HTTPS target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2",
        }
    }
}

/// What to load.
#[derive(Clone)]
pub enum Target {
    /// A TokenReview URL (`https://host:port/path`) and the PEM CA its certificate chains to.
    Https {
        url: String,
        ca_pem: Vec<u8>,
        /// The client certificate and key (PEM) presented as kube-apiserver's.
        identity_pem: Option<Vec<u8>>,
        proto: Proto,
    },
    /// authd's gRPC address (`http://host:port`), cluster `default`.
    Grpc { endpoint: String },
    /// A plain-HTTP/1.1 service (`http://host:port/path`, e.g. behind Envoy): `GET` with
    /// `Authorization: Bearer <token>`; 200 means authenticated, 401 not.
    Bearer { url: String },
}

/// How to load it.
#[derive(Clone)]
pub struct Spec {
    pub target: Target,
    /// HTTP/1.1: connections; HTTP/2 and gRPC: concurrent streams.
    pub concurrency: usize,
    /// HTTP/2 and gRPC: connections the streams share.
    pub h2_connections: usize,
    /// Open loop at this many reviews per second; None: closed loop.
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    /// Server processes whose CPU time (with their descendants) is measured.
    pub pids: Vec<i32>,
}

/// What one run measured (the warm-up excluded).
pub struct Outcome {
    /// Reviews answered with the expected verdict.
    pub ok: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// TCP+TLS connections opened during the whole run (warm-up included).
    pub connects: u64,
    pub measured: Duration,
    /// Latency of the correct answers, in microseconds.
    pub hist: Histogram<u64>,
    pub cpu_seconds: Option<f64>,
    /// The cold token list ran out before the duration did.
    pub exhausted: bool,
}

impl Outcome {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn throughput(&self) -> f64 {
        let s = self.measured.as_secs_f64();
        if s > 0.0 {
            self.ok as f64 / s
        } else {
            0.0
        }
    }

    /// Server CPU seconds per 1,000 reviews answered (correctly or not).
    pub fn cpu_per_1k(&self) -> Option<f64> {
        let n = self.ok + self.error_count();
        self.cpu_seconds
            .filter(|_| n > 0)
            .map(|c| c * 1000.0 / n as f64)
    }

    /// Latency at a quantile, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.hist.max() as f64 / 1000.0
    }

    pub fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "0".into();
        }
        self.errors
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits; the bounds are constants, this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Where and how to reach an HTTPS target.
struct Https {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    authority: String,
    path_and_query: String,
    absolute: Uri,
    tls: TlsConnector,
    proto: Proto,
}

impl Https {
    async fn new(
        url: &str,
        ca_pem: &[u8],
        identity_pem: Option<&[u8]>,
        proto: Proto,
    ) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("URL {url:?}"))?;
        anyhow::ensure!(uri.scheme_str() == Some("https"), "URL {url:?}: not https");
        let authority = uri
            .authority()
            .with_context(|| format!("URL {url:?}: no host"))?
            .clone();
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        let port = authority.port_u16().unwrap_or(443);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(cert.context("CA PEM")?)
                .context("CA certificate")?;
        }
        anyhow::ensure!(!roots.is_empty(), "no certificate in the CA PEM");
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let mut config = match identity_pem {
            Some(pem) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(pem)
                        .collect::<Result<_, _>>()
                        .context("client certificate PEM")?,
                    PrivateKeyDer::from_pem_slice(pem).context("client key PEM")?,
                )
                .context("client certificate")?,
            None => builder.with_no_client_auth(),
        };
        config.resumption = Resumption::disabled();
        config.alpn_protocols = match proto {
            Proto::H1 => vec![b"http/1.1".to_vec()],
            Proto::H2 => vec![b"h2".to_vec()],
        };
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        // kube-apiserver appends its request timeout to the webhook URL.
        let path_and_query = if path_and_query.contains('?') {
            path_and_query
        } else {
            format!("{path_and_query}?timeout=30s")
        };
        let absolute = format!("https://{authority}{path_and_query}").parse()?;
        Ok(Self {
            addr,
            server_name: ServerName::try_from(host).context("server name")?,
            authority: authority.to_string(),
            path_and_query,
            absolute,
            tls: TlsConnector::from(Arc::new(config)),
            proto,
        })
    }

    async fn tls_stream(
        &self,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, &'static str> {
        let tcp = TcpStream::connect(self.addr).await.map_err(|_| "connect")?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|_| "tls")?;
        Ok(TokioIo::new(tls))
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<Full<Bytes>>, &'static str> {
        let io = self.tls_stream().await?;
        let (sender, conn) = http1::handshake(io).await.map_err(|_| "connect")?;
        tokio::spawn(conn);
        Ok(sender)
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<Full<Bytes>>, &'static str> {
        let io = self.tls_stream().await?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|_| "connect")?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// The request kube-apiserver's client-go sends (REST client headers, Go transport).
    fn request(&self, item: &Item) -> Request<Full<Bytes>> {
        let (uri, ua) = match self.proto {
            Proto::H1 => (
                Uri::try_from(self.path_and_query.as_str()).unwrap_or_default(),
                "Go-http-client/1.1",
            ),
            Proto::H2 => (self.absolute.clone(), "Go-http-client/2.0"),
        };
        let mut req = Request::new(Full::new(item.body()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        if self.proto == Proto::H1 {
            if let Ok(v) = self.authority.parse() {
                h.insert(header::HOST, v);
            }
        }
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCEPT,
            header::HeaderValue::from_static("application/json, */*"),
        );
        h.insert(header::USER_AGENT, header::HeaderValue::from_static(ua));
        h.insert(
            header::ACCEPT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
        req
    }
}

/// Where and how to reach a plain-HTTP bearer-token target.
struct Bearer {
    addr: SocketAddr,
    authority: String,
    path: Uri,
}

impl Bearer {
    async fn new(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("URL {url:?}"))?;
        anyhow::ensure!(uri.scheme_str() == Some("http"), "URL {url:?}: not http");
        let authority = uri
            .authority()
            .with_context(|| format!("URL {url:?}: no host"))?
            .clone();
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        let addr = tokio::net::lookup_host((host.as_str(), authority.port_u16().unwrap_or(80)))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let path = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .context("path")?;
        Ok(Self {
            addr,
            authority: authority.to_string(),
            path,
        })
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>, &'static str> {
        let tcp = TcpStream::connect(self.addr).await.map_err(|_| "connect")?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| "connect")?;
        tokio::spawn(conn);
        Ok(sender)
    }

    fn request(&self, item: &Item) -> Result<Request<Full<Bytes>>, &'static str> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = self.path.clone();
        let h = req.headers_mut();
        h.insert(
            header::HOST,
            self.authority.parse().map_err(|_| "bad_request")?,
        );
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {}", item.token)
                .parse()
                .map_err(|_| "bad_request")?,
        );
        Ok(req)
    }
}

/// 200 is authenticated, 401 is not; anything else is an error.
async fn check_bearer(
    resp: http::Response<hyper::body::Incoming>,
    item: &Item,
) -> Result<(), &'static str> {
    let status = resp.status().as_u16();
    resp.into_body().collect().await.map_err(|_| "io")?;
    match status {
        200 => check_verdict(item.expect, Some(true)),
        401 => check_verdict(item.expect, Some(false)),
        300..=399 => Err("http_3xx"),
        400..=499 => Err("http_4xx"),
        500..=599 => Err("http_5xx"),
        _ => Err("http_other"),
    }
}

/// `status.authenticated` of a TokenReview answer, found without a JSON parse (the client
/// shares the CPU with the servers; a scan is enough to check a verdict).
pub fn verdict(body: &[u8]) -> Option<bool> {
    const KEY: &[u8] = b"\"authenticated\"";
    let pos = body.windows(KEY.len()).position(|w| w == KEY)?;
    let rest = &body[pos + KEY.len()..];
    let rest = rest
        .iter()
        .position(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t' | b':'))
        .map(|i| &rest[i..])?;
    if rest.starts_with(b"true") {
        Some(true)
    } else if rest.starts_with(b"false") {
        Some(false)
    } else {
        None
    }
}

fn check_verdict(expect: Option<bool>, got: Option<bool>) -> Result<(), &'static str> {
    match (expect, got) {
        (_, None) => Err("bad_body"),
        (Some(e), Some(g)) if e != g => Err("wrong_verdict"),
        _ => Ok(()),
    }
}

async fn check_http(
    resp: http::Response<hyper::body::Incoming>,
    item: &Item,
) -> Result<(), &'static str> {
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|_| "io")?
        .to_bytes();
    match status {
        200 => check_verdict(item.expect, verdict(&body)),
        300..=399 => Err("http_3xx"),
        400..=499 => Err("http_4xx"),
        500..=599 => Err("http_5xx"),
        _ => Err("http_other"),
    }
}

/// HTTP/2 connections shared by stream workers; replaced only once closed.
struct H2Pool {
    https: Arc<Https>,
    slots: Vec<tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>>,
}

impl H2Pool {
    async fn sender(
        &self,
        slot: usize,
        connects: &mut u64,
    ) -> Result<http2::SendRequest<Full<Bytes>>, &'static str> {
        let mut g = self.slots[slot % self.slots.len()].lock().await;
        if let Some(s) = g.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        *connects += 1;
        let s = self.https.connect_h2().await?;
        *g = Some(s.clone());
        Ok(s)
    }
}

/// One worker's way of sending a review.
enum Client {
    H1 {
        https: Arc<Https>,
        sender: Option<http1::SendRequest<Full<Bytes>>>,
    },
    H2 {
        pool: Arc<H2Pool>,
        slot: usize,
        sender: Option<http2::SendRequest<Full<Bytes>>>,
    },
    Grpc {
        client: AuthenticatorClient<Channel>,
    },
    Bearer {
        target: Arc<Bearer>,
        sender: Option<http1::SendRequest<Full<Bytes>>>,
    },
}

impl Client {
    async fn call(&mut self, item: &Item, connects: &mut u64) -> Result<(), &'static str> {
        match self {
            Client::H1 { https, sender } => {
                if let Some(s) = sender.as_mut() {
                    if s.ready().await.is_err() {
                        *sender = None;
                    }
                }
                let s = match sender {
                    Some(s) => s,
                    None => {
                        *connects += 1;
                        sender.insert(https.connect_h1().await?)
                    }
                };
                let resp = s
                    .send_request(https.request(item))
                    .await
                    .map_err(|_| "io")?;
                check_http(resp, item).await
            }
            Client::H2 { pool, slot, sender } => {
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    *sender = Some(pool.sender(*slot, connects).await?);
                }
                let Some(s) = sender.as_mut() else {
                    return Err("connect");
                };
                s.ready().await.map_err(|_| "io")?;
                let resp = s
                    .send_request(pool.https.request(item))
                    .await
                    .map_err(|_| "io")?;
                check_http(resp, item).await
            }
            Client::Grpc { client } => {
                let req = AuthenticateRequest {
                    token: item.token.clone(),
                    audiences: vec![AUDIENCE.to_owned()],
                    cluster: "default".to_owned(),
                    request_id: String::new(),
                };
                let resp = client
                    .authenticate(req)
                    .await
                    .map_err(|_| "grpc_status")?
                    .into_inner();
                if !resp.error.is_empty() {
                    return Err("undecided");
                }
                check_verdict(item.expect, Some(resp.authenticated))
            }
            Client::Bearer { target, sender } => {
                if let Some(s) = sender.as_mut() {
                    if s.ready().await.is_err() {
                        *sender = None;
                    }
                }
                let s = match sender {
                    Some(s) => s,
                    None => {
                        *connects += 1;
                        sender.insert(target.connect().await?)
                    }
                };
                let resp = s
                    .send_request(target.request(item)?)
                    .await
                    .map_err(|_| "io")?;
                check_bearer(resp, item).await
            }
        }
    }

    /// Forgets a connection that failed, so the next call opens a new one.
    fn reset(&mut self) {
        match self {
            Client::H1 { sender, .. } => *sender = None,
            Client::H2 { sender, .. } => *sender = None,
            Client::Bearer { sender, .. } => *sender = None,
            Client::Grpc { .. } => {}
        }
    }
}

struct Schedule {
    start: Instant,
    record_from: Instant,
    end: Instant,
    timeout: Duration,
    /// Open loop: each worker's interval between intended sends.
    interval: Option<Duration>,
    /// When the cold token list ran out (the measured window ends there).
    exhausted_at: Mutex<Option<Instant>>,
    exhausted: AtomicBool,
}

#[derive(Default)]
struct WorkerStats {
    ok: u64,
    errors: BTreeMap<&'static str, u64>,
    connects: u64,
    hist: Option<Histogram<u64>>,
}

async fn worker(
    idx: usize,
    workers: usize,
    mut client: Client,
    workload: Arc<Workload>,
    sched: Arc<Schedule>,
) -> WorkerStats {
    let mut stats = WorkerStats {
        hist: Some(new_hist()),
        ..Default::default()
    };
    let mut hist = new_hist();
    let mut k: u32 = 0;
    loop {
        let intended = match sched.interval {
            Some(iv) => {
                // Stagger workers across one interval so the offered load is smooth.
                let t = sched.start + iv.mul_f64(idx as f64 / workers as f64) + iv * k;
                k = k.saturating_add(1);
                tokio::time::sleep_until(t).await;
                t
            }
            None => Instant::now(),
        };
        if intended >= sched.end || sched.exhausted.load(Ordering::Relaxed) {
            break;
        }
        let Some(item) = workload.next(intended < sched.record_from) else {
            sched.exhausted.store(true, Ordering::Relaxed);
            let mut at = sched.exhausted_at.lock().unwrap_or_else(|e| e.into_inner());
            at.get_or_insert_with(Instant::now);
            break;
        };
        let result = tokio::time::timeout(sched.timeout, client.call(item, &mut stats.connects))
            .await
            .unwrap_or(Err("timeout"));
        let done = Instant::now();
        let recorded = intended >= sched.record_from;
        match result {
            Ok(()) => {
                if recorded {
                    stats.ok += 1;
                    let micros = (done - intended).as_micros().max(1) as u64;
                    hist.saturating_record(micros);
                }
            }
            Err(kind) => {
                if recorded {
                    *stats.errors.entry(kind).or_default() += 1;
                }
                client.reset();
                if matches!(kind, "connect" | "tls") {
                    // A refused connection fails at once: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    stats.hist = Some(hist);
    stats
}

/// Runs one load: warm-up, then the measured window; returns what was measured.
pub async fn run(spec: &Spec, workload: Arc<Workload>) -> anyhow::Result<Outcome> {
    let n = spec.concurrency.max(1);
    let conns = spec.h2_connections.max(1);
    let clients: Vec<Client> = match &spec.target {
        Target::Https {
            url,
            ca_pem,
            identity_pem,
            proto,
        } => {
            let https = Arc::new(Https::new(url, ca_pem, identity_pem.as_deref(), *proto).await?);
            match proto {
                Proto::H1 => (0..n)
                    .map(|_| Client::H1 {
                        https: https.clone(),
                        sender: None,
                    })
                    .collect(),
                Proto::H2 => {
                    let pool = Arc::new(H2Pool {
                        https,
                        slots: (0..conns).map(|_| tokio::sync::Mutex::new(None)).collect(),
                    });
                    (0..n)
                        .map(|i| Client::H2 {
                            pool: pool.clone(),
                            slot: i,
                            sender: None,
                        })
                        .collect()
                }
            }
        }
        Target::Bearer { url } => {
            let target = Arc::new(Bearer::new(url).await?);
            (0..n)
                .map(|_| Client::Bearer {
                    target: target.clone(),
                    sender: None,
                })
                .collect()
        }
        Target::Grpc { endpoint } => {
            let channels = (0..conns)
                .map(|_| {
                    Ok(Endpoint::from_shared(endpoint.clone())?
                        .tcp_nodelay(true)
                        .connect_lazy())
                })
                .collect::<anyhow::Result<Vec<Channel>>>()?;
            (0..n)
                .map(|i| Client::Grpc {
                    client: AuthenticatorClient::new(channels[i % conns].clone()),
                })
                .collect()
        }
    };
    let start = Instant::now();
    let record_from = start + spec.warmup;
    let end = record_from + spec.duration;
    let sched = Arc::new(Schedule {
        start,
        record_from,
        end,
        timeout: spec.timeout,
        interval: spec
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(n as f64 / r)),
        exhausted_at: Mutex::new(None),
        exhausted: AtomicBool::new(false),
    });
    let pids = spec.pids.clone();
    let cpu_at = |at: Instant| {
        let pids = pids.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let p = pids.clone();
            let secs = tokio::task::spawn_blocking(move || crate::cpu::tree_seconds(&p))
                .await
                .unwrap_or(0.0);
            (Instant::now(), secs)
        })
    };
    let cpu_start = cpu_at(record_from);
    let cpu_end = cpu_at(end);
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(worker(i, n, c, workload.clone(), sched.clone())))
        .collect();
    let mut out = Outcome {
        ok: 0,
        errors: BTreeMap::new(),
        connects: 0,
        measured: Duration::ZERO,
        hist: new_hist(),
        cpu_seconds: None,
        exhausted: false,
    };
    for h in handles {
        let s = h.await.context("load worker panicked")?;
        out.ok += s.ok;
        out.connects += s.connects;
        for (k, v) in s.errors {
            *out.errors.entry(k).or_default() += v;
        }
        if let Some(hist) = s.hist {
            out.hist.add(hist).context("merging histograms")?;
        }
    }
    let exhausted_at = *sched.exhausted_at.lock().unwrap_or_else(|e| e.into_inner());
    out.exhausted = exhausted_at.is_some();
    let window_end = exhausted_at.map_or(end, |t| t.min(end));
    out.measured = window_end.saturating_duration_since(record_from);
    let (t0, c0) = cpu_start.await.context("cpu sampler")?;
    // An exhausted run stops early: sample the CPU at its real end instead of idling on.
    let (t1, c1) = if out.exhausted && window_end < end {
        cpu_end.abort();
        let p = spec.pids.clone();
        let secs = tokio::task::spawn_blocking(move || crate::cpu::tree_seconds(&p)).await?;
        (Instant::now(), secs)
    } else {
        cpu_end.await.context("cpu sampler")?
    };
    if !spec.pids.is_empty() && t1 > t0 {
        out.cpu_seconds = Some((c1 - c0).max(0.0));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_verdicts_in_compact_and_pretty_json() {
        assert_eq!(verdict(br#"{"status":{"authenticated":true}}"#), Some(true));
        assert_eq!(
            verdict(b"{\n  \"status\": {\n    \"authenticated\": false\n  }\n}"),
            Some(false)
        );
        assert_eq!(verdict(br#"{"kind":"Status"}"#), None);
    }
}
