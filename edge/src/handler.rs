//! The review side of the HTTPS endpoint: routing a request to its TokenReview endpoint,
//! the client-certificate binding of that route, admission (before any of the body is
//! read), reading the body within its limits and the memory budget, parsing, calling the
//! backend and rendering the answer (and counting it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

use crate::backend::{Backend, Call};
use crate::config::Config;
use crate::conn::Peer;
use crate::layer::admission::{over_budget, Admitted};
use crate::login::{Login, LoginRoute, SessionBackend};
use crate::metrics::{Metrics, Name, ReviewLabels};
use crate::review::{self, ApiVersion, ReviewError};
use crate::route::Route;

/// Everything a request handler needs; shared by all connections.
pub struct Handler {
    backend: Backend,
    /// The login routes (`login.rs`): set only in the login listener's handler, which
    /// serves nothing else.
    login: Option<Arc<Login>>,
    default_cluster: Endpoint,
    clusters: std::collections::BTreeMap<String, Endpoint>,
    /// The metric label of requests that matched no endpoint.
    unknown: Name,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    review_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// One TokenReview endpoint: its cluster, and the `reviews` counters of its definitive
/// answers (HTTP 200 in either version, authenticated or not), resolved once so counting
/// the common case is one atomic add instead of a family lookup (a read lock and a hash
/// of the labels) per review.
struct Endpoint {
    name: Name,
    /// `[v1, v1beta1][authenticated, rejected]`
    answered: [[Counter; 2]; 2],
}

impl Endpoint {
    fn new(cluster: &str, metrics: &Metrics) -> Self {
        let name: Name = cluster.into();
        let counter = |api_version, result| {
            metrics
                .reviews
                .get_or_create(&ReviewLabels {
                    cluster: name.clone(),
                    api_version,
                    result,
                    code: StatusCode::OK.as_u16(),
                })
                .clone()
        };
        let answered = [ApiVersion::V1, ApiVersion::V1beta1]
            .map(|v| [AUTHENTICATED, REJECTED].map(|r| counter(v.label(), r)));
        Self { name, answered }
    }

    /// The resolved counter for `answer`, if it is one of the definitive answers.
    fn answered(&self, answer: &Answer) -> Option<&Counter> {
        if answer.status != StatusCode::OK {
            return None;
        }
        let version = match answer.api_version {
            v if v == ApiVersion::V1.label() => 0,
            v if v == ApiVersion::V1beta1.label() => 1,
            _ => return None,
        };
        let result = match answer.result {
            AUTHENTICATED => 0,
            REJECTED => 1,
            _ => return None,
        };
        Some(&self.answered[version][result])
    }
}

const AUTHENTICATED: &str = "authenticated";
const REJECTED: &str = "rejected";

/// How a request was answered, for the metric and the log line.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    result: &'static str,
    api_version: &'static str,
}

impl Answer {
    fn failure(status: StatusCode, reason: &str, result: &'static str, message: &str) -> Self {
        Self {
            status,
            body: review::status_body(status.as_u16(), reason, message),
            result,
            api_version: "unknown",
        }
    }
}

impl Handler {
    pub fn new(config: &Config, backend: Backend, metrics: Arc<Metrics>) -> Self {
        Self::with_login(config, backend, None, metrics)
    }

    /// The handler of the login listener: the login routes, and nothing else (404).
    pub fn login_only(
        config: &Config,
        backend: Backend,
        sessions: SessionBackend,
        metrics: Arc<Metrics>,
    ) -> Self {
        let login = Login::new(
            sessions,
            config.login.max_in_flight,
            config.body_read_timeout,
            config.review_timeout,
        );
        Self::with_login(config, backend, Some(Arc::new(login)), metrics)
    }

    fn with_login(
        config: &Config,
        backend: Backend,
        login: Option<Arc<Login>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            backend,
            login,
            default_cluster: Endpoint::new(&config.default_cluster, &metrics),
            clusters: config
                .clusters
                .keys()
                .map(|k| (k.clone(), Endpoint::new(k, &metrics)))
                .collect(),
            unknown: "unknown".into(),
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout,
            review_timeout: config.review_timeout,
            metrics,
        }
    }

    /// `/authenticate` → default cluster; `/clusters/{name}/authenticate` → a configured one.
    /// The route and endpoint returned are the handler's own, so the request can be moved
    /// on without copying its path.
    fn route(&self, path: &str) -> Option<(Route<'_>, &Endpoint)> {
        match Route::parse(path)? {
            Route::Default => Some((Route::Default, &self.default_cluster)),
            Route::Cluster(name) => self
                .clusters
                .get_key_value(name)
                .map(|(name, endpoint)| (Route::Cluster(name), endpoint)),
        }
    }

    /// Answers one request that arrived on a connection from `peer`.
    pub async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<Full<Bytes>> {
        // The login listener serves nothing else: it asks for no client certificate.
        if let Some(login) = &self.login {
            return match LoginRoute::parse(req.uri().path()) {
                Some(route) => login.handle(route, req, peer.addr).await,
                None => crate::login::not_found(),
            };
        }
        let started = Instant::now();
        let request_id = request_id();
        let found = self.route(req.uri().path());
        let endpoint = found.map(|(_, e)| e);
        let cluster = endpoint.map(|e| &*e.name.0);
        let answer = match found {
            None => Answer::failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                "not_found",
                &format!("no TokenReview endpoint at {}", clip_path(req.uri().path())),
            ),
            Some((route, endpoint)) => match peer.refusal(route) {
                Some(why) => {
                    tracing::warn!(request_id, cluster = &*endpoint.name.0, reason = %why,
                        "kube-apiserver client certificate refused; answering 403");
                    Answer::failure(StatusCode::FORBIDDEN, "Forbidden", "forbidden", &why)
                }
                None => {
                    self.review(req, peer, &endpoint.name.0, &request_id, started)
                        .await
                }
            },
        };
        let code = answer.status.as_u16();
        match endpoint.and_then(|e| e.answered(&answer)) {
            Some(counter) => counter.inc(),
            None => self
                .metrics
                .reviews
                .get_or_create(&ReviewLabels {
                    cluster: endpoint.map_or(&self.unknown, |e| &e.name).clone(),
                    api_version: answer.api_version,
                    result: answer.result,
                    code,
                })
                .inc(),
        };
        let elapsed = started.elapsed();
        self.metrics.latency.observe(elapsed.as_secs_f64());
        tracing::debug!(
            request_id,
            cluster = cluster.unwrap_or("-"),
            api_version = answer.api_version,
            result = answer.result,
            code,
            micros = elapsed.as_micros() as u64,
            "review answered"
        );
        let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
        *resp.status_mut() = answer.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            h.insert("x-request-id", v);
        }
        if answer.status == StatusCode::METHOD_NOT_ALLOWED {
            h.insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        resp
    }

    /// Reads, parses and answers one TokenReview. Its deadlines count from `started`, the
    /// clock reading the handler already took.
    async fn review(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
        cluster: &str,
        request_id: &str,
        started: Instant,
    ) -> Answer {
        let started = tokio::time::Instant::from_std(started);
        if req.method() != Method::POST {
            return Answer::failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "method_not_allowed",
                &format!("{} is not allowed; TokenReviews are POSTed", req.method()),
            );
        }
        // Admission before the body: a review the edge has no room for costs no more
        // than its headers, already read by hyper.
        let mut admitted = match self.backend.admit(&peer.bytes, request_bytes(&req)) {
            Ok(a) => a,
            Err(e) => return undecided("unknown", request_id, &e.to_string()),
        };
        let too_large = || {
            Answer::failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "too_large",
                &format!("request body is larger than {} bytes", self.max_body_bytes),
            )
        };
        let read = read_body(req.into_body(), self.max_body_bytes, &mut admitted);
        let body = match tokio::time::timeout_at(started + self.body_read_timeout, read).await {
            Err(_) => {
                return Answer::failure(
                    StatusCode::REQUEST_TIMEOUT,
                    "Timeout",
                    "body_timeout",
                    &format!(
                        "request body was not received within {:?}",
                        self.body_read_timeout
                    ),
                )
            }
            Ok(BodyRead::TooLarge) => return too_large(),
            Ok(BodyRead::OverBudget) => {
                return undecided("unknown", request_id, &over_budget().to_string())
            }
            Ok(BodyRead::Failed(e)) => {
                return Answer::failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "bad_request",
                    &format!("could not read request body: {e}"),
                )
            }
            Ok(BodyRead::Complete(bytes)) => bytes,
        };
        let parsed = match review::parse(&body) {
            Ok(r) => r,
            Err(e) => {
                let message = match &e {
                    ReviewError::Json(m) => format!(
                        "request body is not valid JSON for a TokenReview: {}",
                        redact_quoted(m)
                    ),
                    other => other.to_string(),
                };
                return Answer::failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "bad_request",
                    &message,
                );
            }
        };
        let api_version = parsed.api_version.label();
        let request = AuthenticateRequest {
            token: parsed.token.to_string(),
            audiences: parsed.audiences.clone(),
            cluster: cluster.to_owned(),
            request_id: request_id.to_owned(),
        };
        // The deadline counts from the review's arrival; the backend's deadline layer
        // answers for it when time is up.
        let verdict = self
            .backend
            .review(
                &admitted,
                Call {
                    request,
                    deadline: started + self.review_timeout,
                },
            )
            .await;
        match verdict {
            Ok(v) if v.error.is_empty() => ok_answer(&parsed.api_version, &parsed, &v),
            Ok(v) => undecided(
                api_version,
                request_id,
                &format!("authd could not decide: {}", v.error),
            ),
            Err(e) => undecided(api_version, request_id, &e.to_string()),
        }
    }
}

/// A random id for one review, in logs and in the `X-Request-Id` answer header: 16 hex
/// digits.
fn request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u64>();
    (0..16)
        .rev()
        .map(|i| char::from(HEX[((n >> (i * 4)) & 0xf) as usize]))
        .collect()
}

fn ok_answer(
    version: &ApiVersion,
    parsed: &review::Review<'_>,
    v: &AuthenticateResponse,
) -> Answer {
    Answer {
        status: StatusCode::OK,
        body: review::render(parsed, v),
        result: if v.authenticated {
            AUTHENTICATED
        } else {
            REJECTED
        },
        api_version: version.label(),
    }
}

/// Past the limit the body is still read and discarded up to this many bytes, so an
/// HTTP/1.1 client that is still writing gets to read the 413 instead of a broken pipe.
const DRAIN_CAP: usize = 8 * 1024 * 1024;

enum BodyRead {
    Complete(Bytes),
    TooLarge,
    /// The memory budget had no room for the next part of the body.
    OverBudget,
    Failed(hyper::Error),
}

/// What a request holds before its body: the headers hyper has decoded, counted as HPACK
/// does (name, value and 32 bytes of bookkeeping each), and the path.
fn request_bytes(req: &Request<Incoming>) -> usize {
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum::<usize>()
        + req.uri().path().len()
}

/// Reads the body up to `limit`, holding every byte it keeps (with what its buffer
/// allocated) in `admitted`'s share of the budget.
async fn read_body(mut body: Incoming, limit: usize, admitted: &mut Admitted<'_>) -> BodyRead {
    let declared = hyper::body::Body::size_hint(&body).exact();
    if declared.is_some_and(|n| n > DRAIN_CAP as u64) {
        return BodyRead::TooLarge;
    }
    let base = admitted.held();
    // A review body usually arrives as one frame: keep it as is and copy only when a
    // second frame shows up.
    let mut first: Option<Bytes> = None;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return BodyRead::Failed(e),
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > DRAIN_CAP {
                return BodyRead::TooLarge;
            }
            if seen <= limit {
                match first.take() {
                    None if buf.is_empty() => first = Some(data),
                    earlier => {
                        // The buffer grows with what arrives, not with what was declared
                        // (a trickled body holds little), fourfold so a large body is
                        // reallocated few times (freed buffers linger in the allocator),
                        // never past the declared length; what it allocates is held first.
                        if seen > buf.capacity() {
                            let end = declared.map_or(limit, |n| n as usize).clamp(seen, limit);
                            let size = (4 * buf.capacity()).clamp(seen, end);
                            if !admitted.hold(base + size) {
                                return BodyRead::OverBudget;
                            }
                            buf.reserve(size - buf.len());
                        }
                        if let Some(e) = earlier {
                            buf.extend_from_slice(&e);
                        }
                        buf.extend_from_slice(&data);
                    }
                }
                // The allocator may round a reservation up; that is held too.
                let kept = first.as_ref().map_or(buf.capacity(), Bytes::len);
                if !admitted.hold(base + kept) {
                    return BodyRead::OverBudget;
                }
            }
        }
    }
    if seen > limit {
        BodyRead::TooLarge
    } else {
        BodyRead::Complete(first.unwrap_or_else(|| buf.freeze()))
    }
}

/// "Could not decide": HTTP 500 with a Status body and no Retry-After, which kube-apiserver
/// retries with its own backoff and never caches.
fn undecided(api_version: &'static str, request_id: &str, message: &str) -> Answer {
    tracing::warn!(
        request_id,
        error = message,
        "review could not be decided; answering 500"
    );
    let mut a = Answer::failure(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        "undecided",
        message,
    );
    a.api_version = api_version;
    a
}

/// Replaces every double-quoted span with `"…"`: serde_json puts offending string values in
/// its messages, and a misplaced token must not come back in an error. The values are
/// Debug-escaped, so inside a span `\` escapes the next character (an embedded `\"` does not
/// end the span); an unterminated span hides the rest of the message.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        match (inside, c) {
            (false, '"') => {
                out.push('"');
                inside = true;
            }
            (false, c) => out.push(c),
            (true, '\\') => {
                chars.next();
            }
            (true, '"') => {
                out.push_str("…\"");
                inside = false;
            }
            (true, _) => {}
        }
    }
    if inside {
        out.push('…');
    }
    out
}

fn clip_path(path: &str) -> String {
    path.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_quoted_values() {
        assert_eq!(
            redact_quoted("invalid type: string \"s3cret\", expected a sequence at line 1"),
            "invalid type: string \"…\", expected a sequence at line 1"
        );
    }

    /// serde Debug-escapes the value: an embedded quote or backslash must not end the span.
    #[test]
    fn escaped_quotes_do_not_end_the_redaction() {
        let m = r#"invalid type: string "ab\"SECRET\\", expected a sequence"#;
        assert_eq!(
            redact_quoted(m),
            "invalid type: string \"…\", expected a sequence"
        );
        assert_eq!(redact_quoted(r#"cut "SECRET\""#), "cut \"…");
    }

    /// What serde_json really says about a misplaced token with quotes in it.
    #[test]
    fn real_serde_messages_are_redacted() {
        let body = r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","spec":{"audiences":"t\"SECRET\\\"MORE"}}"#;
        let Err(ReviewError::Json(m)) = review::parse(body.as_bytes()) else {
            panic!("not a JSON error");
        };
        let r = redact_quoted(&m);
        assert!(!r.contains("SECRET") && !r.contains("MORE"), "{m} -> {r}");
        assert!(r.contains("expected a sequence"), "{r}");
    }
}
