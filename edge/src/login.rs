//! The login routes: people (the `kube-authd login` credential plugin) POST JSON to
//! `/login`, `/token` and `/logout` on the edge's login listener (`[login] listen`, the same
//! serving certificate, no client certificate asked for, nothing else served), and the
//! edge forwards each as one call to authd's `Sessions` service. Like the review
//! side it holds no identity logic: it parses, forwards, and renders authd's answer.
//!
//! Bounded like reviews: at most `login.max_in_flight` calls in progress (more are refused
//! at once with 503), bodies of at most `MAX_BODY` bytes read within `body_read_timeout`,
//! and authd's answer awaited for at most `review_timeout`. Answers are never cached
//! (`Cache-Control: no-store`); a password or credential is never logged.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use authd_proto::v1::sessions_client::SessionsClient;
use authd_proto::v1::{LoginRequest, LogoutRequest, TokenRequest};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

/// Largest login-route body: a username, a password or a credential, and a cluster name.
const MAX_BODY: usize = 8 * 1024;

/// One call to authd's `Sessions` service.
pub enum SessionCall {
    Login(LoginRequest),
    Token(TokenRequest),
    Logout(LogoutRequest),
}

/// authd's answer to a [`SessionCall`], as the JSON body to send back.
pub type SessionAnswer = Result<serde_json::Value, tonic::Status>;

type BoxAnswer = Pin<Box<dyn Future<Output = SessionAnswer> + Send>>;

/// The way to authd's `Sessions` service: over gRPC to the replicas, or in-process.
#[derive(Clone)]
pub struct SessionBackend(Arc<dyn Fn(SessionCall) -> BoxAnswer + Send + Sync>);

impl SessionBackend {
    pub fn from_fn(f: impl Fn(SessionCall) -> BoxAnswer + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Calls over gRPC, starting at the next replica in turn and moving on to the next
    /// one when a replica cannot be reached (a login is rare; no balancing needed).
    pub fn grpc(channels: Vec<Channel>) -> Self {
        let channels: Arc<[Channel]> = channels.into();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        Self::from_fn(move |call| {
            let channels = channels.clone();
            let start = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async move {
                let mut last = tonic::Status::unavailable("no authd replica is configured");
                for i in 0..channels.len() {
                    let client =
                        SessionsClient::new(channels[(start + i) % channels.len()].clone());
                    match call_grpc(client, &call).await {
                        Err(s) if s.code() == tonic::Code::Unavailable => last = s,
                        other => return other,
                    }
                }
                Err(last)
            })
        })
    }

    fn call(&self, call: SessionCall) -> BoxAnswer {
        (self.0)(call)
    }
}

async fn call_grpc(mut client: SessionsClient<Channel>, call: &SessionCall) -> SessionAnswer {
    Ok(match call {
        SessionCall::Login(r) => render_login(client.login(r.clone()).await?.into_inner()),
        SessionCall::Token(r) => render_token(client.token(r.clone()).await?.into_inner()),
        SessionCall::Logout(r) => render_logout(client.logout(r.clone()).await?.into_inner()),
    })
}

/// The Sessions backend of `authd-edge serve`: a lazily connecting channel per configured
/// replica (for DNS discovery, one to the name, resolved at each connect), over the same
/// TLS as reviews.
pub fn grpc_backend(authd: &crate::config::AuthdConfig) -> anyhow::Result<SessionBackend> {
    let tls = crate::tls::reloading_client(authd)?;
    let targets = match &authd.replicas {
        crate::config::Replicas::Static(targets) => targets.clone(),
        crate::config::Replicas::Dns { host, port, .. } => vec![crate::config::Target {
            addr: format!("{host}:{port}"),
            server_name: host.clone(),
        }],
    };
    let channels = targets
        .iter()
        .map(|t| crate::channel::connect(t, tls.clone(), authd.connect_timeout))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(SessionBackend::grpc(channels))
}

/// The JSON body of a `Login` answer.
pub fn render_login(r: authd_proto::v1::LoginResponse) -> serde_json::Value {
    json!({
        "session": r.session,
        "sessionId": r.session_id,
        "username": r.username,
        "expiresUnixMs": r.expires_unix_ms,
        "idleExpiresUnixMs": r.idle_expires_unix_ms,
    })
}

/// The JSON body of a `Token` answer.
pub fn render_token(r: authd_proto::v1::TokenResponse) -> serde_json::Value {
    json!({
        "token": r.token,
        "expiresUnixMs": r.expires_unix_ms,
        "username": r.username,
        "groups": r.groups,
        "sessionExpiresUnixMs": r.session_expires_unix_ms,
        "sessionIdleExpiresUnixMs": r.session_idle_expires_unix_ms,
    })
}

/// The JSON body of a `Logout` answer.
pub fn render_logout(r: authd_proto::v1::LogoutResponse) -> serde_json::Value {
    json!({ "ended": r.ended })
}

/// Which login endpoint a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginRoute {
    Login,
    Token,
    Logout,
}

impl LoginRoute {
    pub fn parse(path: &str) -> Option<Self> {
        match path {
            "/login" => Some(Self::Login),
            "/token" => Some(Self::Token),
            "/logout" => Some(Self::Logout),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    session: String,
    cluster: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogoutBody {
    session: String,
}

/// The login side of the edge.
pub struct Login {
    backend: SessionBackend,
    slots: Semaphore,
    body_read_timeout: Duration,
    call_timeout: Duration,
}

impl Login {
    pub fn new(
        backend: SessionBackend,
        max_in_flight: usize,
        body_read_timeout: Duration,
        call_timeout: Duration,
    ) -> Self {
        Self {
            backend,
            slots: Semaphore::new(max_in_flight),
            body_read_timeout,
            call_timeout,
        }
    }

    /// Answers one request to a login route from `client`.
    pub async fn handle(
        &self,
        route: LoginRoute,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<Full<Bytes>> {
        if req.method() != Method::POST {
            let mut r = answer(
                StatusCode::METHOD_NOT_ALLOWED,
                &error_body("the login routes take POST"),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        let Ok(_slot) = self.slots.try_acquire() else {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &error_body("too many logins in progress; try again"),
            );
        };
        let body = Limited::new(req.into_body(), MAX_BODY).collect();
        let body = match tokio::time::timeout(self.body_read_timeout, body).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    &error_body(&format!(
                        "the body could not be read or is over {MAX_BODY} bytes"
                    )),
                )
            }
            Err(_) => {
                return answer(
                    StatusCode::REQUEST_TIMEOUT,
                    &error_body("the body was not received in time"),
                )
            }
        };
        // serde's messages may quote what was sent (a password): never repeated back.
        let bad = || {
            answer(
                StatusCode::BAD_REQUEST,
                &error_body(match route {
                    LoginRoute::Login => "expected JSON {\"username\", \"password\"}",
                    LoginRoute::Token => "expected JSON {\"session\", \"cluster\"}",
                    LoginRoute::Logout => "expected JSON {\"session\"}",
                }),
            )
        };
        let call = match route {
            LoginRoute::Login => match serde_json::from_slice::<LoginBody>(&body) {
                Ok(b) => SessionCall::Login(LoginRequest {
                    username: b.username,
                    password: b.password,
                    client_address: client.ip().to_string(),
                }),
                Err(_) => return bad(),
            },
            LoginRoute::Token => match serde_json::from_slice::<TokenBody>(&body) {
                Ok(b) => SessionCall::Token(TokenRequest {
                    session: b.session,
                    cluster: b.cluster,
                }),
                Err(_) => return bad(),
            },
            LoginRoute::Logout => match serde_json::from_slice::<LogoutBody>(&body) {
                Ok(b) => SessionCall::Logout(LogoutRequest { session: b.session }),
                Err(_) => return bad(),
            },
        };
        match tokio::time::timeout(self.call_timeout, self.backend.call(call)).await {
            Ok(Ok(value)) => answer(StatusCode::OK, &value),
            Ok(Err(status)) => {
                let code = match status.code() {
                    tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                    tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                    tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                    tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                    tonic::Code::Unimplemented => StatusCode::NOT_FOUND,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                if code == StatusCode::SERVICE_UNAVAILABLE {
                    tracing::warn!(?route, code = ?status.code(), error = status.message(),
                        "login route: authd could not answer");
                }
                answer(code, &error_body(status.message()))
            }
            Err(_) => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &error_body("authd did not answer in time"),
            ),
        }
    }
}

/// The login listener's answer to any other path.
pub fn not_found() -> Response<Full<Bytes>> {
    answer(
        StatusCode::NOT_FOUND,
        &error_body("the login listener serves POST /login, /token and /logout only"),
    )
}

fn error_body(message: &str) -> serde_json::Value {
    json!({ "error": message })
}

fn answer(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(LoginRoute::parse("/login"), Some(LoginRoute::Login));
        assert_eq!(LoginRoute::parse("/token"), Some(LoginRoute::Token));
        assert_eq!(LoginRoute::parse("/logout"), Some(LoginRoute::Logout));
        for other in ["/login/", "/authenticate", "/", "/tokens"] {
            assert_eq!(LoginRoute::parse(other), None);
        }
    }
}
