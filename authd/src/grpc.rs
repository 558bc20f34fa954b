//! The gRPC face of authd: Authenticator, standard health and server reflection.

use authd_proto::v1::authenticator_server::{Authenticator, AuthenticatorServer};
use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use tonic::{Request, Response, Status};

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
        self.authd
            .metrics()
            .grpc_requests
            .get_or_create(&ClientLabels {
                client: ClientIdentity::name_of(&request),
                method: "Authenticate",
            })
            .inc();
        Ok(Response::new(
            self.authd.authenticate(request.into_inner()).await,
        ))
    }
}
