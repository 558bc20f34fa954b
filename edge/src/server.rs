//! The HTTPS TokenReview endpoint.
//!
//! Routing is on the path only (kube-apiserver appends `?timeout=30s`); there are no
//! redirects. HTTP/2 or HTTP/1.1 is chosen by ALPN. Every connection holds a clone of a
//! drain sender, so shutdown can wait for the last one to finish (as in mini-redis).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use authd_runtime::Reloading;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::backend::{Backend, BackendError};
use crate::config::Config;
use crate::metrics::{Metrics, Name, ReviewLabels};
use crate::review::{self, ApiVersion, ReviewError};
use crate::tls::{handshake_refusal, ServerTls};

/// Everything a request handler needs; shared by all connections.
pub struct Handler {
    backend: Backend,
    default_cluster: Route,
    clusters: std::collections::BTreeMap<String, Route>,
    /// The metric label of requests that matched no endpoint.
    unknown: Name,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    review_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// One TokenReview endpoint: its cluster, and the `reviews` counters of its definitive
/// answers (HTTP 200 in either version, authenticated or not), resolved once so counting
/// the common case is one atomic add instead of a family lookup (a read lock and a hash
/// of the labels) per review.
struct Route {
    name: Name,
    /// `[v1, v1beta1][authenticated, rejected]`
    answered: [[Counter; 2]; 2],
}

impl Route {
    fn new(cluster: &str, metrics: &Metrics) -> Self {
        let name: Name = cluster.into();
        let counter = |api_version, result| {
            metrics
                .reviews
                .get_or_create(&ReviewLabels {
                    cluster: name.clone(),
                    api_version,
                    result,
                    code: StatusCode::OK.as_u16(),
                })
                .clone()
        };
        let answered = [ApiVersion::V1, ApiVersion::V1beta1]
            .map(|v| [AUTHENTICATED, REJECTED].map(|r| counter(v.label(), r)));
        Self { name, answered }
    }

    /// The resolved counter for `answer`, if it is one of the definitive answers.
    fn answered(&self, answer: &Answer) -> Option<&Counter> {
        if answer.status != StatusCode::OK {
            return None;
        }
        let version = match answer.api_version {
            v if v == ApiVersion::V1.label() => 0,
            v if v == ApiVersion::V1beta1.label() => 1,
            _ => return None,
        };
        let result = match answer.result {
            AUTHENTICATED => 0,
            REJECTED => 1,
            _ => return None,
        };
        Some(&self.answered[version][result])
    }
}

const AUTHENTICATED: &str = "authenticated";
const REJECTED: &str = "rejected";

/// How a request was answered, for the metric and the log line.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    result: &'static str,
    api_version: &'static str,
}

impl Answer {
    fn failure(status: StatusCode, reason: &str, result: &'static str, message: &str) -> Self {
        Self {
            status,
            body: review::status_body(status.as_u16(), reason, message),
            result,
            api_version: "unknown",
        }
    }
}

impl Handler {
    pub fn new(config: &Config, backend: Backend, metrics: Arc<Metrics>) -> Self {
        Self {
            backend,
            default_cluster: Route::new(&config.default_cluster, &metrics),
            clusters: config
                .clusters
                .keys()
                .map(|k| (k.clone(), Route::new(k, &metrics)))
                .collect(),
            unknown: "unknown".into(),
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout,
            review_timeout: config.review_timeout,
            metrics,
        }
    }

    /// `/authenticate` → default cluster; `/clusters/{name}/authenticate` → a configured one.
    /// The route returned is the handler's own, so the request can be moved on without
    /// copying its path.
    fn route(&self, path: &str) -> Option<&Route> {
        if path == "/authenticate" {
            return Some(&self.default_cluster);
        }
        let name = path
            .strip_prefix("/clusters/")?
            .strip_suffix("/authenticate")?;
        self.clusters.get(name)
    }

    /// Answers one request that arrived on a connection from `peer`.
    pub async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let request_id = request_id();
        let route = self.route(req.uri().path());
        let cluster = route.map(|r| &*r.name.0);
        let answer = match cluster {
            None => Answer::failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                "not_found",
                &format!("no TokenReview endpoint at {}", clip_path(req.uri().path())),
            ),
            Some(cluster) => match peer.refusal(req.uri().path(), cluster) {
                Some(why) => {
                    tracing::warn!(request_id, cluster, reason = %why,
                        "kube-apiserver client certificate refused; answering 403");
                    Answer::failure(StatusCode::FORBIDDEN, "Forbidden", "forbidden", &why)
                }
                None => self.review(req, cluster, &request_id, started).await,
            },
        };
        let code = answer.status.as_u16();
        match route.and_then(|r| r.answered(&answer)) {
            Some(counter) => counter.inc(),
            None => self
                .metrics
                .reviews
                .get_or_create(&ReviewLabels {
                    cluster: route.map_or(&self.unknown, |r| &r.name).clone(),
                    api_version: answer.api_version,
                    result: answer.result,
                    code,
                })
                .inc(),
        };
        let elapsed = started.elapsed();
        self.metrics.latency.observe(elapsed.as_secs_f64());
        tracing::debug!(
            request_id,
            cluster = cluster.unwrap_or("-"),
            api_version = answer.api_version,
            result = answer.result,
            code,
            micros = elapsed.as_micros() as u64,
            "review answered"
        );
        let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
        *resp.status_mut() = answer.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            h.insert("x-request-id", v);
        }
        if answer.status == StatusCode::METHOD_NOT_ALLOWED {
            h.insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        resp
    }

    /// Reads, parses and answers one TokenReview. Its deadlines count from `started`, the
    /// clock reading the handler already took.
    async fn review(
        &self,
        req: Request<Incoming>,
        cluster: &str,
        request_id: &str,
        started: Instant,
    ) -> Answer {
        let started = tokio::time::Instant::from_std(started);
        if req.method() != Method::POST {
            return Answer::failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "method_not_allowed",
                &format!("{} is not allowed; TokenReviews are POSTed", req.method()),
            );
        }
        let too_large = || {
            Answer::failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "too_large",
                &format!("request body is larger than {} bytes", self.max_body_bytes),
            )
        };
        let read = read_body(req.into_body(), self.max_body_bytes);
        let body = match tokio::time::timeout_at(started + self.body_read_timeout, read).await {
            Err(_) => {
                return Answer::failure(
                    StatusCode::REQUEST_TIMEOUT,
                    "Timeout",
                    "body_timeout",
                    &format!(
                        "request body was not received within {:?}",
                        self.body_read_timeout
                    ),
                )
            }
            Ok(BodyRead::TooLarge) => return too_large(),
            Ok(BodyRead::Failed(e)) => {
                return Answer::failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "bad_request",
                    &format!("could not read request body: {e}"),
                )
            }
            Ok(BodyRead::Complete(bytes)) => bytes,
        };
        let parsed = match review::parse(&body) {
            Ok(r) => r,
            Err(e) => {
                let message = match &e {
                    ReviewError::Json(m) => format!(
                        "request body is not valid JSON for a TokenReview: {}",
                        redact_quoted(m)
                    ),
                    other => other.to_string(),
                };
                return Answer::failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "bad_request",
                    &message,
                );
            }
        };
        let api_version = parsed.api_version.label();
        let request = AuthenticateRequest {
            token: parsed.token.to_string(),
            audiences: parsed.audiences.clone(),
            cluster: cluster.to_owned(),
            request_id: request_id.to_owned(),
        };
        let verdict = tokio::time::timeout_at(
            started + self.review_timeout,
            self.backend.clone().oneshot(request),
        )
        .await
        .unwrap_or(Err(BackendError::Timeout(self.review_timeout)));
        match verdict {
            Ok(v) if v.error.is_empty() => ok_answer(&parsed.api_version, &parsed, &v),
            Ok(v) => undecided(
                api_version,
                request_id,
                &format!("authd could not decide: {}", v.error),
            ),
            Err(e) => undecided(api_version, request_id, &e.to_string()),
        }
    }
}

/// A random id for one review, in logs and in the `X-Request-Id` answer header: 16 hex
/// digits.
fn request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u64>();
    (0..16)
        .rev()
        .map(|i| char::from(HEX[((n >> (i * 4)) & 0xf) as usize]))
        .collect()
}

/// What the TLS handshake established for one connection: the certificate chain the client
/// presented, and the client-certificate rules current when it connected.
pub struct Peer {
    chain: Option<Vec<rustls_pki_types::CertificateDer<'static>>>,
    tls: Arc<ServerTls>,
    /// Verdicts per route: kube-apiserver keeps connections open, so each route's chain
    /// check runs once per connection rather than once per review.
    checked: std::sync::Mutex<Vec<(String, Option<String>)>>,
}

impl Peer {
    fn refusal(&self, path: &str, cluster: &str) -> Option<String> {
        let route = if path == "/authenticate" {
            path
        } else {
            cluster
        };
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, verdict)) = checked.iter().find(|(r, _)| r == route) {
            return verdict.clone();
        }
        let verdict = self
            .tls
            .client_auth
            .check(path, cluster, self.chain.as_deref())
            .err();
        checked.push((route.to_owned(), verdict.clone()));
        verdict
    }
}

fn ok_answer(
    version: &ApiVersion,
    parsed: &review::Review<'_>,
    v: &AuthenticateResponse,
) -> Answer {
    Answer {
        status: StatusCode::OK,
        body: review::render(parsed, v),
        result: if v.authenticated {
            AUTHENTICATED
        } else {
            REJECTED
        },
        api_version: version.label(),
    }
}

/// Past the limit the body is still read and discarded up to this many bytes, so an
/// HTTP/1.1 client that is still writing gets to read the 413 instead of a broken pipe.
const DRAIN_CAP: usize = 8 * 1024 * 1024;

enum BodyRead {
    Complete(Bytes),
    TooLarge,
    Failed(hyper::Error),
}

async fn read_body(mut body: Incoming, limit: usize) -> BodyRead {
    let declared = hyper::body::Body::size_hint(&body).exact();
    if declared.is_some_and(|n| n > DRAIN_CAP as u64) {
        return BodyRead::TooLarge;
    }
    // A review body usually arrives as one frame: keep it as is and copy only when a
    // second frame shows up.
    let mut first: Option<Bytes> = None;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return BodyRead::Failed(e),
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > DRAIN_CAP {
                return BodyRead::TooLarge;
            }
            if seen <= limit {
                match first.take() {
                    None if buf.is_empty() => first = Some(data),
                    earlier => {
                        if let Some(e) = earlier {
                            buf.extend_from_slice(&e);
                        }
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
    if seen > limit {
        BodyRead::TooLarge
    } else {
        BodyRead::Complete(first.unwrap_or_else(|| buf.freeze()))
    }
}

/// "Could not decide": HTTP 500 with a Status body and no Retry-After, which kube-apiserver
/// retries with its own backoff and never caches.
fn undecided(api_version: &'static str, request_id: &str, message: &str) -> Answer {
    tracing::warn!(
        request_id,
        error = message,
        "review could not be decided; answering 500"
    );
    let mut a = Answer::failure(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        "undecided",
        message,
    );
    a.api_version = api_version;
    a
}

/// Replaces every double-quoted span with `"…"`: serde_json puts offending string values in
/// its messages, and a misplaced token must not come back in an error.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '"' {
            if inside {
                out.push_str("…\"");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

fn clip_path(path: &str) -> String {
    path.chars().take(128).collect()
}

/// Connection-level settings.
#[derive(Clone)]
pub struct ConnSettings {
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl From<&Config> for ConnSettings {
    fn from(c: &Config) -> Self {
        Self {
            handshake_timeout: c.handshake_timeout,
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.idle_timeout,
            shutdown_grace: c.shutdown_grace,
        }
    }
}

/// Accepts TLS connections until `shutdown` resolves, then stops accepting, lets open
/// connections finish their in-flight reviews (up to the grace) and returns. Each
/// connection uses the TLS material current when it was accepted (rotation).
pub async fn serve(
    listener: TcpListener,
    tls: Reloading<ServerTls>,
    handler: Arc<Handler>,
    settings: ConnSettings,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (tcp, peer) = authd_runtime::net::accept(&listener, "edge") => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(connection(
                    tcp,
                    peer,
                    tls.get(),
                    handler.clone(),
                    settings.clone(),
                    stop_rx.clone(),
                    drain_tx.clone(),
                ));
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("edge: no longer accepting; draining open connections");
    let _ = stop_tx.send(true);
    drop(drain_tx);
    if tokio::time::timeout(settings.shutdown_grace, drain_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?settings.shutdown_grace, "edge: connections still open after the shutdown grace");
    } else {
        tracing::info!("edge: all connections drained");
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    server_tls: Arc<ServerTls>,
    handler: Arc<Handler>,
    settings: ConnSettings,
    mut stop: watch::Receiver<bool>,
    _drain: mpsc::Sender<()>,
) {
    let acceptor = TlsAcceptor::from(server_tls.config.clone());
    let tls = match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            match handshake_refusal(&e) {
                Some(why) => tracing::warn!(%peer, error = %e, "{why}; connection closed"),
                None => tracing::info!(%peer, error = %e, "TLS handshake failed"),
            }
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake not completed within the handshake timeout; closing");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let client = Arc::new(Peer {
        chain: tls.get_ref().1.peer_certificates().map(<[_]>::to_vec),
        tls: server_tls,
        checked: std::sync::Mutex::new(Vec::new()),
    });
    let seen_request = Arc::new(AtomicBool::new(false));
    let seen = seen_request.clone();
    let activity = Arc::new(Activity::new());
    let busy = activity.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        let client = client.clone();
        let handler = handler.clone();
        let busy = busy.clone();
        async move {
            let _request = busy.begin();
            Ok::<_, Infallible>(handler.handle(req, &client).await)
        }
    });
    let io = TokioIo::new(tls);
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10))
            .max_concurrent_streams(512)
            .serve_connection(io, svc);
        drive(conn, peer, &settings, &seen_request, &activity, &mut stop).await;
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .keep_alive(true)
            .serve_connection(io, svc);
        drive(conn, peer, &settings, &seen_request, &activity, &mut stop).await;
    }
}

/// Runs one HTTP connection: closes it if no request arrives within the header timeout
/// (a client holding a connection open without sending), and shuts it down gracefully
/// (finishing in-flight requests) when the server stops.
async fn drive<C>(
    conn: C,
    peer: SocketAddr,
    settings: &ConnSettings,
    seen_request: &AtomicBool,
    activity: &Activity,
    stop: &mut watch::Receiver<bool>,
) where
    C: hyper_util::server::graceful::GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let first_request_deadline = tokio::time::sleep(settings.header_read_timeout);
    tokio::pin!(first_request_deadline);
    let mut closing = false;
    let mut idle_check = tokio::time::interval(settings.idle_timeout.min(Duration::from_secs(1)));
    // A `select!` precondition is only evaluated on entry, so whether a request was seen
    // is checked again when the deadline fires: a busy keep-alive connection must not be
    // closed just because it is older than the header timeout.
    let mut deadline_passed = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = &mut first_request_deadline, if !closing && !deadline_passed => {
                deadline_passed = true;
                if seen_request.load(Ordering::Relaxed) {
                    continue;
                }
                tracing::info!(%peer, timeout = ?settings.header_read_timeout,
                    "client sent no request within the header read timeout; closing");
                break;
            }
            _ = idle_check.tick(), if !closing => {
                if activity.idle_for().is_some_and(|idle| idle >= settings.idle_timeout) {
                    tracing::debug!(%peer, timeout = ?settings.idle_timeout,
                        "connection idle for longer than idle_timeout; closing");
                    break;
                }
            }
            _ = stop.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    // Idle, silent client: ask nicely, then drop the socket.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
}

/// Requests in progress on one connection and when the last one ended, for the idle
/// timeout.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last: std::sync::Mutex<Instant>,
}

/// Marks one request in progress until dropped.
struct Busy<'a>(&'a Activity);

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            last: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn begin(&self) -> Busy<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self)
    }

    /// How long the connection has had no request in progress; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(
            self.last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
        )
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_quoted_values() {
        assert_eq!(
            redact_quoted("invalid type: string \"s3cret\", expected a sequence at line 1"),
            "invalid type: string \"…\", expected a sequence at line 1"
        );
    }
}
