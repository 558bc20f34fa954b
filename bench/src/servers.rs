//! The benchmark's own small servers, each run as a separate process so its CPU time can be
//! measured on its own:
//! - the Basic-auth service (`GET /basic-auth/{user}`, 200 or 401), the identity system
//!   behind the seed and behind our `basic_auth` source, made fast so it is never the limit;
//! - the fixed-answer HTTPS ceiling: hyper + rustls, reads the body, answers one constant
//!   TokenReview;
//! - the split ceiling: the same plus one tonic `Authenticate` call per review to a process
//!   that answers a constant verdict;
//! - the service behind Envoy in the `envoy` mode: plain HTTP/1.1, 200 to everything.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use authd_proto::v1::authenticator_client::AuthenticatorClient;
use authd_proto::v1::authenticator_server::{Authenticator, AuthenticatorServer};
use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse, User};
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

use crate::tokens::{password_ok, GROUP};

fn response(status: StatusCode, body: &'static [u8]) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The user and password of a `Basic` Authorization header.
fn basic_credentials(req: &Request<Incoming>) -> Option<(String, String)> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// The Basic-auth service's answer to one request.
pub(crate) fn basic_auth(secret: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(user) = req.uri().path().strip_prefix("/basic-auth/") else {
        return response(StatusCode::NOT_FOUND, b"{}");
    };
    match basic_credentials(req) {
        Some((u, p)) if u == user && password_ok(secret, &u, &p) => {
            response(StatusCode::OK, b"{\"authenticated\": true}")
        }
        _ => {
            let mut r = response(StatusCode::UNAUTHORIZED, b"{}");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"bench\""),
            );
            r
        }
    }
}

/// Serves the Basic-auth service on plain HTTP/1.1 with keep-alive.
pub async fn basic_auth_server(listen: SocketAddr, secret: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("bench-basic-auth ready http={}", listener.local_addr()?);
    let secret: Arc<str> = secret.into();
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(_) => {
                // Out of descriptors under a connection storm (the seed opens one per review).
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let secret = secret.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let r = basic_auth(&secret, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// The service behind Envoy: plain HTTP/1.1 with keep-alive, a small fixed 200 to every
/// request (the identity headers Envoy adds are not read: the bench measures the path).
pub async fn upstream(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("bench-upstream ready http={}", listener.local_addr()?);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(response(StatusCode::OK, b"{\"ok\":true}"))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// `Check` answered at once with the shape of authd's allowed answer.
struct NoopAuthz;

#[tonic::async_trait]
impl envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization for NoopAuthz {
    async fn check(
        &self,
        _request: tonic::Request<envoy_types::pb::envoy::service::auth::v3::CheckRequest>,
    ) -> Result<
        tonic::Response<envoy_types::pb::envoy::service::auth::v3::CheckResponse>,
        tonic::Status,
    > {
        use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
        use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
        use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, OkHttpResponse};
        let set = |key: &str, value: &str| HeaderValueOption {
            header: Some(HeaderValue {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
            append_action: 2, // OVERWRITE_IF_EXISTS_OR_ADD, as authd sets it
            ..Default::default()
        };
        Ok(tonic::Response::new(CheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![
                    set("x-kube-authd-user", "bench"),
                    set("x-kube-authd-uid", "1"),
                    set("x-kube-authd-groups", GROUP),
                ],
                headers_to_remove: vec!["authorization".into()],
                ..Default::default()
            })),
            ..Default::default()
        }))
    }
}

/// Serves `NoopAuthz` over mutual TLS until killed.
pub async fn noop_authz(
    listen: SocketAddr,
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> anyhow::Result<()> {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let read = |p: &Path| std::fs::read(p).with_context(|| p.display().to_string());
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .client_ca_root(Certificate::from_pem(read(client_ca)?));
    let listener = TcpListener::bind(listen).await?;
    println!("bench-noop-authz ready grpc={}", listener.local_addr()?);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Server::builder()
        .tls_config(tls)?
        .add_service(
            envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer::new(NoopAuthz),
        )
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// A constant TokenReview answer, the shape our edge gives for an authenticated user.
const FIXED_REVIEW: &[u8] = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","metadata":{"creationTimestamp":null},"spec":{"audiences":["https://kubernetes.default.svc.cluster.local"]},"status":{"authenticated":true,"user":{"username":"bench","uid":"1","groups":["system:masters"]}}}
"#;

async fn fixed_answer(
    req: Request<Incoming>,
    authd: Option<AuthenticatorClient<Channel>>,
) -> Response<Full<Bytes>> {
    if req.into_body().collect().await.is_err() {
        return response(StatusCode::BAD_REQUEST, b"{}");
    }
    if let Some(mut client) = authd {
        let call = client.authenticate(AuthenticateRequest {
            token: "bench-fixed".into(),
            audiences: vec![crate::tokens::AUDIENCE.into()],
            cluster: "default".into(),
            request_id: String::new(),
        });
        match call.await {
            Ok(r) if r.get_ref().authenticated => {}
            _ => return response(StatusCode::INTERNAL_SERVER_ERROR, b"{}"),
        }
    }
    response(StatusCode::OK, FIXED_REVIEW)
}

/// The fixed-answer HTTPS server; with `authd`, one gRPC hop per review first.
pub async fn fixed_https(
    listen: SocketAddr,
    cert: &Path,
    key: &Path,
    authd: Option<String>,
) -> anyhow::Result<()> {
    let certs = authd_runtime::pem::load_certs(cert, "cert")?;
    let key = authd_runtime::pem::load_key(key, "key")?;
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let client = match authd {
        Some(ep) => Some(AuthenticatorClient::new(
            Endpoint::from_shared(ep)?.tcp_nodelay(true).connect_lazy(),
        )),
        None => None,
    };
    let listener = TcpListener::bind(listen).await?;
    println!("bench-fixed ready https=https://{}", listener.local_addr()?);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let svc = hyper::service::service_fn(move |req| {
                let client = client.clone();
                async move { Ok::<_, Infallible>(fixed_answer(req, client).await) }
            });
            let io = TokioIo::new(tls);
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(512)
                    .serve_connection(io, svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            }
        });
    }
}

/// A gRPC Authenticator that answers every call with the same authenticated user.
struct FixedVerdict;

#[tonic::async_trait]
impl Authenticator for FixedVerdict {
    async fn authenticate(
        &self,
        _request: tonic::Request<AuthenticateRequest>,
    ) -> Result<tonic::Response<AuthenticateResponse>, tonic::Status> {
        Ok(tonic::Response::new(AuthenticateResponse {
            authenticated: true,
            user: Some(User {
                username: "bench".into(),
                uid: "1".into(),
                groups: vec![GROUP.into()],
                extra: Default::default(),
            }),
            ..Default::default()
        }))
    }
}

pub async fn fixed_authd(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("bench-fixed-authd ready grpc={}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(AuthenticatorServer::new(FixedVerdict))
        .serve_with_incoming(tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |conn| {
                // As authd does: no Nagle delay on small answers.
                if let Ok(tcp) = &conn {
                    let _ = tcp.set_nodelay(true);
                }
                conn
            },
        ))
        .await
        .context("fixed authd gRPC server")
}
