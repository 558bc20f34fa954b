//! The edge's configuration: one TOML file, validated at start-up; errors name the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use authd_runtime::config::secs;
use serde::Deserialize;

pub use authd_runtime::config::{ConfigError, FieldError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTPS listen address for TokenReviews.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Plain-HTTP admin listener (/healthz, /readyz, /metrics); off when absent.
    pub admin_listen: Option<SocketAddr>,
    /// Largest accepted request body; larger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// A client must finish sending request headers within this time.
    #[serde(default = "secs::<10>", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A client must finish sending the body within this time (408 otherwise).
    #[serde(default = "secs::<10>", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed (keep-alive and
    /// HTTP/2 connections included).
    #[serde(default = "secs::<90>", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The TLS handshake must finish within this time.
    #[serde(default = "secs::<10>", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Deadline for authd's verdict; past it the review is answered 500 (retryable).
    #[serde(default = "secs::<10>", with = "humantime_serde")]
    pub review_timeout: Duration,
    /// Most reviews in progress at once; beyond it reviews are answered at once with the
    /// retryable 500 ("overloaded") instead of queueing (see docs/configuration.md).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_reviews: usize,
    /// Most request bytes (headers and bodies) held by reviews in progress, process-wide;
    /// a review that would exceed it is answered at once with the same retryable 500.
    #[serde(default = "default_max_buffered_body_bytes")]
    pub max_buffered_body_bytes: usize,
    /// Most open client connections (TLS handshakes included); one more is closed at
    /// once, before its handshake.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// How long in-flight reviews may take to finish after SIGTERM.
    #[serde(default = "secs::<25>", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Cluster name sent to authd for `POST /authenticate`.
    #[serde(default = "default_cluster")]
    pub default_cluster: String,
    pub tls: TlsConfig,
    /// `[authd]` as written, checked into `authd` at load.
    #[serde(rename = "authd")]
    authd_file: Option<AuthdFile>,
    /// authd location; required by `authd-edge serve`, unused in the all-in-one binary.
    #[serde(skip)]
    pub authd: Option<AuthdConfig>,
    /// Clusters served at `POST /clusters/{name}/authenticate`.
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// The login routes (`POST /login`, `/token`, `/logout`), forwarded to authd's
    /// Sessions service.
    #[serde(default)]
    pub login: LoginConfig,
}

/// `[login]`: the login routes people's `kube-authd login` calls. They need no client
/// certificate, so they have a listener of their own: the review listener keeps requiring
/// kube-apiserver's certificate at the handshake.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// HTTPS address of the login routes (same serving certificate); off when absent.
    pub listen: Option<SocketAddr>,
    /// Most login-route calls in progress at once; more are answered 503 at once.
    #[serde(default = "default_login_in_flight")]
    pub max_in_flight: usize,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            listen: None,
            max_in_flight: default_login_in_flight(),
        }
    }
}

fn default_login_in_flight() -> usize {
    64
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain served to kube-apiserver.
    pub cert: PathBuf,
    /// PEM private key for `cert`.
    pub key: PathBuf,
    /// PEM CA(s) whose client certificates `POST /authenticate` requires (mTLS), and every
    /// `[clusters.NAME]` route without a `client_ca` of its own. Required unless
    /// `insecure_allow_anonymous_reviews` is set.
    pub client_ca: Option<PathBuf>,
    /// Lets routes without a client CA answer any TLS client: a token oracle for whoever
    /// reaches the port. Off by default; logged at warn at start-up and (rate-limited) as
    /// anonymous callers connect.
    #[serde(default)]
    pub insecure_allow_anonymous_reviews: bool,
}

/// `[authd]` as written; checked and turned into [`AuthdConfig`] at load.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthdFile {
    /// One gRPC endpoint, e.g. `http://127.0.0.1:50051` (same as a one-element `endpoints`).
    endpoint: Option<String>,
    /// A fixed set of authd replicas, balanced.
    #[serde(default)]
    endpoints: Vec<String>,
    /// `host:port` whose addresses (a headless Service) are the replicas; re-resolved
    /// every `dns_refresh`.
    dns: Option<String>,
    #[serde(default = "secs::<5>", with = "humantime_serde")]
    dns_refresh: Duration,
    #[serde(default = "secs::<1>", with = "humantime_serde")]
    health_interval: Duration,
    #[serde(default = "secs::<2>", with = "humantime_serde")]
    connect_timeout: Duration,
    ca: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    /// Accept plaintext gRPC (`http://`, or `dns` without `ca`) to a host other than this
    /// machine. The edge sends every raw token to authd, so it takes this explicit opt-out.
    #[serde(default)]
    allow_plaintext: bool,
}

/// Where authd is and how to reach it, checked at load: endpoints are parsed URIs, the DNS
/// name is split into host and port, paths are absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthdConfig {
    pub replicas: Replicas,
    /// How often each replica's gRPC health is probed; failing replicas leave the rotation.
    pub health_interval: Duration,
    /// Time allowed to establish a connection to authd.
    pub connect_timeout: Duration,
    /// PEM CA that signed authd's server certificate; set for https:// endpoints and for
    /// `dns` with TLS, absent for plaintext gRPC.
    pub ca: Option<PathBuf>,
    /// The edge's client certificate and key for mutual TLS with authd (re-read on change).
    pub client_identity: Option<ClientIdentity>,
}

/// The edge's client certificate and its key.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the replicas come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replicas {
    /// `endpoint` and `endpoints`.
    Static(Vec<Target>),
    /// `dns`: `host`'s addresses at `port`, re-resolved every `refresh`.
    Dns {
        host: String,
        port: u16,
        refresh: Duration,
    },
}

/// Where one replica is and what name its certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// `host:port` to connect to (for DNS discovery, one resolved address).
    pub addr: String,
    /// The name authd's certificate is verified against (the configured host).
    pub server_name: String,
}

impl std::fmt::Display for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replicas::Static(targets) => {
                let addrs: Vec<&str> = targets.iter().map(|t| t.addr.as_str()).collect();
                write!(f, "{}", addrs.join(","))
            }
            Replicas::Dns { host, port, .. } => write!(f, "dns {host}:{port}"),
        }
    }
}

/// The edge sends raw tokens to authd: plaintext gRPC to another machine is refused
/// unless `authd.allow_plaintext` says otherwise (the same rule as authd's sources).
fn check_plaintext(field: &str, host: &str, allowed: bool) -> Result<(), FieldError> {
    authd_runtime::plaintext::check_plaintext(
        field,
        host,
        "plaintext gRPC (tokens sent to authd without TLS; use https:// with authd.ca)",
        "authd.allow_plaintext",
        allowed,
    )
}

/// A static endpoint (`http://host:port` or `https://host:port`), parsed; `http://` only
/// to this machine unless `allow_plaintext`.
fn endpoint(field: &str, e: &str, ca: bool, allow_plaintext: bool) -> Result<Target, FieldError> {
    let bad = |why: &str| FieldError::new(field, format!("{e:?} {why}"));
    let uri: http::Uri = e
        .parse()
        .map_err(|err| bad(&format!("is not a URI: {err}")))?;
    match (uri.scheme_str(), ca) {
        (Some("https"), true) | (Some("http"), false) => {}
        (Some("https"), false) => {
            return Err(FieldError::new(
                "authd.ca",
                format!("required for the https:// endpoint {e:?}"),
            ))
        }
        (Some("http"), true) => return Err(bad("is plaintext but authd.ca is set; use https://")),
        _ => return Err(bad("must start with http:// or https://")),
    }
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.port_u16().is_none() {
        return Err(bad("needs a port"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("must not have a path or query"));
    }
    if !ca {
        check_plaintext(field, authority.host(), allow_plaintext)?;
    }
    Ok(Target {
        addr: authority.as_str().to_owned(),
        server_name: authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    })
}

impl AuthdFile {
    fn check(self) -> Result<AuthdConfig, FieldError> {
        let mut endpoints: Vec<(&str, &String)> = Vec::new();
        endpoints.extend(self.endpoint.iter().map(|e| ("authd.endpoint", e)));
        endpoints.extend(self.endpoints.iter().map(|e| ("authd.endpoints", e)));
        let replicas = match (endpoints.is_empty(), &self.dns) {
            (true, None) => {
                return Err(FieldError::new(
                    "authd",
                    "one of endpoint, endpoints or dns is required",
                ))
            }
            (false, Some(_)) => {
                return Err(FieldError::new(
                    "authd.dns",
                    "use either dns or endpoint/endpoints, not both",
                ))
            }
            (true, Some(d)) => {
                let (host, port) = d
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                    .filter(|(h, _)| !h.is_empty() && !d.contains("://"))
                    .ok_or_else(|| {
                        FieldError::new("authd.dns", format!("{d:?} must be host:port"))
                    })?;
                if self.ca.is_none() {
                    check_plaintext("authd.dns", host, self.allow_plaintext)?;
                }
                if self.dns_refresh.is_zero() {
                    return Err(FieldError::new(
                        "authd.dns_refresh",
                        "must be greater than 0",
                    ));
                }
                Replicas::Dns {
                    host: host.to_owned(),
                    port,
                    refresh: self.dns_refresh,
                }
            }
            (false, None) => Replicas::Static(
                endpoints
                    .iter()
                    .map(|(field, e)| endpoint(field, e, self.ca.is_some(), self.allow_plaintext))
                    .collect::<Result<_, _>>()?,
            ),
        };
        if self.health_interval.is_zero() {
            return Err(FieldError::new(
                "authd.health_interval",
                "must be greater than 0",
            ));
        }
        let client_identity = match (self.client_cert, self.client_key) {
            (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
            (None, None) => None,
            _ => {
                return Err(FieldError::new(
                    "authd.client_cert and authd.client_key",
                    "set both or neither",
                ))
            }
        };
        if client_identity.is_some() && self.ca.is_none() {
            return Err(FieldError::new(
                "authd.client_cert",
                "needs authd.ca (mutual TLS)",
            ));
        }
        Ok(AuthdConfig {
            replicas,
            health_interval: self.health_interval,
            connect_timeout: self.connect_timeout,
            ca: self.ca,
            client_identity,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// PEM CA whose client certificates this cluster's endpoint requires: the certificate
    /// of this cluster's kube-apiserver (mTLS, bound to the cluster). `tls.client_ca` when
    /// absent.
    pub client_ca: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_max_in_flight() -> usize {
    1024
}
fn default_max_buffered_body_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_max_connections() -> usize {
    256
}
fn default_max_concurrent_streams() -> u32 {
    128
}
fn default_cluster() -> String {
    "default".into()
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        authd_runtime::config::load(path, Self::parse)
    }

    /// Parses and checks a configuration; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, FieldError> {
        let mut c: Config = authd_runtime::config::from_toml(text)?;
        let mut paths = vec![&mut c.tls.cert, &mut c.tls.key];
        paths.extend(c.tls.client_ca.as_mut());
        paths.extend(c.clusters.values_mut().filter_map(|k| k.client_ca.as_mut()));
        if let Some(a) = c.authd_file.as_mut() {
            paths.extend(a.ca.as_mut());
            paths.extend(a.client_cert.as_mut());
            paths.extend(a.client_key.as_mut());
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.authd = c.authd_file.take().map(AuthdFile::check).transpose()?;
        c.validate()?;
        Ok(c)
    }

    /// Whether `other` serves the same routes with the same TLS: `tls.*`, `default_cluster`
    /// and `clusters` (what a reload swaps for new connections).
    pub fn same_routes(&self, other: &Config) -> bool {
        self.tls == other.tls
            && self.default_cluster == other.default_cluster
            && self.clusters == other.clusters
    }

    /// This configuration as a running edge applies it on reload: the settings fixed for
    /// the process's life (listeners, limits, timeouts) taken from `running`, with the
    /// names of those that differ, for a warning. What reloads is the rest: `tls`,
    /// `default_cluster`, `clusters` and `[authd]`.
    pub fn with_restart_only_from(mut self, running: &Config) -> (Config, Vec<&'static str>) {
        // Destructured without `..`: a new field must be sorted into one group or the other.
        let Config {
            listen,
            admin_listen,
            max_body_bytes,
            header_read_timeout,
            body_read_timeout,
            idle_timeout,
            handshake_timeout,
            review_timeout,
            max_in_flight_reviews,
            max_buffered_body_bytes,
            max_connections,
            max_concurrent_streams,
            shutdown_grace,
            default_cluster: _,
            tls: _,
            authd_file: _,
            authd: _,
            clusters: _,
            login,
        } = running;
        let mut changed = Vec::new();
        macro_rules! keep {
            ($($field:ident),*) => {$(
                if self.$field != *$field {
                    changed.push(stringify!($field));
                    self.$field = $field.clone();
                }
            )*};
        }
        keep!(
            listen,
            admin_listen,
            max_body_bytes,
            header_read_timeout,
            body_read_timeout,
            idle_timeout,
            handshake_timeout,
            review_timeout,
            max_in_flight_reviews,
            max_buffered_body_bytes,
            max_connections,
            max_concurrent_streams,
            shutdown_grace,
            login
        );
        (self, changed)
    }

    fn validate(&self) -> Result<(), FieldError> {
        if self.max_body_bytes == 0 {
            return Err(FieldError::new("max_body_bytes", "must be greater than 0"));
        }
        if self.default_cluster.is_empty() {
            return Err(FieldError::new("default_cluster", "must not be empty"));
        }
        for name in self.clusters.keys() {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(FieldError::new(
                    format!("clusters.{name:?}"),
                    "cluster names may only hold letters, digits, '-', '_' and '.'",
                ));
            }
        }
        // Fail closed: a route nobody authenticates is a token oracle, so it takes the
        // explicit opt-out (every cluster route without its own CA uses tls.client_ca).
        if self.tls.client_ca.is_none() && !self.tls.insecure_allow_anonymous_reviews {
            return Err(FieldError::new(
                "tls.client_ca",
                "required: the CA of kube-apiserver's client certificate (`kube-authd certs init \
                 --cluster NAME` writes cluster-NAME-ca.crt); to answer reviews from any TLS \
                 client instead, set tls.insecure_allow_anonymous_reviews = true",
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(FieldError::new("idle_timeout", "must be greater than 0"));
        }
        if self.max_in_flight_reviews == 0 {
            return Err(FieldError::new(
                "max_in_flight_reviews",
                "must be greater than 0",
            ));
        }
        if self.login.max_in_flight == 0 {
            return Err(FieldError::new(
                "login.max_in_flight",
                "must be greater than 0",
            ));
        }
        // Below `max_body_bytes` a body of the largest accepted size could never be read.
        if self.max_buffered_body_bytes < self.max_body_bytes {
            return Err(FieldError::new(
                "max_buffered_body_bytes",
                format!("must be at least max_body_bytes ({})", self.max_body_bytes),
            ));
        }
        if self.max_connections == 0 {
            return Err(FieldError::new("max_connections", "must be greater than 0"));
        }
        if self.max_concurrent_streams == 0 {
            return Err(FieldError::new(
                "max_concurrent_streams",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: &str = "[tls]\ncert = \"e.crt\"\nkey = \"e.key\"\nclient_ca = \"k.crt\"\n";

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{TLS}{extra}"), Path::new("/etc/edge")).map_err(|e| e.to_string())
    }

    #[test]
    fn replica_sources_and_paths() {
        let c = parse(
            "[authd]\nendpoints = [\"https://a:1\", \"https://b:2\"]\nca = \"ca.crt\"\n\
             client_cert = \"c.crt\"\nclient_key = \"c.key\"\n\
             [clusters.dev]\nclient_ca = \"dev-ca.crt\"\n",
        )
        .unwrap();
        let a = c.authd.unwrap();
        let target = |addr: &str, name: &str| Target {
            addr: addr.into(),
            server_name: name.into(),
        };
        assert_eq!(
            a.replicas,
            Replicas::Static(vec![target("a:1", "a"), target("b:2", "b")])
        );
        assert_eq!(a.ca.unwrap(), Path::new("/etc/edge/ca.crt"));
        assert_eq!(a.client_identity.unwrap().key, Path::new("/etc/edge/c.key"));
        assert_eq!(
            c.clusters["dev"].client_ca.as_deref(),
            Some(Path::new("/etc/edge/dev-ca.crt"))
        );
        let d = parse(
            "[authd]\ndns = \"authd-headless.ns.svc:50051\"\ndns_refresh = \"2s\"\n\
             allow_plaintext = true\n",
        )
        .unwrap()
        .authd
        .unwrap();
        assert_eq!(
            d.replicas,
            Replicas::Dns {
                host: "authd-headless.ns.svc".into(),
                port: 50051,
                refresh: Duration::from_secs(2)
            }
        );
        assert_eq!(d.health_interval, Duration::from_secs(1));
        let v6 = parse("[authd]\nendpoint = \"http://[::1]:50051/\"\n")
            .unwrap()
            .authd
            .unwrap();
        assert_eq!(
            v6.replicas,
            Replicas::Static(vec![target("[::1]:50051", "::1")])
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (toml, field) in [
            ("[authd]\n", "authd"),
            (
                "[authd]\nendpoint = \"http://a:1\"\ndns = \"b:2\"\n",
                "authd.dns",
            ),
            ("[authd]\ndns = \"no-port\"\n", "authd.dns"),
            ("[authd]\nendpoints = [\"https://a:1\"]\n", "authd.ca"),
            (
                "[authd]\nendpoints = [\"http://a:1\"]\nca = \"ca.crt\"\n",
                "authd.endpoints",
            ),
            ("[authd]\nendpoint = \"http://a\"\n", "authd.endpoint"),
            ("[authd]\nendpoint = \"a:1\"\n", "authd.endpoint"),
            ("[authd]\nendpoint = \"http://a:1/x\"\n", "authd.endpoint"),
            ("[authd]\nendpoint = \"http://a:99999\"\n", "authd.endpoint"),
            ("[authd]\ndns = \":1\"\n", "authd.dns"),
            (
                "[authd]\nendpoint = \"https://a:1\"\nca = \"c\"\nclient_cert = \"x\"\n",
                "authd.client_key",
            ),
            ("max_in_flight_reviews = 0\n", "max_in_flight_reviews"),
            ("idle_timeout = \"0s\"\n", "idle_timeout"),
            (
                "max_buffered_body_bytes = 1000\n",
                "max_buffered_body_bytes",
            ),
            ("max_connections = 0\n", "max_connections"),
            ("max_concurrent_streams = 0\n", "max_concurrent_streams"),
            ("[clusters.dev]\nclient_cert = \"x\"\n", "client_cert"),
        ] {
            let e = parse(toml).unwrap_err();
            assert!(e.contains(field), "{toml:?}: {e}");
        }
    }

    /// The edge sends raw tokens to authd: plaintext gRPC to another machine is a start-up
    /// error naming the field and the opt-out; loopback, TLS and the opt-out load.
    #[test]
    fn plaintext_to_a_remote_authd_needs_the_opt_out() {
        for (authd, field) in [
            ("endpoint = \"http://authd:50051\"", "authd.endpoint"),
            (
                "endpoints = [\"http://127.0.0.1:1\", \"http://10.0.0.7:50051\"]",
                "authd.endpoints",
            ),
            ("dns = \"authd-headless.ns.svc:50051\"", "authd.dns"),
            ("dns = \"[fe80::1]:50051\"", "authd.dns"),
        ] {
            let e = parse(&format!("[authd]\n{authd}\n")).unwrap_err();
            assert!(e.starts_with(field), "{authd}: {e}");
            assert!(e.contains("authd.allow_plaintext = true"), "{authd}: {e}");
            assert!(
                parse(&format!("[authd]\n{authd}\nallow_plaintext = true\n")).is_ok(),
                "{authd}"
            );
        }
        for ok in [
            "endpoint = \"http://127.0.0.1:50051\"",
            "endpoint = \"http://localhost:50051\"",
            "endpoints = [\"http://[::1]:1\", \"http://127.0.0.2:2\"]",
            "dns = \"localhost:50051\"",
            "endpoint = \"https://authd:50051\"\nca = \"ca.crt\"",
            "dns = \"authd-headless.ns.svc:50051\"\nca = \"ca.crt\"",
        ] {
            assert!(parse(&format!("[authd]\n{ok}\n")).is_ok(), "{ok}");
        }
    }

    /// On reload, listeners, limits and timeouts stay as running (named for the warning);
    /// routes, TLS and `[authd]` come from the new file.
    #[test]
    fn restart_only_settings_stay_as_running() {
        let running = parse("[authd]\nendpoint = \"http://127.0.0.1:1\"\n").unwrap();
        let new = Config::parse(
            &format!(
                "listen = \"0.0.0.0:9\"\nmax_connections = 7\nreview_timeout = \"1s\"\n{TLS}\
                 [clusters.dev]\n[authd]\nendpoint = \"http://127.0.0.1:2\"\n"
            ),
            Path::new("/etc/edge"),
        )
        .unwrap();
        assert!(!running.same_routes(&new));
        let (applied, changed) = new.with_restart_only_from(&running);
        assert_eq!(changed, ["listen", "review_timeout", "max_connections"]);
        assert_eq!(applied.listen, running.listen);
        assert_eq!(applied.max_connections, running.max_connections);
        assert_eq!(applied.review_timeout, running.review_timeout);
        assert!(applied.clusters.contains_key("dev"));
        assert_ne!(applied.authd, running.authd);
        let (same, none) = running.clone().with_restart_only_from(&running);
        assert!(none.is_empty() && same.same_routes(&running));
    }

    /// Without a client CA the edge would answer anyone: a start-up error naming the field
    /// and the opt-out, unless the opt-out is set.
    #[test]
    fn a_client_ca_is_required_unless_anonymous_reviews_are_allowed() {
        let base = Path::new("/etc/edge");
        let bare = "[tls]\ncert = \"e.crt\"\nkey = \"e.key\"\n";
        for extra in ["", "[clusters.dev]\nclient_ca = \"dev.crt\"\n"] {
            let e = Config::parse(&format!("{bare}{extra}"), base)
                .unwrap_err()
                .to_string();
            assert!(e.contains("tls.client_ca"), "{e}");
            assert!(
                e.contains("tls.insecure_allow_anonymous_reviews = true"),
                "{e}"
            );
        }
        let c = Config::parse(
            &format!("{bare}insecure_allow_anonymous_reviews = true\n"),
            base,
        )
        .unwrap();
        assert!(c.tls.insecure_allow_anonymous_reviews && c.tls.client_ca.is_none());
        assert!(!parse("").unwrap().tls.insecure_allow_anonymous_reviews);
    }
}
