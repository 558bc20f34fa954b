//! The gRPC face of authd: Authenticator, standard health and server reflection. A caller
//! may only ask for the clusters its `[clients.NAME]` entry grants (PERMISSION_DENIED).

use authd_proto::v1::authenticator_server::{Authenticator, AuthenticatorServer};
use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use tonic::{Request, Response, Status};

use crate::access::Caller;
use crate::service::{Authd, Via};

pub struct AuthenticatorGrpc {
    authd: Authd,
}

impl AuthenticatorGrpc {
    pub fn server(authd: Authd) -> AuthenticatorServer<Self> {
        AuthenticatorServer::new(Self { authd })
    }
}

#[tonic::async_trait]
impl Authenticator for AuthenticatorGrpc {
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        // Set by the access layer on every call; without it, no cluster is granted.
        let granted = match Caller::of(&request) {
            Some(caller) => caller
                .grant
                .check(&caller.identity.0, &request.get_ref().cluster)
                .map(|()| caller),
            None => Err("no caller identity for this call".to_owned()),
        };
        let via = match granted {
            Ok(caller) => {
                caller.authenticate_calls.inc();
                Via {
                    entry: "authenticate",
                    caller: self.authd.audits().then(|| caller.identity.0.clone()),
                }
            }
            Err(why) => {
                let client = Caller::of(&request).map_or("", |c| &*c.identity.0);
                tracing::warn!(
                    client,
                    reason = why,
                    "Authenticate refused: PERMISSION_DENIED"
                );
                return Err(Status::permission_denied(why));
            }
        };
        Ok(Response::new(
            self.authd.review(request.into_inner(), via).await,
        ))
    }
}
