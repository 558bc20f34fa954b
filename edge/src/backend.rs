//! The one interface through which the edge reaches authd: a tower `Service` from
//! `AuthenticateRequest` to `AuthenticateResponse`. In split mode it is a tonic client; in
//! the all-in-one binary it is authd's own service, called in-process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use authd_proto::v1::authenticator_client::AuthenticatorClient;
use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use tonic::transport::{Channel, Endpoint};
use tower::util::BoxCloneSyncService;

/// Why authd gave no verdict. Every variant becomes the retryable HTTP 500.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("authd is unavailable: {0}")]
    Unavailable(String),
    #[error("authd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("authd refused the request: {0}")]
    Refused(String),
}

pub type Backend = BoxCloneSyncService<AuthenticateRequest, AuthenticateResponse, BackendError>;

/// Whether authd is reachable, as last seen by the health probe.
#[derive(Clone)]
pub struct Reachability(Arc<AtomicBool>);

impl Reachability {
    pub fn always() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A lazily connecting gRPC channel to one authd endpoint; reconnects by itself.
pub fn channel(endpoint: &str, connect_timeout: Duration) -> anyhow::Result<Channel> {
    let ep = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| anyhow::anyhow!("authd.endpoint {endpoint:?}: {e}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(ep.connect_lazy())
}

/// The split-mode backend: each review is one `Authenticate` call with the review deadline
/// carried as the gRPC timeout.
pub fn grpc(channel: Channel, deadline: Duration) -> Backend {
    let client = AuthenticatorClient::new(channel);
    let svc = tower::service_fn(move |req: AuthenticateRequest| {
        let mut client = client.clone();
        async move {
            let mut request = tonic::Request::new(req);
            request.set_timeout(deadline);
            match tokio::time::timeout(deadline, client.authenticate(request)).await {
                Err(_) => Err(BackendError::Timeout(deadline)),
                Ok(Ok(resp)) => Ok(resp.into_inner()),
                Ok(Err(status)) => Err(match status.code() {
                    tonic::Code::InvalidArgument | tonic::Code::PermissionDenied => {
                        BackendError::Refused(status.message().to_owned())
                    }
                    tonic::Code::DeadlineExceeded => BackendError::Timeout(deadline),
                    _ => BackendError::Unavailable(format!(
                        "{:?}: {}",
                        status.code(),
                        status.message()
                    )),
                }),
            }
        }
    });
    BoxCloneSyncService::new(svc)
}

/// Probes authd's gRPC health service every `interval`; logs transitions.
pub fn probe(channel: Channel, interval: Duration) -> Reachability {
    let state = Reachability(Arc::new(AtomicBool::new(false)));
    let flag = state.0.clone();
    tokio::spawn(async move {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        loop {
            let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            });
            req.set_timeout(interval.max(Duration::from_millis(500)));
            let up = matches!(
                client.check(req).await,
                Ok(r) if r.get_ref().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            );
            if flag.swap(up, Ordering::SeqCst) != up {
                if up {
                    tracing::info!("authd is reachable");
                } else {
                    tracing::warn!("authd is not reachable; readiness off");
                }
            }
            tokio::time::sleep(interval).await;
        }
    });
    state
}
