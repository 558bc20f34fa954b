//! The gRPC face of authd: Authenticator, standard health and server reflection. A caller
//! may only ask for the clusters its `[clients.NAME]` entry grants (PERMISSION_DENIED).

use authd_proto::v1::authenticator_server::{Authenticator, AuthenticatorServer};
use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use tonic::{Request, Response, Status};

use crate::access::ClusterGrant;
use crate::authz::ClientIdentity;
use crate::metrics::ClientLabels;
use crate::service::Authd;

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
        let client = ClientIdentity::name_of(&request);
        // Set by the access layer on every call; without it, no cluster is granted.
        let granted = match request.extensions().get::<ClusterGrant>() {
            Some(grant) => grant.check(&client.0, &request.get_ref().cluster),
            None => Err("no cluster grant for this call".to_owned()),
        };
        if let Err(why) = granted {
            tracing::warn!(
                client = &*client.0,
                reason = why,
                "Authenticate refused: PERMISSION_DENIED"
            );
            return Err(Status::permission_denied(why));
        }
        self.authd
            .metrics()
            .grpc_requests
            .get_or_create(&ClientLabels {
                client,
                method: "Authenticate",
            })
            .inc();
        Ok(Response::new(
            self.authd.authenticate(request.into_inner()).await,
        ))
    }
}
