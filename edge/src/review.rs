//! TokenReview JSON in and out, to the letter of what kube-apiserver sends and accepts.
//!
//! Parsing borrows from the request body where it can. Only `kind`, `apiVersion`,
//! `spec.token` and `spec.audiences` are read; `metadata` and the request's `status` are
//! ignored, as the contract says. Field names are case-sensitive.

use std::borrow::Cow;

use authd_proto::v1::AuthenticateResponse;
use serde::Deserialize;

/// The two TokenReview versions kube-apiserver can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    V1beta1,
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1 => "authentication.k8s.io/v1",
            ApiVersion::V1beta1 => "authentication.k8s.io/v1beta1",
        }
    }

    /// Short form for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1",
            ApiVersion::V1beta1 => "v1beta1",
        }
    }
}

/// A parsed, validated review request.
pub struct Review<'a> {
    pub api_version: ApiVersion,
    pub token: Cow<'a, str>,
    pub audiences: Vec<String>,
}

/// Never prints the token (its length only): a `{:?}` must not put it in a log.
impl std::fmt::Debug for Review<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Review")
            .field("api_version", &self.api_version)
            .field(
                "token",
                &format_args!("<redacted, {} bytes>", self.token.len()),
            )
            .field("audiences", &self.audiences)
            .finish()
    }
}

#[derive(Deserialize)]
struct WireReview<'a> {
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "apiVersion", borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    spec: Option<WireSpec<'a>>,
}

#[derive(Deserialize)]
struct WireSpec<'a> {
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    audiences: Option<Vec<String>>,
}

/// Why a request body is not a TokenReview we can answer (HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("request body is not valid JSON for a TokenReview: {0}")]
    Json(String),
    #[error("kind is missing; expected \"TokenReview\"")]
    MissingKind,
    #[error("kind is {0:?}; expected \"TokenReview\"")]
    WrongKind(String),
    #[error("apiVersion is missing; expected \"authentication.k8s.io/v1\" or \"authentication.k8s.io/v1beta1\"")]
    MissingApiVersion,
    #[error("apiVersion {0:?} is not supported; expected \"authentication.k8s.io/v1\" or \"authentication.k8s.io/v1beta1\"")]
    WrongApiVersion(String),
    #[error("spec.token is missing or empty")]
    MissingToken,
}

/// Longest `kind`/`apiVersion` echoed back in an error message.
const MAX_ECHO: usize = 64;

fn clip(s: &str) -> String {
    s.chars().take(MAX_ECHO).collect()
}

pub fn parse(body: &[u8]) -> Result<Review<'_>, ReviewError> {
    let wire: WireReview<'_> = serde_json::from_slice(body).map_err(|e| {
        // serde_json's message names line/column and the expected type, never the value.
        ReviewError::Json(e.to_string())
    })?;
    match wire.kind.as_deref() {
        None => return Err(ReviewError::MissingKind),
        Some("TokenReview") => {}
        Some(other) => return Err(ReviewError::WrongKind(clip(other))),
    }
    let api_version = match wire.api_version.as_deref() {
        None => return Err(ReviewError::MissingApiVersion),
        Some("authentication.k8s.io/v1") => ApiVersion::V1,
        Some("authentication.k8s.io/v1beta1") => ApiVersion::V1beta1,
        Some(other) => return Err(ReviewError::WrongApiVersion(clip(other))),
    };
    let spec = wire.spec.ok_or(ReviewError::MissingToken)?;
    let token = spec
        .token
        .filter(|t| !t.is_empty())
        .ok_or(ReviewError::MissingToken)?;
    Ok(Review {
        api_version,
        token,
        audiences: spec.audiences.unwrap_or_default(),
    })
}

/// Room for a typical answer, so writing it does not grow the buffer several times.
const ANSWER_CAPACITY: usize = 512;

/// Serialises a definitive verdict (authenticated or not) as a TokenReview in the
/// request's version. Callers route "could not decide" to [`status_body`] instead.
///
/// Written field by field: the keys and the constant parts are literals, and only the
/// verdict's strings go through serde_json's escaper. Shape: `apiVersion`, `kind`,
/// `metadata.creationTimestamp: null`, `spec.audiences` (the request's, when it had any;
/// the token is deliberately not echoed), `status.authenticated`, and for an authenticated
/// user `status.user` (`username`; `uid`, `groups`, `extra` when not empty) and
/// `status.audiences` when not empty.
pub fn render(review: &Review<'_>, verdict: &AuthenticateResponse) -> Vec<u8> {
    // authenticated:true with an empty username would make kube-apiserver accept user "".
    let user = verdict
        .user
        .as_ref()
        .filter(|u| verdict.authenticated && !u.username.is_empty());
    let mut out = Vec::with_capacity(ANSWER_CAPACITY);
    out.extend_from_slice(b"{\"apiVersion\":\"");
    out.extend_from_slice(review.api_version.as_str().as_bytes());
    out.extend_from_slice(
        b"\",\"kind\":\"TokenReview\",\"metadata\":{\"creationTimestamp\":null},\"spec\":{",
    );
    if !review.audiences.is_empty() {
        out.extend_from_slice(b"\"audiences\":");
        json_strings(&mut out, &review.audiences);
    }
    out.extend_from_slice(b"},\"status\":{\"authenticated\":");
    match user {
        None => out.extend_from_slice(b"false"),
        Some(u) => {
            out.extend_from_slice(b"true,\"user\":{\"username\":");
            json_string(&mut out, &u.username);
            if !u.uid.is_empty() {
                out.extend_from_slice(b",\"uid\":");
                json_string(&mut out, &u.uid);
            }
            if !u.groups.is_empty() {
                out.extend_from_slice(b",\"groups\":");
                json_strings(&mut out, &u.groups);
            }
            if !u.extra.is_empty() {
                out.extend_from_slice(b",\"extra\":{");
                for (i, (key, values)) in u.extra.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json_string(&mut out, key);
                    out.push(b':');
                    json_strings(&mut out, &values.values);
                }
                out.push(b'}');
            }
            out.push(b'}');
            if !verdict.audiences.is_empty() {
                out.extend_from_slice(b",\"audiences\":");
                json_strings(&mut out, &verdict.audiences);
            }
        }
    }
    out.extend_from_slice(b"}}\n");
    out
}

/// A JSON string literal, escaped by serde_json (writing into a `Vec` cannot fail).
fn json_string(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

fn json_strings(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_string(out, s);
    }
    out.push(b']');
}

/// A `metav1.Status` failure body, the shape client-go decodes for non-2xx answers.
pub fn status_body(code: u16, reason: &str, message: &str) -> Vec<u8> {
    let mut body = serde_json::to_vec(&serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }))
    .unwrap_or_default();
    body.push(b'\n');
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use authd_proto::v1::{StringList, User};

    const V1: &str = r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"token":"014fbff9a07c","audiences":["https://kubernetes.default.svc.cluster.local"]},"status":{"user":{}}}"#;

    #[test]
    fn parses_what_kube_apiserver_sends() {
        let r = parse(V1.as_bytes()).unwrap();
        assert_eq!(r.api_version, ApiVersion::V1);
        assert_eq!(r.token, "014fbff9a07c");
        assert_eq!(
            r.audiences,
            vec!["https://kubernetes.default.svc.cluster.local"]
        );
        let beta = V1.replace("k8s.io/v1\"", "k8s.io/v1beta1\"");
        assert_eq!(
            parse(beta.as_bytes()).unwrap().api_version,
            ApiVersion::V1beta1
        );
    }

    #[test]
    fn debug_never_prints_the_token() {
        let r = parse(V1.as_bytes()).unwrap();
        let text = format!("{r:?}");
        assert!(!text.contains("014fbff9a07c"), "{text}");
        assert!(text.contains("kubernetes.default.svc"), "{text}");
    }

    #[test]
    fn token_with_escapes_is_decoded() {
        let body = r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","spec":{"token":"a\"b\u00e9"}}"#;
        assert_eq!(parse(body.as_bytes()).unwrap().token, "a\"bé");
    }

    #[test]
    fn rejects_bad_requests_without_echoing_tokens() {
        assert!(matches!(parse(b"{"), Err(ReviewError::Json(_))));
        assert!(matches!(parse(b"[]"), Err(ReviewError::Json(_))));
        let e =
            parse(br#"{"kind":"Pod","apiVersion":"v1","spec":{"token":"sekret"}}"#).unwrap_err();
        assert_eq!(e, ReviewError::WrongKind("Pod".into()));
        assert!(!e.to_string().contains("sekret"));
        let e = parse(br#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v2","spec":{"token":"x"}}"#).unwrap_err();
        assert!(matches!(e, ReviewError::WrongApiVersion(_)));
        let e = parse(br#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","spec":{"token":""}}"#).unwrap_err();
        assert_eq!(e, ReviewError::MissingToken);
        let e = parse(br#"{"Kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","spec":{"token":"x"}}"#).unwrap_err();
        assert_eq!(e, ReviewError::MissingKind);
        // A wrong JSON type in a field we read is a decode error, and the message does not
        // carry the offending value.
        let e = parse(br#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","spec":{"token":["sekret"]}}"#).unwrap_err();
        assert!(
            matches!(&e, ReviewError::Json(m) if !m.contains("sekret")),
            "{e}"
        );
    }

    /// What is written by hand parses back as JSON to exactly the verdict's values, with
    /// quotes, backslashes, control characters and non-ASCII in every string position.
    #[test]
    fn render_escapes_every_string() {
        let r = parse(V1.as_bytes()).unwrap();
        let nasty = "q\"b\\c\n\u{1}é☃/";
        let mut extra = std::collections::BTreeMap::new();
        for k in ["a", nasty] {
            extra.insert(
                k.to_string(),
                StringList {
                    values: vec![nasty.into(), "".into()],
                },
            );
        }
        let yes = AuthenticateResponse {
            authenticated: true,
            user: Some(User {
                username: nasty.into(),
                uid: nasty.into(),
                groups: vec![nasty.into(), "g".into()],
                extra,
            }),
            audiences: vec![nasty.into()],
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&render(&r, &yes)).unwrap();
        let want = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": null},
            "spec": {"audiences": ["https://kubernetes.default.svc.cluster.local"]},
            "status": {
                "authenticated": true,
                "user": {
                    "username": nasty,
                    "uid": nasty,
                    "groups": [nasty, "g"],
                    "extra": {"a": [nasty, ""], nasty: [nasty, ""]},
                },
                "audiences": [nasty],
            },
        });
        assert_eq!(v, want);
    }

    #[test]
    fn renders_authenticated_and_denied() {
        let r = parse(V1.as_bytes()).unwrap();
        let mut extra = std::collections::BTreeMap::new();
        extra.insert(
            "example.org/source".to_string(),
            StringList {
                values: vec!["static".into()],
            },
        );
        let yes = AuthenticateResponse {
            authenticated: true,
            user: Some(User {
                username: "alice".into(),
                uid: "1".into(),
                groups: vec!["dev".into()],
                extra,
            }),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&render(&r, &yes)).unwrap();
        assert_eq!(v["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(v["kind"], "TokenReview");
        assert_eq!(v["status"]["authenticated"], true);
        assert_eq!(v["status"]["user"]["username"], "alice");
        assert_eq!(v["status"]["user"]["groups"][0], "dev");
        assert_eq!(
            v["status"]["user"]["extra"]["example.org/source"][0],
            "static"
        );
        assert!(v["status"].get("audiences").is_none());
        assert!(v["status"].get("error").is_none());
        assert!(v["spec"].get("token").is_none());

        let no: serde_json::Value =
            serde_json::from_slice(&render(&r, &AuthenticateResponse::default())).unwrap();
        assert_eq!(no["status"], serde_json::json!({"authenticated": false}));

        let empty_name = AuthenticateResponse {
            authenticated: true,
            user: Some(User::default()),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&render(&r, &empty_name)).unwrap();
        assert_eq!(v["status"]["authenticated"], false);
    }
}
