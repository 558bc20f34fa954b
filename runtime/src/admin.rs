//! The plain-HTTP admin listener both servers run: `/healthz` (process up), `/readyz`
//! (accepting, and every readiness check passes), `/metrics` (Prometheus text of every
//! registered encoder).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Produces one registry's exposition text.
pub type Encoder = Arc<dyn Fn() -> String + Send + Sync>;

/// A condition for readiness besides accepting (the edge: an authd replica is reachable);
/// `Err` says why the process is not ready.
pub type Check = Arc<dyn Fn() -> Result<(), &'static str> + Send + Sync>;

/// A shared flag, flipped to false first thing on shutdown so load balancers drain us.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the admin routes answer from.
#[derive(Clone)]
pub struct AdminState {
    /// False before serving and once shutdown has begun.
    pub accepting: Readiness,
    /// Further conditions `/readyz` requires, in order.
    pub checks: Vec<Check>,
    /// Registries concatenated by `/metrics`.
    pub encoders: Vec<Encoder>,
}

impl AdminState {
    /// `Err` says why the process is not ready.
    fn ready(&self) -> Result<(), &'static str> {
        if !self.accepting.get() {
            return Err("shutting down");
        }
        self.checks.iter().try_for_each(|check| check())
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

fn route<B>(req: &Request<B>, state: &AdminState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match state.ready() {
            Ok(()) => respond(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves until the task is dropped. A failed accept backs off instead of spinning.
pub async fn serve(listener: TcpListener, state: AdminState) {
    loop {
        let (stream, _) = crate::net::accept(&listener, "admin").await;
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = route(&req, &state);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(path: &str, state: &AdminState) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let req = Request::get(path).body(()).expect("static request");
        let r = route(&req, state);
        let status = r.status();
        let body = r.into_body().collect().await.expect("infallible body");
        (
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        )
    }

    #[tokio::test]
    async fn readiness_says_why() {
        let accepting = Readiness::default();
        let reachable = Arc::new(AtomicBool::new(false));
        let r = reachable.clone();
        let state = AdminState {
            accepting: accepting.clone(),
            checks: vec![Arc::new(move || {
                if r.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("no healthy authd replica")
                }
            })],
            encoders: vec![
                Arc::new(|| "a 1\n# EOF\n".to_owned()),
                Arc::new(|| "b 2\n# EOF\n".to_owned()),
            ],
        };
        assert_eq!(
            get("/healthz", &state).await,
            (StatusCode::OK, "ok\n".into())
        );
        assert_eq!(
            get("/readyz", &state).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: shutting down\n".into()
            )
        );
        accepting.set(true);
        assert_eq!(
            get("/readyz", &state).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no healthy authd replica\n".into()
            )
        );
        reachable.store(true, Ordering::SeqCst);
        assert_eq!(
            get("/readyz", &state).await,
            (StatusCode::OK, "ready\n".into())
        );
        assert_eq!(
            get("/metrics", &state).await,
            (StatusCode::OK, "a 1\nb 2\n# EOF\n".into())
        );
        assert_eq!(get("/nope", &state).await.0, StatusCode::NOT_FOUND);
    }
}
