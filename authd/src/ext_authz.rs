//! Envoy's external authorization, `envoy.service.auth.v3.Authorization/Check`, on authd's
//! gRPC port: a service behind Envoy (or a mesh built on it) has its bearer tokens
//! authenticated with the clusters' verdicts, cache, revocations and policy.
//!
//! A `Check` becomes one `AuthenticateRequest` down the same path as `Authenticate`
//! (`Authd::authenticate`): the token from `ext_authz.token_header` (`Bearer …`), the
//! cluster from the route's `context_extensions` (`ext_authz.cluster_extension`, else
//! `ext_authz.default_cluster`), which the caller's `[clients.NAME] clusters` must grant.
//! The verdict becomes Envoy's answer:
//! - authenticated: OK; the identity headers are set on the upstream request, replacing
//!   whatever the client sent under those names, and every other spelling of them, the
//!   ones left unset and the token header are removed;
//! - not authenticated (unknown token, policy, revocation, unknown cluster): a 401 with
//!   `WWW-Authenticate: Bearer` and nothing about why;
//! - could not decide: gRPC UNAVAILABLE, so Envoy's own failure mode decides (fail closed
//!   unless `failure_mode_allow`), never a pass from here.

use std::sync::Arc;
use std::time::Instant;

use authd_proto::v1::{AuthenticateRequest, User};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode as HttpStatusCode};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::access::Caller;
use crate::config::ExtAuthzConfig;
use crate::metrics::{CheckLabels, Metrics};
use crate::service::Authd;

/// How a `Check` was answered, as the `result` label of `authd_ext_authz_checks` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Allowed,
    /// 401: not authenticated here, for whatever reason.
    Denied,
    /// PERMISSION_DENIED: the caller may not ask for this cluster.
    Forbidden,
    /// UNAVAILABLE: Envoy's failure mode decides.
    Undecided,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Forbidden => "forbidden",
            Outcome::Undecided => "undecided",
        }
    }
}

/// gRPC codes in `CheckResponse.status` (google.rpc.Code).
const OK: i32 = 0;
const UNAUTHENTICATED: i32 = 16;

/// Longest request id carried into logs (Envoy's own ids are 36 characters).
const MAX_REQUEST_ID: usize = 64;

pub struct ExtAuthzGrpc {
    authd: Authd,
    config: Arc<ExtAuthzConfig>,
}

impl ExtAuthzGrpc {
    pub fn server(authd: Authd, config: ExtAuthzConfig) -> AuthorizationServer<Self> {
        AuthorizationServer::new(Self {
            authd,
            config: Arc::new(config),
        })
    }

    fn metrics(&self) -> &Metrics {
        self.authd.metrics()
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzGrpc {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        // Set by the access layer on every call; without it, no cluster is granted.
        let Some(caller) = Caller::shared(&request) else {
            tracing::warn!("Check refused: PERMISSION_DENIED (no caller identity)");
            return Err(Status::permission_denied(
                "no caller identity for this call",
            ));
        };
        let mut attributes = request.into_inner().attributes.unwrap_or_default();
        let cluster = attributes
            .context_extensions
            .remove(&self.config.cluster_extension)
            .unwrap_or_else(|| self.config.default_cluster.clone());
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        let request_id = loggable_id(&http.id);
        let (outcome, answer) = match caller.grant.check(&caller.identity.0, &cluster) {
            Err(why) => {
                tracing::warn!(
                    request_id = %request_id,
                    client = &*caller.identity.0,
                    reason = why,
                    "Check refused: PERMISSION_DENIED"
                );
                (Outcome::Forbidden, Err(Status::permission_denied(why)))
            }
            Ok(()) => {
                caller.count_check();
                let via = crate::service::Via {
                    entry: "ext_authz",
                    caller: self.authd.audits().then(|| caller.identity.0.clone()),
                };
                self.decide(&http, cluster.clone(), request_id.clone(), via)
                    .await
            }
        };
        self.metrics()
            .ext_authz_checks
            .get_or_create(&CheckLabels {
                client: caller.name(),
                result: outcome.label(),
            })
            .inc();
        let elapsed = started.elapsed();
        self.metrics()
            .ext_authz_latency
            .observe(elapsed.as_secs_f64());
        tracing::debug!(
            request_id = %request_id,
            client = &*caller.identity.0,
            cluster = %cluster.escape_debug(),
            result = outcome.label(),
            micros = elapsed.as_micros() as u64,
            "Check answered"
        );
        answer.map(Response::new)
    }
}

impl ExtAuthzGrpc {
    /// The verdict for the request's token at `cluster`, as Envoy's answer.
    async fn decide(
        &self,
        http: &HttpRequest,
        cluster: String,
        request_id: String,
        via: crate::service::Via,
    ) -> (Outcome, Result<CheckResponse, Status>) {
        let token = token(http, &self.config.token_header).unwrap_or_default();
        // An empty token is refused without a lookup, counted under the cluster like any
        // review: the whole verdict path is `Authenticate`'s.
        let verdict = self
            .authd
            .review(
                AuthenticateRequest {
                    token,
                    audiences: Vec::new(),
                    cluster,
                    request_id,
                },
                via,
            )
            .await;
        if !verdict.error.is_empty() {
            // authd logged why; Envoy only learns that it must apply its failure mode.
            let status = Status::unavailable("authd could not decide");
            return (Outcome::Undecided, Err(status));
        }
        match verdict.user.filter(|_| verdict.authenticated) {
            Some(user) => match self.allowed(http, user) {
                Ok(ok) => (Outcome::Allowed, Ok(ok)),
                Err(why) => {
                    tracing::warn!(reason = why,
                        "authenticated, but the identity cannot be carried in request headers: denied");
                    (Outcome::Denied, Ok(denied()))
                }
            },
            None => (Outcome::Denied, Ok(denied())),
        }
    }

    /// The OK answer: the identity set on the upstream request; the unset identity headers,
    /// other spellings of them and (unless kept) the token header removed.
    fn allowed(&self, http: &HttpRequest, user: User) -> Result<CheckResponse, String> {
        let c = &*self.config;
        check_value("username", &user.username)?;
        if user.username.is_empty() {
            return Err("the username is empty".into());
        }
        check_value("uid", &user.uid)?;
        for g in &user.groups {
            check_value("a group", g)?;
            if g.is_empty() || g.contains(',') {
                return Err("a group is empty or has a comma (groups are comma-separated)".into());
            }
        }
        let mut headers = vec![set(&c.user_header, user.username)];
        let mut remove = Vec::new();
        for (name, value) in [
            (&c.uid_header, user.uid),
            (&c.groups_header, user.groups.join(",")),
        ] {
            if value.is_empty() {
                remove.push(name.clone());
            } else {
                headers.push(set(name, value));
            }
        }
        if !c.keep_token_header {
            remove.push(c.token_header.clone());
        }
        // Set headers replace every copy under their exact name; a spelling that differs
        // only by `_` for `-` is one that many servers (CGI, WSGI, nginx's underscores)
        // read as the same header, so it goes too.
        let ours = [&c.user_header, &c.uid_header, &c.groups_header];
        for key in header_names(http) {
            let spoofs = ours
                .iter()
                .any(|name| key != name.as_str() && same_when_normalized(key, name));
            if spoofs && !remove.iter().any(|r| r == key) {
                remove.push(key.to_owned());
            }
        }
        Ok(CheckResponse {
            status: Some(rpc::Status {
                code: OK,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove: remove,
                ..Default::default()
            })),
            ..Default::default()
        })
    }
}

/// The denial: 401 with `WWW-Authenticate: Bearer` (RFC 6750) and no body.
fn denied() -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: UNAUTHENTICATED,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: HttpStatusCode::Unauthorized as i32,
            }),
            headers: vec![set("www-authenticate", "Bearer".into())],
            body: String::new(),
        })),
        ..Default::default()
    }
}

/// A header that replaces every value the request had under that name. Only
/// `append_action` is set: Envoy versions that read the older `append` flag treat it as
/// absent (false), which also replaces.
fn set(name: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value,
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// A value the service behind Envoy reads back exactly: no control characters (which
/// would split or end the header) and no surrounding blanks (which HTTP strips, so
/// " admin" would arrive as "admin").
fn check_value(what: &str, value: &str) -> Result<(), String> {
    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(format!("{what} has a control character"));
    }
    if value.starts_with(' ') || value.ends_with(' ') {
        return Err(format!("{what} starts or ends with a space"));
    }
    Ok(())
}

/// Every request header name Envoy sent, from the merged map or (with Envoy's
/// `encode_raw_headers`) the raw list.
fn header_names(http: &HttpRequest) -> impl Iterator<Item = &str> {
    let raw = http.header_map.iter().flat_map(|m| &m.headers);
    http.headers
        .keys()
        .map(String::as_str)
        .chain(raw.map(|h| h.key.as_str()))
}

/// `a` and `b` name the same header for a server that folds case and reads `_` as `-`.
fn same_when_normalized(a: &str, b: &str) -> bool {
    let fold = |c: u8| match c {
        b'_' => b'-',
        c => c.to_ascii_lowercase(),
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// The bearer token in `header` (lower-case), if the request has exactly one such header
/// whose value is `Bearer <token>`. Two of them (Envoy's raw list) is no token: which one
/// would the service behind read?
fn token(http: &HttpRequest, header: &str) -> Option<String> {
    if let Some(value) = http.headers.get(header) {
        return bearer(value.as_bytes());
    }
    let raw = http.header_map.as_ref()?;
    let mut found = raw.headers.iter().filter(|h| h.key == header);
    let first = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let value = if first.raw_value.is_empty() {
        first.value.as_bytes()
    } else {
        &first.raw_value
    };
    bearer(value)
}

/// The token of an RFC 6750 `Bearer` credential (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches([' ', '\t']);
    (!token.is_empty()).then(|| token.to_owned())
}

/// Envoy's request id (`x-request-id`, which a client may set) as it goes into log lines:
/// at most `MAX_REQUEST_ID` characters of `[A-Za-z0-9._:-]`, nothing that could forge a line.
fn loggable_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        .take(MAX_REQUEST_ID)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderMap;

    fn http(headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn raw(headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            header_map: Some(HeaderMap {
                headers: headers
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.to_string(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_token_is_a_bearer_credential_in_one_header() {
        let t = |h: HttpRequest| token(&h, "authorization");
        assert_eq!(t(http(&[("authorization", "Bearer abc")])).unwrap(), "abc");
        assert_eq!(
            t(http(&[("authorization", "bearer  abc ")])).unwrap(),
            "abc"
        );
        assert_eq!(t(raw(&[("authorization", "BEARER abc")])).unwrap(), "abc");
        for no in [
            http(&[]),
            http(&[("authorization", "Basic YWxpY2U6cHc=")]),
            http(&[("authorization", "Bearer")]),
            http(&[("authorization", "Bearer   ")]),
            http(&[("authorization", "Bearerabc")]),
            http(&[("x-token", "Bearer abc")]),
            raw(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
        ] {
            assert_eq!(t(no.clone()), None, "{no:?}");
        }
        let custom = http(&[("x-api-token", "Bearer k")]);
        assert_eq!(token(&custom, "x-api-token").unwrap(), "k");
    }

    #[test]
    fn spellings_that_servers_fold_together() {
        assert!(same_when_normalized(
            "x_kube_authd_user",
            "x-kube-authd-user"
        ));
        assert!(same_when_normalized(
            "X-Kube_Authd-USER",
            "x-kube-authd-user"
        ));
        assert!(!same_when_normalized(
            "x-kube-authd-users",
            "x-kube-authd-user"
        ));
        assert!(!same_when_normalized(
            "x-kube-authd-uid",
            "x-kube-authd-user"
        ));
    }

    #[test]
    fn values_must_read_back_exactly() {
        assert!(check_value("u", "alice@example.com").is_ok());
        assert!(check_value("u", "système:ops").is_ok());
        for bad in [
            "a\r\nx-kube-authd-user: root",
            "a\0",
            " admin",
            "admin ",
            "a\tb",
        ] {
            assert!(check_value("u", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_ids_cannot_forge_log_lines() {
        let id = "c1a1eb71-886e-463e-b85f-0e448776347a";
        assert_eq!(loggable_id(id), id);
        assert_eq!(loggable_id("a\nlevel=INFO msg=\"x\""), "alevelINFOmsgx");
        assert_eq!(loggable_id(&"é1".repeat(100)).len(), MAX_REQUEST_ID);
    }
}
