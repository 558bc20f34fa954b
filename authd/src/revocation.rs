//! The Admin gRPC service: revoke one token or everything cached for one user, on every
//! replica. Only callers the Admin gate (`authz::AdminAuthz`) lets through get here.

use authd_proto::v1::admin_server::{Admin, AdminServer};
use authd_proto::v1::{RevokeResponse, RevokeTokenRequest, RevokeUserRequest};
use tonic::{Request, Response, Status};

use crate::authz::AdminAuthz;
use crate::metrics::ClientLabels;
use crate::service::Authd;
use crate::service::MAX_TOKEN_BYTES;

pub struct AdminGrpc {
    authd: Authd,
    /// Who may call this service.
    authz: AdminAuthz,
}

impl AdminGrpc {
    pub fn server(authd: Authd, authz: AdminAuthz) -> AdminServer<Self> {
        AdminServer::new(Self { authd, authz })
    }

    fn authorize<T>(&self, request: &Request<T>, method: &'static str) -> Result<(), Status> {
        let client = self.authz.check(request)?;
        self.authd
            .metrics()
            .grpc_requests
            .get_or_create(&ClientLabels { client, method })
            .inc();
        Ok(())
    }
}

fn answer(
    result: Result<u64, crate::cache::redis::SharedCacheError>,
) -> Result<Response<RevokeResponse>, Status> {
    match result {
        Ok(removed) => Ok(Response::new(RevokeResponse { removed })),
        Err(e) => Err(Status::unavailable(format!(
            "{e}; this replica dropped its own copies, but others may still hold theirs: retry"
        ))),
    }
}

#[tonic::async_trait]
impl Admin for AdminGrpc {
    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        self.authorize(&request, "RevokeToken")?;
        let token = request.into_inner().token;
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(Status::invalid_argument(format!(
                "token must be 1 to {MAX_TOKEN_BYTES} bytes"
            )));
        }
        answer(self.authd.revoke_token(&token).await)
    }

    async fn revoke_user(
        &self,
        request: Request<RevokeUserRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        self.authorize(&request, "RevokeUser")?;
        let username = request.into_inner().username;
        if username.is_empty() {
            return Err(Status::invalid_argument("username is empty"));
        }
        answer(self.authd.revoke_user(&username).await)
    }
}
