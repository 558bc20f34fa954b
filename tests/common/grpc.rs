//! An internal gRPC client of authd, as the hostile tests play it: plain calls, and calls
//! its caller gives up on (the review is cancelled inside authd).

use std::time::Duration;

use authd_proto::v1::authenticator_client::AuthenticatorClient;
use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use tonic::transport::Channel;

use crate::common::Proc;

pub type Client = AuthenticatorClient<Channel>;

/// A connection of its own to `authd`'s plaintext gRPC listener.
pub async fn connect(authd: &Proc) -> Client {
    AuthenticatorClient::connect(format!("http://{}", authd.ready_field("grpc")))
        .await
        .expect("connect to authd")
}

pub async fn ask(
    c: &Client,
    token: &str,
    cluster: &str,
) -> Result<AuthenticateResponse, tonic::Status> {
    c.clone()
        .authenticate(AuthenticateRequest {
            token: token.to_owned(),
            cluster: cluster.to_owned(),
            request_id: "hostile".into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// A review its caller gives up on after `after`, as the edge does: the call carries a
/// `grpc-timeout`, at which authd's server drops the handler (the review is cancelled
/// there). `true` if it was cancelled rather than answered. Each on a connection of its
/// own, as separate callers: a burst of cancelled streams on one connection makes the
/// server close it (too many resets), its own protection and not what is tested here.
pub async fn cancelled(authd: &Proc, token: &str, after: Duration) -> bool {
    let c = connect(authd).await;
    let mut req = tonic::Request::new(AuthenticateRequest {
        token: token.to_owned(),
        cluster: "default".into(),
        request_id: "hostile".into(),
        ..Default::default()
    });
    req.set_timeout(after);
    let answer = tokio::time::timeout(after + Duration::from_secs(2), c.clone().authenticate(req))
        .await
        .expect("the server gave up at the call's deadline");
    match answer {
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
            ) =>
        {
            true
        }
        other => {
            eprintln!("answered before the caller gave up: {other:?}");
            false
        }
    }
}

/// The authenticated user name of an answer, if it is a yes.
pub fn user(r: &AuthenticateResponse) -> Option<&str> {
    r.authenticated
        .then(|| r.user.as_ref().map(|u| u.username.as_str()))
        .flatten()
}
