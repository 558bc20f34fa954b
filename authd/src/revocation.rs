//! The Admin gRPC service: revoke a token, a user or a credential id on every replica
//! (a deny-list entry, see `cache/revocations.rs`), lift a revocation, list them; show and
//! reset a username's (or token id's) failed-verification budgets (`throttle.rs`). Only
//! callers the Admin gate (`authz::AdminAuthz`) lets through get here. Every revocation and
//! lifting is one log line naming the caller, the kind, the keyed id and the end; never a
//! token.

use std::sync::Arc;
use std::time::SystemTime;

use authd_proto::v1::admin_server::{Admin, AdminServer};
use authd_proto::v1::{
    EndSessionRequest, EndSessionResponse, ListRevocationsRequest, ListRevocationsResponse,
    ListSessionsRequest, ListSessionsResponse, Revocation, RevokeCredentialRequest, RevokeResponse,
    RevokeTokenRequest, RevokeUserRequest, ThrottleBudget, ThrottleRequest, ThrottleResetResponse,
    ThrottleStatusResponse, UnrevokeRequest, UnrevokeResponse,
};
use tonic::{Request, Response, Status};

use crate::authz::AdminAuthz;
use crate::cache::redis::SharedCacheError;
use crate::cache::revocations::{self, Kind};
use crate::cache::verdict::Revoked;
use crate::metrics::{ClientLabels, Name, SessionLabels};
use crate::service::Authd;
use crate::service::MAX_TOKEN_BYTES;
use crate::throttle::SubjectKind;

/// The subject a throttle call is about: exactly one of username and credential id.
fn throttle_subject(req: &ThrottleRequest) -> Result<(SubjectKind, &str), Status> {
    match (req.username.is_empty(), req.credential_id.is_empty()) {
        (false, true) if req.username.len() <= 1024 => Ok((SubjectKind::User, &req.username)),
        (true, false) if req.credential_id.len() <= 256 => {
            Ok((SubjectKind::TokenId, &req.credential_id))
        }
        _ => Err(Status::invalid_argument(
            "give exactly one of username (at most 1024 bytes) and credential_id (at most 256)",
        )),
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
use crate::session::Sessions;

pub struct AdminGrpc {
    authd: Authd,
    /// Who may call this service.
    authz: AdminAuthz,
    /// The login sessions, when configured (`ListSessions`, `EndSession`).
    sessions: Option<Arc<Sessions>>,
}

impl AdminGrpc {
    pub fn server(
        authd: Authd,
        authz: AdminAuthz,
        sessions: Option<Arc<Sessions>>,
    ) -> AdminServer<Self> {
        AdminServer::new(Self {
            authd,
            authz,
            sessions,
        })
    }

    fn authorize<T>(&self, request: &Request<T>, method: &'static str) -> Result<Name, Status> {
        let client = self.authz.check(request)?;
        self.authd
            .metrics()
            .grpc_requests
            .get_or_create(&ClientLabels {
                client: client.clone(),
                method,
            })
            .inc();
        Ok(client)
    }
}

impl AdminGrpc {
    fn sessions(&self) -> Result<&Arc<Sessions>, Status> {
        self.sessions
            .as_ref()
            .ok_or_else(|| Status::unimplemented("sessions are not configured ([sessions])"))
    }
}

/// `0` is "not said"; a time in the past is allowed (the revocation has already ended).
fn until(ms: u64) -> Option<SystemTime> {
    (ms != 0).then(|| revocations::from_ms(ms))
}

/// Logs the revocation (one line, keyed id only) and answers.
fn answer(
    caller: &Name,
    result: Result<Revoked, SharedCacheError>,
    requested: Kind,
) -> Result<Response<RevokeResponse>, Status> {
    match result {
        Ok(r) => {
            tracing::info!(caller = %caller.0, kind = r.denial.kind.label(), id = %r.denial.id.to_hex(),
                until_unix_ms = r.denial.until_ms(), removed = r.removed, "revoked");
            Ok(Response::new(RevokeResponse {
                removed: r.removed,
                id: r.denial.id.to_hex(),
                until_unix_ms: r.denial.until_ms(),
            }))
        }
        Err(e) => {
            tracing::warn!(caller = %caller.0, kind = requested.label(), error = %e,
                "revocation in force on this replica only: the shared level did not take it");
            Err(Status::unavailable(format!(
                "{e}; the revocation holds on this replica and is written to Redis when it is \
                 back, but other replicas may not refuse yet: retry"
            )))
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminGrpc {
    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let caller = self.authorize(&request, "RevokeToken")?;
        let req = request.into_inner();
        if req.token.is_empty() || req.token.len() > MAX_TOKEN_BYTES {
            return Err(Status::invalid_argument(format!(
                "token must be 1 to {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let result = self
            .authd
            .revoke_token(&req.token, until(req.until_unix_ms))
            .await;
        answer(&caller, result, Kind::Token)
    }

    async fn revoke_user(
        &self,
        request: Request<RevokeUserRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let caller = self.authorize(&request, "RevokeUser")?;
        let req = request.into_inner();
        if req.username.is_empty() {
            return Err(Status::invalid_argument("username is empty"));
        }
        let result = self
            .authd
            .revoke_user(&req.username, until(req.until_unix_ms))
            .await;
        answer(&caller, result, Kind::User)
    }

    async fn revoke_credential(
        &self,
        request: Request<RevokeCredentialRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let caller = self.authorize(&request, "RevokeCredential")?;
        let req = request.into_inner();
        if req.credential_id.is_empty() || req.credential_id.len() > 256 {
            return Err(Status::invalid_argument(
                "credential_id must be 1 to 256 bytes",
            ));
        }
        let result = self
            .authd
            .revoke_credential(&req.credential_id, until(req.until_unix_ms))
            .await;
        answer(&caller, result, Kind::Credential)
    }

    async fn unrevoke(
        &self,
        request: Request<UnrevokeRequest>,
    ) -> Result<Response<UnrevokeResponse>, Status> {
        let caller = self.authorize(&request, "Unrevoke")?;
        let req = request.into_inner();
        let given = [
            !req.id.is_empty(),
            !req.username.is_empty(),
            !req.token.is_empty(),
            !req.credential_id.is_empty(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(Status::invalid_argument(
                "give exactly one of id, username, token, credential_id",
            ));
        }
        if req.token.len() > MAX_TOKEN_BYTES {
            return Err(Status::invalid_argument("token too long"));
        }
        // By what it revoked: lifted under every key of the cache key ring, as it was made.
        // By id: that one entry.
        let current = self.authd.fingerprinter();
        let (kind, id, result) = if !req.id.is_empty() {
            let id = revocations::parse_id(&req.id)
                .ok_or_else(|| Status::invalid_argument("id: expected 64 hex digits"))?;
            // The kind is only for the log line and the channel: ids never collide.
            let kind = self
                .authd
                .revocations()
                .iter()
                .find(|d| d.id == id)
                .map_or(Kind::Token, |d| d.kind);
            (kind, id, self.authd.unrevoke(kind, id).await)
        } else if !req.username.is_empty() {
            let name = req.username.as_str();
            let lifted = self
                .authd
                .unrevoke_under_every_key(Kind::User, |f| f.username(name));
            (Kind::User, current.username(name), lifted.await)
        } else if !req.token.is_empty() {
            let token = req.token.as_str();
            let lifted = self
                .authd
                .unrevoke_under_every_key(Kind::Token, |f| f.token_id(token));
            (Kind::Token, current.token_id(token), lifted.await)
        } else {
            let c = req.credential_id.as_str();
            let lifted = self
                .authd
                .unrevoke_under_every_key(Kind::Credential, |f| f.credential(c));
            (Kind::Credential, current.credential(c), lifted.await)
        };
        match result {
            Ok(lifted) => {
                tracing::info!(caller = %caller.0, kind = kind.label(), id = %id.to_hex(), lifted,
                    "revocation lifted");
                Ok(Response::new(UnrevokeResponse { lifted }))
            }
            Err(e) => {
                tracing::warn!(caller = %caller.0, kind = kind.label(), id = %id.to_hex(), error = %e,
                    "revocation lifted on this replica only");
                Err(Status::unavailable(format!(
                    "{e}; lifted on this replica only, the next resync may bring it back: retry"
                )))
            }
        }
    }

    async fn list_revocations(
        &self,
        request: Request<ListRevocationsRequest>,
    ) -> Result<Response<ListRevocationsResponse>, Status> {
        self.authorize(&request, "ListRevocations")?;
        let revocations = self
            .authd
            .revocations()
            .into_iter()
            .map(|d| Revocation {
                kind: d.kind.label().into(),
                id: d.id.to_hex(),
                until_unix_ms: d.until_ms(),
            })
            .collect();
        Ok(Response::new(ListRevocationsResponse { revocations }))
    }

    async fn throttle_status(
        &self,
        request: Request<ThrottleRequest>,
    ) -> Result<Response<ThrottleStatusResponse>, Status> {
        self.authorize(&request, "ThrottleStatus")?;
        let req = request.into_inner();
        let (kind, subject) = throttle_subject(&req)?;
        let source = (!req.source.is_empty()).then_some(req.source.as_str());
        let budgets = self
            .authd
            .throttle_status(kind, subject, source)
            .await
            .into_iter()
            .map(|b| ThrottleBudget {
                source: b.source,
                kind: b.kind.label().into(),
                burst: b.bucket.burst,
                period_ms: ms(b.bucket.period),
                remaining: b.remaining,
                retry_in_ms: ms(b.retry_in),
                recovers_in_ms: ms(b.recovers_in),
                shared: b.shared,
            })
            .collect();
        Ok(Response::new(ThrottleStatusResponse { budgets }))
    }

    async fn throttle_reset(
        &self,
        request: Request<ThrottleRequest>,
    ) -> Result<Response<ThrottleResetResponse>, Status> {
        let caller = self.authorize(&request, "ThrottleReset")?;
        let req = request.into_inner();
        let (kind, subject) = throttle_subject(&req)?;
        let source = (!req.source.is_empty()).then_some(req.source.as_str());
        match self.authd.throttle_reset(kind, subject, source).await {
            Ok(n) => {
                // The subject itself is not logged: a keyed id would not help the reader,
                // and the caller knows whom they reset.
                tracing::info!(caller = %caller.0, kind = kind.label(), sources = n,
                    "throttle budgets reset");
                Ok(Response::new(ThrottleResetResponse {
                    reset: u32::try_from(n).unwrap_or(u32::MAX),
                }))
            }
            Err(e) => {
                tracing::warn!(caller = %caller.0, kind = kind.label(), error = %e,
                    "throttle budgets reset on this replica only");
                Err(Status::unavailable(format!(
                    "{e}; reset on this replica only: retry"
                )))
            }
        }
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        self.authorize(&request, "ListSessions")?;
        let sessions = self.sessions()?;
        let req = request.into_inner();
        if req.username.is_empty() {
            return Err(Status::invalid_argument("username is empty"));
        }
        let sessions = sessions.list(&req.username).await?;
        Ok(Response::new(ListSessionsResponse { sessions }))
    }

    async fn end_session(
        &self,
        request: Request<EndSessionRequest>,
    ) -> Result<Response<EndSessionResponse>, Status> {
        let caller = self.authorize(&request, "EndSession")?;
        let sessions = self.sessions()?;
        let req = request.into_inner();
        // A session id is 32 hex digits; anything else names no session.
        if req.session_id.len() != 32 || !req.session_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(
                "session_id: expected 32 hex digits",
            ));
        }
        let result = sessions.end(&self.authd, &req.session_id).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(_) => "unavailable",
        };
        self.authd
            .metrics()
            .session_calls
            .get_or_create(&SessionLabels {
                method: "end_session",
                result: label,
            })
            .inc();
        let ended = result?;
        tracing::info!(caller = %caller.0, session = %req.session_id, ended, "session ended by an admin");
        Ok(Response::new(EndSessionResponse { ended }))
    }
}
