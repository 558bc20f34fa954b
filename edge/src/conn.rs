//! The connection side of the HTTPS endpoint: accept, the TLS handshake, HTTP/2 or
//! HTTP/1.1 chosen by ALPN, timeouts against slow or silent clients, and the graceful
//! drain. Every connection holds a clone of a drain sender, so shutdown can wait for the
//! last one to finish (as in mini-redis), and a permit of the connection cap. What a
//! request means is `handler.rs`'s business.
//!
//! What one connection can make the edge hold is bounded here: at most `max_connections`
//! of them, each with at most `max_concurrent_streams` HTTP/2 streams, small flow-control
//! windows and header limits (see the constants); request bodies are bounded by the
//! handler's admission. docs/configuration.md ("Memory") adds it up.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use authd_runtime::Reloading;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::handler::Handler;
use crate::route::Route;
use crate::tls::{handshake_refusal, ServerTls};

/// Failed handshakes are the cheapest thing a client can send: at most one log line per
/// second per kind of failure, each counting the lines suppressed before it, so a flood of
/// them cannot fill the disk or drown the other lines.
static HANDSHAKE_LOG: HandshakeLog = HandshakeLog::new();

/// The kinds of failed handshake that are logged apart, so that one kind flooding does not
/// hide another (an operator's expired certificate among a scanner's garbage).
#[derive(Clone, Copy)]
enum HandshakeFailure {
    /// The client certificate was refused; the reason from [`handshake_refusal`].
    Refused(&'static str),
    Other,
    Timeout,
}

impl HandshakeFailure {
    fn slot(self) -> usize {
        match self {
            HandshakeFailure::Refused(why) if why.contains("none was presented") => 0,
            HandshakeFailure::Refused(why) if why.contains("expired") => 1,
            HandshakeFailure::Refused(_) => 2,
            HandshakeFailure::Other => 3,
            HandshakeFailure::Timeout => 4,
        }
    }
}

/// A one-line-per-second gate per [`HandshakeFailure`] slot; lock-free.
struct HandshakeLog {
    /// Per slot: the first second (since [`HandshakeLog::epoch`]) at which a line may be
    /// written again.
    next: [AtomicU64; 5],
    /// Per slot: lines suppressed since the last one written.
    suppressed: [AtomicU64; 5],
}

impl HandshakeLog {
    const fn new() -> Self {
        Self {
            next: [const { AtomicU64::new(0) }; 5],
            suppressed: [const { AtomicU64::new(0) }; 5],
        }
    }

    fn epoch() -> Instant {
        static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
        *EPOCH
    }

    /// `Some(lines suppressed since the last one)` when a line of `kind` may be written now.
    fn admit(&self, kind: HandshakeFailure) -> Option<u64> {
        self.admit_at(kind, Self::epoch().elapsed().as_secs())
    }

    fn admit_at(&self, kind: HandshakeFailure, second: u64) -> Option<u64> {
        let slot = kind.slot();
        let next = self.next[slot].load(Ordering::Relaxed);
        if second >= next
            && self.next[slot]
                .compare_exchange(next, second + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed[slot].swap(0, Ordering::Relaxed));
        }
        self.suppressed[slot].fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// What the TLS handshake established for one connection: the certificate chain the client
/// presented, and the client-certificate rules current when it connected.
pub struct Peer {
    /// The client's address (the login route's throttle counts per address).
    pub addr: SocketAddr,
    chain: Option<Vec<rustls_pki_types::CertificateDer<'static>>>,
    tls: Arc<ServerTls>,
    /// Verdicts per route (keyed by the cluster in the path, `None` for the default
    /// route): kube-apiserver keeps connections open, so each route's chain check runs
    /// once per connection rather than once per review.
    checked: std::sync::Mutex<Vec<(Option<String>, Option<String>)>>,
    /// The request bytes this connection's reviews hold, against its share of the
    /// admission budget (`layer/admission.rs`).
    pub bytes: crate::layer::admission::ConnectionBytes,
}

impl Peer {
    /// Why this connection's client certificate may not use `route`, if it may not.
    pub fn refusal(&self, route: Route<'_>) -> Option<String> {
        let key = route.cluster();
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, verdict)) = checked.iter().find(|(k, _)| k.as_deref() == key) {
            return verdict.clone();
        }
        let verdict = self
            .tls
            .client_auth
            .check(route, self.chain.as_deref())
            .err();
        checked.push((key.map(str::to_owned), verdict.clone()));
        verdict
    }
}

/// Connection-level settings.
#[derive(Clone)]
pub struct ConnSettings {
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
}

/// The HTTP/2 flow-control windows the edge grants: how much request data a client may
/// send before the edge has read it, per stream and per connection. A TokenReview is a
/// few kilobytes; larger bodies (up to `max_body_bytes`) still arrive, in more round trips.
/// Without them hyper's 1 MiB defaults let every connection park a megabyte.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// The largest header block one request may send (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE),
/// and the HTTP/1.1 read buffer that holds a request head: kube-apiserver's are well
/// under a kilobyte.
const MAX_HEADER_BYTES: u32 = 16 * 1024;
const H1_MAX_BUF: usize = 64 * 1024;
/// Streams a client may open and reset before the edge has answered them (rapid reset,
/// CVE-2023-44487), and streams the edge may reset for a client's protocol errors, before
/// the connection is closed with GOAWAY.
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_ERROR_RESETS: usize = 128;

impl From<&Config> for ConnSettings {
    fn from(c: &Config) -> Self {
        Self {
            handshake_timeout: c.handshake_timeout,
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.idle_timeout,
            shutdown_grace: c.shutdown_grace,
            max_connections: c.max_connections,
            max_concurrent_streams: c.max_concurrent_streams,
        }
    }
}

/// What connections are served with: the serving TLS (certificate and client CAs, rebuilt
/// when their files change) and the handler (routes), built from one configuration and
/// replaced as one when `edge.toml` is reloaded.
pub struct Serving {
    pub tls: Reloading<ServerTls>,
    pub handler: Arc<Handler>,
}

/// Accepts TLS connections until `shutdown` resolves, then stops accepting, lets open
/// connections finish their in-flight reviews (up to the grace) and returns. Each
/// connection uses the TLS material current when it was accepted (rotation) and the
/// [`Serving`] current then; when `serving` is replaced (a reload of `edge.toml`) the
/// connections opened before are drained like at shutdown, so no connection answers under
/// two configurations (kube-apiserver opens a new one).
pub async fn serve(
    listener: TcpListener,
    serving: watch::Receiver<Arc<Serving>>,
    settings: ConnSettings,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    // One permit per open connection, from accept to close.
    let open = Arc::new(Semaphore::new(settings.max_connections));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (tcp, peer) = authd_runtime::net::accept(&listener, "edge") => {
                // Over the cap the connection is closed at once rather than left in the
                // listen backlog: the client learns now, and nothing of it is held.
                let Ok(permit) = open.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, max_connections = settings.max_connections,
                        "connection refused: max_connections open");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                // Marked seen here, so only a later replacement drains this connection.
                let mut superseded = serving.clone();
                let current = superseded.borrow_and_update().clone();
                tokio::spawn(connection(
                    tcp,
                    peer,
                    current.tls.get(),
                    current.handler.clone(),
                    settings.clone(),
                    Signals { stop: stop_rx.clone(), superseded },
                    (drain_tx.clone(), permit),
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

/// What ends a connection from outside: the server stopping, or the configuration it was
/// opened under being replaced.
struct Signals {
    stop: watch::Receiver<bool>,
    superseded: watch::Receiver<Arc<Serving>>,
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    server_tls: Arc<ServerTls>,
    handler: Arc<Handler>,
    settings: ConnSettings,
    mut signals: Signals,
    _held: (mpsc::Sender<()>, OwnedSemaphorePermit),
) {
    let acceptor = TlsAcceptor::from(server_tls.config.clone());
    let tls = match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let why = handshake_refusal(&e);
            let kind = why.map_or(HandshakeFailure::Other, HandshakeFailure::Refused);
            if let Some(suppressed) = HANDSHAKE_LOG.admit(kind) {
                match why {
                    Some(why) => {
                        tracing::warn!(%peer, error = %e, suppressed, "{why}; connection closed")
                    }
                    None => tracing::info!(%peer, error = %e, suppressed, "TLS handshake failed"),
                }
            }
            return;
        }
        Err(_) => {
            if let Some(suppressed) = HANDSHAKE_LOG.admit(HandshakeFailure::Timeout) {
                tracing::info!(%peer, suppressed,
                    "TLS handshake not completed within the handshake timeout; closing");
            }
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let client = Arc::new(Peer {
        addr: peer,
        chain: tls.get_ref().1.peer_certificates().map(<[_]>::to_vec),
        tls: server_tls,
        checked: std::sync::Mutex::new(Vec::new()),
        bytes: Default::default(),
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
            .max_concurrent_streams(settings.max_concurrent_streams)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_BYTES)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_ERROR_RESETS)
            .serve_connection(io, svc);
        drive(
            conn,
            peer,
            &settings,
            &seen_request,
            &activity,
            &mut signals,
        )
        .await;
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(H1_MAX_BUF)
            .keep_alive(true)
            .serve_connection(io, svc);
        drive(
            conn,
            peer,
            &settings,
            &seen_request,
            &activity,
            &mut signals,
        )
        .await;
    }
}

/// Runs one HTTP connection: closes it if no request arrives within the header timeout
/// (a client holding a connection open without sending), and shuts it down gracefully
/// (finishing in-flight requests) when the server stops or its configuration is replaced.
async fn drive<C>(
    conn: C,
    peer: SocketAddr,
    settings: &ConnSettings,
    seen_request: &AtomicBool,
    activity: &Activity,
    signals: &mut Signals,
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
    let mut reloadable = true;
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
            _ = signals.stop.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            changed = signals.superseded.changed(), if !closing && reloadable => {
                if changed.is_err() {
                    // Nothing can replace the configuration any more.
                    reloadable = false;
                    continue;
                }
                tracing::debug!(%peer, "configuration reloaded; draining a connection opened under the previous one");
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
    fn handshake_log_writes_one_line_per_second_per_kind() {
        let log = HandshakeLog::new();
        assert_eq!(log.admit_at(HandshakeFailure::Other, 7), Some(0));
        for _ in 0..500 {
            assert_eq!(log.admit_at(HandshakeFailure::Other, 7), None);
        }
        // Another kind in the same second is not hidden by the flood.
        assert_eq!(log.admit_at(HandshakeFailure::Timeout, 7), Some(0));
        let expired = HandshakeFailure::Refused("client certificate refused: expired");
        assert_eq!(log.admit_at(expired, 7), Some(0));
        assert_eq!(log.admit_at(HandshakeFailure::Other, 8), Some(500));
        assert_eq!(log.admit_at(HandshakeFailure::Other, 8), None);
        assert_eq!(log.admit_at(HandshakeFailure::Other, 20), Some(1));
    }
}
