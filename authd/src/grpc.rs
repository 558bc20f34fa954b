//! The gRPC face of authd: Authenticator, standard health and server reflection.

use authd_proto::v1::authenticator_server::{Authenticator, AuthenticatorServer};
use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use tonic::{Request, Response, Status};

use crate::authz::ClientIdentity;
use crate::metrics::ClientLabels;
use crate::service::Authd;

/// Tokens longer than this are refused as malformed before any work is done.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

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
                client: ClientIdentity::name_of(&request).to_owned(),
                method: "Authenticate",
            })
            .inc();
        let req = request.into_inner();
        if req.token.len() > MAX_TOKEN_BYTES {
            return Err(Status::invalid_argument(format!(
                "token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        if req.token.is_empty() {
            return Err(Status::invalid_argument("token is empty"));
        }
        Ok(Response::new(self.authd.authenticate(req).await))
    }
}
