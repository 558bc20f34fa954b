//! External HTTP Basic-auth service: a `user:password` token is checked by a GET to a
//! configured URL (a template that may hold the percent-encoded user) with HTTP Basic
//! credentials. 200 is yes, 401/403 is no, anything else (a redirect, a 5xx, a connection
//! error, a timeout) is "could not decide".
//!
//! The client is built once per source: pooled keep-alive connections, rustls trusting only
//! `ca_file` when given, one timeout for the whole call, no redirects (a redirect would
//! re-send the password elsewhere) and no proxy from the environment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use authd_runtime::config::secs;
use futures::future::{BoxFuture, FutureExt};
use serde::Deserialize;

use super::common::{
    check_plaintext, check_prefix, check_separator, check_timeout, http_roots, resolve,
    split_user_password, FileError,
};
use super::{BuildError, Kind, Verifier};
use crate::field::FieldError;
use crate::identity::{Identity, Outcome};
use crate::mapping::Mapping;

/// Longest user name sent to the service; longer ones are rejected without a call.
pub const MAX_USER_BYTES: usize = 256;
/// Longest password sent to the service.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Most response-body bytes read (and discarded) so the connection can be reused.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most idle keep-alive connections kept to the service. A burst of concurrent checks
/// opens one connection each; past this many, those that finish are closed instead of
/// kept, so the descriptors a burst leaves behind stay bounded.
const MAX_IDLE_CONNECTIONS: usize = 32;

/// `type = "basic_auth"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub name: String,
    /// `https://idp.example/basic-auth/{user}`; `{user}` (optional, path only) is
    /// replaced by the percent-encoded user name.
    pub url: String,
    /// Between user and password in the token; the first occurrence splits.
    #[serde(default = "super::common::default_separator")]
    pub separator: String,
    /// Only tokens starting with this are owned; it is stripped before splitting.
    pub prefix: Option<String>,
    /// PEM CA bundle; when set it is the only trust anchor for the service's certificate.
    pub ca_file: Option<PathBuf>,
    /// Accept a plaintext `http://` `url` to a host other than this machine (an on-path
    /// attacker can read every password). Off: a start-up error.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Limit for the whole call (connect, TLS, request, response headers).
    #[serde(default = "secs::<2>", with = "humantime_serde")]
    pub timeout: Duration,
    /// Groups given to every user this source authenticates.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub mapping: Mapping,
}

impl Kind for Config {
    fn name(&self) -> &str {
        &self.name
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn files(&self) -> Vec<&Path> {
        self.ca_file.iter().map(PathBuf::as_path).collect()
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.ca_file.iter_mut().for_each(|p| resolve(base, p));
    }

    fn validate(&self) -> Result<(), FieldError> {
        check_separator(&self.separator)?;
        check_prefix(self.prefix.as_deref())?;
        check_timeout("timeout", self.timeout)?;
        self.validate_url()
            .map_err(|message| FieldError::new("url", message))
    }

    fn build(&self) -> Result<Arc<dyn Verifier>, BuildError> {
        Ok(Arc::new(BasicAuth::new(self)?))
    }
}

impl Config {
    fn validate_url(&self) -> Result<(), String> {
        let Some(scheme_end) = self.url.find("://") else {
            return Err(format!("{:?} has no scheme (use https://...)", self.url));
        };
        let scheme = &self.url[..scheme_end];
        if scheme != "https" && scheme != "http" {
            return Err(format!("scheme {scheme:?} is not http or https"));
        }
        let query_at = self.url.find(['?', '#']).unwrap_or(self.url.len());
        if let Some(at) = self.url.find("{user}") {
            let host_end = self.url[scheme_end + 3..]
                .find('/')
                .map(|i| i + scheme_end + 3);
            if host_end.is_none_or(|h| at < h) || at > query_at {
                return Err(format!(
                    "{{user}} may only appear in the path of {:?}",
                    self.url
                ));
            }
        }
        let sample = reqwest::Url::parse(&self.url.replace("{user}", "x"))
            .map_err(|e| format!("{:?} is not a valid URL: {e}", self.url))?;
        if !sample.username().is_empty() || sample.password().is_some() {
            return Err("must not hold credentials; the token's are sent instead".into());
        }
        if sample.scheme() == "http" {
            check_plaintext(
                "url",
                sample.host_str().unwrap_or(""),
                "http:// (passwords sent without TLS)",
                "allow_plaintext",
                self.allow_plaintext,
            )
            .map_err(|e| e.message)?;
        }
        if self.url.replace("{user}", "").contains(['{', '}']) {
            return Err(format!(
                "{:?} has an unknown placeholder (only {{user}})",
                self.url
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BasicAuthError {
    #[error(transparent)]
    Ca(#[from] FileError),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

pub struct BasicAuth {
    name: String,
    url: String,
    separator: String,
    prefix: Option<String>,
    groups: Vec<String>,
    timeout: Duration,
    /// Shared keep-alive pool for every call of this source.
    client: reqwest::Client,
    /// Scheme and host only, for log messages that must not carry user names.
    service: String,
}

impl BasicAuth {
    /// Builds the client (reads `ca_file`); does not contact the service.
    pub fn new(c: &Config) -> Result<Self, BasicAuthError> {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(c.timeout)
            .connect_timeout(c.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS);
        if let Some(path) = &c.ca_file {
            b = b.tls_certs_only(http_roots("ca_file", path)?);
        }
        let client = b
            .build()
            .map_err(|e| BasicAuthError::Client(e.to_string()))?;
        let service = reqwest::Url::parse(&c.url.replace("{user}", "x"))
            .map(|u| format!("{}://{}", u.scheme(), u.authority()))
            .unwrap_or_else(|_| "the Basic-auth service".into());
        Ok(Self {
            name: c.name.clone(),
            url: c.url.clone(),
            separator: c.separator.clone(),
            prefix: c.prefix.clone(),
            groups: c.groups.clone(),
            timeout: c.timeout,
            client,
            service,
        })
    }

    /// The `user`, `password` parts of an owned token.
    fn split<'t>(&self, token: &'t str) -> Option<(&'t str, &'t str)> {
        split_user_password(self.prefix.as_deref(), &self.separator, token)
    }

    async fn check(&self, user: &str, password: &str) -> Outcome {
        if refused_without_a_call(user, password) {
            return Outcome::Rejected;
        }
        let url = self.url.replace("{user}", &encode_segment(user));
        let response = self
            .client
            .get(&url)
            .basic_auth(user, Some(password))
            .send()
            .await;
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return Outcome::Undecided(self.describe(&e)),
        };
        let status = response.status();
        // Drain a bounded body so the keep-alive connection can be reused.
        let mut read = 0usize;
        while read < MAX_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        match status.as_u16() {
            200 => Outcome::Authenticated(Identity {
                username: user.to_owned(),
                uid: user.to_owned(),
                groups: self.groups.clone(),
                ..Identity::default()
            }),
            401 | 403 => Outcome::Rejected,
            300..=399 => Outcome::Undecided(format!(
                "{} answered a redirect ({status}); redirects are never followed",
                self.service
            )),
            _ => Outcome::Undecided(format!("{} answered {status}", self.service)),
        }
    }

    /// A log-safe description: no URL (it holds the user), never the password.
    fn describe(&self, e: &reqwest::Error) -> String {
        let kind = if e.is_timeout() {
            format!("timed out after {:?}", self.timeout)
        } else if e.is_connect() {
            "cannot connect".to_owned()
        } else {
            "request failed".to_owned()
        };
        let mut cause = String::new();
        let mut source = std::error::Error::source(e);
        // The innermost cause names the I/O or TLS problem; reqwest's own message would
        // quote the URL.
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        if cause.is_empty() {
            format!("{}: {kind}", self.service)
        } else {
            format!("{}: {kind}: {cause}", self.service)
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a user name can
/// never add a path segment, a query or a fragment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Credentials that can never be valid, and some that would change the request (a `.`/`..`
/// segment is resolved away by URL parsing, NUL and other controls are refused by many
/// servers in odd ways): refused without a call.
fn refused_without_a_call(user: &str, password: &str) -> bool {
    password.is_empty()
        || user.len() > MAX_USER_BYTES
        || password.len() > MAX_PASSWORD_BYTES
        || user == "."
        || user == ".."
        || user.chars().any(char::is_control)
}

impl Verifier for BasicAuth {
    fn name(&self) -> &str {
        &self.name
    }

    fn owns(&self, token: &str) -> bool {
        self.split(token).is_some()
    }

    /// Only tokens that would reach the service: the ones refused here cost nobody a call.
    fn throttle_subject<'t>(&self, token: &'t str) -> Option<&'t str> {
        self.split(token)
            .filter(|(user, password)| !refused_without_a_call(user, password))
            .map(|(user, _)| user)
    }

    fn verify<'a>(&'a self, token: &'a str, _audiences: &'a [String]) -> BoxFuture<'a, Outcome> {
        async move {
            match self.split(token) {
                Some((user, password)) => self.check(user, password).await,
                None => Outcome::NotMine,
            }
        }
        .boxed()
    }

    fn check_password<'a>(&'a self, user: &'a str, password: &'a str) -> BoxFuture<'a, Outcome> {
        self.check(user, password).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> Config {
        toml::from_str(&format!("name = 'b'\nurl = {url:?}\n")).unwrap()
    }

    #[test]
    fn url_templates_are_checked() {
        assert!(config("https://idp.example/basic-auth/{user}")
            .validate()
            .is_ok());
        assert!(config("https://idp.example/check").validate().is_ok());
        for bad in [
            "idp.example/basic-auth/{user}",
            "ftp://idp.example/{user}",
            "https://{user}.idp.example/",
            "https://idp.example/a?u={user}",
            "https://me:pw@idp.example/{user}",
            "https://idp.example/{username}",
        ] {
            let e = config(bad).validate().unwrap_err();
            assert_eq!(e.field, "url", "{bad}: {e}");
        }
    }

    #[test]
    fn routing_and_encoding() {
        let mut c = config("https://idp.example/u/{user}");
        let b = BasicAuth::new(&c).unwrap();
        assert!(b.owns("alice:pw"));
        assert_eq!(b.split("alice:p:w"), Some(("alice", "p:w")));
        assert!(!b.owns(":pw"));
        assert!(!b.owns("kad_0123"));
        c.prefix = Some("ba/".into());
        let b = BasicAuth::new(&c).unwrap();
        assert!(!b.owns("alice:pw"));
        assert!(b.owns("ba/alice:pw"));
        assert_eq!(
            encode_segment("a/b?c#d e*)(\\\0"),
            "a%2Fb%3Fc%23d%20e%2A%29%28%5C%00"
        );
    }

    /// A burst of concurrent checks opens one connection each; once they are answered the
    /// source keeps at most `MAX_IDLE_CONNECTIONS` of them open (without the bound, every
    /// one stayed open for the 90 s idle timeout).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_to_the_service_are_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        const CALLS: usize = MAX_IDLE_CONNECTIONS * 2;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        // Every first request waits for all the others: the burst needs CALLS connections.
        let burst = Arc::new(tokio::sync::Barrier::new(CALLS));
        let counter = open.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let (open, burst) = (counter.clone(), burst.clone());
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut buf, mut first) = (Vec::new(), true);
                    let mut chunk = [0u8; 1024];
                    while let Ok(n @ 1..) = conn.read(&mut chunk).await {
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            if std::mem::take(&mut first) {
                                burst.wait().await;
                            }
                            let no = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
                            if conn.write_all(no).await.is_err() {
                                break;
                            }
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        let mut c = config(&format!("http://{addr}/u/{{user}}"));
        c.timeout = Duration::from_secs(10);
        let b = Arc::new(BasicAuth::new(&c).unwrap());
        let calls = (0..CALLS).map(|i| {
            let b = b.clone();
            tokio::spawn(async move { b.check(&format!("u{i}"), "pw").await })
        });
        for outcome in futures::future::join_all(calls).await {
            assert!(matches!(outcome.unwrap(), Outcome::Rejected));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while open.load(Ordering::SeqCst) > MAX_IDLE_CONNECTIONS {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} connections to the service still open after the burst (bound {MAX_IDLE_CONNECTIONS})",
                open.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
