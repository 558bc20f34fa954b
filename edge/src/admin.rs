//! Plain-HTTP admin listener: `/healthz` (process up), `/readyz` (accepting and authd
//! reachable), `/metrics` (Prometheus text of every registered encoder).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::backend::Reachability;

/// Produces one registry's exposition text.
pub type Encoder = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
pub struct AdminState {
    /// False once shutdown has begun.
    pub accepting: Arc<AtomicBool>,
    pub authd: Reachability,
    pub encoders: Vec<Encoder>,
}

impl AdminState {
    pub fn ready(&self) -> bool {
        self.accepting.load(Ordering::SeqCst) && self.authd.get()
    }

    /// Concatenates the registries, keeping a single trailing `# EOF`.
    fn metrics(&self) -> String {
        let mut out = String::new();
        for e in &self.encoders {
            let text = e();
            out.push_str(text.strip_suffix("# EOF\n").unwrap_or(&text));
        }
        out.push_str("# EOF\n");
        out
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn route(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if state.ready() => respond(StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => {
            let why = if state.accepting.load(Ordering::SeqCst) {
                "no healthy authd replica"
            } else {
                "shutting down"
            };
            respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            )
        }
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, state: AdminState) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let r = route(&req, &state);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
