//! Accepting TCP connections without spinning when accept fails.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long to wait after a failed accept before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection on `listener`. A failed accept (out of file descriptors and the like)
/// is logged and retried after a short pause instead of in a busy loop. Cancel-safe: can be
/// a `tokio::select!` branch.
pub async fn accept(listener: &TcpListener, what: &'static str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(a) => return a,
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
